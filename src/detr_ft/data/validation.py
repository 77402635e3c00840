"""The checks every dataset reader applies to its records, and ``DataReport``, what they left out.

The COCO reader (data/coco.py), the 🤗 datasets reader (data/hf_dataset.py) and the
splitter (data/split.py) accept the same ids and numbers and clean boxes the same way;
bad records are settled one way too (``DataReport.settle_bad``: an error, or left out and
counted under ``--on-bad-data skip``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from detr_ft.errors import UserError

MAX_LISTED_PROBLEMS = 10

log = logging.getLogger("detr_ft")


@dataclass
class DataReport:
    """What the reader left out or repaired, for the log and metrics.json."""

    skipped_records: int = 0  # bad image and annotation entries left out (under --on-bad-data skip)
    skipped_objects: int = 0  # valid annotations left out with their skipped image
    dropped_boxes: int = 0
    clipped_boxes: int = 0
    problems: list[str] = field(default_factory=list)

    def settle_bad(self, where: str, bad: list[str], kind: str, on_bad_data: str) -> None:
        """The bad ``kind``s (e.g. "record") found in ``where``: under ``on_bad_data="error"``
        a ``UserError`` listing the first few; under ``"skip"`` counted and logged."""
        if not bad:
            return
        self.problems = bad
        if on_bad_data == "error":
            listed = "; ".join(bad[:MAX_LISTED_PROBLEMS])
            more = f" (and {len(bad) - MAX_LISTED_PROBLEMS} more)" if len(bad) > MAX_LISTED_PROBLEMS else ""
            raise UserError(f"{where}: {len(bad)} bad {kind}(s): {listed}{more}; fix them or pass "
                            f"--on-bad-data skip to leave them out")
        self.skipped_records = len(bad)
        log.warning("%s: left out %d bad %s(s) (--on-bad-data skip), e.g. %s", where, len(bad), kind, bad[0])

    def to_dict(self) -> dict:
        return {
            "skipped_records": self.skipped_records,
            "skipped_objects": self.skipped_objects,
            "dropped_boxes": self.dropped_boxes,
            "clipped_boxes": self.clipped_boxes,
        }


def is_number(v) -> bool:
    """A JSON number that converts to float (NaN and infinities included, huge integers not)."""
    return isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool) and abs(v) < 1e300)


def is_id(v) -> bool:
    """COCO ids are integers (not bools, floats or strings) that fit in int64."""
    return isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63


def show(v, limit: int = 60) -> str:
    """A value as it appears in a one-line problem report (repr, shortened)."""
    r = repr(v)
    return r if len(r) <= limit else r[:limit - 3] + "..."


def clean_boxes(objects, width: float, height: float, report: DataReport):
    """Clip boxes to the image, drop NaN and degenerate ones; count both."""
    boxes, labels = [], []
    for (x, y, w, h), label in objects:
        if not all(math.isfinite(v) for v in (x, y, w, h)):
            report.dropped_boxes += 1
            continue
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(width, x + w), min(height, y + h)
        if x1 - x0 < 1e-3 or y1 - y0 < 1e-3:
            report.dropped_boxes += 1
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            report.clipped_boxes += 1
        boxes.append((x0, y0, x1 - x0, y1 - y0))
        labels.append(label)
    return (np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64))

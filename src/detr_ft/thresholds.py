"""Per-class score thresholds (F1-optimal at IoU 0.5), found where eval, train and export put them.

``eval`` and ``train`` write them into ``metrics.json`` (key ``thresholds``: {category id:
{"threshold", "f1", "precision", "recall", "name"}}); ``export`` copies them into the model
directory's ``config.json`` (key ``detr_ft_thresholds``: {category id: threshold}).
``load_thresholds`` reads either, so that every consumer (``predict --threshold auto``,
``Detector.predict(threshold="auto")``, exporters) finds them the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from detr_ft.errors import UserError

CONFIG_KEY = "detr_ft_thresholds"
METRICS_KEY = "thresholds"
FALLBACK = 0.5  # a class without a threshold of its own (no true positive when they were measured)
HOW_TO_GET = ("run 'detr-ft eval --ckpt-path CKPT' and pass --thresholds OUT/metrics.json, or keep train's "
              "metrics.json beside the checkpoint, or export a checkpoint that has them")


def from_document(doc: dict) -> dict[int, float] | None:
    """{category id: threshold} from a metrics.json or config.json document; None if it has none."""
    if isinstance(doc.get(CONFIG_KEY), dict):
        return {int(k): float(v) for k, v in doc[CONFIG_KEY].items()}
    if isinstance(doc.get(METRICS_KEY), dict):
        return {int(k): float(v["threshold"] if isinstance(v, dict) else v) for k, v in doc[METRICS_KEY].items()}
    return None


def read_file(path: Path) -> dict[int, float] | None:
    """Thresholds in a metrics.json or config.json file; a ``UserError`` if it is unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--thresholds {path}: file not found; {HOW_TO_GET}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"--thresholds {path}: not valid JSON ({e})") from None
    try:
        return from_document(doc) if isinstance(doc, dict) else None
    except (TypeError, ValueError, KeyError):
        raise UserError(f"--thresholds {path}: its '{METRICS_KEY}' or '{CONFIG_KEY}' entry is malformed; "
                        f"write it again with detr-ft eval") from None


def load_thresholds(model_path, thresholds_file=None) -> dict[int, float] | None:
    """The per-class thresholds for a model: from ``thresholds_file`` when given (it must have
    them), else the model directory's config.json (a checkpoint: the metrics.json beside it).
    None where there are none."""
    if thresholds_file is not None:
        found = read_file(Path(thresholds_file).expanduser())
        if found is None:
            raise UserError(f"--thresholds {thresholds_file}: has no per-class thresholds; {HOW_TO_GET}")
        return found
    path = Path(model_path).expanduser()
    beside = path / "config.json" if path.is_dir() else path.parent / "metrics.json"
    if not beside.is_file():
        return None
    try:
        return read_file(beside)
    except UserError:  # a stray file beside the model is not the user's request: no thresholds
        return None


def require(thresholds: dict[int, float] | None, where) -> dict[int, float]:
    """``thresholds``, or the one-line error of ``--threshold auto`` without any."""
    if not thresholds:
        raise UserError(f"--threshold auto: no per-class thresholds found for {where}; {HOW_TO_GET}")
    return thresholds


def for_classes(thresholds: dict[int, float], category_ids) -> list[float]:
    """The threshold of each category id, in order (FALLBACK for a class without one)."""
    return [thresholds.get(int(c), FALLBACK) for c in category_ids]


def check_threshold(threshold, flag: str = "--threshold") -> None:
    """A ``UserError`` unless ``threshold`` is "auto" or a number in [0, 1]."""
    if threshold == "auto":
        return
    if isinstance(threshold, str) or not 0.0 <= threshold <= 1.0:
        raise UserError(f"{flag} must be between 0 and 1, or 'auto' (got {threshold})")

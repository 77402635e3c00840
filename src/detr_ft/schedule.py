"""Learning-rate schedules: a multiplier of the base rates per optimizer step.

Every schedule starts with a linear warm-up over ``warmup`` steps, then:
``constant`` keeps the base rate; ``cosine`` decays it to 0 by the end of
training; ``step`` drops it tenfold once 2/3 of training is done (DETR's
recipe: 300 epochs with the drop at 200).
"""

from __future__ import annotations

import math
from typing import Callable

SCHEDULES = ("constant", "cosine", "step")
STEP_DROP_AT = 2 / 3  # fraction of training after which "step" multiplies the rate by STEP_FACTOR
STEP_FACTOR = 0.1


def lr_factor(schedule: str, warmup: int, total: int,
              elapsed_fraction: Callable[[], float | None] | None = None) -> Callable[[int], float]:
    """The multiplier of step ``step`` (0-based) for ``torch.optim.lr_scheduler.LambdaLR``.

    ``total``: the planned optimizer steps. ``elapsed_fraction``: the fraction of a time
    budget used so far (``--max-minutes``), or None; progress is then the larger of the
    two, so the decay ends with whichever runs out first. A plain function (not an
    object): LambdaLR saves no state for it, so checkpoints stay tensors and numbers.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}")
    total = max(1, total)

    def progress(done: int, of: int) -> float:
        p = done / max(1, of)
        by_time = elapsed_fraction() if elapsed_fraction is not None else None
        return min(1.0, max(p, by_time) if by_time is not None else p)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress(step - warmup, total - warmup)))
        if schedule == "step":
            return STEP_FACTOR if progress(step, total) >= STEP_DROP_AT else 1.0
        return 1.0

    return factor

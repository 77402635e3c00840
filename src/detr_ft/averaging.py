"""An exponential moving average (EMA) of the weights, with warm-up, on Lightning's ``WeightAveraging``.

Lightning's callback keeps the average in a ``torch.optim.swa_utils.AveragedModel``,
updates it after every optimizer step, swaps it into the module for validation,
copies it into the module when training ends, and writes checkpoints whose
``state_dict`` holds the averaged weights (the live ones go to
``current_model_state``, the update count to ``averaging_state``); resuming restores
both. So validation, ``best.ckpt``, ``eval``, ``predict`` and ``export`` all see the
average. Lightning's own ``EMAWeightAveraging`` has a fixed decay; detr-ft ramps it
up as RT-DETR and timm do, so the first steps of a fine-tuning run (far from the
random or pretrained start) are not dragged back towards the start.
"""

from __future__ import annotations

import math

from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn


def ema_decay(decay: float, warmup_steps: int, update: int) -> float:
    """The decay of the ``update``-th update (1-based): ``decay * (1 - exp(-update / warmup_steps))``,
    or ``decay`` itself without warm-up (``warmup_steps`` 0)."""
    if warmup_steps <= 0:
        return decay
    return decay * (1.0 - math.exp(-update / warmup_steps))


class EMA(WeightAveraging):
    """EMA of the module's parameters and buffers after every optimizer step.

    The first update copies the weights (``AveragedModel``'s rule); the ``k``-th after it
    sets ``avg = d * avg + (1 - d) * live`` with ``d = ema_decay(decay, warmup_steps, k + 1)``.
    """

    def __init__(self, decay: float, warmup_steps: int):
        self.decay = decay
        self.warmup_steps = warmup_steps
        super().__init__(multi_avg_fn=self._update)

    def _update(self, averaged: list, live: list, num_averaged) -> None:
        """``AveragedModel``'s hook: ``num_averaged`` updates are already in ``averaged``."""
        d = ema_decay(self.decay, self.warmup_steps, int(num_averaged) + 1)
        get_ema_multi_avg_fn(d)(averaged, live, num_averaged)

"""Run settings as dataclasses, validated once where they are made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from detr_ft.errors import UserError

DEVICES = ("auto", "cpu", "cuda", "hpu", "mps")
DEFAULT_DATA_DIR = "~/CPPE-Dataset/data"
DEMO_MINUTES = 6.0  # detr-ft demo's default wall-time budget (README, "The demo learns")


@dataclass(frozen=True)
class RecipeDefaults:
    """What ``--augment auto`` and an unset ``--ema`` become for a kind of model (README "Training recipe")."""

    augment: str
    ema: bool


# A preset (random init, low resolution) underfits in a CPU budget: measured on the hard benchmark at
# 10 minutes (benchmarks/recipe_bench.py), the flip alone beat DETR's multi-scale + crop and RT-DETR's
# strong recipe, which shrink its small objects further; EMA: see the README's table.
PRESET_RECIPE = RecipeDefaults(augment="flip", ema=False)
# A pretrained model (hub id or directory) at its own resolution fine-tuned for many epochs overfits
# a small dataset without augmentation: the published recipes' (DETR, RT-DETRv2, D-FINE, rf-detr).
PRETRAINED_RECIPE = RecipeDefaults(augment="detr", ema=True)


@dataclass
class TrainConfig:
    """Every ``detr-ft train`` flag; the names are the flags with dashes as underscores."""

    output_dir: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    hf_dataset: str | None = None  # a 🤗 datasets id or save_to_disk folder, read instead of data_dir
    model: str = "facebook/detr-resnet-50"
    max_epochs: int = 5
    max_steps: int = -1
    max_minutes: float | None = None
    batch_size: int = 4
    num_workers: int = 2
    deterministic: bool = False
    seed: int = 42
    pad: bool = True
    num_buckets: int = 1
    pad_size: list[int] | None = None
    pad_canvases: str = "square"
    autocast: bool = False
    compile: bool = False
    channels_last: bool = True
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    use_ckpt: bool = False
    ckpt_path: str | None = None
    ckpt_store_interval_epochs: int = 0
    ckpt_store_path: str | None = None
    resume: bool = False
    threshold: float = 0.5
    max_inf_frames: int = 4
    bootstrap: int | None = None  # resamples for the final validation's intervals (None: by the split's size)
    train_only: bool = False
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    grad_clip: float = 0.1
    lr_schedule: str = "constant"
    image_size: list[int] | None = None  # SHORT [LONG]: the resize (None: the model's own)
    augment: str = "auto"  # auto: by the model (RecipeDefaults)
    hflip: float | None = None  # None: the --augment preset's (the knobs below alike)
    scales: list[int] | None = None
    crop: float | None = None
    crop_min: float = 0.3
    min_visibility: float = 0.3
    photometric: float | None = None
    jitter: list[float] = field(default_factory=lambda: [0.125, 0.5, 0.5, 0.05])
    zoom_out: float | None = None
    zoom_out_max: float = 2.0
    warmup_steps: int = 0
    on_bad_data: str = "error"
    on_non_finite: str = "error"
    logger: str = "csv"
    # training recipe: EMA, best checkpoint, early stopping, accumulation (README "Training recipe");
    # decay 0.999 with a 200-step ramp suits fine-tuning runs of hundreds to thousands of steps
    ema: bool | None = None  # None: by the model (RecipeDefaults)
    ema_decay: float = 0.999
    ema_warmup_steps: int = 200
    patience: int = 0
    accumulate_grad_batches: int = 1
    tracking_uri: str | None = None

    def validate(self) -> "TrainConfig":
        positive = {"batch_size": self.batch_size, "devices": self.devices, "num_nodes": self.num_nodes,
                    "accumulate_grad_batches": self.accumulate_grad_batches}
        for name, v in positive.items():
            if v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {v})")
        non_negative = {"num_workers": self.num_workers, "num_buckets": self.num_buckets,
                        "ckpt_store_interval_epochs": self.ckpt_store_interval_epochs,
                        "warmup_steps": self.warmup_steps, "max_inf_frames": self.max_inf_frames,
                        "patience": self.patience, "ema_warmup_steps": self.ema_warmup_steps}
        for name, v in non_negative.items():
            if v < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more (got {v})")
        if self.max_epochs < 1 and self.max_steps < 1:
            raise UserError("--max-epochs or --max-steps must be at least 1")
        for name in ("lr", "lr_backbone"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name.replace('_', '-')} must be a positive number (got {getattr(self, name)})")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("--weight-decay and --grad-clip must be 0 or more")
        if self.bootstrap is not None and self.bootstrap < 0:
            raise UserError(f"--bootstrap must be 0 (off) or a number of resamples (got {self.bootstrap})")
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"--threshold must be between 0 and 1 (got {self.threshold})")
        from detr_ft.types import ResizeSpec

        self.with_recipe_defaults().augment_spec(ResizeSpec(800, 1333).with_image_size(self.image_size))  # every flag
        self._validate_recipe()
        if self.pad_canvases not in ("square", "auto"):
            raise UserError(f"--pad-canvases must be square or auto (got {self.pad_canvases})")
        if self.pad_size is not None and self.pad_canvases == "auto":
            raise UserError("--pad-size sets one canvas; it does not go with --pad-canvases auto")
        if self.pad_size is not None and (len(self.pad_size) != 2 or not 32 <= min(self.pad_size) <= max(
                self.pad_size) <= 10000):
            raise UserError(f"--pad-size takes two numbers H W between 32 and 10000 (got {self.pad_size})")
        if self.device not in DEVICES:
            raise UserError(f"--device must be one of {', '.join(DEVICES)} (got {self.device})")
        if self.use_ckpt and not self.ckpt_path:
            raise UserError("--use-ckpt needs --ckpt-path P (the checkpoint to start from)")
        if self.use_ckpt and not Path(self.ckpt_path).expanduser().is_file():
            raise UserError(f"--ckpt-path {self.ckpt_path}: no such file")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"--max-minutes must be positive (got {self.max_minutes})")
        for name in ("lr", "lr_backbone", "weight_decay", "grad_clip", "max_minutes"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number (got {v})")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--seed must be between 0 and 2**32 - 1 (got {self.seed})")
        for name, choices in (("on_bad_data", ("error", "skip")), ("on_non_finite", ("error", "skip"))):
            if getattr(self, name) not in choices:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)} "
                                f"(got {getattr(self, name)})")
        if self.device != "hpu":  # lightning-habana registers its strategies when imported
            from lightning.pytorch.strategies import StrategyRegistry

            known = ["auto", *StrategyRegistry.available_strategies()]
            if self.strategy not in known:
                raise UserError(f"--strategy {self.strategy}: unknown; use one of {', '.join(known[:8])}, ...")
        return self

    def recipe_defaults(self) -> RecipeDefaults:
        """The recipe's defaults for ``model``: a preset's, or a pretrained model's (hub id, directory)."""
        from detr_ft.model.families import family_of_preset

        return PRESET_RECIPE if family_of_preset(self.model) is not None else PRETRAINED_RECIPE

    def with_recipe_defaults(self) -> "TrainConfig":
        """A copy with ``--augment auto`` and an unset ``--ema`` replaced by the model's defaults."""
        recipe = self.recipe_defaults()
        return replace(self, augment=recipe.augment if self.augment == "auto" else self.augment,
                       ema=recipe.ema if self.ema is None else self.ema)

    def augment_spec(self, resize):
        """The training augmentation at the training resolution ``resize``: the --augment preset with
        the knobs given replacing its values (an ``AugmentSpec``)."""
        from detr_ft.data.augment import augment_spec

        return augment_spec(self.augment, resize, hflip=self.hflip, scales=self.scales, crop=self.crop,
                            crop_min=self.crop_min, min_visibility=self.min_visibility,
                            photometric=self.photometric, jitter=self.jitter, zoom_out=self.zoom_out,
                            zoom_out_max=self.zoom_out_max)

    def _validate_recipe(self) -> None:
        """EMA, early stopping, schedule and logger settings (the counts are checked with the others)."""
        from detr_ft.loggers import LOGGERS
        from detr_ft.schedule import SCHEDULES

        if not (math.isfinite(self.ema_decay) and 0.0 < self.ema_decay < 1.0):
            raise UserError(f"--ema-decay must be between 0 and 1, both excluded (got {self.ema_decay}); "
                            f"e.g. 0.999")
        if self.patience and self.train_only:
            raise UserError("--patience needs validation (it watches val_map); drop --train-only or use --patience 0")
        for name, value, choices in (("lr_schedule", self.lr_schedule, SCHEDULES), ("logger", self.logger, LOGGERS)):
            if value not in choices:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)} (got {value})")

    def to_dict(self) -> dict:
        return asdict(self)

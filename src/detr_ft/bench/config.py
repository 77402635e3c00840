"""What a ``detr-ft bench`` run measures, and one comparison's record."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from detr_ft.config import TrainConfig
from detr_ft.errors import UserError

BENCHMARKS = ("train", "static", "infer", "startup", "data")
OPTIONAL_BENCHMARKS = ("infer-onnx",)  # only when asked for (needs the onnx extra)
R50 = "detr-r50"  # the DETR-R50 architecture, random weights
DEFAULT_IMAGE_SIZE = {"detr-tiny": 320, R50: 512}
DEFAULT_BATCH_SIZE = {"detr-tiny": 16, R50: 2}
DETR_LONG_OVER_SHORT = 1333 / 800  # DETR's resize: short side 800, long side at most 1333
GRAD_CLIP = TrainConfig.grad_clip  # detr-ft train's default, the original example's 0.1
THRESHOLD = 0.5
HIGHER_IS_BETTER = {"images/s"}
AUGMENT_PRESETS = ("none", "flip", "detr", "strong")  # detr-ft train's --augment (data/augment.py)


@dataclass
class BenchConfig:
    """What to run and on what.

    model:      a preset (any family's), ``detr-r50`` or a Hugging Face model directory.
    image_size: (H, W) of the ``train`` batches; the resize of every other
                benchmark keeps DETR's proportions at that scale: short side
                min(H, W), long side max(H, W) (or short x 1333/800 when square);
                H x W itself for fixed-size families (``resize``).
    images:     size of the synthetic training set (ignored with ``data_dir``).
    augment:    the training augmentation (``--augment`` of train) of the data benchmarks, on both
                sides (the stock side with albumentations, as transformers' example does).
    source_size: long side of the synthetic images (default: the resize's long side,
                so resizing costs little; real photos are larger).
    """

    what: tuple[str, ...] = BENCHMARKS
    model: str = "detr-tiny"
    image_size: tuple[int, int] | None = None
    batch_size: int | None = None
    steps: int = 10
    warmup: int = 2
    device: str = "auto"
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = True
    data_dir: str | None = None
    images: int = 200
    source_size: int | None = None
    infer_images: int | None = None
    rounds: int = 3
    workers: tuple[int, ...] = (0, 2)
    memory: bool = True
    threads: int | None = None
    seed: int = 0
    augment: str = "flip"

    def resolved(self) -> "BenchConfig":
        """Defaults filled in (per model) and every value checked; raises ``UserError``."""
        from detr_ft.bench.models import bench_family

        family, config, own = bench_family(self.model)  # an unknown model first: a UserError
        unknown = [w for w in self.what if w not in BENCHMARKS + OPTIONAL_BENCHMARKS]
        if unknown or not self.what:
            raise UserError(f"--what {','.join(self.what)}: choose from {','.join(BENCHMARKS + OPTIONAL_BENCHMARKS)}")
        size = self.image_size if self.image_size is not None else (DEFAULT_IMAGE_SIZE.get(self.model, 320),) * 2
        batch = self.batch_size if self.batch_size is not None else DEFAULT_BATCH_SIZE.get(self.model, 8)
        if not 32 <= min(size) <= max(size) <= 4096:
            raise UserError(f"--image-size {size[0]}x{size[1]}: sides must be between 32 and 4096 px")
        checks = {"--batch-size": (batch, 1), "--steps": (self.steps, 1), "--warmup": (self.warmup, 0),
                  "--rounds": (self.rounds, 1), "--images": (self.images, 2 * batch)}
        for flag, (value, least) in checks.items():
            if value < least:
                raise UserError(f"{flag} must be at least {least} (got {value})")
        if any(w < 0 for w in self.workers) or not self.workers:
            raise UserError(f"--workers takes counts of 0 or more, comma-separated (got {self.workers})")
        if self.precision not in ("fp32", "bf16"):
            raise UserError(f"--precision must be fp32 or bf16 (got {self.precision})")
        if self.source_size is not None and not 32 <= self.source_size <= 8192:
            raise UserError(f"--source-size must be between 32 and 8192 px (got {self.source_size})")
        if self.augment not in AUGMENT_PRESETS:
            raise UserError(f"--augment {self.augment}: unknown; use one of {', '.join(AUGMENT_PRESETS)}")
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1 (got {self.threads})")
        infer = self.infer_images if self.infer_images is not None else max(16, 4 * batch)
        done = replace(self, image_size=tuple(size), batch_size=batch, infer_images=infer,
                       what=tuple(dict.fromkeys(self.what)))
        done.check_size(family, config, own)
        return done

    def resize(self, family, own):
        """The resize of the bench's data at ``image_size``: fixed where the model's own resize is (LW-DETR,
        RF-DETR) or where its family's forward takes only some canvases (``Family.canvas``: the RT-DETR
        line too; the stock side does not pad, so every image must arrive on one, as their transformers
        processors' fixed sizes do); else DETR's proportions (``shortest``, ``longest``). The model's own
        mean and std (``own``: its preset's or directory's resize)."""
        from detr_ft.types import ResizeSpec

        if own.fixed is not None or family.canvas is not None:
            return ResizeSpec.fixed_size(*self.image_size, own.mean, own.std)
        return ResizeSpec(self.shortest, self.longest, own.mean, own.std)

    def check_size(self, family, config, own) -> None:
        """A ``UserError`` where ``image_size`` is no canvas the family's forward takes as it is (the stock
        side does not pad), or gives its decoder fewer encoder tokens than queries."""
        h, w = self.image_size
        ch, cw = family.canvas(config, h, w) if family.canvas is not None else (h, w)
        if (ch, cw) != (h, w):
            raise UserError(f"--image-size {h}x{w}: a {family.model_type} model's forward takes a {ch}x{cw} "
                            f"canvas for it, and the stock side does not pad; use --image-size {ch}x{cw}")
        family.check_image_size(config, self.resize(family, own), f"--image-size {h}x{w}")

    @property
    def shortest(self) -> int:
        return min(self.image_size)

    @property
    def longest(self) -> int:
        h, w = self.image_size
        return max(h, w) if h != w else round(h * DETR_LONG_OVER_SHORT)

    def label(self, device: torch.device) -> str:
        h, w = self.image_size
        return (f"{self.model} {h}x{w} b{self.batch_size} {device.type} {self.precision}"
                + (" compile" if self.compile else ""))


@dataclass
class Record:
    """One comparison; ``speedup`` > 1 means detr-ft is better."""

    benchmark: str
    config: str
    ours: float
    baseline: float
    unit: str
    speedup: float = field(init=False)

    def __post_init__(self):
        self.ours, self.baseline = float(self.ours), float(self.baseline)
        if self.unit in HIGHER_IS_BETTER:
            self.speedup = self.ours / self.baseline
        else:
            self.speedup = self.baseline / self.ours


def parse_image_size(text: str | None) -> tuple[int, int] | None:
    """``S`` -> (S, S); ``HxW`` -> (H, W); None stays None."""
    if text is None:
        return None
    try:
        parts = [int(x) for x in text.lower().replace("×", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise UserError(f"--image-size {text}: give S (a square) or HxW, e.g. 320 or 800x1333")
    return (parts[0], parts[-1])


def config_from_args(args) -> BenchConfig:
    """A checked ``BenchConfig`` from ``detr-ft bench``'s flags."""
    try:
        workers = tuple(int(w) for w in str(args.workers).split(",") if w.strip())
    except ValueError:
        raise UserError(f"--workers {args.workers}: give worker counts separated by commas, e.g. 0,2") from None
    cfg = BenchConfig(what=tuple(w.strip() for w in args.what.split(",") if w.strip()), model=args.model,
                      image_size=parse_image_size(args.image_size), batch_size=args.batch_size, steps=args.steps,
                      warmup=args.warmup, device=args.device, precision=args.precision, compile=args.compile,
                      channels_last=args.channels_last,
                      data_dir=args.data_dir, images=args.images, source_size=args.source_size,
                      rounds=args.rounds, workers=workers, memory=args.memory, threads=args.threads,
                      augment=args.augment)
    return cfg.resolved()

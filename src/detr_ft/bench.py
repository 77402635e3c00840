"""``detr-ft bench``: detr-ft beside the stock transformers path of the original example.

Each benchmark runs detr-ft and its baseline in the same process, on the same
weights (one initial state copied into both models) and the same inputs, and
times them alternately — one step of each in turn, the order rotating — so that
load from other processes falls on both sides alike. Warm-up steps are not
timed; a figure is the fastest of the timed steps (or passes) — timeit's rule:
other processes only ever add time — and the medians are in the notes.

==========  ==============================================================  =========
benchmark   detr-ft vs the stock path                                       unit
==========  ==============================================================  =========
train       detr-ft's step (forward, padding-aware criterion with matching,  images/s
            finite check, backward, clip, AdamW) vs DetrForObjectDetection
            computing its own loss from ``labels`` as a list of dicts; the
            same batch tensors on both sides
overhead    our step time / the bare network's (forward + backward + clip +  x bare
            AdamW on the same batch, a trivial loss over the same outputs,
            no matching); ``baseline`` is the stock step's ratio
static      end to end with data loading (workers 0): detr-ft's static       images/s
            recipe (landscape and portrait canvases, orientation batches,
            one object bucket) vs the original's (DetrImageProcessor per
            sample, every image on the square longest x longest canvas,
            targets padded to the bucket by repeating objects)
data        detr-ft's loader vs DetrImageProcessor per sample plus the       images/s
            original collate, epochs over the training set with 0 and 2
            workers (the same canvases as ``static``)
startup     the object buckets: detr-ft's index from the JSON vs the         s
            original's pass decoding every image through the processor
infer       ``Detector.predict`` (batched) vs ``pipeline("object-           images/s
            detection")`` on the same exported directory and image files
latency     batch-1 detection from an image already on the device: forward   ms
            + post-processing (with ``--compile`` on CUDA: CUDA graphs)
peak RSS    train and infer, each side alone in a fresh spawned process      MiB
==========  ==============================================================  =========

``speedup`` > 1 means detr-ft is better: ours / baseline for throughputs,
baseline / ours for times, sizes and ratios.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detr_ft.config import TrainConfig
from detr_ft.errors import UserError

BENCHMARKS = ("train", "static", "infer", "startup", "data")
R50 = "detr-r50"  # the DETR-R50 architecture, random weights
DEFAULT_IMAGE_SIZE = {"detr-tiny": 320, R50: 512}
DEFAULT_BATCH_SIZE = {"detr-tiny": 16, R50: 2}
DETR_LONG_OVER_SHORT = 1333 / 800  # DETR's resize: short side 800, long side at most 1333
GRAD_CLIP = TrainConfig.grad_clip  # detr-ft train's default, the original example's 0.1
THRESHOLD = 0.5
HIGHER_IS_BETTER = {"images/s"}


@dataclass
class BenchConfig:
    """What to run and on what.

    image_size: (H, W) of the ``train`` batches; the resize of every other
                benchmark keeps DETR's proportions at that scale: short side
                min(H, W), long side max(H, W) (or short x 1333/800 when square).
    images:     size of the synthetic training set (ignored with ``data_dir``).
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

    def resolved(self) -> "BenchConfig":
        """Defaults filled in (per model) and every value checked; raises ``UserError``."""
        from detr_ft.model.build import PRESETS

        known = sorted({R50, *(n for n in PRESETS if n.startswith("detr-"))})
        if self.model not in known:
            raise UserError(f"--model {self.model}: bench runs DETR models against DetrForObjectDetection; "
                            f"use one of {', '.join(known)}")
        unknown = [w for w in self.what if w not in BENCHMARKS]
        if unknown or not self.what:
            raise UserError(f"--what {','.join(self.what)}: choose from {','.join(BENCHMARKS)}")
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
        if self.threads is not None and self.threads < 1:
            raise UserError(f"--threads must be at least 1 (got {self.threads})")
        infer = self.infer_images if self.infer_images is not None else max(16, 4 * batch)
        return replace(self, image_size=tuple(size), batch_size=batch, infer_images=infer,
                       what=tuple(dict.fromkeys(self.what)))

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


# -- devices, precision, timing ---------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock reading means finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device: torch.device, precision: str):
    """bf16 mixed precision (as ``--autocast`` / Lightning's bf16-mixed), or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def latency_compile_mode(device: torch.device) -> str | None:
    """torch.compile mode of the batch-1 latency path: CUDA graphs where there are any."""
    return "reduce-overhead" if device.type == "cuda" else None


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def alternate(sides: dict[str, Callable[[], object]], steps: int, warmup: int,
              device: torch.device) -> dict[str, list[float]]:
    """Run each side ``warmup`` times untimed, then ``steps`` timed times, one step of
    each in turn with the order rotating every round. Returns seconds per step."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(steps):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(timed(sides[name], device))
    return times


def best(values: list[float]) -> float:
    """The fastest time: load from other processes only ever adds to a step's time."""
    return min(values)


def medians(times: dict[str, list[float]], scale: float = 1.0, unit: str = "s") -> str:
    return ", ".join(f"{k} {statistics.median(v) * scale:.4g} {unit}" for k, v in times.items())


# -- the models -------------------------------------------------------------------


def r50_config(id2label: dict[int, str]):
    """DETR-R50's architecture (transformers ResNet-50 backbone, no timm), for random weights."""
    from transformers import DetrConfig, ResNetConfig

    backbone = ResNetConfig(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                            embedding_size=64, out_features=["stage4"])
    return DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                      backbone_config=backbone, num_labels=len(id2label), id2label=dict(id2label),
                      label2id={v: k for k, v in id2label.items()})


def trainable_backbone(model: nn.Module) -> int:
    from detr_ft.model.build import backbone_module

    backbone = backbone_module(model)
    return sum(p.numel() for p in backbone.parameters() if p.requires_grad) if backbone is not None else 0


def bench_model(name: str, id2label: dict[int, str], seed: int) -> tuple[nn.Module, bool, str]:
    """(model in train mode, pretrained-like, a note on its trainable backbone)."""
    from detr_ft.model.build import build_model, model_from_config, set_backbone_trainable

    torch.manual_seed(seed)
    if name != R50:
        model = build_model(name, id2label).model
        return model.train(), False, (f"{name}: random init, whole backbone trained with trainable batch norms "
                                      f"({trainable_backbone(model):,} backbone parameters), on both sides")
    model = model_from_config(r50_config(id2label))
    stock = trainable_backbone(model)
    set_backbone_trainable(model, pretrained=True)
    note = (f"{R50}: DETR-R50 architecture, random weights, frozen batch norms. Stock transformers would train "
            f"{stock:,} backbone parameters (its stage-name match freezes the whole ResNet by mistake); "
            f"equalised: both sides train stages 2-4 ({trainable_backbone(model):,} backbone parameters)")
    return model.train(), True, note


def param_groups(model: nn.Module, lr: float = 1e-4, lr_backbone: float = 1e-5) -> list[dict]:
    """The original example's AdamW groups: backbone parameters at lr_backbone."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in named if "backbone" not in n], "lr": lr},
            {"params": [p for n, p in named if "backbone" in n], "lr": lr_backbone}]


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([g for g in param_groups(model) if g["params"]], lr=1e-4, weight_decay=1e-4)


def trivial_loss(out) -> torch.Tensor:
    """A loss over every output the criterion reads (final and auxiliary layers), with no matching."""
    pairs = [(out.logits, out.boxes), *out.aux]
    return sum(logits.float().mean() + boxes.float().mean() for logits, boxes in pairs)


def clip_and_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class Sides:
    """detr-ft's module, the stock model and a bare copy, all from one initial state.

    ``only="ours"`` or ``"stock"`` builds that side alone (the peak-RSS children:
    one model in memory, as a user's run has).
    """

    def __init__(self, cfg: BenchConfig, categories, resize, device: torch.device, only: str | None = None):
        from detr_ft.engine import DetrModule, OptimConfig
        from detr_ft.model.build import ModelBundle
        from detr_ft.model.speed import channels_last_helps, use_channels_last

        model, pretrained, self.note = bench_model(cfg.model, categories.id2label, cfg.seed)
        self.pretrained = pretrained
        self.stock = self.bare = self.ours = self.initial = None
        if only in (None, "stock"):
            self.stock = (model if only else copy.deepcopy(model)).to(device)
        if only is None:
            self.bare = copy.deepcopy(model).to(device)
            self.initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if only in (None, "ours"):
            self.ours = DetrModule(ModelBundle(model, resize, "detr", pretrained), categories, OptimConfig()).to(device)
        if cfg.channels_last and channels_last_helps(device):  # as detr-ft train does; stock as it is
            for name, m in self.networks().items():
                if name != "stock":
                    use_channels_last(m)
        if cfg.compile:  # the network, as detr-ft train --compile does; the losses stay eager
            for m in self.networks().values():
                m.model.compile(dynamic=False)
        self.device = device
        self.amp = lambda: autocast(device, cfg.precision)

    def networks(self) -> dict[str, nn.Module]:
        """The transformers model of each side built."""
        found = {"ours": self.ours.model if self.ours is not None else None, "stock": self.stock, "bare": self.bare}
        return {name: m for name, m in found.items() if m is not None}

    def reset(self) -> dict[str, torch.optim.Optimizer]:
        """Every model back to the initial weights (a lone side is still at them); fresh optimizers
        (detr-ft's own for ours)."""
        networks = self.networks()
        if self.initial is not None:
            with torch.no_grad():
                for m in networks.values():
                    for k, v in m.state_dict().items():
                        v.copy_(self.initial[k])
        return {name: self.ours.configure_optimizers() if name == "ours" else adamw(m) for name, m in networks.items()}

    def our_step(self, optimizer, batch) -> None:
        with self.amp():
            loss = self.ours.compute_loss(batch)["loss"]
        if not torch.isfinite(loss):  # the check detr-ft's training_step makes (one host sync)
            raise RuntimeError("bench: detr-ft's training loss is not finite")
        loss.backward()
        clip_and_step(self.ours.model, optimizer)

    def stock_step(self, optimizer, pixel_values, pixel_mask, labels: list[dict]) -> None:
        with self.amp():
            loss = self.stock(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels).loss
        loss.backward()
        clip_and_step(self.stock, optimizer)

    def bare_step(self, optimizer, pixel_values, pixel_mask) -> None:
        from detr_ft.model.outputs import detection_outputs

        with self.amp():
            loss = trivial_loss(detection_outputs(self.bare, pixel_values, pixel_mask, with_aux=True))
        loss.backward()
        clip_and_step(self.bare, optimizer)


# -- the stock data path of the original example ------------------------------------


def stock_processor(resize):
    """``DetrImageProcessor`` with the bench's resize, as a user of the original writes it.

    transformers 5 without torchvision gives its PIL-backed ``DetrImageProcessorPil``.
    """
    import warnings

    from transformers import DetrImageProcessor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DetrImageProcessor(size={"shortest_edge": resize.shortest, "longest_edge": resize.longest},
                                  image_mean=list(resize.mean), image_std=list(resize.std))


class StockCocoDetection(Dataset):
    """torchvision's ``CocoDetection`` (pycocotools index, PIL decode) with the original's
    ``__getitem__``: the processor per sample, (pixel_values [3, h, w], DETR target).

    Category ids are mapped to contiguous labels first (the original relied on
    CPPE-5's ids 1..5 and a spare class 0; the same model must serve both sides here).
    """

    def __init__(self, images_dir: Path, ann_file: Path, processor, label_of: dict[int, int]):
        from pycocotools.coco import COCO

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco = COCO(str(ann_file))
        self.ids = sorted(self.coco.imgs)
        self.images_dir = Path(images_dir)
        self.processor = processor
        self.label_of = label_of

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx):
        from PIL import Image

        image_id = self.ids[idx]
        image = Image.open(self.images_dir / self.coco.loadImgs(image_id)[0]["file_name"]).convert("RGB")
        anns = [dict(a, category_id=self.label_of[a["category_id"]])
                for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))]
        encoding = self.processor(images=image, annotations={"image_id": image_id, "annotations": anns},
                                  return_tensors="pt")
        return encoding["pixel_values"].squeeze(0), encoding["labels"][0]


def stock_pad(processor, pixel_values: list[torch.Tensor], canvas: tuple[int, int] | None):
    """The original collate's ``processor.pad`` -> (pixel_values [B, 3, H, W], pixel_mask [B, H, W]).

    transformers 4.x pads a list (the original's call); 5.x's ``pad`` takes one
    image, so the same library call runs per image: a NumPy array for the
    PIL-backed processor (``DetrImageProcessorPil``, no torchvision), a tensor
    for the torchvision-backed ``DetrImageProcessor``.
    """
    import inspect

    if "images" in inspect.signature(processor.pad).parameters:
        kwargs = {"pad_size": {"height": canvas[0], "width": canvas[1]}} if canvas else {}
        encoding = processor.pad(pixel_values, return_tensors="pt", **kwargs)
        return encoding["pixel_values"], encoding["pixel_mask"]
    size = canvas or (max(p.shape[1] for p in pixel_values), max(p.shape[2] for p in pixel_values))
    numpy_backend = type(processor).__name__.endswith("Pil")
    padded = [processor.pad(p.numpy() if numpy_backend else p, size)[:2] for p in pixel_values]
    return (torch.stack([torch.as_tensor(im) for im, _ in padded]),
            torch.stack([torch.as_tensor(mask) for _, mask in padded]))


class StockCollate:
    """The original ``collate_fn``: pad the pixels to the canvas and each target to its bucket.

    The original pads a target by appending class ``num_labels`` (the no-object
    index here) with a copy of its first box, area and iscrowd: objects that
    transformers' loss then matches and trains on (wrong without optimum-habana's
    patch); kept, as the baseline's cost. Two departures, both noted in the
    output: every target is padded (the original's loop pads only the last one of
    each batch, an indentation slip), and an image without objects gets a
    whole-image box to repeat (the original has none to copy and breaks).
    """

    def __init__(self, processor, canvas: tuple[int, int] | None, buckets: np.ndarray | None, pad_label: int):
        self.processor = processor
        self.canvas = canvas
        self.buckets = buckets
        self.pad_label = pad_label

    def __call__(self, batch) -> dict:
        pixel_values, pixel_mask = stock_pad(self.processor, [item[0] for item in batch], self.canvas)
        labels = [item[1] for item in batch]
        if self.buckets is not None and len(self.buckets):
            for item in labels:
                n = len(item["class_labels"])
                size = int(self.buckets[np.min(np.where(self.buckets >= n))])
                if n == 0:
                    item["boxes"] = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
                    item["area"] = torch.ones(1)
                    item["iscrowd"] = torch.zeros(1, dtype=torch.int64)
                for _ in range(n, size):
                    item["class_labels"] = torch.cat((item["class_labels"], torch.as_tensor([self.pad_label])))
                    for key in ("boxes", "area", "iscrowd"):
                        if len(item[key]) < len(item["class_labels"]):
                            item[key] = torch.cat((item[key], item[key][0:1]))
        return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": labels}


def stock_buckets(counts, num_buckets: int) -> np.ndarray:
    """The original ``bucketer``'s percentiles over per-image object counts."""
    return np.unique(np.percentile(counts, np.linspace(0, 100, num_buckets + 1), method="lower")[1:])


def _first(batch):
    return batch[0]


def stock_startup(images_dir: Path, ann_file: Path, processor, label_of: dict[int, int], workers: int):
    """The original's bucketing: a pycocotools index, then every image decoded through the processor."""
    dataset = StockCocoDetection(images_dir, ann_file, processor, label_of)
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=_first)
    return stock_buckets([len(target["class_labels"]) for _, target in loader], 1)


def stock_labels(labels: list[dict], device: torch.device) -> list[dict]:
    """The original's ``common_step``: every target tensor moved to the device."""
    return [{k: v.to(device) for k, v in t.items()} for t in labels]


# -- the workspace: data, resize, categories ---------------------------------------------


class Workspace:
    """The dataset (given, or synthetic in a temporary folder) and what both sides share."""

    def __init__(self, cfg: BenchConfig, root: Path):
        from detr_ft.data.coco import load_index
        from detr_ft.data.synthetic import SyntheticSpec, generate
        from detr_ft.data.transforms import ResizeSpec

        self.cfg = cfg
        self.root = root
        self.samples: dict[str, dict[str, list[float]]] = {}  # benchmark -> side -> seconds per timed step
        if cfg.data_dir:
            self.data_dir = Path(cfg.data_dir).expanduser()
            self.source = str(self.data_dir)
        else:
            self.data_dir = root / "data"
            # JPEG photos of mixed orientation (landscape, portrait, square), long side at the model's maximum
            source = cfg.source_size or cfg.longest
            generate(self.data_dir, train=cfg.images, val=0, seed=cfg.seed,
                     spec=SyntheticSpec(size=source, image_format="jpg"))
            self.source = f"synthetic, {cfg.images} JPEG images, long side {source} px, mixed orientation"
        self.index = load_index(self.data_dir, "train")
        if len(self.index) < 2 * cfg.batch_size:
            raise UserError(f"--data-dir {self.data_dir}: {len(self.index)} training images; bench needs at "
                            f"least 2 x --batch-size ({2 * cfg.batch_size})")
        self.categories = self.index.categories
        self.resize = ResizeSpec(shortest=cfg.shortest, longest=cfg.longest)
        self.label_of = {cid: i for i, cid in enumerate(self.categories.ids)}
        self.ann_file = self.data_dir / "annotations" / "train.json"
        self.images_dir = self.data_dir / "images"
        self.auto_canvases = self.resize.orientation_canvases
        self.square_canvas = self.resize.max_canvas

    @functools.cached_property
    def processor(self):
        """The stock side's image processor, for this resize."""
        return stock_processor(self.resize)

    @functools.cached_property
    def buckets(self) -> tuple[list[int], np.ndarray]:
        """(ours, stock): one object bucket each, from the training set's counts."""
        from detr_ft.data.batching import compute_buckets

        counts = self.index.object_counts()
        return compute_buckets(counts, 1), stock_buckets(counts, 1)

    def warm_page_cache(self) -> None:
        for r in self.index.records:
            self.index.image_path(r).read_bytes()

    def train_batch(self):
        """B images stretched to exactly H x W with their objects: the ``train`` batch."""
        from detr_ft.data.batching import Collator
        from detr_ft.data.dataset import Sample
        from detr_ft.data.transforms import image_tensor, xywh_to_cxcywh_norm

        h, w = self.cfg.image_size
        samples = []
        for r in self.index.records[: self.cfg.batch_size]:
            image = image_tensor(self.index.load_image(r), (h, w))
            boxes = xywh_to_cxcywh_norm(r.boxes, r.width, r.height)
            samples.append(Sample(image, torch.from_numpy(boxes), torch.from_numpy(r.labels),
                                  r.image_id, (h, w)))
        return Collator(self.resize.mean, self.resize.std, canvases=[(h, w)])(samples)

    def our_loader(self, workers: int, drop_last: bool) -> DataLoader:
        """detr-ft's training loader with --pad --pad-canvases auto (engine.DetectionData), shuffled."""
        from detr_ft.data.batching import Collator
        from detr_ft.engine import DetectionData

        collator = Collator(self.resize.mean, self.resize.std, canvases=self.auto_canvases, buckets=self.buckets[0])
        data = DetectionData(self.index, None, self.resize, self.cfg.batch_size, workers, collator,
                             seed=self.cfg.seed, shuffle=True, drop_last=drop_last,
                             pin_memory=torch.cuda.is_available(), orientation_batches=True)
        return data.train_dataloader()

    def stock_loader(self, workers: int, drop_last: bool) -> DataLoader:
        """The original's loader, shuffled: processor per sample, square canvas, bucket padding."""
        dataset = StockCocoDetection(self.images_dir, self.ann_file, self.processor, self.label_of)
        collate = StockCollate(self.processor, self.square_canvas, self.buckets[1], len(self.categories))
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=True, drop_last=drop_last,
                          num_workers=workers, collate_fn=collate, generator=generator)


def forever(loader):
    while True:
        yield from loader


# -- the benchmarks ----------------------------------------------------------------------


def bench_train(ws: Workspace, sides: Sides, cfg: BenchConfig, device, notes: list[str]) -> list[Record]:
    batch = ws.train_batch().ready(device)
    labels = stock_labels(batch.targets(), device)
    opt = sides.reset()
    times = alternate({
        "ours": lambda: sides.our_step(opt["ours"], batch),
        "stock": lambda: sides.stock_step(opt["stock"], batch.pixel_values, batch.pixel_mask, labels),
        "bare": lambda: sides.bare_step(opt["bare"], batch.pixel_values, batch.pixel_mask),
    }, cfg.steps, cfg.warmup, device)
    ws.samples["train"] = times
    ours, stock, bare = (best(times[k]) for k in ("ours", "stock", "bare"))
    label = cfg.label(device)
    notes.append(f"train: one fixed batch, {int(batch.valid.sum())} objects; step times, fastest: bare network "
                 f"{bare * 1e3:.1f} ms, ours {ours * 1e3:.1f} ms, stock {stock * 1e3:.1f} ms; medians: "
                 f"{medians(times, 1e3, 'ms')}")
    b = len(batch)
    return [Record("train", label, b / ours, b / stock, "images/s"),
            Record("overhead", label, ours / bare, stock / bare, "x bare")]


def bench_static(ws: Workspace, sides: Sides, cfg: BenchConfig, device, notes: list[str]) -> list[Record]:
    from detr_ft.data.batching import Batch

    ours_loader = ws.our_loader(0, drop_last=True)
    ours_it = forever(ours_loader)
    stock_it = forever(ws.stock_loader(0, drop_last=True))
    opt = sides.reset()

    # warm both canvases first (with --compile each is one compiled variant)
    for portrait in (False, True):
        group = [i for i, r in enumerate(ws.index.records) if (r.height > r.width) == portrait]
        if len(group) >= cfg.batch_size:
            samples = [ours_loader.dataset[i] for i in group[: cfg.batch_size]]
            sides.our_step(opt["ours"], ours_loader.collate_fn(samples).ready(device))

    def ours():
        batch: Batch = next(ours_it)
        sides.our_step(opt["ours"], batch.ready(device, non_blocking=True))

    def stock():
        b = next(stock_it)
        sides.stock_step(opt["stock"], b["pixel_values"].to(device), b["pixel_mask"].to(device),
                         stock_labels(b["labels"], device))

    times = alternate({"ours": ours, "stock": stock}, cfg.steps, cfg.warmup, device)
    ws.samples["static"] = times
    b = cfg.batch_size
    notes.append(f"static: canvases ours {ws.auto_canvases} by orientation, stock {[ws.square_canvas]}; "
                 f"object bucket {ws.buckets[0]}; data in the main process (workers 0) on both sides; medians: "
                 f"{medians(times, 1e3, 'ms')} per step")
    return [Record("static", cfg.label(device) + " workers=0", b / best(times["ours"]),
                   b / best(times["stock"]), "images/s")]


def bench_data(ws: Workspace, cfg: BenchConfig, device, notes: list[str]) -> list[Record]:
    """Epochs over the whole training set, shuffled, as training reads it; one warm-up epoch."""
    n = len(ws.index)
    records = []
    for workers in cfg.workers:
        ours_loader, stock_loader = ws.our_loader(workers, drop_last=False), ws.stock_loader(workers, drop_last=False)
        # ours normalises in ready() (on the device in training): counted here, on the CPU
        times = alternate({"ours": lambda: sum(len(b.ready("cpu")) for b in ours_loader),
                           "stock": lambda: sum(len(b["pixel_values"]) for b in stock_loader)},
                          cfg.rounds, 1, torch.device("cpu"))
        del ours_loader, stock_loader  # their worker processes end here
        ws.samples[f"data workers={workers}"] = times
        records.append(Record("data", f"{cfg.label(device)} workers={workers} {n} images",
                              n / best(times["ours"]), n / best(times["stock"]), "images/s"))
    notes.append(f"data: one epoch of all {n} training images per pass, to the same canvases as static; with "
                 f"workers, detr-ft's persist across epochs (as in detr-ft train), the original's loader starts "
                 f"new ones every epoch (as it does)")
    return records


def bench_startup(ws: Workspace, cfg: BenchConfig, device, notes: list[str]) -> list[Record]:
    from detr_ft.data.batching import compute_buckets
    from detr_ft.data.coco import load_index

    workers = min(15, os.cpu_count() or 1)  # the original's 15, capped at the machine's cores
    ws.warm_page_cache()
    found = {}

    def ours():
        found["ours"] = compute_buckets(load_index(ws.data_dir, "train").object_counts(), 1)

    def stock():
        found["stock"] = stock_startup(ws.images_dir, ws.ann_file, ws.processor, ws.label_of, workers).tolist()

    times = alternate({"ours": ours, "stock": stock}, cfg.rounds, 0, torch.device("cpu"))
    ws.samples["startup"] = times
    notes.append(f"startup: buckets ours {found['ours']}, stock {found['stock']}; the stock pass uses "
                 f"{workers} workers (the original's 15, capped at the cores); page cache warm")
    return [Record("startup", f"{len(ws.index)} images, long side up to {max(r.width for r in ws.index.records)} px",
                   best(times["ours"]), best(times["stock"]), "s")]


def make_export(ws: Workspace, cfg: BenchConfig) -> Path:
    """A Hugging Face directory written by ``detr-ft export`` from a checkpoint of the bench model."""
    from detr_ft.export import export

    from detr_ft.engine import DetrModule, OptimConfig
    from detr_ft.model.build import ModelBundle

    model, pretrained, _ = bench_model(cfg.model, ws.categories.id2label, cfg.seed)
    module = DetrModule(ModelBundle(model, ws.resize, "detr", pretrained), ws.categories, OptimConfig())
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)  # the model description detr-ft train writes
    path = ws.root / "bench.ckpt"
    torch.save(ckpt, path)
    return export(str(path), ws.root / "export")


def stock_pipeline(export_dir: Path, device: torch.device):
    import warnings

    from transformers import pipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline("object-detection", model=str(export_dir), device=device)


def bench_infer(ws: Workspace, cfg: BenchConfig, device, export_dir: Path, notes: list[str]) -> list[Record]:
    from detr_ft.detector import Detector

    detector = Detector.load(export_dir, device=str(device), channels_last=cfg.channels_last)
    pipe = stock_pipeline(export_dir, device)
    paths = [str(ws.index.image_path(r)) for r in ws.index.records[: cfg.infer_images]]
    amp = lambda: autocast(device, cfg.precision)  # noqa: E731
    found = {}
    stock_batch = pipeline_batch_size(pipe, paths, cfg.batch_size)

    def ours():
        with amp():
            found["ours"] = detector.predict(paths, threshold=THRESHOLD, batch_size=cfg.batch_size)

    def stock():
        with amp():
            found["stock"] = pipe(paths, threshold=THRESHOLD, batch_size=stock_batch)

    ours()  # warm-up; the stock side's was its batch-size probe
    stock()
    times = alternate({"ours": ours, "stock": stock}, cfg.rounds, 0, device)
    ws.samples["infer"] = times
    n = len(paths)
    fallback = "" if stock_batch == cfg.batch_size else (
        f" (its batch_size={cfg.batch_size} fails on images of different sizes in this transformers, so it "
        f"runs batch_size=1)")
    notes.append(f"infer: {n} image files, batch {cfg.batch_size}, threshold {THRESHOLD}; stock pipeline with "
                 f"{type(pipe.image_processor).__name__}{fallback}; detections ours "
                 f"{sum(map(len, found['ours']))}, stock {sum(map(len, found['stock']))}; medians: "
                 f"{medians(times)} per pass")
    records = [Record("infer", f"{cfg.label(device)} {n} images", n / best(times["ours"]),
                      n / best(times["stock"]), "images/s")]
    return records + bench_latency(ws, cfg, device, detector, pipe, notes)


def pipeline_batch_size(pipe, paths: list[str], batch_size: int) -> int:
    """``batch_size`` if the pipeline runs batches of these images, else 1.

    transformers 5's object-detection pipeline cannot stack images of different
    sizes into one batch (its collate pads only the first dimension).
    """
    if batch_size == 1:
        return 1
    try:
        pipe(paths, threshold=THRESHOLD, batch_size=batch_size)
        return batch_size
    except RuntimeError:
        return 1


def bench_latency(ws: Workspace, cfg: BenchConfig, device, detector, pipe, notes: list[str]) -> list[Record]:
    """Batch 1, the image already preprocessed on the device, on detr-ft's fixed landscape canvas."""
    record = next((r for r in ws.index.records if r.width >= r.height), ws.index.records[0])
    canvas = ws.auto_canvases[0] if record.width >= record.height else ws.auto_canvases[1]
    detector.use_canvas(canvas)
    batch = detector.collator([detector.sample(ws.index.load_image(record))]).ready(device)
    pv, pm, sizes = batch.pixel_values, batch.pixel_mask, batch.orig_sizes  # for the stock side
    mode = latency_compile_mode(device)
    if cfg.compile:
        detector.model.model.compile(mode=mode, dynamic=False)
    amp = lambda: autocast(device, cfg.precision)  # noqa: E731
    processor, stock_model = pipe.image_processor, pipe.model

    def ours():
        with amp():
            return detector.detect_batch(batch, THRESHOLD)

    @torch.inference_mode()
    def stock():
        with amp():
            out = stock_model(pixel_values=pv, pixel_mask=pm)
        found = processor.post_process_object_detection(out, threshold=THRESHOLD, target_sizes=sizes)
        return [{k: v.cpu() for k, v in r.items()} for r in found]

    times = alternate({"ours": ours, "stock": stock}, max(cfg.steps, 10), max(cfg.warmup, 3), device)
    ws.samples["latency"] = times
    how = "eager" if not cfg.compile else f"torch.compile(mode={mode!r})" + (" = CUDA graphs" if mode else "")
    notes.append(f"latency: canvas {canvas}, ours {how}, stock eager; forward + post-processing to host tensors")
    return [Record("latency", f"{cfg.label(device)} b1 canvas {canvas[0]}x{canvas[1]}",
                   best(times["ours"]) * 1e3, best(times["stock"]) * 1e3, "ms")]


# -- peak RSS, each side alone in a fresh process --------------------------------------------


def peak_rss_mib() -> float:
    """This process's peak resident set size, in MiB.

    Linux: ``VmHWM`` of /proc/self/status, the peak of this process's own memory
    map. (``getrusage``'s ``ru_maxrss`` is no use in a spawned child there: Linux
    carries the parent's peak across fork and exec.) Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _rss_child(task: str, side: str, cfg: BenchConfig, root: str, export_dir: str | None, conn) -> None:
    """In a spawned process: one side of ``task`` alone, then report its peak RSS."""
    try:
        from detr_ft.cli import configure_logging

        configure_logging(False)
        quiet_progress_bars()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        device = torch.device(cfg.device)
        ws = Workspace(cfg, Path(root))
        if task == "train":
            sides = Sides(cfg, ws.categories, ws.resize, device, only=side)
            batch = ws.train_batch().ready(device)
            opt = sides.reset()
            labels = stock_labels(batch.targets(), device)
            for _ in range(cfg.warmup + 2):
                if side == "ours":
                    sides.our_step(opt["ours"], batch)
                else:
                    sides.stock_step(opt["stock"], batch.pixel_values, batch.pixel_mask, labels)
        else:
            paths = [str(ws.index.image_path(r)) for r in ws.index.records[: cfg.infer_images]]
            with autocast(device, cfg.precision):
                if side == "ours":
                    from detr_ft.detector import Detector

                    detector = Detector.load(export_dir, device=str(device), channels_last=cfg.channels_last)
                    detector.predict(paths, THRESHOLD, cfg.batch_size)
                else:
                    pipe = stock_pipeline(Path(export_dir), device)
                    pipe(paths, threshold=THRESHOLD, batch_size=pipeline_batch_size(pipe, paths, cfg.batch_size))
        conn.send(("ok", peak_rss_mib()))
    except BaseException as e:  # reported to the parent, which raises
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def peak_rss(task: str, side: str, cfg: BenchConfig, root: Path, export_dir: Path | None,
             timeout: float = 900.0) -> float:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    # the child reads the same dataset; in a given-data run, cfg.data_dir already says where
    child = ctx.Process(target=_rss_child, args=(task, side, cfg, str(root),
                                                  str(export_dir) if export_dir else None, send))
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise RuntimeError(f"bench: the {task} peak-RSS run of {side} did not finish in {timeout:.0f} s")
        status, value = receive.recv()
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    if status != "ok":
        raise RuntimeError(f"bench: the {task} peak-RSS run of {side} failed: {value}")
    return value


def bench_memory(task: str, ws: Workspace, cfg: BenchConfig, device, export_dir: Path | None) -> Record:
    child_cfg = replace(cfg, device=device.type, data_dir=cfg.data_dir)
    ours = peak_rss(task, "ours", child_cfg, ws.root, export_dir)
    stock = peak_rss(task, "stock", child_cfg, ws.root, export_dir)
    return Record(f"{task}_peak_rss", cfg.label(device), ours, stock, "MiB")


# -- running and reporting ------------------------------------------------------------------


def quiet_progress_bars() -> None:
    """No per-file 'Loading weights' bars from transformers between the table's lines."""
    with contextlib.suppress(ImportError, AttributeError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> tuple[list[Record], list[str], dict]:
    """Run the benchmarks ``cfg.what``; returns (records, notes, environment: the machine
    before and after, and every timed step's seconds)."""
    from detr_ft.devices import inference_device, machine_facts
    from detr_ft.model.speed import channels_last_helps

    cfg = cfg.resolved()
    device = inference_device(cfg.device)
    quiet_progress_bars()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.compile and device.type == "cpu":
        log("note: --compile on a CPU compiles with inductor's C++ back end; the first steps take minutes")
    env = {"before": machine_facts()}
    records: list[Record] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="detr-ft-bench-") as tmp:
        started = time.perf_counter()
        ws = Workspace(cfg, Path(tmp))
        log(f"bench: dataset ready in {time.perf_counter() - started:.0f} s")
        notes.append(f"data: {ws.source}; resize short {ws.resize.shortest} / long {ws.resize.longest}; "
                     f"stock preprocessing {type(ws.processor).__name__}")
        layout = "channels-last" if cfg.channels_last and channels_last_helps(device) else "contiguous (NCHW)"
        notes.append(f"layout: detr-ft's models (and the bare network) {layout}, the stock side NCHW as it is")
        if cfg.data_dir is None:  # the memory children reuse the dataset written here
            cfg = replace(cfg, data_dir=str(ws.data_dir))
        steps = [w for w in ("startup", "data", "train", "static", "infer") if w in cfg.what]
        sides = None
        for what in steps:
            t0, done = time.perf_counter(), len(records)
            if what == "startup":
                records += bench_startup(ws, cfg, device, notes)
            elif what == "data":
                records += bench_data(ws, cfg, device, notes)
            elif what in ("train", "static"):
                if sides is None:
                    sides = Sides(cfg, ws.categories, ws.resize, device)
                    notes.append(sides.note)
                if what == "train":
                    records += bench_train(ws, sides, cfg, device, notes)
                    if cfg.memory:
                        records.append(bench_memory("train", ws, cfg, device, None))
                else:
                    records += bench_static(ws, sides, cfg, device, notes)
            else:
                export_dir = make_export(ws, cfg)
                records += bench_infer(ws, cfg, device, export_dir, notes)
                if cfg.memory:
                    records.append(bench_memory("infer", ws, cfg, device, export_dir))
            log(f"bench: {what} done in {time.perf_counter() - t0:.0f} s")
            for r in records[done:]:  # as they come, so a run cut short still leaves its figures
                log(f"bench:   {json.dumps(asdict(r))}")
        if cfg.memory:
            notes.append("peak RSS: each side alone in a fresh spawned process (its VmHWM: interpreter, "
                         "libraries, model, data and the run itself)")
        notes.append(f"wall time {time.perf_counter() - started:.0f} s")
        env["samples_seconds"] = ws.samples
    env["after"] = machine_facts()
    return records, notes, env


def format_table(records: list[Record]) -> str:
    def num(x: float) -> str:
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"

    rows = [("benchmark", "config", "ours", "baseline", "unit", "speedup")]
    rows += [(r.benchmark, r.config, num(r.ours), num(r.baseline), r.unit, f"{r.speedup:.2f}x") for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) if i < 2 or i == 4 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def check_records(records: list[dict]) -> None:
    """Raise ValueError unless every record has the schema and positive, finite numbers."""
    keys = {"benchmark", "config", "ours", "baseline", "unit", "speedup"}
    for r in records:
        if set(r) != keys:
            raise ValueError(f"bench record has keys {sorted(r)}, expected {sorted(keys)}")
        for k in ("ours", "baseline", "speedup"):
            if not (isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0):
                raise ValueError(f"bench record {r['benchmark']}: {k} = {r[k]!r} is not a positive finite number")


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
                      rounds=args.rounds, workers=workers, memory=args.memory, threads=args.threads)
    return cfg.resolved()


def run_bench_command(cfg: BenchConfig, out_dir: Path, json_path: str | None) -> int:
    """``detr-ft bench``: the table on stdout, ``bench.json`` in the output dir (and at --json)."""
    records, notes, env = run_bench(cfg)
    rows = [asdict(r) for r in records]
    check_records(rows)
    before, after = env["before"], env["after"]
    print(f"\nmachine: {before['cpu']}, {before['cores']} cores, torch {before['torch']} "
          f"({before['torch_threads']} threads), transformers {before['transformers']}"
          + (f", {before['gpu']}" if "gpu" in before else ""))
    print(f"date: {before['date']}; load average before {before['load_average']}, after {after['load_average']}")
    print(format_table(records))
    print("\nnotes:")
    for note in notes:
        print(f"  - {note}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out_dir / "machine.json").write_text(json.dumps({**env, "notes": notes}, indent=1) + "\n")
    if json_path:
        path = Path(json_path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nrecords: {out_dir / 'bench.json'}" + (f" and {json_path}" if json_path else ""))
    return 0

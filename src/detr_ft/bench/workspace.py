"""The bench's dataset (given, or synthetic in a temporary folder) and what both sides share."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from detr_ft.bench.config import BenchConfig
from detr_ft.bench.models import bench_family, bench_model
from detr_ft.bench.stock import (StockCocoDetection, StockCollate, stock_augmentation, stock_buckets,
                                 stock_processor)
from detr_ft.errors import UserError


class Workspace:
    """The dataset (given, or synthetic in a temporary folder) and what both sides share."""

    def __init__(self, cfg: BenchConfig, root: Path):
        from detr_ft.data.coco import load_index
        from detr_ft.data.synthetic import SyntheticSpec, generate

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
        self.family, self.model_config, own = bench_family(cfg.model)
        self.resize = cfg.resize(self.family, own)
        self.label_of = {cid: i for i, cid in enumerate(self.categories.ids)}
        self.ann_file = self.data_dir / "annotations" / "train.json"
        self.images_dir = self.data_dir / "images"
        from detr_ft.config import TrainConfig
        from detr_ft.data.augment import augment_spec
        from detr_ft.data.padding import pad_canvases
        from detr_ft.data.shape_plan import ShapePlan

        self.augment = augment_spec(cfg.augment, self.resize)
        # detr-ft's side is shaped as `train --pad --pad-canvases auto --num-buckets 1` shapes it;
        # the stock side pads to the square canvas of the augmentation's largest scale
        settings = TrainConfig(pad=True, pad_canvases="auto", num_buckets=1, batch_size=cfg.batch_size)
        self.plan = ShapePlan.for_training(settings, self.resize, self.augment, self.index, None)
        self.square_canvas = pad_canvases(self.augment.envelope(self.resize), "square")[0]

    @functools.cached_property
    def processor(self):
        """The stock side's image processor (the family's class), for this resize."""
        return stock_processor(self.resize, self.family.processor)

    @functools.cached_property
    def buckets(self) -> tuple[list[int], np.ndarray]:
        """(ours, stock): one object bucket each, from the training set's counts."""
        return list(self.plan.buckets), stock_buckets(self.index.object_counts(), 1)

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
            image = image_tensor(self.index.load_image(r), (h, w), fast=True)  # training pixels
            boxes = xywh_to_cxcywh_norm(r.boxes, r.width, r.height)
            samples.append(Sample(image, torch.from_numpy(boxes), torch.from_numpy(r.labels),
                                  r.image_id, (h, w)))
        return Collator(self.resize.mean, self.resize.std, canvases=[(h, w)])(samples)

    def our_data(self, workers: int, drop_last: bool):
        """detr-ft's training data with --pad --pad-canvases auto (``engine.DetectionData``, shuffled):
        its ``train_dataloader()`` and ``transfer_batch_to_device``, as training uses them."""
        from detr_ft.engine import DetectionData

        return DetectionData(self.index, None, self.resize, self.cfg.batch_size, workers, self.plan,
                             seed=self.cfg.seed, shuffle=True, pin_memory=torch.cuda.is_available(),
                             augment=self.augment, drop_last=drop_last)

    @property
    def stock_buckets(self) -> np.ndarray | None:
        """The stock collate's object bucket; None (targets not padded) where the family has no no-object
        class to pad them with (its stock loss would index past its classes)."""
        return self.buckets[1] if self.family.has_no_object_class else None

    def stock_loader(self, workers: int, drop_last: bool) -> DataLoader:
        """The original's loader, shuffled: processor per sample, square canvas, bucket padding."""
        dataset = StockCocoDetection(self.images_dir, self.ann_file, self.processor, self.label_of,
                                     stock_augmentation(self.augment, self.resize))
        collate = StockCollate(self.processor, self.square_canvas, self.stock_buckets, len(self.categories))
        generator = torch.Generator().manual_seed(self.cfg.seed)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, shuffle=True, drop_last=drop_last,
                          num_workers=workers, collate_fn=collate, generator=generator)


def make_export(ws: Workspace, cfg: BenchConfig) -> Path:
    """A Hugging Face directory written by ``detr-ft export`` from a checkpoint of the bench model."""
    from detr_ft.engine import DetrModule, OptimConfig
    from detr_ft.export import export
    from detr_ft.model.build import ModelBundle

    model, pretrained, _ = bench_model(cfg.model, ws.categories.id2label, cfg.seed)
    module = DetrModule(ModelBundle(model, ws.resize, model.config.model_type, pretrained), ws.categories,
                        OptimConfig())
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)  # the model description detr-ft train writes
    path = ws.root / "bench.ckpt"
    torch.save(ckpt, path)
    return export(str(path), ws.root / "export")

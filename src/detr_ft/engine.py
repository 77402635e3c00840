"""The LightningModule (model + criterion + COCO validation) and the LightningDataModule."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader

from detr_ft.data.batching import Batch, to_device_normalised_from_loader
from detr_ft.data.augment import AugmentSpec
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.sampling import EpochSampler, ShapeBatchSampler
from detr_ft.data.shape_plan import ShapePlan
from detr_ft.metrics import METRIC_NAMES, coco_metrics
from detr_ft.model.build import ModelBundle, backbone_module
from detr_ft.model.criterion import SetCriterion
from detr_ft.model.families import family_of
from detr_ft.model.outputs import box_count_scale, detection_outputs, transformers_loss
from detr_ft.model.postprocess import postprocess, to_coco_results
from detr_ft.schedule import lr_factor
from detr_ft.types import Categories, DatasetIndex, ResizeSpec

LOSS_PARTS = ("loss_ce", "loss_bbox", "loss_giou")
MAX_DETECTIONS = 100  # per image, as COCO evaluation counts them


@dataclass
class OptimConfig:
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    schedule: str = "constant"  # or "cosine", "step" (schedule.py); each after a linear warm-up
    warmup_steps: int = 0
    fused: bool = False  # torch's fused AdamW kernel (devices.fused_optimizer says where)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


class DetrModule(L.LightningModule):
    """Fine-tunes a DETR-family model with detr-ft's padding-aware criterion.

    The checkpoint carries what is needed to rebuild the model offline: the
    model config, the resize rule and the categories (see ``checkpoint.py``).
    """

    def __init__(self, bundle: ModelBundle, categories: Categories, optim: OptimConfig,
                 val_ground_truth: dict | None = None, on_non_finite: str = "error"):
        super().__init__()
        self.on_non_finite = on_non_finite  # "error": stop the run; "skip": no update for that batch
        self.skipped_steps = 0
        self.model = bundle.model
        self.bundle_info = {"family": bundle.family, "pretrained": bundle.pretrained, "resize": asdict(bundle.resize),
                            "trainable_batch_norm": not bundle.pretrained}
        self.categories = categories
        self.optim = optim
        # None: transformers computes this family's loss (the RT-DETR line), fed the real objects only
        self.family = family_of(self.model)
        self.criterion = SetCriterion.from_config(self.model.config) if self.family.criterion_pads_targets else None
        self.val_ground_truth = val_ground_truth
        self._val_results: list[dict] = []

    # -- training -------------------------------------------------------------
    def forward(self, pixel_values, pixel_mask, with_aux: bool = False):
        return detection_outputs(self.model, pixel_values, pixel_mask, with_aux=with_aux)

    def compute_loss(self, batch: Batch, with_aux: bool = True) -> dict:
        if self.criterion is None:
            return transformers_loss(self.model, batch)[1]
        out = self(batch.pixel_values, batch.pixel_mask, with_aux=with_aux)
        return self.criterion(out.logits, out.boxes, batch.labels, batch.boxes, batch.valid, out.aux)

    def training_step(self, batch: Batch, batch_idx: int):
        losses = self.compute_loss(batch)
        if self.trainer.world_size > 1 and self.family.loss_divides_by_local_objects:
            losses = self._divided_by_all_objects(losses, batch)
        loss = losses["loss"]
        finite = bool(torch.isfinite(loss))
        if self.trainer.world_size > 1:  # every process skips or stops together
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
            if self.on_non_finite == "skip":
                self.skipped_steps += 1
                logging.getLogger("detr_ft").warning("non-finite training loss at %s: batch skipped, no update "
                                                     "(--on-non-finite skip)", where)
                return None  # Lightning: no backward, no optimizer update
            raise NonFiniteLossError(f"the training loss is {loss.item()} at {where}; lower --lr, check the data, "
                                     f"or pass --on-non-finite skip to skip such batches")
        bs = len(batch)
        sync = self.trainer.world_size > 1  # log the mean over processes: the global batch's loss
        self.log("train_loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=bs, sync_dist=sync)
        self.log_dict({f"train_{k}": losses[k].detach() for k in LOSS_PARTS}, on_step=True, on_epoch=False,
                      batch_size=bs, sync_dist=sync)
        return loss

    def _divided_by_all_objects(self, losses: dict, batch: Batch) -> dict:
        """transformers' loss of this process, rescaled from its own object count to all processes'
        (``box_count_scale``): DDP's averaged gradients are then one process's on the whole batch."""
        local = int(batch.valid.sum())
        total = self.trainer.strategy.reduce(torch.tensor(float(local), device=losses["loss"].device),
                                             reduce_op="sum")
        scale = box_count_scale(local, float(total), self.trainer.world_size)
        return {k: v * scale for k, v in losses.items()}

    # -- validation -----------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_results = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if self.criterion is None:
            out, losses = transformers_loss(self.model, batch)
        else:
            out = self(batch.pixel_values, batch.pixel_mask, with_aux=False)
            losses = self.criterion(out.logits, out.boxes, batch.labels, batch.boxes, batch.valid, [])
        self.log("val_loss", losses["loss"], on_step=False, on_epoch=True, batch_size=len(batch), sync_dist=True)
        detections = postprocess(out.logits, out.boxes, batch.orig_sizes, self.categories,
                                 scoring=self.family.scoring)
        for dets, image_id in zip(detections, batch.image_ids.tolist()):
            if image_id >= 0:  # -1: a blank image that only fills the batch
                self._val_results.append((image_id, to_coco_results(dets, image_id)[:MAX_DETECTIONS]))

    def on_validation_epoch_end(self) -> None:
        if self.val_ground_truth is None or self.trainer.sanity_checking:
            return
        per_image = dict(self._val_results)
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, self._val_results)
            per_image = {}
            for part in gathered:  # an image seen twice (sampler padding) counts once
                for image_id, records in part:
                    per_image.setdefault(image_id, records)
        results = [r for records in per_image.values() for r in records]
        metrics = coco_metrics(self.val_ground_truth, results, self.categories)
        self.last_val_metrics = metrics
        self.last_val_results = results  # for train's final analysis (detr_ft.analysis)
        self.log_dict({f"val_{k}": float(metrics[k]) for k in METRIC_NAMES if k != "map_50"})
        self.log("val_map_50", float(metrics["map_50"]), prog_bar=True)
        self._val_results = []

    # -- optimisation ---------------------------------------------------------
    def configure_optimizers(self):
        backbone = backbone_module(self.model)
        backbone_ids = {id(p) for p in backbone.parameters()} if backbone is not None else set()
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if id(p) not in backbone_ids], "lr": self.optim.lr},
            {"params": [p for p in params if id(p) in backbone_ids], "lr": self.optim.lr_backbone},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, weight_decay=self.optim.weight_decay,
                                      fused=self.optim.fused or None)
        if self.optim.schedule == "constant" and self.optim.warmup_steps == 0:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        # --max-minutes: the decay also follows the time budget, and ends with whichever runs out first
        timer = next((c for c in self.trainer.callbacks if isinstance(c, L.pytorch.callbacks.Timer)), None)

        def elapsed_fraction() -> float | None:
            if timer is None or timer.time_remaining() is None:
                return None
            return timer.time_elapsed() / (timer.time_elapsed() + timer.time_remaining())

        factor = lr_factor(self.optim.schedule, self.optim.warmup_steps, total, elapsed_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoint contents --------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # torch's Optimizer.load_state_dict restores the saved groups' options, "fused" too: a run
        # resumed with other precision or on another device steps with the kernel it chose itself
        fused = self.optim.fused or None
        for state in checkpoint.get("optimizer_states", ()):
            for group in state.get("param_groups", ()):
                group["fused"] = fused

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["detr_ft"] = {
            "model_config": self.model.config.to_dict(),
            "categories": self.categories.to_dict(),
            **self.bundle_info,
        }


class DetectionData(L.LightningDataModule):
    """Train and validation loaders over COCO indexes, producing ``Batch``es shaped as ``plan``
    says (``data/shape_plan.py``).

    ``augment``: the training augmentation (default: a flip with probability ``hflip``).
    Batches hold images of like shape where the plan asks for it (``ShapeBatchSampler``);
    with static canvases a short last training batch is dropped (``drop_last`` None; True or
    False decide) and validation batches are filled to full size with blank images.
    """

    def __init__(self, train_index: DatasetIndex, val_index: DatasetIndex | None, resize: ResizeSpec,
                 batch_size: int, num_workers: int, plan: ShapePlan, seed: int = 0, shuffle: bool = True,
                 pin_memory: bool = False, hflip: float = 0.5, augment: AugmentSpec | None = None,
                 drop_last: bool | None = None):
        super().__init__()
        self.train_set = DetectionDataset(train_index, resize, train=True, seed=seed, hflip=hflip, augment=augment)
        self.val_set = DetectionDataset(val_index, resize, train=False) if val_index is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.plan = plan
        self.collator = plan.collator(resize, fill=False)
        self.val_collator = plan.collator(resize)
        self.seed = seed
        self.shuffle = shuffle
        self.pin_memory = pin_memory
        self.drop_last = plan.static if drop_last is None else drop_last  # static: one batch size to compile

    def _loader(self, dataset, collator, shuffle: bool, drop_last: bool) -> DataLoader:
        common = dict(num_workers=self.num_workers, collate_fn=collator, pin_memory=self.pin_memory,
                      persistent_workers=self.num_workers > 0)
        if self.plan.like_shape_batches:
            aspects = [r.aspect for r in dataset.index.records]
            # in training without canvases, the orientations' short last batches as one where they fit
            merge_short = dataset.train and not self.plan.static
            sampler = ShapeBatchSampler(aspects, self.batch_size, shuffle, self.seed, drop_last, merge_short)
            return DataLoader(dataset, batch_sampler=sampler, **common)
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=drop_last, **common)

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int = 0):
        if not isinstance(batch, Batch):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return to_device_normalised_from_loader(batch, device, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        drop_last = self.drop_last and len(self.train_set) >= self.batch_size
        return self._loader(self.train_set, self.collator, self.shuffle, drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_collator, False, False)


class Throughput(L.Callback):
    """Training images per second over whole epochs (data loading included,
    validation excluded)."""

    def __init__(self):
        self.images = 0
        self.seconds = 0.0
        self._t0 = 0.0
        self._val_t0 = 0.0

    def on_train_epoch_start(self, trainer, module):
        self._t0 = time.perf_counter()

    def on_validation_start(self, trainer, module):
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer, module):
        if trainer.training or self._t0:
            self._t0 += time.perf_counter() - self._val_t0  # validation time is not training time

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.images += len(batch)

    def on_train_epoch_end(self, trainer, module):
        self.seconds += time.perf_counter() - self._t0
        self._t0 = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

"""``detr-ft train``: data -> model -> Lightning Trainer -> files in the output dir."""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from detr_ft.checkpoint import load_checkpoint, model_from_checkpoint
from detr_ft.config import TrainConfig
from detr_ft.data.batching import Collator, batch_padding_fraction, compute_buckets, padded_pixel_fraction
from detr_ft.data.hf_dataset import read_split
from detr_ft.engine import DetectionData, DetrModule, NonFiniteLossError, OptimConfig, Throughput
from detr_ft.devices import device_type, say_if_slow_bf16, trainer_device
from detr_ft.errors import UserError
from detr_ft.metrics import METRIC_NAMES, ground_truth
from detr_ft.model.build import ModelBundle, build_model, set_backbone_trainable
from detr_ft.model.families import family_of
from detr_ft.model.speed import for_training
from detr_ft.plots import plot_curves
from detr_ft.resume import AtomicCheckpointIO, ContinuingCSVLogger, StepSeed, remove_stale_temporaries, resume_point

log = logging.getLogger("detr_ft")


class PeriodicCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """The every-N-epochs checkpoints, kept beside last.ckpt's own callback."""

    @property
    def state_key(self) -> str:
        return "periodic-" + super().state_key


def newest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = [p for p in out_dir.glob("*.ckpt") if p.is_file()]
    return max(ckpts, key=lambda p: p.stat().st_mtime) if ckpts else None


def canvases_for(cfg: TrainConfig, resize) -> list[tuple[int, int]] | None:
    """The fixed canvases of --pad: one square (or --pad-size), or with --pad-canvases auto
    a landscape and a portrait one (short x long, long x short), which every resized image fits."""
    if not cfg.pad:
        return None
    if cfg.pad_canvases == "auto":
        return resize.orientation_canvases
    if cfg.pad_size:
        return [(int(cfg.pad_size[0]), int(cfg.pad_size[1]))]
    return [resize.max_canvas]


def compilations(model: torch.nn.Module) -> int:
    """How many variants of the compiled model forward exist: 1 after the first compile,
    one more for every recompilation (a new shape, say). Graph breaks inside
    transformers' code split a variant into several graphs but do not count here."""
    try:
        from torch._C._dynamo.eval_frame import _debug_get_cache_entry_list

        return len(_debug_get_cache_entry_list(type(model).forward.__code__))
    except (ImportError, AttributeError):  # private API moved: count compiled graphs instead
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])


def warm_start_bundle(cfg: TrainConfig, categories) -> ModelBundle:
    """--use-ckpt --ckpt-path P: start from the weights of a detr-ft checkpoint."""
    path = Path(cfg.ckpt_path).expanduser()
    ckpt = load_checkpoint(path)
    model, resize, ckpt_categories, family = model_from_checkpoint(path, ckpt)
    if ckpt_categories != categories:
        raise UserError(f"--ckpt-path {cfg.ckpt_path}: its classes {list(ckpt_categories.names)} differ from "
                        f"the dataset's {list(categories.names)}")
    info = ckpt["detr_ft"]
    model.train()
    set_backbone_trainable(model, pretrained=bool(info.get("pretrained")))
    return ModelBundle(model, resize, family, pretrained=bool(info.get("pretrained")))


def run_train(cfg: TrainConfig) -> dict | None:
    """Fine-tune as ``cfg`` says; returns the summary also written to metrics.json
    (None in the other processes of a multi-process run)."""
    trainer, _, summary = fit(cfg)
    return summary if trainer.is_global_zero else None


def fit(cfg: TrainConfig, extra_callbacks: tuple[L.Callback, ...] = ()):
    """Fine-tune; returns (trainer, module, summary). ``extra_callbacks`` join the Trainer's (e.g. the demo's timeline)."""
    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    device = trainer_device(cfg.device, cfg.devices, cfg.num_nodes, cfg.strategy, cfg.autocast)  # available?
    kind = device_type(cfg.device)
    resume_from = newest_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise UserError(f"--resume: no checkpoint in {out} to continue from; drop --resume to start afresh")
    # before any data is read: a clear error if truncated, corrupt or unsafe
    checkpoint = load_checkpoint(resume_from) if resume_from else None

    train_index = read_split(cfg.data_dir, "train", cfg.on_bad_data, hf_dataset=cfg.hf_dataset)
    val_index = None if cfg.train_only else read_split(cfg.data_dir, "test", cfg.on_bad_data,
                                                       categories=train_index.categories, hf_dataset=cfg.hf_dataset)
    categories = train_index.categories
    bundle = warm_start_bundle(cfg, categories) if cfg.use_ckpt else build_model(cfg.model, categories.id2label)

    family = family_of(bundle.model)
    if not family.criterion_pads_targets and cfg.num_buckets > 1:
        print(f"note: --num-buckets has no effect on {family.model_type}: its loss is transformers', which is fed "
              f"the real objects only (no padded targets)")
    counts = train_index.object_counts()
    buckets = compute_buckets(counts, cfg.num_buckets)
    if buckets and val_index is not None and len(val_index):
        buckets[-1] = max(buckets[-1], int(val_index.object_counts().max()))
    canvases = canvases_for(cfg, bundle.resize)
    if buckets:
        print(f"object buckets: {buckets}")
    resized = [bundle.resize.output_size(r.height, r.width) for r in train_index.records]
    if canvases and any(h > max(c[0] for c in canvases) or w > max(c[1] for c in canvases) for h, w in resized):
        raise UserError(f"--pad-size {cfg.pad_size}: smaller than the resized images (up to "
                        f"{bundle.resize.longest} px); use a larger canvas or drop --pad-size")
    collator = Collator(bundle.resize.mean, bundle.resize.std, canvases=canvases, buckets=buckets)
    val_collator = Collator(bundle.resize.mean, bundle.resize.std, canvases=canvases, buckets=buckets,
                            fill_to=cfg.batch_size if cfg.pad else None)
    for_training(bundle.model, kind, cfg.channels_last)
    say_if_slow_bf16(kind, cfg.autocast)
    if cfg.compile:
        torch._dynamo.reset()
        bundle.model.model.compile(dynamic=False)
    data = DetectionData(train_index, val_index, bundle.resize, cfg.batch_size,
                         0 if cfg.deterministic else cfg.num_workers, collator, val_collator, seed=cfg.seed,
                         shuffle=True, drop_last=cfg.pad, pin_memory=torch.cuda.is_available(), hflip=cfg.hflip,
                         shape_batches=not canvases or len(canvases) > 1)  # not when one canvas fits all
    if canvases:
        pad_fraction = padded_pixel_fraction(resized, canvases)
        print(f"canvases: {canvases}; padded pixels: {pad_fraction:.1%}")
    else:  # each batch padded to its largest image: the batches of the first epoch tell
        first_epoch = [[i for i, _ in batch] for batch in data.train_dataloader().batch_sampler]
        pad_fraction = batch_padding_fraction(resized, first_epoch)
        print(f"batches of like shape, padded to their largest image; padded pixels: {pad_fraction:.1%}")
    module = DetrModule(bundle, categories,
                        OptimConfig(cfg.lr, cfg.lr_backbone, cfg.weight_decay, cfg.lr_schedule, cfg.warmup_steps),
                        val_ground_truth=ground_truth(val_index.records, categories) if val_index else None,
                        on_non_finite=cfg.on_non_finite)

    store = Path(cfg.ckpt_store_path).expanduser() if cfg.ckpt_store_path else out
    # last.ckpt after every epoch (save_last=True with save_top_k=0 writes it only when training ends,
    # so a crash would lose the whole run); each save replaces the previous one atomically
    callbacks: list[L.Callback] = [L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out, filename="last", save_top_k=1, enable_version_counter=False)]
    if cfg.ckpt_store_interval_epochs:
        callbacks.append(PeriodicCheckpoint(
            dirpath=store, filename="epoch{epoch:03d}", auto_insert_metric_name=False, save_top_k=-1,
            every_n_epochs=cfg.ckpt_store_interval_epochs, enable_version_counter=False))
    throughput = Throughput()
    callbacks += [throughput, StepSeed(cfg.seed), *extra_callbacks]
    keep_until = None
    checkpoint_io = AtomicCheckpointIO()
    if checkpoint is not None:
        keep_until = resume_point(resume_from, checkpoint, module)  # a clear error if written for another model
        checkpoint_io = AtomicCheckpointIO(already_read=(resume_from, checkpoint))
        del checkpoint
        remove_stale_temporaries(out)
        print(f"resuming from {resume_from} (epoch {keep_until[0]}, step {keep_until[1]})")
    loggers = [ContinuingCSVLogger(out, keep_until=keep_until)]
    if cfg.logger == "tensorboard":
        from importlib.util import find_spec

        if find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
            raise UserError("--logger tensorboard needs TensorBoard: pip install tensorboard (or use --logger csv)")
        loggers.append(L.pytorch.loggers.TensorBoardLogger(out, name="tensorboard", version=""))
    trainer = L.Trainer(
        accelerator=device.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=device.strategy,
        precision=device.precision,
        max_epochs=cfg.max_epochs if cfg.max_epochs > 0 else -1, max_steps=cfg.max_steps,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        gradient_clip_val=cfg.grad_clip or None, deterministic="warn" if cfg.deterministic else None,
        use_distributed_sampler=False,  # detr-ft's samplers shard themselves (data/sampling.py)
        logger=loggers, callbacks=callbacks, log_every_n_steps=1, num_sanity_val_steps=0,
        limit_val_batches=0 if cfg.train_only else None, enable_model_summary=False,
        default_root_dir=out, plugins=[checkpoint_io, *device.plugins],
        # trainable batch norm (random-init presets) sees the global batch on GPUs
        sync_batchnorm=(cfg.devices * cfg.num_nodes > 1 and not bundle.pretrained
                        and kind == "cuda"),
    )
    if trainer.is_global_zero:  # the Trainer knows its rank once built (torchrun, SLURM, its own launcher)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    started = time.perf_counter()
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    except NonFiniteLossError as e:
        raise UserError(f"{e}; the last good checkpoint is kept in {out}") from None
    summary = {
        **{k: float(v) for k, v in getattr(module, "last_val_metrics", {}).items() if k in METRIC_NAMES},
        "per_class": getattr(module, "last_val_metrics", {}).get("per_class", {}),
        "images_per_second": round(throughput.images_per_second, 3),
        "world_size": trainer.world_size,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "buckets": buckets,
        "canvases": canvases,
        "padded_pixel_fraction": round(pad_fraction, 4),
        "padded_pixel_fraction_square": round(padded_pixel_fraction(resized, [bundle.resize.max_canvas]), 4)
        if canvases else None,
        "recompiles": compilations(module.model.model) if cfg.compile else None,
        "model": cfg.model if not cfg.use_ckpt else cfg.ckpt_path,
        "data": {"train": train_index.report.to_dict(),
                 **({"test": val_index.report.to_dict()} if val_index is not None else {})},
        "skipped_non_finite_steps": module.skipped_steps,
    }
    if trainer.is_global_zero:
        if not cfg.train_only and cfg.max_inf_frames:
            summary["predictions"] = sample_predictions(module, bundle.resize, categories, cfg, out, val_index)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
        plot_curves(out / "metrics.csv", out / "curves.png")
    return trainer, module, summary


def sample_predictions(module: DetrModule, resize, categories, cfg: TrainConfig, out: Path, val_index) -> str:
    """Annotate the first --max-inf-frames validation images at --threshold (as the original did)."""
    from detr_ft.detector import Detector
    from detr_ft.predict import run_predict

    # a copy: the Detector folds its model's batch norms for inference
    detector = Detector(copy.deepcopy(module.model), resize, categories, device=module.device.type,
                        channels_last=cfg.channels_last, autocast=cfg.autocast)
    # the split as read (and checked) for validation, not read again
    run_predict("", out / "predictions", index=val_index, threshold=cfg.threshold,
                max_inf_frames=cfg.max_inf_frames, batch_size=cfg.batch_size, detector=detector)
    return str(out / "predictions")

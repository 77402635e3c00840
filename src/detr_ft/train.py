"""``detr-ft train``: data -> model -> Lightning Trainer -> files in the output dir."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from detr_ft.averaging import EMA
from detr_ft.checkpoint import load_checkpoint, model_from_checkpoint
from detr_ft.config import TrainConfig
from detr_ft.data.batching import batch_padding_fraction
from detr_ft.data.shape_plan import ShapePlan
from detr_ft.data.source import read_split
from detr_ft.engine import DetectionData, DetrModule, NonFiniteLossError, OptimConfig, Throughput
from detr_ft.devices import device_type, fused_optimizer, run_settings, say_if_slow_bf16, trainer_device
from detr_ft.errors import UserError
from detr_ft.loggers import experiment_logger, finish
from detr_ft.metrics import METRIC_NAMES, ground_truth
from detr_ft.model.build import ModelBundle, build_model, set_backbone_trainable
from detr_ft.model.families import family_of
from detr_ft.model.speed import for_training
from detr_ft.plots import plot_curves, read_metrics_csv
from detr_ft.resume import AtomicCheckpointIO, ContinuingCSVLogger, StepSeed, remove_stale_temporaries, resume_point
from detr_ft.selection import best_checkpoint, best_validation, early_stopping

log = logging.getLogger("detr_ft")


class PeriodicCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """The every-N-epochs checkpoints, kept beside last.ckpt's own callback."""

    @property
    def state_key(self) -> str:
        return "periodic-" + super().state_key


def recipe_callbacks(cfg: TrainConfig, out: Path) -> list[L.Callback]:
    """best.ckpt and --patience (with validation), --ema."""
    callbacks: list[L.Callback] = [] if cfg.train_only else [best_checkpoint(out)]
    if cfg.patience:
        callbacks.append(early_stopping(cfg.patience))
    if cfg.ema:
        callbacks.append(EMA(cfg.ema_decay, cfg.ema_warmup_steps))
    return callbacks


def best_summary(out: Path, trainer: L.Trainer) -> dict | None:
    """metrics.json's ``best``: the epoch, step and validation metrics of best.ckpt (None without validation)."""
    rows = read_metrics_csv(out / "metrics.csv") if (out / "metrics.csv").is_file() else []
    best = best_validation(rows, out / "best.ckpt")
    if best is not None:
        best["checkpoint"] = str(out / "best.ckpt")
        best["stopped_early"] = any(c.stopped_epoch > 0 for c in trainer.callbacks
                                    if isinstance(c, L.pytorch.callbacks.EarlyStopping))
    return best


def newest_checkpoint(out_dir: Path) -> Path | None:
    ckpts = [p for p in out_dir.glob("*.ckpt") if p.is_file()]
    return max(ckpts, key=lambda p: p.stat().st_mtime) if ckpts else None


def compilations(model: torch.nn.Module) -> int:
    """How many variants of a compiled module's forward exist: 1 after the first compile, one more
    for every recompilation (a new shape, say); a run reports the most of its compiled parts'.
    Graph breaks inside transformers' code split a variant into several graphs but do not count here."""
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
    """Fine-tune; returns (trainer, module, summary). ``extra_callbacks`` join the Trainer's (e.g. the demo's
    timeline). Torch's process-wide settings are set here for the run (TF32 on CUDA) and are the
    caller's again after (deterministic algorithms, TF32)."""
    with run_settings(cfg.device):
        return _fit(cfg, extra_callbacks)


def _fit(cfg: TrainConfig, extra_callbacks: tuple[L.Callback, ...]):
    """The run, step by step: settings, data, shapes, model, module, callbacks, trainer, fit, summary."""
    cfg = cfg.with_recipe_defaults()  # --augment auto, --ema unset: the model's recipe
    out = start_run(cfg)
    tracker = experiment_logger(cfg.logger, out, cfg.tracking_uri)  # a missing package: an error before any work
    device = trainer_device(cfg.device, cfg.devices, cfg.num_nodes, cfg.strategy, cfg.autocast)  # available?
    resume_from, checkpoint = checkpoint_to_resume(cfg, out)
    train_index, val_index = read_splits(cfg)
    bundle, augment = model_and_augmentation(cfg, train_index.categories)
    plan = plan_shapes(cfg, bundle, augment, train_index, val_index)
    prepare_model(cfg, bundle)
    data = detection_data(cfg, bundle, augment, plan, train_index, val_index)
    resized = [bundle.resize.output_size(r.height, r.width) for r in train_index.records]
    pad_fraction = report_padding(plan, data, resized)
    module = DetrModule(bundle, train_index.categories,
                        OptimConfig(cfg.lr, cfg.lr_backbone, cfg.weight_decay, cfg.lr_schedule, cfg.warmup_steps,
                                    fused=fused_optimizer(cfg.device, cfg.autocast, cfg.devices * cfg.num_nodes)),
                        val_ground_truth=ground_truth(val_index.records, train_index.categories) if val_index else None,
                        on_non_finite=cfg.on_non_finite)
    callbacks, throughput = training_callbacks(cfg, out, extra_callbacks)
    keep_until, checkpoint_io = continue_from(cfg, out, resume_from, checkpoint, module)
    del checkpoint  # the checkpoint IO holds it until Lightning reads it, then lets it go
    loggers = [ContinuingCSVLogger(out, keep_until=keep_until), *([tracker] if tracker else [])]
    trainer = build_trainer(cfg, device, bundle, out, callbacks, loggers, checkpoint_io)
    record_settings(cfg, out, trainer, tracker)
    started = time.perf_counter()
    fit_module(trainer, module, data, resume_from, out)
    summary = run_summary(cfg, trainer, module, bundle, augment, plan, throughput, started, train_index, val_index,
                          padding=(resized, pad_fraction))
    if trainer.is_global_zero:
        summary = report_on_rank_zero(cfg, out, trainer, module, bundle.resize, summary, val_index)
    finish(tracker)
    return trainer, module, summary


def start_run(cfg: TrainConfig) -> Path:
    """Check the settings, make the output dir, seed everything; the output dir."""
    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return out


def checkpoint_to_resume(cfg: TrainConfig, out: Path) -> tuple[Path | None, dict | None]:
    """--resume: the newest checkpoint in ``out`` and its contents, read before any data is (a clear
    error if truncated, corrupt or unsafe); (None, None) without --resume."""
    resume_from = newest_checkpoint(out) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise UserError(f"--resume: no checkpoint in {out} to continue from; drop --resume to start afresh")
    return resume_from, load_checkpoint(resume_from) if resume_from else None


def read_splits(cfg: TrainConfig):
    """The training split and the validation split (None with --train-only), same classes."""
    train_index = read_split(cfg.data_dir, "train", cfg.on_bad_data, hf_dataset=cfg.hf_dataset)
    val_index = None if cfg.train_only else read_split(cfg.data_dir, "test", cfg.on_bad_data,
                                                       categories=train_index.categories, hf_dataset=cfg.hf_dataset)
    return train_index, val_index


def model_and_augmentation(cfg: TrainConfig, categories):
    """The model to fine-tune (new or --use-ckpt's) at the training resolution, and its augmentation."""
    bundle = warm_start_bundle(cfg, categories) if cfg.use_ckpt else build_model(cfg.model, categories.id2label)
    bundle.resize = bundle.resize.with_image_size(cfg.image_size)  # saved in the checkpoint with the model
    what = f"--image-size {' '.join(map(str, cfg.image_size))}" if cfg.image_size else f"--model {cfg.model}"
    family_of(bundle.model).check_image_size(bundle.model.config, bundle.resize, what)
    return bundle, cfg.augment_spec(bundle.resize)


def plan_shapes(cfg: TrainConfig, bundle: ModelBundle, augment, train_index, val_index) -> ShapePlan:
    """The run's static-shape plan (``data/shape_plan.py``): canvases checked to hold every training
    image, object buckets; a note where the family's loss makes --num-buckets moot."""
    family = family_of(bundle.model)
    if not family.criterion_pads_targets and cfg.num_buckets > 1:
        print(f"note: --num-buckets has no effect on {family.model_type}: its loss is transformers', which is fed "
              f"the real objects only (no padded targets)")
    plan = ShapePlan.for_training(cfg, bundle.resize, augment, train_index, val_index)
    if plan.buckets:
        print(f"object buckets: {list(plan.buckets)}")
    return plan


def prepare_model(cfg: TrainConfig, bundle: ModelBundle) -> None:
    """The model's training layout for the device (channels-last), and --compile."""
    kind = device_type(cfg.device)
    for_training(bundle.model, kind, cfg.channels_last)
    say_if_slow_bf16(kind, cfg.autocast)
    if cfg.compile:
        torch._dynamo.reset()
        for part in family_of(bundle.model).compile_parts(bundle.model):
            part.compile(dynamic=False)


def detection_data(cfg: TrainConfig, bundle: ModelBundle, augment, plan: ShapePlan, train_index,
                   val_index) -> DetectionData:
    """The train and validation loaders (single-process loading with --deterministic)."""
    return DetectionData(train_index, val_index, bundle.resize, cfg.batch_size,
                         0 if cfg.deterministic else cfg.num_workers, plan, seed=cfg.seed, shuffle=True,
                         pin_memory=torch.cuda.is_available(), augment=augment)


def report_padding(plan: ShapePlan, data: DetectionData, resized: list[tuple[int, int]]) -> float:
    """Print and return the share of padded pixels the batches will carry (``resized``: each
    training image's size after the resize)."""
    if plan.static:
        pad_fraction = plan.padded_fraction(resized)
        print(f"canvases: {list(plan.canvases)}; padded pixels: {pad_fraction:.1%}")
    else:  # each batch padded to its largest image: the batches of the first epoch tell
        first_epoch = [[i for i, _ in batch] for batch in data.train_dataloader().batch_sampler]
        pad_fraction = batch_padding_fraction(resized, first_epoch)
        print(f"batches of like shape, padded to their largest image; padded pixels: {pad_fraction:.1%}")
    return pad_fraction


def training_callbacks(cfg: TrainConfig, out: Path, extra_callbacks) -> tuple[list[L.Callback], Throughput]:
    """The recipe's callbacks, last.ckpt, the periodic checkpoints, throughput, step seeds and the
    caller's; with the throughput callback, which the summary reads."""
    store = Path(cfg.ckpt_store_path).expanduser() if cfg.ckpt_store_path else out
    # last.ckpt after every epoch (save_last=True with save_top_k=0 writes it only when training ends,
    # so a crash would lose the whole run); each save replaces the previous one atomically
    callbacks: list[L.Callback] = recipe_callbacks(cfg, out)  # best.ckpt first: last.ckpt is the newest
    callbacks.append(L.pytorch.callbacks.ModelCheckpoint(
        dirpath=out, filename="last", save_top_k=1, enable_version_counter=False))
    if cfg.ckpt_store_interval_epochs:
        callbacks.append(PeriodicCheckpoint(
            dirpath=store, filename="epoch{epoch:03d}", auto_insert_metric_name=False, save_top_k=-1,
            every_n_epochs=cfg.ckpt_store_interval_epochs, enable_version_counter=False))
    throughput = Throughput()
    callbacks += [throughput, StepSeed(cfg.seed), *extra_callbacks]
    return callbacks, throughput


def continue_from(cfg: TrainConfig, out: Path, resume_from: Path | None, checkpoint: dict | None,
                  module: DetrModule) -> tuple[tuple[int, int] | None, AtomicCheckpointIO]:
    """Where a resumed run's metrics.csv is kept up to (None: a new run) and the checkpoint IO, which
    hands Lightning the checkpoint already read."""
    if checkpoint is None:
        return None, AtomicCheckpointIO()
    keep_until = resume_point(resume_from, checkpoint, module)  # a clear error if written for another model
    if ("current_model_state" in checkpoint) != cfg.ema:  # WeightAveraging's layout: live weights kept apart
        was = "without" if cfg.ema else "with"
        raise UserError(f"--resume: {resume_from} was written {was} --ema; resume {was} --ema too, "
                        f"or pick another --output-dir")
    checkpoint_io = AtomicCheckpointIO(already_read=(resume_from, checkpoint))
    remove_stale_temporaries(out)
    print(f"resuming from {resume_from} (epoch {keep_until[0]}, step {keep_until[1]})")
    return keep_until, checkpoint_io


def build_trainer(cfg: TrainConfig, device, bundle: ModelBundle, out: Path, callbacks, loggers,
                  checkpoint_io: AtomicCheckpointIO) -> L.Trainer:
    """The Lightning Trainer of the settings."""
    return L.Trainer(
        accelerator=device.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=device.strategy,
        precision=device.precision,
        max_epochs=cfg.max_epochs if cfg.max_epochs > 0 else -1, max_steps=cfg.max_steps,
        max_time={"minutes": cfg.max_minutes} if cfg.max_minutes else None,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.grad_clip or None, deterministic="warn" if cfg.deterministic else None,
        use_distributed_sampler=False,  # detr-ft's samplers shard themselves (data/sampling.py)
        logger=loggers, callbacks=callbacks, log_every_n_steps=1, num_sanity_val_steps=0,
        limit_val_batches=0 if cfg.train_only else None, enable_model_summary=False,
        default_root_dir=out, plugins=[checkpoint_io, *device.plugins],
        # trainable batch norm (random-init presets) sees the global batch on GPUs
        sync_batchnorm=(cfg.devices * cfg.num_nodes > 1 and not bundle.pretrained
                        and device_type(cfg.device) == "cuda"),
    )


def record_settings(cfg: TrainConfig, out: Path, trainer: L.Trainer, tracker) -> None:
    """config.yaml in the output dir (rank 0), and the settings in the experiment tracker."""
    if trainer.is_global_zero:  # the Trainer knows its rank once built (torchrun, SLURM, its own launcher)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if tracker is not None:  # the run's settings beside its curves (Lightning logs them on rank 0 only)
        tracker.log_hyperparams(cfg.to_dict())


def fit_module(trainer: L.Trainer, module: DetrModule, data: DetectionData, resume_from: Path | None,
               out: Path) -> None:
    """Train; a non-finite loss under --on-non-finite error is a UserError."""
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    except NonFiniteLossError as e:
        raise UserError(f"{e}; the last good checkpoint is kept in {out}") from None


def run_summary(cfg: TrainConfig, trainer: L.Trainer, module: DetrModule, bundle: ModelBundle, augment,
                plan: ShapePlan, throughput: Throughput, started: float, train_index, val_index,
                padding: tuple[list[tuple[int, int]], float]) -> dict:
    """What the run did: final validation metrics, speed, shapes, resolution, data and recipe
    (``padding``: the training images' resized sizes and the padded share of their batches)."""
    resized, pad_fraction = padding
    square = ShapePlan.fixed(bundle.resize.max_canvas)  # what one square canvas would pad, for comparison
    return {
        **{k: float(v) for k, v in getattr(module, "last_val_metrics", {}).items() if k in METRIC_NAMES},
        "per_class": getattr(module, "last_val_metrics", {}).get("per_class", {}),
        "images_per_second": round(throughput.images_per_second, 3),
        "world_size": trainer.world_size,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "buckets": list(plan.buckets),
        "canvases": list(plan.canvases) if plan.static else None,
        "resize": [bundle.resize.shortest, bundle.resize.longest],
        "augment": dataclasses.asdict(augment),  # the preset with the knobs given, as trained
        "padded_pixel_fraction": round(pad_fraction, 4),
        "padded_pixel_fraction_square": round(square.padded_fraction(resized), 4) if plan.static else None,
        "recompiles": max(map(compilations, module.family.compile_parts(module.model))) if cfg.compile else None,
        "model": cfg.model if not cfg.use_ckpt else cfg.ckpt_path,
        "data": {"train": train_index.report.to_dict(),
                 **({"test": val_index.report.to_dict()} if val_index is not None else {})},
        "skipped_non_finite_steps": module.skipped_steps,
        "ema": {"decay": cfg.ema_decay, "warmup_steps": cfg.ema_warmup_steps} if cfg.ema else None,
    }


def report_on_rank_zero(cfg: TrainConfig, out: Path, trainer: L.Trainer, module: DetrModule, resize, summary: dict,
                        val_index) -> dict:
    """Rank 0's files: best.ckpt's summary, sample predictions, curves.png, the final validation's
    analysis (report.html) and metrics.json; the summary with them."""
    categories = module.categories
    summary["best"] = None if cfg.train_only else best_summary(out, trainer)
    if not cfg.train_only and cfg.max_inf_frames:
        summary["predictions"] = sample_predictions(module, resize, categories, cfg, out, val_index)
    plot_curves(out / "metrics.csv", out / "curves.png")
    if val_index is not None and hasattr(module, "last_val_results"):  # the final validation, explained
        from detr_ft.analysis import analyse
        from detr_ft.analysis.bootstrap import default_resamples

        summary = analyse(out, module.val_ground_truth, module.last_val_results, categories, summary,
                          index=val_index,
                          bootstrap=default_resamples(len(val_index)) if cfg.bootstrap is None else cfg.bootstrap,
                          title="detr-ft train: final validation")
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


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

"""What makes a run resumable: the checkpoint to continue from, per-step random
state, a ``metrics.csv`` that continues instead of starting over, and
checkpoints that a killed run never leaves half-written.

A resumed run must end where the uninterrupted one would have. Lightning's
``trainer.fit(ckpt_path=...)`` restores the weights, optimizer, scheduler,
epoch and step; detr-ft's samplers draw the data order and flips from
``(seed, epoch)``; ``StepSeed`` makes the global random state of each training
step (dropout, and anything else drawing from torch, NumPy or ``random``) a
function of ``(seed, epoch, batch)`` too, so a resumed run draws exactly the
random numbers the uninterrupted run drew. Lightning's ``CSVLogger`` deletes an
existing ``metrics.csv``; ``ContinuingCSVLogger`` keeps its rows up to the
checkpoint and appends after them, writing every row as it is logged so a
killed run loses none.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from detr_ft.checkpoint import atomic_torch_save, load_checkpoint
from detr_ft.errors import UserError

log = logging.getLogger("detr_ft")


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete the half-written checkpoint temporaries a killed run left behind; their number."""
    stale = list(Path(out_dir).glob(".*.ckpt.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def resume_point(path: Path, checkpoint: dict, module: L.LightningModule) -> tuple[int, int]:
    """(epoch, global step) at which ``checkpoint`` was written, after checking that its weights
    fit ``module`` (same model and classes); a ``UserError`` naming the first mismatch otherwise."""
    theirs, ours = checkpoint["state_dict"], module.state_dict()
    fix = "resume with the --model and dataset of that run, or pick another --output-dir"
    for name, tensor in ours.items():
        if name not in theirs:
            raise UserError(f"--resume: {path} was written for another model (it has no {name}); {fix}")
        if tuple(theirs[name].shape) != tuple(tensor.shape):
            raise UserError(f"--resume: {path} does not fit this model ({name} is {tuple(theirs[name].shape)}, "
                            f"here {tuple(tensor.shape)}: another model or number of classes); {fix}")
    extra = sorted(set(theirs) - set(ours))
    if extra:
        raise UserError(f"--resume: {path} was written for another model (it has {extra[0]}); {fix}")
    return int(checkpoint.get("epoch", 0)), int(checkpoint.get("global_step", 0))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic writes, ``weights_only`` reads.

    ``already_read=(path, checkpoint)``: a checkpoint the caller has read and checked
    (``--resume``); Lightning's restore gets it without reading the file again.
    """

    def __init__(self, already_read: tuple[Path, dict] | None = None):
        super().__init__()
        self._already_read = already_read

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_torch_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        if self._already_read is not None and Path(path) == Path(self._already_read[0]):
            checkpoint, self._already_read = self._already_read[1], None  # handed over once, then let go
            return checkpoint
        return load_checkpoint(Path(path), map_location="cpu")



def step_seed(seed: int, epoch: int, batch_idx: int, rank: int = 0) -> int:
    """A 32-bit seed drawn from (seed, epoch, batch, rank), for torch, NumPy and ``random``."""
    return int(np.random.SeedSequence([seed, epoch, batch_idx, rank]).generate_state(1)[0])


class StepSeed(L.Callback):
    """Reseeds torch (all devices), NumPy and ``random`` from (seed, epoch, batch, rank)
    before every training step.

    The random numbers a step draws (dropout, ...) then depend on where it is in the
    run and on nothing before it, so a resumed run draws exactly what the
    uninterrupted one drew. (Seeding once per epoch is not enough: Lightning creates
    the first epoch's data iterator, which draws a seed, before ``on_train_epoch_start``
    in a fresh or resumed run and after it in later epochs.) The data order and flips
    depend on (seed, epoch) already (``EpochSampler``, ``DetectionDataset``).
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        s = step_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)


class ContinuingCSVWriter(ExperimentWriter):
    """``metrics.csv`` writer: every row written when logged; on resume, the rows of the
    earlier run up to the checkpoint are kept.

    ``keep_until=(epoch, step)``: keep the existing rows with ``epoch <= epoch`` and
    ``step < step`` (the rows a resumed run will log again are dropped); ``None``:
    start a fresh file. The columns are the sorted union of the keys logged, as
    Lightning's own writer does.
    """

    def __init__(self, log_dir: str, keep_until: tuple[int, int] | None = None):
        # Not ExperimentWriter.__init__: that deletes an existing metrics.csv.
        self.hparams: dict = {}
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.metrics: list[dict] = []  # logged, not yet written
        self.metrics_keys: list[str] = []
        os.makedirs(log_dir, exist_ok=True)
        path = Path(self.metrics_file_path)
        if keep_until is None or not path.is_file():
            path.unlink(missing_ok=True)
            return
        header, rows = _read_rows(path)
        kept = [r for r in rows if _before(r, keep_until)]
        if len(kept) < len(rows):
            log.info("metrics.csv: dropped %d row(s) logged after the checkpoint", len(rows) - len(kept))
        self.metrics_keys = header
        _write_rows(path, header, kept)

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        super().log_metrics(metrics_dict, step)  # the row as Lightning's writer records it
        self.save()  # written at once: a killed run loses no row

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        new_keys = set().union(*self.metrics) - set(self.metrics_keys)
        if new_keys or not path.is_file():
            old = _read_rows(path)[1] if path.is_file() else []
            self.metrics_keys = sorted(set(self.metrics_keys) | new_keys)
            _write_rows(path, self.metrics_keys, old + self.metrics)
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
        self.metrics = []


class ContinuingCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing ``save_dir/metrics.csv`` with a ``ContinuingCSVWriter``."""

    def __init__(self, save_dir, keep_until: tuple[int, int] | None = None):
        super().__init__(save_dir, name="", version="", flush_logs_every_n_steps=1)
        self._keep_until = keep_until

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuingCSVWriter:
        if self._experiment is None:
            self._experiment = ContinuingCSVWriter(self.log_dir, self._keep_until)
        return self._experiment


def _before(row: dict, keep_until: tuple[int, int]) -> bool:
    epoch, step = keep_until
    try:
        return int(float(row.get("epoch") or 0)) <= epoch and int(float(row.get("step") or 0)) < step
    except ValueError:
        return False


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _write_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    """Write the whole file to a temporary, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)

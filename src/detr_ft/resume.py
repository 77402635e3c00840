"""What makes a run resumable: the checkpoint to continue from, per-step random
state, a ``metrics.csv`` that continues instead of starting over, and
checkpoints that a killed run never leaves half-written.

A resumed run must end where the uninterrupted one would have. Lightning's
``trainer.fit(ckpt_path=...)`` restores the weights, optimizer, scheduler,
epoch and step; detr-ft's samplers draw the data order and flips from
``(seed, epoch)``; ``StepSeed`` makes the global random state of each training
step (dropout, and anything else drawing from torch, NumPy or ``random``) a
function of ``(seed, epoch, batch)`` too, so a resumed run draws exactly the
random numbers the uninterrupted run drew. ``ContinuingCSVLogger`` keeps the rows of
``metrics.csv`` up to the checkpoint and appends after them, writing every row as it
is logged so a killed run loses none.
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
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

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


class ContinuingCSVWriter:
    """``metrics.csv`` in ``log_dir``: every row written when logged; on resume, the rows of the
    earlier run up to the checkpoint are kept.

    ``keep_until=(epoch, step)``: keep the existing rows with ``epoch <= epoch`` and
    ``step < step`` (the rows a resumed run will log again are dropped); ``None``:
    start a fresh file. The columns are the sorted union of the keys logged; a row is
    the metrics (tensors as numbers) plus its ``step``.
    """

    FILE_NAME = "metrics.csv"

    def __init__(self, log_dir: str, keep_until: tuple[int, int] | None = None):
        os.makedirs(log_dir, exist_ok=True)
        self.path = Path(log_dir) / self.FILE_NAME
        self.keys: list[str] = []
        if keep_until is None or not self.path.is_file():
            self.path.unlink(missing_ok=True)
            return
        header, rows = _read_rows(self.path)
        kept = [r for r in rows if _before(r, keep_until)]
        if len(kept) < len(rows):
            log.info("metrics.csv: dropped %d row(s) logged after the checkpoint", len(rows) - len(kept))
        self.keys = header
        _write_rows(self.path, header, kept)

    def log_metrics(self, metrics: dict, step: int) -> None:
        """Append one row at once (a killed run loses none); a new column rewrites the file."""
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = step
        if set(row) - set(self.keys) or not self.path.is_file():
            old = _read_rows(self.path)[1] if self.path.is_file() else []
            self.keys = sorted(set(self.keys) | set(row))
            _write_rows(self.path, self.keys, [*old, row])
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.keys).writerow(row)


class ContinuingCSVLogger(Logger):
    """A Lightning logger (public ``Logger`` API) writing ``save_dir/metrics.csv`` with a
    ``ContinuingCSVWriter``; hyperparameters go to ``config.yaml``, written by train."""

    def __init__(self, save_dir, keep_until: tuple[int, int] | None = None):
        super().__init__()
        self._save_dir = str(save_dir)
        self._keep_until = keep_until
        self._writer: ContinuingCSVWriter | None = None

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return self._save_dir

    def _file(self) -> ContinuingCSVWriter:
        if self._writer is None:  # made on first use, when the Trainer has set the ranks
            self._writer = ContinuingCSVWriter(self._save_dir, self._keep_until)
        return self._writer

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self._file()

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._file().log_metrics(metrics, 0 if step is None else step)

    @rank_zero_only
    def save(self) -> None:
        self._file()


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

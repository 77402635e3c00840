"""Experiment loggers of ``detr-ft train --logger``: Lightning's, beside the ``metrics.csv`` always written.

- ``tensorboard``: event files in ``OUT/tensorboard``;
- ``mlflow``: a run in the tracking store of ``--tracking-uri`` (or ``MLFLOW_TRACKING_URI``),
  by default a local file store in ``OUT/mlruns`` (``mlflow ui --backend-store-uri OUT/mlruns``);
- ``wandb``: a Weights & Biases run in ``OUT/wandb``, offline unless ``WANDB_MODE`` says
  otherwise (``wandb sync OUT/wandb/offline-run-*`` uploads it later): no network is needed,
  and no account.

Each needs its package, an optional extra of detr-ft; a missing one is a one-line error
naming the ``pip install``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from detr_ft.errors import UserError

LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
PROJECT = "detr-ft"  # the MLflow experiment and the W&B project


def require(logger: str, modules: tuple[str, ...], install: str) -> None:
    """A UserError naming ``install`` unless one of ``modules`` can be imported."""
    if not any(importlib.util.find_spec(m) is not None for m in modules):
        raise UserError(f"--logger {logger} needs its package: {install} (or use --logger csv)")


def experiment_logger(name: str, out: Path, tracking_uri: str | None = None):
    """The Lightning logger for ``--logger name`` (None for csv, which is always written)."""
    import lightning as L  # here: TrainConfig.validate reads LOGGERS without paying for this import

    out = Path(out)
    if name == "csv":
        return None
    if name == "tensorboard":
        require(name, ("tensorboard", "tensorboardX"), "pip install tensorboard")
        return L.pytorch.loggers.TensorBoardLogger(out, name="tensorboard", version="")
    if name == "mlflow":
        require(name, ("mlflow",), "pip install 'detr-ft[mlflow]'")
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (out / "mlruns").resolve().as_uri()
        if "://" not in uri or uri.startswith("file:"):
            # MLflow 3 keeps the file store in maintenance mode and refuses it unless asked for (the user's
            # own MLFLOW_ALLOW_FILE_STORE wins); a database store needs the full mlflow package
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        return L.pytorch.loggers.MLFlowLogger(experiment_name=PROJECT, run_name=out.name, tracking_uri=uri)
    if name == "wandb":
        require(name, ("wandb",), "pip install 'detr-ft[wandb]'")
        offline = "WANDB_MODE" not in os.environ  # the user's WANDB_MODE (online, offline, disabled) wins
        return L.pytorch.loggers.WandbLogger(project=PROJECT, name=out.name, save_dir=str(out), offline=offline)
    raise UserError(f"--logger must be one of {', '.join(LOGGERS)} (got {name})")


def finish(tracker) -> None:
    """End the tracker's run so that everything logged is on disk (W&B writes its run file from a
    service process until the run finishes; the others finish with Lightning's ``finalize``)."""
    if type(tracker).__name__ == "WandbLogger":
        import wandb

        wandb.finish()

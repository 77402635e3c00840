"""Model selection on validation mAP: ``best.ckpt``, early stopping, and the best epoch's metrics.

``best.ckpt`` is written by Lightning's ``ModelCheckpoint`` whenever ``val_map`` beats
every earlier validation (strictly: a tie keeps the earlier epoch); ``--patience N``
stops training after N validations in a row without such a gain (Lightning's
``EarlyStopping``). The best epoch's metrics are read back from ``metrics.csv`` (which a resumed run continues)
for the epoch that ``best.ckpt`` says it holds.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

MONITOR = "val_map"


def best_checkpoint(out: Path) -> L.pytorch.callbacks.ModelCheckpoint:
    """``out/best.ckpt``: the weights of the validation with the highest ``val_map`` so far."""
    return L.pytorch.callbacks.ModelCheckpoint(dirpath=out, filename="best", monitor=MONITOR, mode="max",
                                               save_top_k=1, auto_insert_metric_name=False,
                                               enable_version_counter=False)


def early_stopping(patience: int) -> L.pytorch.callbacks.EarlyStopping:
    """Stop after ``patience`` validations in a row whose ``val_map`` is no higher than the best."""
    return L.pytorch.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=patience, min_delta=0.0,
                                             check_on_train_epoch_end=False)


def best_validation(rows: list[dict], best_ckpt: Path) -> dict | None:
    """metrics.json's ``best``: the epoch and global step at which ``best_ckpt`` was written and
    that epoch's validation metrics from ``metrics.csv``'s ``rows``; None without a best.ckpt."""
    if not best_ckpt.is_file():
        return None
    # mmap: the epoch and step without reading the weights
    ckpt = torch.load(best_ckpt, map_location="cpu", weights_only=True, mmap=True)
    epoch, step = int(ckpt["epoch"]), int(ckpt["global_step"])
    del ckpt
    validations = [r for r in rows if r.get(MONITOR) not in (None, "") and int(float(r["epoch"])) == epoch]
    metrics = validations[-1] if validations else {}
    return {"epoch": epoch, "step": step,
            **{k: float(v) for k, v in metrics.items() if k.startswith("val_") and v not in (None, "")}}

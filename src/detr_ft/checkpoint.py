"""Checkpoints: written atomically, read without running code, turned back into models.

A detr-ft checkpoint is a Lightning checkpoint with one extra entry,
``"detr_ft"``: the model config, the resize rule and the categories, so a
model can be rebuilt offline from the file alone. Reading one needs torch, not
Lightning, whose import takes seconds (``predict``, ``eval`` and ``export`` do
without it); training writes them through ``resume.AtomicCheckpointIO``.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from detr_ft.errors import UserError, first_line
from detr_ft.types import Categories, ResizeSpec


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``: tensors and plain containers only.

    Anything whose unpickling would import a function or class (code) is refused
    before it runs; truncated or corrupt files too (the zip entries' CRC32 is
    checked first, since ``torch.load`` itself does not notice flipped bytes in
    tensor data). Each with a one-line ``UserError``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; pass --ckpt-path with a file written by 'detr-ft train'")
    corrupt = (f"checkpoint {path} is truncated or corrupt ({{}}); "
               f"use another checkpoint (e.g. an earlier periodic one)")
    try:
        if path.stat().st_size == 0:
            raise UserError(corrupt.format("empty file"))
        if not zipfile.is_zipfile(path):  # what torch.save writes; a truncated one has no directory
            raise UserError(corrupt.format("not a complete PyTorch zip archive"))
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise UserError(corrupt.format(f"CRC mismatch in {bad}"))
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except UserError:
        raise
    except pickle.UnpicklingError as e:
        code = re.search(r"GLOBAL ([\w.]+)", str(e))
        if code is None:
            raise UserError(corrupt.format(first_line(e, TORCH_LOAD_BOILERPLATE))) from None
        raise UserError(f"checkpoint {path} was refused: loading it would import {code.group(1)}, which a "
                        f"detr-ft checkpoint never needs (weights_only); only load checkpoints you trust") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, UnicodeDecodeError, KeyError) as e:
        raise UserError(corrupt.format(first_line(e, TORCH_LOAD_BOILERPLATE))) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict)")
    return ckpt


# torch's weights_only errors start with these lines; the informative one follows
TORCH_LOAD_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def model_from_checkpoint(path: Path, ckpt: dict | None = None):
    """Rebuild (model, resize, categories, family) from a detr-ft checkpoint, in eval mode.

    ``ckpt``: the checkpoint at ``path`` when the caller has already read it (``load_checkpoint``).
    """
    from transformers import AutoConfig

    from detr_ft.model.build import model_from_config, portable_config, unfreeze_batch_norm
    from detr_ft.model.families import family_named

    if ckpt is None:
        ckpt = load_checkpoint(path)
    info = ckpt.get("detr_ft")
    if not isinstance(info, dict):
        raise UserError(f"checkpoint {path} was not written by detr-ft train (no model description in it)")
    cfg = portable_config(dict(info["model_config"]))  # written by transformers 4.x or 5.x, read by either
    family_named(cfg["model_type"]).require_available(f"checkpoint {path}")
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    model = model_from_config(config)
    if info.get("trainable_batch_norm"):
        unfreeze_batch_norm(model)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise UserError(f"checkpoint {path} does not match its own model description "
                        f"({len(missing)} missing weights, e.g. {missing[0]})")
    model.eval()
    resize = ResizeSpec.from_dict(info["resize"])
    return model, resize, Categories.from_dict(info["categories"]), info.get("family", config.model_type)

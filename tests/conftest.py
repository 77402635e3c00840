"""Shared fixtures: small synthetic datasets and one briefly trained checkpoint.

Everything is offline: models come from configs, data from the generator.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """16 training and 8 validation images, long side 96 px."""
    from detr_ft.data.synthetic import SyntheticSpec, generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, train=16, val=8, seed=3, spec=SyntheticSpec(size=96, max_objects=4))
    return out


@pytest.fixture(scope="session")
def trained_run(synthetic_dir, tmp_path_factory) -> Path:
    """A detr-tiny run of a few steps through the CLI; its output dir."""
    from detr_ft.cli import main

    out = tmp_path_factory.mktemp("run")
    rc = main(["train", "--data-dir", str(synthetic_dir), "--model", "detr-tiny", "--max-epochs", "2",
               "--batch-size", "8", "--num-workers", "0", "--output-dir", str(out), "--max-inf-frames", "2"])
    assert rc == 0
    return out


@pytest.fixture
def torch_load_weights_only(monkeypatch) -> list:
    """Spies on ``torch.load``: the list of its calls' ``weights_only`` arguments, in order."""
    import torch

    seen: list = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return seen

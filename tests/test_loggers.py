"""``--logger mlflow`` and ``--logger wandb``: a short run logs through each, and the logged loss reads back.

Each runs where its package is installed (the ``mlflow`` and ``wandb`` extras, both in ``dev``) and
skips, saying why, where it is not.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from detr_ft.cli import main
from detr_ft.config import TrainConfig
from detr_ft.plots import read_metrics_csv


def mlflow_losses(out: Path) -> tuple[list[float], str]:
    """(train_loss of each step, the --model setting) of the one run in the default file store,
    OUT/mlruns, read with MLflow's client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("detr-ft")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == out.name and run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
    return [m.value for m in history], run.data.params["model"]


def wandb_records(path: Path) -> list[bytes]:
    """The records of a W&B run file (``run-*.wandb``): a 7-byte file header, then records in 32 KiB
    blocks, each with a 7-byte header (CRC32, length, kind: 1 whole, 2 first, 3 middle, 4 last part)."""
    data, block, pos = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    records, part = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(part)
            part = b""
    return records


def wandb_losses(out: Path) -> tuple[list[float], str]:
    """(train_loss of each history row, the --model setting) of the offline run in OUT/wandb."""
    from wandb.proto import wandb_internal_pb2

    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")  # offline: no network, no account
    records: list = []
    deadline = time.monotonic() + 60
    # wandb.finish() returns before W&B's service process has written the run's last records
    while not any(r.WhichOneof("record_type") == "exit" for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = [wandb_internal_pb2.Record.FromString(raw) for raw in wandb_records(run_file)]
    losses, config = [], {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
            losses += [items["train_loss"]] if "train_loss" in items else []
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
    return losses, config.get("model")


@pytest.mark.parametrize("logger, read", [("mlflow", mlflow_losses), ("wandb", wandb_losses)])
def test_a_logged_metric_reads_back_from_the_tracker(logger, read, synthetic_dir, tmp_path, monkeypatch):
    pytest.importorskip(logger, reason=f"{logger} is not installed: pip install 'detr-ft[{logger}]'")
    from detr_ft.train import fit

    for var in ("WANDB_MODE", "MLFLOW_TRACKING_URI"):  # the defaults: offline W&B, a file store in the run
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    fit(TrainConfig(output_dir=str(out), data_dir=str(synthetic_dir), model="detr-tiny", max_steps=2,
                    batch_size=8, num_workers=0, train_only=True, max_inf_frames=0, logger=logger))
    if logger == "wandb":  # finished: the next run in this process starts its own instead of joining this one
        assert __import__("wandb").run is None
    expected = [float(r["train_loss"]) for r in read_metrics_csv(out / "metrics.csv") if r["train_loss"]]
    assert len(expected) == 2
    losses, model = read(out)
    assert losses == pytest.approx(expected, rel=1e-6)
    assert model in ("detr-tiny", {"value": "detr-tiny"})  # the run's settings too (W&B wraps each value)


@pytest.mark.parametrize("logger", ["mlflow", "wandb"])
def test_a_missing_logger_package_is_a_one_line_error(logger, synthetic_dir, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == logger else real(name, *a))
    rc = main(["train", "--data-dir", str(synthetic_dir), "--model", "detr-tiny", "--logger", logger,
               "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"--logger {logger} needs its package: pip install 'detr-ft[{logger}]'" in err

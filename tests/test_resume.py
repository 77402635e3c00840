"""Crash-safe resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one.

Also: metrics.csv continues across a resume, the random state of every step is
restored (dropout), and truncated or corrupt checkpoints give a clear error.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detr_ft.cli import main
from detr_ft.config import TrainConfig
from detr_ft.resume import ContinuingCSVWriter

EPOCHS = 3


def train_command(out: Path, data: Path, *extra: str) -> list[str]:
    """A deterministic detr-tiny run: 2 steps per epoch, a checkpoint every epoch, cosine schedule with
    warm-up (so the scheduler state matters), an EMA of the weights (its state matters too), validation
    every epoch, every augmentation on."""
    return [sys.executable, "-m", "detr_ft", "train", "--data-dir", str(data), "--model", "detr-tiny",
            "--max-epochs", str(EPOCHS), "--batch-size", "8", "--num-workers", "0", "--deterministic",
            "--ckpt-store-interval-epochs", "1", "--lr-schedule", "cosine", "--warmup-steps", "3",
            "--ema", "--ema-decay", "0.9", "--ema-warmup-steps", "2", "--max-inf-frames", "0", "--augment", "strong",
            "--output-dir", str(out), *extra]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_killed_run_resumes_bit_identical_to_an_uninterrupted_one(synthetic_dir, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = subprocess.Popen(train_command(full, synthetic_dir), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(train_command(killed, synthetic_dir), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    second = killed / "epoch001.ckpt"  # appears complete or not at all (atomic rename)
    deadline = time.monotonic() + 600
    while not second.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(60) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed / "metrics.json").exists()
    assert torch.load(second, weights_only=True)["epoch"] == 1

    resumed = subprocess.run(train_command(killed, synthetic_dir, "--resume"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    _, ref_err = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_err[-3000:]

    a = torch.load(full / "last.ckpt", weights_only=True)
    b = torch.load(killed / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]) == (EPOCHS - 1, 2 * EPOCHS)
    # the averaged weights (state_dict), the live ones and the number of averaging updates
    for part in ("state_dict", "current_model_state", "averaging_state"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert int(a["averaging_state"]["n_averaged"]) == 2 * EPOCHS
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["lr_schedulers"] == b["lr_schedulers"]
    # metrics.csv: the rows of the killed run up to its checkpoint, then the resumed run's, none twice
    assert rows(killed / "metrics.csv") == rows(full / "metrics.csv")
    assert len([r for r in rows(full / "metrics.csv") if r["train_loss"]]) == 2 * EPOCHS


def test_dropout_random_state_is_restored_on_resume(synthetic_dir, tmp_path, monkeypatch):
    """With dropout the random numbers matter: a resumed run draws the same ones as an uninterrupted run."""
    from detr_ft.model import build
    from detr_ft.train import fit

    factory, resize = build.PRESETS["detr-tiny"]

    def with_dropout(num_labels):
        config = factory(num_labels)
        config.dropout = config.attention_dropout = 0.2
        return config

    monkeypatch.setitem(build.PRESETS, "detr-tiny", (with_dropout, resize))

    def config(out: Path, epochs: int, resume: bool = False) -> TrainConfig:
        return TrainConfig(output_dir=str(out), data_dir=str(synthetic_dir), model="detr-tiny", max_epochs=epochs,
                           batch_size=8, num_workers=0, deterministic=True, train_only=True, resume=resume)

    _, full, summary = fit(config(tmp_path / "full", 2))
    fit(config(tmp_path / "part", 1))
    _, resumed, _ = fit(config(tmp_path / "part", 2, resume=True))
    assert not (tmp_path / "full" / "best.ckpt").exists() and summary["best"] is None  # --train-only
    assert full.model.config.dropout == 0.2
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_pretrained_backbone_with_fused_norms_resumes_bit_identical(synthetic_dir, tmp_path):
    """The path of fine-tuning a hub checkpoint: frozen batch norms fused into the convolutions in
    training, a checkpoint in the unfused layout, loaded back into a fused model on --resume."""
    from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

    from detr_ft.model.speed import FrozenNormConv2d
    from detr_ft.train import fit

    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                            layer_type="bottleneck", out_features=["stage4"])
    torch.manual_seed(0)
    model = DetrForObjectDetection(DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8, num_labels=5))
    with torch.no_grad():  # statistics away from the identity, as pretrained ones are
        for m in model.modules():
            if type(m).__name__ == "DetrFrozenBatchNorm2d":
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.uniform_(-0.5, 0.5)
    model.save_pretrained(tmp_path / "model")

    def config(out: Path, epochs: int, resume: bool = False) -> TrainConfig:
        return TrainConfig(output_dir=str(out), data_dir=str(synthetic_dir), model=str(tmp_path / "model"),
                           max_epochs=epochs, batch_size=8, num_workers=0, deterministic=True, train_only=True,
                           resume=resume, pad=False, num_buckets=0)

    _, full, _ = fit(config(tmp_path / "full", 2))
    fit(config(tmp_path / "part", 1))
    _, resumed, _ = fit(config(tmp_path / "part", 2, resume=True))
    frozen = sum(type(m).__name__ == "DetrFrozenBatchNorm2d" for m in model.modules())
    assert sum(isinstance(m, FrozenNormConv2d) for m in resumed.model.modules()) == frozen == 16  # 1 + 4 * 3 + 3
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    assert a["state_dict"].keys() == b["state_dict"].keys() == {f"model.{k}" for k in model.state_dict()}
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    backbone_weights = [k for k in a["state_dict"] if "stages.1." in k and k.endswith("convolution.weight")]
    assert backbone_weights and not torch.equal(a["state_dict"][backbone_weights[0]],
                                                model.state_dict()[backbone_weights[0][len("model."):]])


def write_csv(path: Path, header: list[str], records: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(records)


EARLIER = [{"epoch": 0, "step": 0, "train_loss": 3.0, "val_map": ""},
           {"epoch": 0, "step": 1, "train_loss": 2.5, "val_map": ""},
           {"epoch": 0, "step": 1, "train_loss": "", "val_map": 0.1},
           {"epoch": 1, "step": 2, "train_loss": 2.0, "val_map": ""},
           {"epoch": 1, "step": 3, "train_loss": 1.5, "val_map": ""},
           {"epoch": 1, "step": 3, "train_loss": "", "val_map": 0.2},
           {"epoch": 2, "step": 4, "train_loss": 9.9, "val_map": ""}]  # logged after the checkpoint, then killed


def test_csv_keeps_rows_up_to_the_checkpoint_and_appends(tmp_path):
    path = tmp_path / "metrics.csv"
    write_csv(path, ["epoch", "step", "train_loss", "val_map"], EARLIER)
    writer = ContinuingCSVWriter(str(tmp_path), keep_until=(1, 4))  # checkpoint: end of epoch 1, 4 steps done
    assert [(r["epoch"], r["step"]) for r in rows(path)] == [("0", "0"), ("0", "1"), ("0", "1"), ("1", "2"),
                                                             ("1", "3"), ("1", "3")]
    writer.log_metrics({"epoch": 2, "train_loss": torch.tensor(1.25)}, step=4)  # written at once
    assert rows(path)[-1] == {"epoch": "2", "step": "4", "train_loss": "1.25", "val_map": ""}
    writer.log_metrics({"epoch": 2, "val_map": 0.3, "val_map_50": 0.5}, step=4)  # a new column
    after = rows(path)
    assert len(after) == 8 and after[0]["train_loss"] == "3.0" and after[0]["val_map_50"] == ""
    assert list(after[0]) == ["epoch", "step", "train_loss", "val_map", "val_map_50"]
    assert after[-1]["val_map_50"] == "0.5"


def test_csv_of_a_fresh_run_starts_over(tmp_path):
    write_csv(tmp_path / "metrics.csv", ["epoch", "step", "train_loss", "val_map"], EARLIER)
    writer = ContinuingCSVWriter(str(tmp_path), keep_until=None)
    assert not (tmp_path / "metrics.csv").exists()
    writer.log_metrics({"epoch": 0, "train_loss": 1.0}, step=0)
    assert rows(tmp_path / "metrics.csv") == [{"epoch": "0", "step": "0", "train_loss": "1.0"}]


def damage(src: Path, dst: Path, how: str) -> Path:
    data = bytearray(src.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "flipped":  # bytes inside the tensor data: torch.load alone would not notice
        middle = len(data) // 2
        data[middle:middle + 8] = bytes(255 - b for b in data[middle:middle + 8])
    else:
        data = bytearray(b"\x00" * 1000)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("how", ["truncated", "flipped", "zeros"])
@pytest.mark.parametrize("command", ["resume", "eval"])
def test_truncated_or_corrupt_checkpoint_is_a_clear_error(how, command, trained_run, synthetic_dir, tmp_path,
                                                          capsys):
    ckpt = damage(trained_run / "last.ckpt", tmp_path / "run" / "last.ckpt", how)
    data = ["--data-dir", str(synthetic_dir)]
    if command == "resume":
        argv = ["train", "--model", "detr-tiny", "--max-epochs", "3", "--num-workers", "0", *data, "--resume",
                "--output-dir", str(ckpt.parent)]
    else:
        argv = ["eval", "--ckpt-path", str(ckpt), *data, "--output-dir", str(tmp_path / "eval")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"checkpoint {ckpt} is truncated or corrupt" in err
    assert "use another checkpoint" in err and "Traceback" not in err


def test_resume_removes_half_written_temporaries_and_reads_weights_only(trained_run, synthetic_dir, tmp_path,
                                                                       torch_load_weights_only):
    """A run killed during a save leaves '.last.ckpt.XXXX.tmp'; resuming ignores and removes it. Every
    checkpoint read is weights_only, and the checkpoint is read once (detr-ft's check hands it to
    Lightning's restore)."""
    from detr_ft.train import fit

    weights_only = torch_load_weights_only
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.ckpt").write_bytes((trained_run / "last.ckpt").read_bytes())
    stale = out / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    os.utime(stale)  # newer than last.ckpt: must still not be taken for a checkpoint
    trainer, _, _ = fit(TrainConfig(output_dir=str(out), data_dir=str(synthetic_dir), model="detr-tiny",
                                    max_epochs=3, batch_size=8, num_workers=0, resume=True, max_inf_frames=0))
    assert not stale.exists() and trainer.current_epoch == 3
    # the resumed checkpoint once; then best.ckpt once, memory-mapped, for metrics.json's best epoch and step
    assert weights_only == [True, True]


def test_resume_with_another_model_is_a_clear_error(trained_run, synthetic_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.ckpt").write_bytes((trained_run / "last.ckpt").read_bytes())  # a detr-tiny run
    rc = main(["train", "--model", "conditional-detr-tiny", "--data-dir", str(synthetic_dir), "--max-epochs", "3",
               "--num-workers", "0", "--resume", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"--resume: {out / 'last.ckpt'}" in err and "another model" in err and "--model" in err


@pytest.mark.parametrize("ema", ["--ema", "--no-ema"])
def test_resume_with_another_ema_setting_is_a_clear_error(ema, trained_run, synthetic_dir, tmp_path, capsys):
    """A checkpoint keeps the live weights apart only when written with --ema: resuming must say which."""
    out = tmp_path / "run"
    out.mkdir()
    ckpt = torch.load(trained_run / "last.ckpt", weights_only=True)  # written without --ema
    if ema == "--no-ema":  # as --ema writes it: the average in state_dict, the live weights beside it
        ckpt["current_model_state"], ckpt["averaging_state"] = ckpt["state_dict"], {"n_averaged": torch.tensor(2)}
    torch.save(ckpt, out / "last.ckpt")
    rc = main(["train", "--model", "detr-tiny", "--data-dir", str(synthetic_dir), "--max-epochs", "3",
               "--num-workers", "0", "--resume", ema, "--output-dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"--resume: {out / 'last.ckpt'} was written {'without' if ema == '--ema' else 'with'} --ema" in err


def test_a_run_resumed_under_autocast_keeps_its_own_optimizer_kernel(trained_run, synthetic_dir, tmp_path):
    """float32 training on a CPU steps AdamW with torch's fused kernel; --autocast does not (Lightning's
    gradient clipping refuses an optimizer built fused there). A run resumed with other flags steps with
    the kernel it chooses itself, not the one torch's load_state_dict would restore with the saved options."""
    ckpt = torch.load(trained_run / "last.ckpt", weights_only=True)  # float32 on the CPU
    assert {g["fused"] for g in ckpt["optimizer_states"][0]["param_groups"]} == {True}
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.ckpt").write_bytes((trained_run / "last.ckpt").read_bytes())
    rc = main(["train", "--model", "detr-tiny", "--data-dir", str(synthetic_dir), "--max-epochs", "3",
               "--batch-size", "8", "--num-workers", "0", "--max-inf-frames", "0", "--resume", "--autocast",
               "--output-dir", str(out)])
    assert rc == 0
    resumed = torch.load(out / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == ckpt["global_step"] + 2  # it trained on: one more epoch of 2 steps
    assert {g["fused"] for g in resumed["optimizer_states"][0]["param_groups"]} == {None}


def test_a_checkpoint_write_that_fails_midway_leaves_the_previous_last_ckpt(varied_model, tmp_path, monkeypatch):
    """Training's checkpoint IO writes ``last.ckpt`` atomically: a save that dies after writing part of
    the file (a full disk, a kill) leaves the previous ``last.ckpt`` whole and loadable, and no
    temporary file behind."""
    import io

    from detr_ft import checkpoint as checkpoint_module
    from detr_ft.checkpoint import load_checkpoint
    from detr_ft.resume import AtomicCheckpointIO

    io_plugin = AtomicCheckpointIO()
    first = load_checkpoint(varied_model.ckpt)
    io_plugin.save_checkpoint(first, tmp_path / "last.ckpt")
    second = {**first, "global_step": 7,
              "state_dict": {k: v + 1 if v.is_floating_point() else v for k, v in first["state_dict"].items()}}
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        whole = io.BytesIO()
        real_save(obj, whole, *args, **kwargs)
        part = whole.getvalue()[: len(whole.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(part)
        else:
            f.write(part)
            f.flush()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", dies_midway)
    with pytest.raises(OSError, match="No space"):
        io_plugin.save_checkpoint(second, tmp_path / "last.ckpt")
    monkeypatch.undo()
    kept = load_checkpoint(tmp_path / "last.ckpt")
    assert kept["global_step"] == first["global_step"]
    assert all(torch.equal(kept["state_dict"][k], v) for k, v in first["state_dict"].items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

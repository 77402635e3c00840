"""The training recipe: EMA of the weights, best.ckpt, early stopping, gradient accumulation, lr schedules.

One short detr-tiny run with everything on serves most assertions: it records the live
weights after every optimizer step, the learning rate of every step and the weights the
validation ran with, and its validation mAP follows a script (the real metric of a few
steps of training is 0 throughout), so the best epoch and the early stop are known.
"""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch

import detr_ft.engine as engine
from detr_ft.checkpoint import model_from_checkpoint
from detr_ft.cli import main
from detr_ft.config import TrainConfig
from detr_ft.plots import read_metrics_csv
from detr_ft.schedule import SCHEDULES, lr_factor
from detr_ft.train import fit

SCRIPTED_MAP = [0.1, 0.3, 0.2, 0.25, 0.28, 0.9]  # val_map of epochs 0, 1, ...: best at 1, then a plateau
PATIENCE = 3
MAX_EPOCHS = 6
STEPS_PER_EPOCH = 1  # 4 images, batches of 2, an optimizer step every 2 batches
ACCUMULATE = 2
DECAY, EMA_WARMUP = 0.8, 2
LR, WARMUP = 1e-3, 2


class Recorder(L.Callback):
    """Live weights after each optimizer step, each step's learning rate, the weights validation ran with."""

    def __init__(self):
        self.live: dict[int, dict] = {}  # global step -> state dict after it
        self.lrs: list[float] = []
        self.batches = 0
        self.validated_with: dict[int, dict] = {}  # epoch -> state dict during its validation

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches += 1

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step and trainer.global_step not in self.live:  # after an optimizer step
            self.live[trainer.global_step] = snapshot(module)

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        self.validated_with.setdefault(trainer.current_epoch, snapshot(module))


def snapshot(module) -> dict:
    return {k: v.detach().clone().double() for k, v in module.state_dict().items() if v.is_floating_point()}


def hand_emas(live: dict[int, dict]) -> dict[int, dict]:
    """EMA of the live weights after each step k: the first copied, then avg = d avg + (1 - d) w with
    d = DECAY * (1 - exp(-k / EMA_WARMUP)) at the k-th update."""
    averages = {1: dict(live[1])}
    for k in range(2, max(live) + 1):
        d = DECAY * (1 - math.exp(-k / EMA_WARMUP))
        averages[k] = {name: d * avg + (1 - d) * live[k][name] for name, avg in averages[k - 1].items()}
    return averages


def assert_weights(actual: dict, expected: dict, atol: float = 1e-6) -> None:
    """Every tensor of ``expected`` is in ``actual`` and within ``atol`` of it."""
    assert expected and set(expected) <= set(actual)
    gaps = {name: float((actual[name].double() - want).abs().max()) for name, want in expected.items()}
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= atol, f"{worst} differs by {gaps[worst]:.3g}"


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """(output dir, recorder, trainer, module, summary) of the recipe run: EMA, step schedule with
    warm-up, accumulation, patience, validation mAP as scripted."""
    from detr_ft.data.synthetic import SyntheticSpec, generate

    data = tmp_path_factory.mktemp("recipe-data")
    generate(data, train=4, val=2, seed=3, spec=SyntheticSpec(size=64, max_objects=3))
    out = tmp_path_factory.mktemp("recipe")
    real = engine.coco_metrics
    epochs_seen = []

    def scripted(ground_truth, results, categories):
        metrics = real(ground_truth, results, categories)
        metrics["map"] = SCRIPTED_MAP[len(epochs_seen)]
        epochs_seen.append(1)
        return metrics

    recorder = Recorder()
    cfg = TrainConfig(output_dir=str(out), data_dir=str(data), model="detr-tiny", max_epochs=MAX_EPOCHS,
                      batch_size=2, num_workers=0, deterministic=True, max_inf_frames=0, lr=LR, lr_backbone=LR,
                      lr_schedule="step", warmup_steps=WARMUP, accumulate_grad_batches=ACCUMULATE,
                      patience=PATIENCE, ema=True, ema_decay=DECAY, ema_warmup_steps=EMA_WARMUP)
    engine.coco_metrics = scripted
    try:
        trainer, module, summary = fit(cfg, extra_callbacks=(recorder,))
    finally:
        engine.coco_metrics = real
    return out, recorder, trainer, module, summary


def expected_stop(maps: list[float], patience: int) -> int:
    """The epoch after whose validation EarlyStopping stops: `patience` epochs after the last gain."""
    best = -1.0
    since = 0
    for epoch, m in enumerate(maps):
        best, since = (m, 0) if m > best else (best, since + 1)
        if since >= patience:
            return epoch
    return len(maps) - 1


def test_early_stopping_stops_after_patience_epochs_without_a_gain(recipe_run):
    out, recorder, trainer, _, summary = recipe_run
    stop = expected_stop(SCRIPTED_MAP[:MAX_EPOCHS], PATIENCE)
    assert stop == 4 < MAX_EPOCHS - 1
    validations = [r for r in read_metrics_csv(out / "metrics.csv") if r["val_map"]]
    assert [float(r["val_map"]) for r in validations] == pytest.approx(SCRIPTED_MAP[:stop + 1])
    assert trainer.global_step == STEPS_PER_EPOCH * (stop + 1)
    assert summary["best"]["stopped_early"] is True


def test_best_checkpoint_holds_the_best_validation_epoch_with_averaged_weights(recipe_run):
    out, recorder, _, _, summary = recipe_run
    best_epoch = max(range(5), key=lambda e: (SCRIPTED_MAP[e], -e))
    best_step = STEPS_PER_EPOCH * (best_epoch + 1)
    ckpt = torch.load(out / "best.ckpt", weights_only=True)
    assert (ckpt["epoch"], ckpt["global_step"]) == (best_epoch, best_step) == (1, 2)
    # the averaged weights of that epoch, which its validation ran with; the live ones kept apart for resume
    assert_weights(ckpt["state_dict"], hand_emas(recorder.live)[best_step])
    assert_weights(ckpt["state_dict"], recorder.validated_with[best_epoch], atol=0)
    assert_weights(ckpt["current_model_state"], recorder.live[best_step], atol=0)
    best = summary["best"]
    assert (best["epoch"], best["step"], best["val_map"]) == (best_epoch, best_step, pytest.approx(0.3))
    assert json.loads((out / "metrics.json").read_text())["best"]["epoch"] == best_epoch


def test_validation_and_saved_weights_are_the_ema_of_the_live_weights(recipe_run):
    out, recorder, trainer, module, _ = recipe_run
    steps = trainer.global_step
    assert sorted(recorder.live) == list(range(1, steps + 1))
    assert DECAY * (1 - math.exp(-steps / EMA_WARMUP)) > 0.5  # far from the live weights: the check means something
    averages = hand_emas(recorder.live)
    for epoch, seen in recorder.validated_with.items():
        assert_weights(seen, averages[STEPS_PER_EPOCH * (epoch + 1)])
    final = averages[steps]
    last = torch.load(out / "last.ckpt", weights_only=True)
    assert_weights(last["state_dict"], final)
    assert not torch.equal(last["state_dict"]["model.class_labels_classifier.weight"],
                           last["current_model_state"]["model.class_labels_classifier.weight"])
    # eval, predict and export rebuild the model from the checkpoint's state_dict: the average
    model = model_from_checkpoint(out / "last.ckpt")[0]
    assert_weights({f"model.{k}": v for k, v in model.state_dict().items()}, final)
    assert_weights(snapshot(module), final)  # after training the module holds the average (sample predictions)


def test_step_schedule_warms_up_then_drops_tenfold_at_two_thirds(recipe_run):
    _, recorder, trainer, _, _ = recipe_run
    planned = MAX_EPOCHS * STEPS_PER_EPOCH
    expected = [LR * ((s + 1) / WARMUP if s < WARMUP else (0.1 if s >= planned * 2 / 3 else 1.0))
                for s in range(trainer.global_step)]
    assert recorder.lrs == pytest.approx(expected)
    assert 0.1 * LR in recorder.lrs  # the early stop came after the drop


def test_accumulation_steps_the_optimizer_every_n_batches(recipe_run):
    out, recorder, trainer, _, _ = recipe_run
    assert recorder.batches == ACCUMULATE * trainer.global_step
    adam = torch.load(out / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
    assert {int(s["step"]) for s in adam.values()} == {trainer.global_step}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_warms_up(schedule):
    factor = lr_factor(schedule, warmup=4, total=40)
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    after = {"constant": 1.0, "cosine": 0.5, "step": 1.0}[schedule]  # at the middle of the run after warm-up
    assert factor(22) == pytest.approx(after)
    assert factor(39) == pytest.approx({"constant": 1.0, "cosine": 0.0, "step": 0.1}[schedule], abs=0.01)


def test_the_default_run_names_its_best_epoch(trained_run):
    """Without --ema or --patience too: best.ckpt and metrics.json's best (--train-only: see test_resume)."""
    ckpt = torch.load(trained_run / "best.ckpt", weights_only=True, mmap=True)
    best = json.loads((trained_run / "metrics.json").read_text())["best"]
    assert (best["epoch"], best["step"]) == (ckpt["epoch"], ckpt["global_step"]) and "val_map" in best
    assert "current_model_state" not in ckpt


@pytest.mark.parametrize("flags, message", [
    (["--ema-decay", "1"], "--ema-decay must be between 0 and 1"),
    (["--ema-decay", "0"], "--ema-decay must be between 0 and 1"),
    (["--ema-decay", "nan"], "--ema-decay must be between 0 and 1"),
    (["--patience", "-1"], "--patience must be 0 or more"),
    (["--accumulate-grad-batches", "0"], "--accumulate-grad-batches must be at least 1"),
    (["--ema-warmup-steps", "-5"], "--ema-warmup-steps must be 0 or more"),
    (["--patience", "2", "--train-only"], "--patience needs validation"),
])
def test_bad_recipe_settings_are_one_line_errors(flags, message, tmp_path, capsys):
    rc = main(["train", "--data-dir", str(tmp_path), "--model", "detr-tiny", "--output-dir", str(tmp_path / "o"),
               *flags])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("model, expected", [("detr-tiny", "preset"), ("rtdetr-tiny", "preset"),
                                             ("facebook/detr-resnet-50", "pretrained"), ("/some/dir", "pretrained")])
def test_recipe_defaults_follow_the_kind_of_model_and_flags_win(model, expected):
    """--augment auto and an unset --ema become the presets' or the pretrained models' recipe; flags given win."""
    from detr_ft.config import PRESET_RECIPE, PRETRAINED_RECIPE, TrainConfig

    recipe = {"preset": PRESET_RECIPE, "pretrained": PRETRAINED_RECIPE}[expected]
    chosen = TrainConfig(model=model).with_recipe_defaults()
    assert (chosen.augment, chosen.ema) == (recipe.augment, recipe.ema)
    given = TrainConfig(model=model, augment="none", ema=not recipe.ema).with_recipe_defaults()
    assert (given.augment, given.ema) == ("none", not recipe.ema)
    assert PRESET_RECIPE != PRETRAINED_RECIPE  # the README explains why they differ


def test_train_help_names_the_recipe_defaults(capsys):
    from detr_ft.config import PRESET_RECIPE, PRETRAINED_RECIPE

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default: {PRESET_RECIPE.augment} for the tiny presets, {PRETRAINED_RECIPE.augment} for pretrained" in text
    assert "--ema" in text and "for the tiny presets" in text

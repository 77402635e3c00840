"""Layout and fusion (model/speed.py): channels-last convolutions and folded batch norms change
speed, not results."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from detr_ft.data.batching import Collator
from detr_ft.data.coco import load_index
from detr_ft.data.dataset import DetectionDataset
from detr_ft.engine import DetrModule, OptimConfig
from detr_ft.model.build import build_model
from detr_ft.model.outputs import detection_outputs
from detr_ft.model.speed import (FrozenNormConv2d, FusedAwayNorm, fold_batch_norms, fuse_frozen_norms, model_pixels,
                                 use_channels_last)

from conftest import assert_same_detections, coco_as_detections

pytestmark = pytest.mark.compat  # transformers' module layouts differ between 4.57 and 5.x


# bf16 autocast against float32 on the varied model: per query, scores moved by up to 0.019 and boxes by
# up to 1.35 px (measured on its four images)
AUTOCAST_SCORE_TOL = 0.03
AUTOCAST_BOX_TOL = 2.0  # pixels
# bf16 may swap the near-equal top two classes of a query (seen with transformers 4.57's init of the
# varied model: 0.321 vs 0.316): labels are compared where float32's score leaves no near-equal runner-up
AUTOCAST_LABELS_FROM = 0.5 + AUTOCAST_SCORE_TOL


def _batch(index, resize, n=3, train=False):
    ds = DetectionDataset(index, resize, train=train)
    return Collator(resize.mean, resize.std)([ds[i] for i in range(n)]).to_device_normalised("cpu")


def _norms(model) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) or type(m).__name__.endswith("FrozenBatchNorm2d")
               for m in model.modules())


@pytest.mark.parametrize("preset", ["detr-tiny", "conditional-detr-tiny", "rtdetr-tiny"])
def test_folded_batch_norms_predict_the_same(preset, synthetic_dir):
    index = load_index(synthetic_dir, "train")
    torch.manual_seed(0)
    bundle = build_model(preset, index.categories.id2label)
    model = bundle.model.eval()
    with torch.no_grad():  # running statistics away from (0, 1), so that folding has work to do
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        if bundle.family == "rt_detr":  # a random encoder's output is nearly flat: its top-k query selection
            g = torch.Generator().manual_seed(1)  # ties, and float rounding may pick other queries
            for p in model.model.encoder.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    batch = _batch(index, bundle.resize)
    folded = copy.deepcopy(model)
    count = fold_batch_norms(folded)
    assert count > 0 and _norms(folded) == _norms(model) - count
    with torch.no_grad():
        a = detection_outputs(model, batch.pixel_values, batch.pixel_mask, with_aux=False)
        b = detection_outputs(folded, batch.pixel_values, batch.pixel_mask, with_aux=False)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.boxes, b.boxes, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(copy.deepcopy(model).train())


def test_frozen_batch_norms_of_a_resnet_50_fold(synthetic_dir):
    """DETR-R50's backbone: transformers' frozen batch norms (pretrained weights' layout)."""
    from detr_ft.bench.models import r50_config
    from detr_ft.model.build import model_from_config

    index = load_index(synthetic_dir, "train")
    torch.manual_seed(0)
    model = model_from_config(r50_config(index.categories.id2label)).eval()
    frozen = [m for m in model.modules() if type(m).__name__ == "DetrFrozenBatchNorm2d"]
    with torch.no_grad():
        for m in frozen:
            m.running_var.uniform_(0.5, 2.0)
            m.bias.uniform_(-0.2, 0.2)
    folded = copy.deepcopy(model)
    assert fold_batch_norms(folded) == len(frozen) == 53 and _norms(folded) == 0
    # every backbone ReLU works in place: the stem's, and in each of the 16 bottlenecks those of
    # its first two convolutions (the third has none) and the one after the residual sum
    relus = [m for name, m in folded.named_modules() if isinstance(m, nn.ReLU) and ".backbone." in f".{name}"]
    assert len(relus) == 1 + 16 * 3 and all(m.inplace for m in relus)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in model.modules())
    x = torch.randn(1, 3, 64, 96)
    mask = torch.ones(1, 64, 96, dtype=torch.long)
    with torch.no_grad():
        a = detection_outputs(model, x, mask, with_aux=False)
        b = detection_outputs(folded, x, mask, with_aux=False)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)


def _pretrained_like(id2label, seed=0):
    """A small DETR with a bottleneck ResNet as a pretrained checkpoint has it: frozen batch norms
    (statistics away from the identity), stem and first stage frozen."""
    from transformers import DetrConfig, ResNetConfig

    from detr_ft.model.build import model_from_config, set_backbone_trainable

    torch.manual_seed(seed)
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64, 96, 128], depths=[1, 2, 1, 1],
                            layer_type="bottleneck", out_features=["stage4"])
    model = model_from_config(DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8, dropout=0.0, num_labels=len(id2label)))
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "DetrFrozenBatchNorm2d":
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    set_backbone_trainable(model, pretrained=True)
    return model.train()


def _loss_and_grads(module, batch):
    loss = module.compute_loss(batch)["loss"]
    loss.backward()
    grads = {n: p.grad for n, p in module.model.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_fused_frozen_norms_train_the_same(synthetic_dir):
    """A convolution applying its frozen batch norm: the same loss and gradients (float64: the same
    function), the same state dict (keys, values, the norms' buffers), and the fusion survives a
    copy, a pickle and a dtype change (the convolution reads the norm it is handed, not a copy)."""
    import pickle

    from detr_ft.model.build import ModelBundle
    from detr_ft.types import ResizeSpec

    index = load_index(synthetic_dir, "train")
    resize = ResizeSpec(shortest=96, longest=128)
    model = _pretrained_like(index.categories.id2label)
    frozen = [m for m in model.modules() if type(m).__name__ == "DetrFrozenBatchNorm2d"]
    plain = DetrModule(ModelBundle(model, resize, "detr", True), index.categories, OptimConfig()).double()
    fast = copy.deepcopy(plain)
    assert fuse_frozen_norms(fast.model) == len(frozen) == 1 + 5 * 3 + 4  # stem, 5 bottlenecks, 4 shortcuts
    assert fuse_frozen_norms(fast.model) == 0  # once
    assert list(fast.model.state_dict()) == list(plain.model.state_dict())
    for (k, a), b in zip(plain.model.state_dict().items(), fast.model.state_dict().values()):
        assert torch.equal(a, b), k
    convs = [m for m in fast.model.modules() if isinstance(m, FrozenNormConv2d)]
    assert len(convs) == len(frozen) and not any(m.frozen_norm in set(m.children()) for m in convs)

    batch = _batch(index, resize, n=4, train=True)
    batch = replace(batch, pixel_values=batch.pixel_values.double(), boxes=batch.boxes.double())
    loss_plain, grads_plain = _loss_and_grads(plain, batch)
    for name, module in (("fused", fast), ("copied", copy.deepcopy(fast)),
                         ("pickled", pickle.loads(pickle.dumps(fast))),
                         ("cast after fusing", _fused_then_cast(plain))):
        conv = next(m for m in module.model.modules() if isinstance(m, FrozenNormConv2d))
        assert any(conv.frozen_norm is m for m in module.model.modules()), name  # the registered norm itself
        loss, grads = _loss_and_grads(module, batch)
        torch.testing.assert_close(loss, loss_plain, rtol=1e-10, atol=1e-10, msg=name)
        assert set(grads) == set(grads_plain) and any(".backbone." in f".{n}" for n in grads)
        assert not any("embedder" in n or "stages.0." in n for n in grads)  # still frozen
        for n in grads_plain:
            torch.testing.assert_close(grads[n], grads_plain[n], rtol=1e-7, atol=1e-9, msg=f"{name}: {n}")

    # inference folds a fused model as it folds a plain one
    eval_plain, eval_fused = copy.deepcopy(plain.model).eval(), copy.deepcopy(fast.model).eval()
    assert fold_batch_norms(eval_plain) == fold_batch_norms(eval_fused) == len(frozen)
    assert not any(isinstance(m, (FrozenNormConv2d, FusedAwayNorm)) for m in eval_fused.modules())
    with torch.no_grad():
        a = detection_outputs(eval_plain, batch.pixel_values, batch.pixel_mask, with_aux=False)
        b = detection_outputs(eval_fused, batch.pixel_values, batch.pixel_mask, with_aux=False)
        c = detection_outputs(fast.model.eval(), batch.pixel_values, batch.pixel_mask, with_aux=False)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.logits, c.logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("preset", ["conditional-detr-tiny", "rtdetr-tiny"])
def test_fused_frozen_norms_train_the_same_in_other_families(preset, synthetic_dir):
    """Conditional DETR's and RT-DETR's frozen batch norms (as their pretrained checkpoints have
    them) fuse too: the same loss and gradients in float64."""
    from detr_ft.model.build import PRESETS, ModelBundle, model_from_config, set_backbone_trainable

    index = load_index(synthetic_dir, "train")
    factory, resize = PRESETS[preset]
    config = factory(len(index.categories.id2label))
    if hasattr(config, "freeze_backbone_batch_norms"):
        config.freeze_backbone_batch_norms = True
    torch.manual_seed(0)
    model = model_from_config(config).train()
    set_backbone_trainable(model, pretrained=True)  # as a hub checkpoint trains: stages 2-4
    frozen = [m for m in model.modules() if type(m).__name__.endswith("FrozenBatchNorm2d")]
    with torch.no_grad():
        for m in frozen:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    plain = DetrModule(ModelBundle(model, resize, config.model_type, True), index.categories, OptimConfig()).double()
    fast = copy.deepcopy(plain)
    assert fuse_frozen_norms(fast.model) == len(frozen) > 0
    batch = _batch(index, resize, n=4, train=True)
    batch = replace(batch, pixel_values=batch.pixel_values.double(), boxes=batch.boxes.double())
    results = []
    for module in (plain, fast):
        torch.manual_seed(1)  # RT-DETR draws its denoising queries
        results.append(_loss_and_grads(module, batch))
    (loss_plain, grads_plain), (loss_fast, grads_fast) = results
    torch.testing.assert_close(loss_fast, loss_plain, rtol=1e-10, atol=1e-10)
    assert set(grads_fast) == set(grads_plain) and any(".backbone." in f".{n}" for n in grads_plain)
    for n in grads_plain:
        torch.testing.assert_close(grads_fast[n], grads_plain[n], rtol=1e-7, atol=1e-9, msg=n)


def _fused_then_cast(plain):
    module = copy.deepcopy(plain).float()
    fuse_frozen_norms(module.model)
    return module.double()


def test_fused_frozen_norms_compile(synthetic_dir):
    """Dynamo traces the convolution's reference to its norm (no graph break that would split
    every bottleneck); forward and backward as eager."""
    import torch._dynamo

    index = load_index(synthetic_dir, "train")
    model = _pretrained_like(index.categories.id2label)
    fuse_frozen_norms(model)
    x, mask = torch.randn(2, 3, 64, 96), torch.ones(2, 64, 96, dtype=torch.long)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model.model.backbone)(x, mask)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    a, b = model(pixel_values=x, pixel_mask=mask), compiled(pixel_values=x, pixel_mask=mask)
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    grads = []
    for out in (a, b):
        model.zero_grad(set_to_none=True)
        (out.logits.square().mean() + out.pred_boxes.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1]) and any(".backbone." in f".{n}" for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-5, msg=n)


def test_train_fuses_a_pretrained_backbones_norms(synthetic_dir, tmp_path):
    """detr-ft train on a pretrained-like local model: its frozen norms fused, the checkpoint the
    unfused model's state dict (keys and shapes), which a fresh model loads strictly."""
    from detr_ft.config import TrainConfig
    from detr_ft.train import fit

    index = load_index(synthetic_dir, "train")
    model_dir = tmp_path / "model"
    _pretrained_like(index.categories.id2label).save_pretrained(model_dir)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), data_dir=str(synthetic_dir), model=str(model_dir),
                      max_steps=1, batch_size=2, num_workers=0, train_only=True)
    module = fit(cfg)[1]
    assert sum(isinstance(m, FrozenNormConv2d) for m in module.model.modules()) == 20
    state = torch.load(tmp_path / "run" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    fresh = _pretrained_like(index.categories.id2label)
    expected = {f"model.{k}": v.shape for k, v in fresh.state_dict().items()}
    assert {k: v.shape for k, v in state.items()} == expected
    fresh.load_state_dict({k[len("model."):]: v for k, v in state.items()}, strict=True)


@pytest.mark.parametrize("preset", ["detr-tiny", "rtdetr-tiny"])
def test_channels_last_trains_the_same(preset, synthetic_dir):
    """One loss and its gradients, channels-last against NCHW, in float64 (in float32 the trainable
    batch norms' backward magnifies the two layouts' rounding to ~1e-3): the same function. The
    model gets its pixels channels-last."""
    index = load_index(synthetic_dir, "train")
    torch.manual_seed(0)
    bundle = build_model(preset, index.categories.id2label)
    plain = DetrModule(bundle, index.categories, OptimConfig()).double()
    fast = copy.deepcopy(plain)
    use_channels_last(fast.model)
    convs = [m for m in fast.model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    batch = _batch(index, bundle.resize, n=4, train=True)
    assert model_pixels(fast.model, batch.pixel_values).is_contiguous(memory_format=torch.channels_last)
    assert model_pixels(plain.model, batch.pixel_values) is batch.pixel_values
    batch = replace(batch, pixel_values=batch.pixel_values.double(), boxes=batch.boxes.double())
    results = {}
    for name, module in (("plain", plain), ("fast", fast)):
        torch.manual_seed(1)  # RT-DETR draws its denoising queries
        loss = module.compute_loss(batch)["loss"]
        loss.backward()
        results[name] = loss.detach(), {n: p.grad for n, p in module.model.named_parameters() if p.grad is not None}
    (loss_plain, grads_plain), (loss_fast, grads_fast) = results["plain"], results["fast"]
    torch.testing.assert_close(loss_plain, loss_fast, rtol=1e-10, atol=1e-10)
    assert set(grads_plain) == set(grads_fast) and len(grads_plain) > 10
    for n in grads_plain:
        torch.testing.assert_close(grads_plain[n], grads_fast[n], rtol=1e-7, atol=1e-9, msg=n)


def test_train_uses_channels_last_unless_told_not_to(synthetic_dir, tmp_path):
    from detr_ft.config import TrainConfig
    from detr_ft.train import fit

    def conv_layouts(**kw):
        cfg = TrainConfig(output_dir=str(tmp_path / str(len(kw))), data_dir=str(synthetic_dir), model="detr-tiny",
                          max_steps=1, batch_size=8, num_workers=0, train_only=True, **kw)
        module = fit(cfg)[1]
        return {c.weight.is_contiguous(memory_format=torch.channels_last)  # 1x1 kernels are both layouts at once
                for c in module.model.modules() if isinstance(c, nn.Conv2d) and c.kernel_size != (1, 1)}

    assert conv_layouts() == {True}
    assert conv_layouts(channels_last=False) == {False}


def test_predict_and_eval_with_and_without_channels_last_agree(varied_model, synthetic_dir, tmp_path, monkeypatch):
    """The CLI's --no-channels-last reaches the Detector; both layouts give the same detections, query by
    query (a model whose queries differ, on images of every orientation)."""
    import json

    from detr_ft.cli import main
    from detr_ft.model import speed

    converted = []
    real = speed.use_channels_last
    monkeypatch.setattr(speed, "use_channels_last", lambda model: converted.append(1) or real(model))
    ckpt, data = str(varied_model.ckpt), str(synthetic_dir)
    found = {}
    for flag, conversions in (("--channels-last", 2), ("--no-channels-last", 0)):
        converted.clear()
        out = tmp_path / flag
        assert main(["predict", "--ckpt-path", ckpt, "--images", *map(str, varied_model.images.values()),
                     "--threshold", "0", "--device", "cpu", flag, "--output-dir", str(out / "predict")]) == 0
        assert main(["eval", "--ckpt-path", ckpt, "--data-dir", data, "--device", "cpu", flag,
                     "--output-dir", str(out / "eval")]) == 0
        assert len(converted) == conversions, flag  # predict's Detector and eval's
        found[flag] = [coco_as_detections(json.loads((out / step / "detections.json").read_text()))
                       for step in ("predict", "eval")]
    for fast, plain in zip(*found.values()):
        assert fast.keys() == plain.keys() and len(fast) >= 4
        for image in fast:
            assert_same_detections(plain[image], fast[image], where=image)


def test_folded_norms_and_channels_last_predict_as_the_plain_model(varied_model, monkeypatch):
    """The Detector's inference model (batch norms folded, channels-last) against the checkpoint's
    model as it is (NCHW, batch norms kept), query by query on images of every orientation."""
    from detr_ft import detector as detector_module
    from detr_ft.detector import Detector

    images = list(varied_model.images.values())
    fast = Detector.load(varied_model.ckpt, device="cpu").predict(images, threshold=0.0)
    monkeypatch.setattr(detector_module, "fold_batch_norms", lambda model: 0)
    plain_detector = Detector.load(varied_model.ckpt, device="cpu", channels_last=False)
    assert _norms(plain_detector.model) > 0
    plain = plain_detector.predict(images, threshold=0.0)
    for name, a, b in zip(varied_model.images, plain, fast):
        assert_same_detections(a, b, where=name)


def test_inference_autocast_runs_the_network_in_bf16(varied_model, synthetic_dir, tmp_path):
    """``--autocast`` for eval and predict: the convolutions run in bf16, the detections are the
    float32 ones up to bf16 rounding, query by query."""
    import json

    from detr_ft.cli import main
    from detr_ft.detector import Detector

    ckpt = varied_model.ckpt
    images = list(varied_model.images.values())
    plain, fast = Detector.load(ckpt, device="cpu"), Detector.load(ckpt, device="cpu", autocast=True)
    dtypes = {}
    for name, detector in (("plain", plain), ("fast", fast)):
        conv = next(m for m in detector.model.modules() if isinstance(m, nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o, name=name: dtypes.setdefault(name, set()).add(o.dtype))
    a, b = plain.predict(images, threshold=0.0), fast.predict(images, threshold=0.0)
    assert dtypes == {"plain": {torch.float32}, "fast": {torch.bfloat16}}
    dtypes.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's own autocast stays on
        plain.predict(images[:1])
    assert dtypes == {"plain": {torch.bfloat16}}
    for name, dets_a, dets_b in zip(varied_model.images, a, b):
        assert all(isinstance(d["score"], float) for d in dets_b)
        assert_same_detections(dets_a, dets_b, score_tol=AUTOCAST_SCORE_TOL, box_tol=AUTOCAST_BOX_TOL, where=name,
                               labels_from=AUTOCAST_LABELS_FROM)

    found = {}
    for flags in ([], ["--autocast"]):
        out = tmp_path / f"eval{len(flags)}"
        assert main(["eval", "--ckpt-path", str(ckpt), "--data-dir", str(synthetic_dir), "--device", "cpu",
                     *flags, "--output-dir", str(out)]) == 0
        found[bool(flags)] = json.loads((out / "metrics.json").read_text())
    assert found[True]["autocast"] is True and found[False]["autocast"] is False
    out = tmp_path / "predict"
    for flags in ([], ["--autocast"]):
        assert main(["predict", "--ckpt-path", str(ckpt), "--images", *map(str, images), "--device", "cpu",
                     "--threshold", "0", *flags, "--output-dir", str(out / f"{len(flags)}")]) == 0
    plain_cli, fast_cli = (coco_as_detections(json.loads((out / f"{n}" / "detections.json").read_text()))
                           for n in (0, 1))
    assert plain_cli.keys() == fast_cli.keys() == {str(p) for p in images}
    for image in plain_cli:
        assert_same_detections(plain_cli[image], fast_cli[image], score_tol=AUTOCAST_SCORE_TOL,
                               box_tol=AUTOCAST_BOX_TOL, where=image, labels_from=AUTOCAST_LABELS_FROM)


@pytest.mark.parametrize("native", [False, True])
def test_autocast_on_a_cpu_without_bf16_instructions_says_so(native, trained_run, synthetic_dir, tmp_path,
                                                             monkeypatch, capsys):
    """Without AVX-512 BF16 or AMX, oneDNN emulates bf16, slower than float32: train, eval and
    predict with --autocast say so in one line (once); with the instructions, or without
    --autocast, nothing is said."""
    from detr_ft.cli import main
    from detr_ft.devices import slow_bf16_note

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert slow_bf16_note("cuda") is None
    assert (slow_bf16_note("cpu") is None) == native
    ckpt, data = str(trained_run / "last.ckpt"), str(synthetic_dir)
    runs = {
        "train": ["train", "--model", "detr-tiny", "--data-dir", data, "--max-steps", "1", "--batch-size", "4",
                  "--num-workers", "0", "--max-inf-frames", "2", "--device", "cpu"],
        "eval": ["eval", "--ckpt-path", ckpt, "--data-dir", data, "--device", "cpu"],
        "predict": ["predict", "--ckpt-path", ckpt, "--data-dir", data, "--max-inf-frames", "2", "--device", "cpu"],
    }
    for name, argv in runs.items():
        for flags in ([], ["--autocast"]):
            capsys.readouterr()
            assert main([*argv, *flags, "--output-dir", str(tmp_path / f"{name}{len(flags)}")]) == 0
            said = [line for line in capsys.readouterr().out.splitlines() if "bf16" in line]
            expected = 1 if flags and not native else 0
            assert len(said) == expected, (name, flags, said)
            assert all("drop --autocast" in line for line in said)

"""Conditional DETR and RT-DETR: presets, outputs, losses, post-processing, checkpoints and export.

Each family goes through the same Batch, data pipeline, metrics, checkpoints,
predict and export as DETR; these tests hold it to transformers' own forward,
loss and post-processors, and to the padding rule of the static shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detr_ft.data.batching import Batch
from detr_ft.model.build import backbone_module, build_model
from detr_ft.model.criterion import FocalSetCriterion, SetCriterion
from detr_ft.model.outputs import detection_outputs, rtdetr_forward, transformers_loss
from detr_ft.model.postprocess import postprocess
from detr_ft.types import PAD_BOX, Categories

pytestmark = pytest.mark.compat

LABELS = {0: "circle", 1: "square", 2: "triangle"}
CATEGORIES = Categories((1, 4, 9), ("circle", "square", "triangle"))  # non-contiguous ids on purpose


def available(presets):
    """The presets as pytest params, those of families the installed transformers lacks skipped."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from detr_ft.model.families import family_of_preset

    return [pytest.param(p, marks=pytest.mark.skipif(family_of_preset(p).model_type not in CONFIG_MAPPING_NAMES,
                                                     reason="not in this transformers version")) for p in presets]


NEW_PRESETS = available(("conditional-detr-tiny", "rtdetr-tiny", "rtdetr-v2-tiny", "dfine-tiny", "deimv2-tiny",
                         "deformable-detr-tiny", "dab-detr-tiny", "lwdetr-tiny", "rfdetr-tiny"))
RTDETR_LINE = available(("rtdetr-tiny", "rtdetr-v2-tiny", "dfine-tiny", "deimv2-tiny"))  # transformers' loss, denoising
GROUP_DETR_LINE = available(("lwdetr-tiny", "rfdetr-tiny"))  # transformers' loss, Group-DETR query groups
ALL_PRESETS = available(("detr-tiny", "conditional-detr-tiny", "deformable-detr-tiny", "dab-detr-tiny", "rtdetr-tiny",
                         "rtdetr-v2-tiny", "dfine-tiny", "deimv2-tiny", "lwdetr-tiny", "rfdetr-tiny"))


def installed(params) -> list[str]:
    """The presets among ``available``'s params whose family the installed transformers has."""
    return [p.values[0] for p in params if not any(m.args[0] for m in p.marks if m.name == "skipif")]


def small_images(preset: str) -> list[str]:
    """train flags for the smallest images a preset trains on in the per-family runs: 64 / 96 px where
    its resize keeps the aspect (stride 32 still sees a 2 x 3 map; a 96 x 96 canvas is a multiple of it),
    none where its size is fixed (LW-DETR, RF-DETR: 128 x 128, what their windowed ViTs read)."""
    from detr_ft.model.families import family_of_preset

    return [] if family_of_preset(preset).resize.fixed is not None else ["--image-size", "64", "96"]


def images(batch_size: int, height: int, width: int, real_widths=None, seed: int = 0):
    """pixel_values [B, 3, H, W] and pixel_mask [B, H, W]; image i is real on its first real_widths[i] columns."""
    gen = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch_size, 3, height, width, generator=gen)
    pixel_mask = torch.ones(batch_size, height, width, dtype=torch.long)
    for i, w in enumerate(real_widths or []):
        pixel_values[i, :, :, w:] = 0
        pixel_mask[i, :, w:] = 0
    return pixel_values, pixel_mask


def padded_targets(counts: list[int], pad_to: int, num_classes: int, seed: int = 0, shuffle: bool = False):
    """labels [B, T], boxes [B, T, 4], valid [B, T]: the same objects whatever ``pad_to``;
    ``shuffle`` scatters the real objects among the padded slots."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(len(counts), pad_to, dtype=torch.long)
    boxes = torch.tensor(PAD_BOX).repeat(len(counts), pad_to, 1)
    valid = torch.zeros(len(counts), pad_to, dtype=torch.bool)
    slot_gen = torch.Generator().manual_seed(seed + 100)
    for i, n in enumerate(counts):
        cls = torch.randint(0, num_classes, (n,), generator=gen)
        centers = 0.25 + 0.5 * torch.rand(n, 2, generator=gen)
        sizes = 0.1 + 0.3 * torch.rand(n, 2, generator=gen)
        slots = torch.randperm(pad_to, generator=slot_gen)[:n].sort().values if shuffle else torch.arange(n)
        labels[i, slots], boxes[i, slots], valid[i, slots] = cls, torch.cat([centers, sizes], -1), True
    return labels, boxes, valid


def make_batch(pixel_values, pixel_mask, labels, boxes, valid) -> Batch:
    b = len(pixel_values)
    return Batch(pixel_values, pixel_mask, labels, boxes, valid, torch.arange(1, b + 1),
                 torch.tensor([[96, 96]] * b))


# --- presets and --model directories -----------------------------------------------


def _small_resnet():
    """A small bottleneck ResNet, as hub checkpoints have (the freezing rule reads its stage names)."""
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                        layer_type="bottleneck", out_features=["stage4"])


@pytest.mark.parametrize("preset,family", [("conditional-detr-tiny", "conditional_detr"), ("rtdetr-tiny", "rt_detr")])
def test_preset_is_random_init_fully_trainable_with_trainable_batch_norm(preset, family):
    bundle = build_model(preset, LABELS)
    assert bundle.family == family and not bundle.pretrained
    assert bundle.model.config.num_labels == 3 and bundle.model.config.id2label == LABELS
    assert all(p.requires_grad for p in bundle.model.parameters())
    names = {type(m).__name__ for m in bundle.model.modules()}
    assert "BatchNorm2d" in names and not any(n.endswith("FrozenBatchNorm2d") for n in names)
    out = detection_outputs(bundle.model.eval(), *images(2, 64, 96))
    assert out.logits.shape == (2, bundle.model.config.num_queries, 3)  # sigmoid families: no no-object logit


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_every_family_trains_its_backbone_at_the_backbone_learning_rate(preset):
    """--lr-backbone reaches every family's backbone (DEIMv2's sits in its conv encoder): the
    optimizer's backbone group is the backbone's parameters, the other group the rest."""
    from detr_ft.engine import DetrModule, OptimConfig

    bundle = build_model(preset, {0: "a", 1: "b"})
    backbone = {id(p) for p in backbone_module(bundle.model).parameters()}
    module = DetrModule(bundle, CATEGORIES, OptimConfig(lr=1e-3, lr_backbone=1e-5))
    module.trainer = type("T", (), {"estimated_stepping_batches": 10, "callbacks": []})()
    optimizer = module.configure_optimizers()
    optimizer = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer["optimizer"]
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert by_lr[1e-5] == backbone and by_lr[1e-3] and not by_lr[1e-3] & backbone
    assert by_lr[1e-5] | by_lr[1e-3] == {id(p) for p in bundle.model.parameters() if p.requires_grad}


@pytest.mark.parametrize("preset,scaled", [pytest.param(p.values[0], p.values[0] in ("rtdetr-tiny", "dfine-tiny"),
                                                        marks=p.marks)
                                           for p in available(("detr-tiny", "lwdetr-tiny", "rtdetr-tiny", "dfine-tiny"))])
def test_under_ddp_a_local_count_transformers_loss_is_rescaled_to_all_processes_objects(preset, scaled):
    """With several processes, the training step rescales the RT-DETR line's transformers loss (divided by
    the process's own objects) to the objects of all processes (``box_count_scale``); detr-ft's criterion
    and LW-DETR's loss already divide by those, and stay as they are. Here 3 objects of 8 over 2 processes."""
    from detr_ft.engine import DetrModule, OptimConfig

    module = DetrModule(build_model(preset, LABELS), CATEGORIES, OptimConfig())
    reduced = []

    class Strategy:
        def reduce(self, tensor, reduce_op):
            reduced.append((float(tensor), reduce_op))
            return torch.tensor(8.0)

        def reduce_boolean_decision(self, decision, all):
            return decision

    module.trainer = type("T", (), {"world_size": 2, "strategy": Strategy()})()
    module.compute_loss = lambda batch: {"loss": torch.tensor(2.0), "loss_ce": torch.tensor(1.0),
                                         "loss_bbox": torch.tensor(0.5), "loss_giou": torch.tensor(0.5)}
    module.log = module.log_dict = lambda *args, **kwargs: None
    labels, boxes, valid = padded_targets([2, 1, 0], 2, 3)
    loss = module.training_step(make_batch(*images(3, 64, 96), labels, boxes, valid), 0)
    assert float(loss) == (2.0 * 3 * 2 / 8 if scaled else 2.0)
    assert reduced == ([(3.0, "sum")] if scaled else [])


def test_local_conditional_detr_directory_freezes_only_stem_and_first_stage(tmp_path):
    """transformers freezes the whole ResNet of a Conditional DETR (as of DETR); detr-ft trains stages 2-4."""
    from transformers import ConditionalDetrConfig, ConditionalDetrForObjectDetection

    config = ConditionalDetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                                   backbone_config=_small_resnet(), d_model=32, encoder_layers=1, decoder_layers=1,
                                   encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                   decoder_ffn_dim=32, num_queries=5, num_labels=7)
    ConditionalDetrForObjectDetection(config).save_pretrained(tmp_path)
    bundle = build_model(str(tmp_path), LABELS)
    assert bundle.family == "conditional_detr" and bundle.pretrained
    named = dict(backbone_module(bundle.model).named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n in named if any(f"stages.{k}." in n for k in (1, 2, 3))}
    assert bundle.model.class_labels_classifier.out_features == 3


def test_local_rtdetr_directory_loads_with_a_head_for_the_dataset(tmp_path):
    build_model("rtdetr-tiny", {i: str(i) for i in range(7)}).model.save_pretrained(tmp_path)
    bundle = build_model(str(tmp_path), LABELS)
    assert bundle.family == "rt_detr" and bundle.pretrained
    assert bundle.model.config.num_labels == 3
    out = detection_outputs(bundle.model.eval(), *images(1, 64, 64))
    assert out.logits.shape[-1] == 3


def test_local_deformable_detr_directory_loads_with_a_head_for_the_dataset(tmp_path):
    """Deformable DETR, once refused, loads from a directory (4 bottleneck stages, 1 feature level)."""
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection

    config = DeformableDetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
                                  backbone_config=_small_resnet(), d_model=32, encoder_layers=1, decoder_layers=2,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                  decoder_ffn_dim=32, num_queries=5, num_feature_levels=1, num_labels=3)
    DeformableDetrForObjectDetection(config).save_pretrained(tmp_path)
    bundle = build_model(str(tmp_path), LABELS)
    assert bundle.family == "deformable_detr" and bundle.pretrained
    out = detection_outputs(bundle.model.eval(), *images(1, 64, 64))
    assert out.logits.shape == (1, 5, 3)


# --- Conditional DETR ----------------------------------------------------------------


def test_conditional_detr_outputs_are_transformers_forward():
    """Final and auxiliary predictions equal those transformers' forward computes (reference points included)."""
    model = build_model("conditional-detr-tiny", LABELS).model.eval()
    pixel_values, pixel_mask = images(2, 64, 96, real_widths=[96, 60])
    labels, boxes, valid = padded_targets([2, 1], 2, 3)
    targets = [{"class_labels": labels[i][valid[i]], "boxes": boxes[i][valid[i]]} for i in range(2)]
    with torch.no_grad():
        ours = detection_outputs(model, pixel_values, pixel_mask)
        theirs = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=targets)
    torch.testing.assert_close(ours.logits, theirs.logits)
    torch.testing.assert_close(ours.boxes, theirs.pred_boxes)
    assert len(ours.aux) == len(theirs.auxiliary_outputs) == model.config.decoder_layers - 1
    for (logits, boxes), ref in zip(ours.aux, theirs.auxiliary_outputs):
        torch.testing.assert_close(logits, ref["logits"])
        torch.testing.assert_close(boxes, ref["pred_boxes"])


@pytest.mark.parametrize("extra_slots", [1, 5])
def test_focal_criterion_padding_changes_nothing(extra_slots):
    """Conditional DETR's sigmoid focal criterion: padded object slots, anywhere, change no loss and no gradient."""
    from transformers import ConditionalDetrConfig

    config = ConditionalDetrConfig(num_labels=4, auxiliary_loss=True, decoder_layers=3, class_cost=3, bbox_cost=4,
                                   giou_cost=1, bbox_loss_coefficient=4, giou_loss_coefficient=3, focal_alpha=0.3)
    criterion = SetCriterion.from_config(config)
    assert isinstance(criterion, FocalSetCriterion)
    gen = torch.Generator().manual_seed(extra_slots)
    counts = [3, 0, 5, 1]
    logits = torch.randn(3, len(counts), 8, 4, generator=gen, dtype=torch.float64).requires_grad_()
    pred_boxes = torch.randn(3, len(counts), 8, 4, generator=gen, dtype=torch.float64).sigmoid().requires_grad_()

    def loss_and_grads(pad_to, shuffle):
        labels, boxes, valid = padded_targets(counts, pad_to, 4, shuffle=shuffle)
        aux = [(logits[i], pred_boxes[i]) for i in range(2)]
        out = criterion(logits[-1], pred_boxes[-1], labels, boxes.double(), valid, aux_outputs=aux)
        return out, torch.autograd.grad(out["loss"], (logits, pred_boxes))

    ref, ref_grads = loss_and_grads(max(counts), shuffle=False)
    assert ref["loss_ce"] > 0 and ref["loss_bbox_1"] > 0
    for shuffle in (False, True):
        got, grads = loss_and_grads(max(counts) + extra_slots, shuffle)
        assert set(got) == set(ref)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], atol=1e-9, rtol=0, msg=key)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-9, rtol=0)


# --- RT-DETR -----------------------------------------------------------------------


@pytest.mark.parametrize("preset", RTDETR_LINE)
def test_rtdetr_loss_strips_the_padded_object_slots_before_transformers_loss(preset):
    """Same loss and gradients as transformers' own RT-DETR-line loss given the real objects only,
    with object slots padded or not, real objects first or scattered (denoising included)."""
    model = build_model(preset, LABELS).model.train()
    pixel_values, pixel_mask = images(3, 64, 64)
    counts = [2, 0, 3]
    params = [p for p in model.parameters() if p.requires_grad]

    def run(pad_to, shuffle):
        batch = make_batch(pixel_values, pixel_mask, *padded_targets(counts, pad_to, 3, shuffle=shuffle))
        torch.manual_seed(7)  # the denoising queries are drawn at random
        _, losses = transformers_loss(model, batch)
        return losses, torch.autograd.grad(losses["loss"], params, allow_unused=True)

    torch.manual_seed(7)
    labels, boxes, valid = padded_targets(counts, 3, 3)
    targets = [{"class_labels": labels[i][valid[i]], "boxes": boxes[i][valid[i]]} for i in range(3)]
    ref = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=targets)
    ref_grads = torch.autograd.grad(ref.loss, params, allow_unused=True)
    assert any(k.endswith("_dn_0") for k in ref.loss_dict)  # denoising queries took part

    for pad_to, shuffle in [(3, False), (6, False), (6, True)]:
        losses, grads = run(pad_to, shuffle)
        torch.testing.assert_close(losses["loss"], ref.loss)
        for key in ("loss_bbox", "loss_giou"):
            torch.testing.assert_close(losses[key], ref.loss_dict[key])
        class_loss = "loss_mal" if preset == "deimv2-tiny" else "loss_vfl"  # DEIMv2: matching-aware, else varifocal
        torch.testing.assert_close(losses["loss_ce"], ref.loss_dict[class_loss])
        assert_same_gradients(grads, ref_grads)


def assert_same_gradients(grads, ref_grads) -> None:
    """The same parameters reached, with the same gradients."""
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r)


def assert_trains_on(model, batch) -> None:
    """transformers' loss on ``batch`` is finite and gives finite gradients."""
    _, losses = transformers_loss(model, batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("preset", RTDETR_LINE)
def test_rtdetr_batch_without_objects_trains(preset):
    model = build_model(preset, LABELS).model.train()
    batch = make_batch(*images(2, 64, 64), *padded_targets([0, 0], 2, 3))
    assert_trains_on(model, batch)


@pytest.mark.parametrize("preset", RTDETR_LINE)
def test_rtdetr_boxes_are_in_the_real_image_frame_on_any_canvas(preset):
    """RT-DETR ignores pixel_mask and needs sides divisible by 32: detr-ft pads the canvas to a
    multiple of 32 and maps boxes between the canvas and each real image (both ways)."""
    model = build_model(preset, LABELS).model.eval()
    pixel_values, pixel_mask = images(2, 64, 80, real_widths=[80, 40])  # 80 is not a multiple of 32
    with torch.no_grad():
        ours = detection_outputs(model, pixel_values, pixel_mask)
        canvas = torch.nn.functional.pad(pixel_values, (0, 16))
        theirs = model(pixel_values=canvas, pixel_mask=torch.nn.functional.pad(pixel_mask, (0, 16)))
    share = torch.tensor([[80 / 96, 1.0], [40 / 96, 1.0]])  # real width / canvas width, real height / canvas height
    torch.testing.assert_close(ours.logits, theirs.logits)
    torch.testing.assert_close(ours.boxes, theirs.pred_boxes / share.repeat(1, 2)[:, None, :])

    # targets go the other way: a target given in the real image's frame reaches the loss in the canvas frame
    target_box = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    seen = {}

    def capture(module, args, kwargs):
        seen["labels"] = kwargs["labels"]

    handle = model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with torch.no_grad():
            rtdetr_forward(model, pixel_values, pixel_mask,
                           [{"class_labels": torch.tensor([1]), "boxes": target_box}] * 2)
    finally:
        handle.remove()
    torch.testing.assert_close(seen["labels"][1]["boxes"], target_box * torch.tensor([40 / 96, 1.0, 40 / 96, 1.0]))


# --- LW-DETR, RF-DETR -----------------------------------------------------------------


@pytest.mark.parametrize("preset", GROUP_DETR_LINE)
def test_group_detr_loss_strips_the_padded_object_slots_before_transformers_loss(preset):
    """Same loss and gradients as transformers' own LW-DETR loss given the real objects only, with object
    slots padded or not, real objects first or scattered (every query group and the encoder included)."""
    model = build_model(preset, LABELS).model.train()
    pixel_values, pixel_mask = images(3, 128, 128)
    counts = [2, 0, 3]
    params = [p for p in model.parameters() if p.requires_grad]
    labels, boxes, valid = padded_targets(counts, 3, 3)
    targets = [{"class_labels": labels[i][valid[i]], "boxes": boxes[i][valid[i]]} for i in range(3)]
    ref = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=targets)
    ref_grads = torch.autograd.grad(ref.loss, params, allow_unused=True)
    assert ref.logits.shape[1] == model.config.group_detr * model.config.num_queries  # every group took part
    assert {"loss_ce_enc", f"loss_giou_{model.config.decoder_layers - 2}"} <= set(ref.loss_dict)

    for pad_to, shuffle in [(3, False), (6, False), (6, True)]:
        batch = make_batch(pixel_values, pixel_mask, *padded_targets(counts, pad_to, 3, shuffle=shuffle))
        out, losses = transformers_loss(model, batch)
        grads = torch.autograd.grad(losses["loss"], params, allow_unused=True)
        torch.testing.assert_close(losses["loss"], ref.loss)
        for key in ("loss_ce", "loss_bbox", "loss_giou"):
            torch.testing.assert_close(losses[key], ref.loss_dict[key])
        torch.testing.assert_close(out.logits, ref.logits[:, :model.config.num_queries])  # the first group
        assert_same_gradients(grads, ref_grads)


@pytest.mark.parametrize("preset", GROUP_DETR_LINE)
def test_group_detr_batch_without_objects_trains_and_eval_loss_matches_one_group(preset):
    """No object in the batch: a finite loss and gradients. In eval (one query group) the loss is
    transformers' with ``group_detr`` 1, not its training-mode criterion's 3 groups over 1."""
    model = build_model(preset, LABELS).model.train()
    batch = make_batch(*images(2, 128, 128), *padded_targets([0, 0], 2, 3))
    assert_trains_on(model, batch)

    model.eval()
    pixel_values, pixel_mask = images(2, 128, 128)
    labels, boxes, valid = padded_targets([2, 1], 2, 3)
    targets = [{"class_labels": labels[i][valid[i]], "boxes": boxes[i][valid[i]]} for i in range(2)]
    with torch.no_grad():
        _, losses = transformers_loss(model, make_batch(pixel_values, pixel_mask, labels, boxes, valid))
        groups = model.config.group_detr
        model.config.group_detr = 1
        ref = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=targets)
        model.config.group_detr = groups
    assert model.config.group_detr == groups == 3
    torch.testing.assert_close(losses["loss"], ref.loss)


@pytest.mark.parametrize("preset", GROUP_DETR_LINE)
def test_group_detr_directory_trains_its_whole_backbone(preset, tmp_path):
    """A pretrained LW-DETR / RF-DETR directory trains its whole ViT and projector (as their originals):
    the ResNet rule (stem and first stage frozen) would freeze the projector's ``conv1``."""
    build_model(preset, {i: str(i) for i in range(5)}).model.save_pretrained(tmp_path)
    bundle = build_model(str(tmp_path), LABELS)
    assert bundle.pretrained and bundle.model.config.num_labels == 3
    assert all(p.requires_grad for p in backbone_module(bundle.model).parameters())


@pytest.mark.parametrize("preset", GROUP_DETR_LINE)
def test_group_detr_canvas_is_padded_to_what_its_windowed_vit_reads(preset):
    """An 80 x 112 batch (sides not multiples of patch 16 x 2 windows): detr-ft pads the canvas, masked
    out, to the windows' multiple (LW-DETR: 96 x 128; RF-DETR, whose windows assume a square grid: 128 x 128)
    and gives transformers' predictions on that canvas."""
    model = build_model(preset, LABELS).model.eval()
    pixel_values, pixel_mask = images(2, 80, 112, real_widths=[112, 70])
    pad = (0, 16, 0, 48) if preset == "rfdetr-tiny" else (0, 16, 0, 16)  # (left, right, top, bottom)
    with torch.no_grad():
        ours = detection_outputs(model, pixel_values, pixel_mask)
        theirs = model(pixel_values=torch.nn.functional.pad(pixel_values, pad),
                       pixel_mask=torch.nn.functional.pad(pixel_mask, pad))
    torch.testing.assert_close(ours.logits, theirs.logits)
    torch.testing.assert_close(ours.boxes, theirs.pred_boxes)


# --- post-processing ----------------------------------------------------------------


def _processor(name: str):
    """The family's transformers image processor (its PIL variant where transformers 5 lacks torchvision)."""
    import transformers

    cls = getattr(transformers, name + "Pil", None) or getattr(transformers, name)
    return cls()


@pytest.mark.parametrize("family,processor,kwargs", [
    ("conditional_detr", "ConditionalDetrImageProcessor", {"top_k": 100}),
    ("rt_detr", "RTDetrImageProcessor", {}),
])
def test_sigmoid_postprocess_is_the_family_processors(family, processor, kwargs):
    """Sigmoid scores, top-k over queries x classes, boxes in original pixels, labels -> original ids.

    detr-ft keeps the top 100 (Conditional DETR's k, the most COCO evaluation counts); RT-DETR's
    processor keeps the top num_queries: those are the first of detr-ft's."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 12, 3, generator=gen) * 3
    boxes = torch.cat([0.3 + 0.4 * torch.rand(2, 12, 2, generator=gen), 0.1 + 0.3 * torch.rand(2, 12, 2, generator=gen)], -1)
    sizes = torch.tensor([[60, 90], [100, 80]])
    ours = postprocess(logits, boxes, sizes, CATEGORIES, threshold=0.3, scoring="sigmoid")
    ref = _processor(processor).post_process_object_detection(
        SimpleNamespace(logits=logits, pred_boxes=boxes), threshold=0.3, target_sizes=sizes, **kwargs)
    for dets, r in zip(ours, ref):
        order = r["scores"].argsort(descending=True, stable=True)
        n = len(order)
        assert 0 < n == len(dets.scores) if family == "conditional_detr" else 0 < n <= 12 < len(dets.scores)
        torch.testing.assert_close(dets.scores[:n], r["scores"][order])
        assert dets.labels[:n].tolist() == r["labels"][order].tolist()
        torch.testing.assert_close(dets.boxes[:n], r["boxes"][order].float())
        assert dets.category_ids.tolist() == [CATEGORIES.ids[i] for i in dets.labels.tolist()]
    # a query may give several classes: more detections than queries when the scores allow
    many = postprocess(torch.full((1, 12, 3), 5.0), boxes[:1], sizes[:1], CATEGORIES, threshold=0.5,
                       scoring="sigmoid")[0]
    assert len(many.scores) == 36


def test_postprocess_refuses_logits_of_another_class_count():
    with pytest.raises(ValueError, match="3 categories"):
        postprocess(torch.zeros(1, 5, 7), torch.rand(1, 5, 4), torch.tensor([[10, 10]]), CATEGORIES, scoring="sigmoid")


# --- the whole path: train, checkpoint, predict, eval, export --------------------------


@pytest.fixture(scope="module", params=NEW_PRESETS)
def family_run(request, synthetic_dir, tmp_path_factory):
    """A preset trained 1 epoch (2 steps) through detr_ft.train.fit; (preset, out dir, module)."""
    from detr_ft.config import TrainConfig
    from detr_ft.train import fit

    out = tmp_path_factory.mktemp(request.param)
    cfg = TrainConfig(output_dir=str(out), data_dir=str(synthetic_dir), model=request.param, max_epochs=1,
                      batch_size=8, num_workers=0, max_inf_frames=2, lr=1e-3, lr_backbone=1e-3)
    _, module, summary = fit(cfg)
    assert summary["steps"] == 2
    return request.param, out, module


def test_preset_trains_and_validates(family_run):
    preset, out, module = family_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"circle", "square", "triangle", "cross", "star"}
    rows = (out / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    val_maps = [float(r.split(",")[header.index("val_map_50")]) for r in rows[1:]
                if r.split(",")[header.index("val_map_50")]]
    assert val_maps and val_maps[-1] == pytest.approx(metrics["map_50"], abs=1e-6)  # the last validation's
    losses = [float(r.split(",")[header.index("train_loss")]) for r in rows[1:]
              if r.split(",")[header.index("train_loss")]]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any((out / "predictions").rglob("*.jpg"))


def test_checkpoint_reload_gives_identical_predictions(family_run, synthetic_dir):
    from detr_ft.detector import Detector

    preset, out, module = family_run
    files = sorted((Path(synthetic_dir) / "images").glob("test_*"))[:4]
    trained = Detector(module.model, Detector.load(out / "last.ckpt").resize, module.categories, device="cpu")
    reloaded = Detector.load(out / "last.ckpt", device="cpu")
    assert reloaded.model.config.model_type == module.model.config.model_type
    got, expected = reloaded.predict(files, threshold=0.0), trained.predict(files, threshold=0.0)
    assert [len(d) for d in got] == [len(d) for d in expected] and sum(map(len, got)) > 0
    for a, b in zip(got, expected):
        assert [d["category_id"] for d in a] == [d["category_id"] for d in b]
        torch.testing.assert_close(torch.tensor([d["score"] for d in a]), torch.tensor([d["score"] for d in b]))
        torch.testing.assert_close(torch.tensor([d["box"] for d in a]), torch.tensor([d["box"] for d in b]))
    ids = {d["category_id"] for dets in got for d in dets}
    assert ids <= {1, 2, 4, 7, 9}  # the synthetic dataset's own (non-contiguous) category ids


def test_eval_and_export(family_run, synthetic_dir, tmp_path):
    from transformers import AutoModelForObjectDetection

    from detr_ft.detector import Detector
    from detr_ft.evaluate import run_eval
    from detr_ft.export import export

    preset, out, module = family_run
    metrics = run_eval(str(out / "last.ckpt"), str(synthetic_dir), tmp_path / "eval", device="cpu")
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert detections and {d["category_id"] for d in detections} <= {1, 2, 4, 7, 9}
    from detr_ft.data.coco import load_index
    from detr_ft.metrics import coco_metrics, ground_truth

    index = load_index(synthetic_dir, "test")  # the metrics are those of the detections written beside them
    again = coco_metrics(ground_truth(index.records, module.categories), detections, module.categories)
    assert metrics["images"] == len(index) == 8 and metrics["map_50"] == pytest.approx(again["map_50"], abs=1e-9)

    path = export(str(out / "last.ckpt"), tmp_path / "hf")
    loaded = AutoModelForObjectDetection.from_pretrained(str(path))
    assert type(loaded).__name__ == type(module.model).__name__
    files = sorted((Path(synthetic_dir) / "images").glob("test_*"))[:3]
    from_export = Detector.load(path, device="cpu").predict(files, threshold=0.0)
    from_ckpt = Detector.load(out / "last.ckpt", device="cpu").predict(files, threshold=0.0)
    for a, b in zip(from_export, from_ckpt):
        assert [d["category_id"] for d in a] == [d["category_id"] for d in b]
        torch.testing.assert_close(torch.tensor([d["score"] for d in a]), torch.tensor([d["score"] for d in b]))

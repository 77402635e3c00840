"""The Hungarian matcher and set criterion against transformers' own DETR loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import ConditionalDetrConfig, DetrConfig
from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss, DeformableDetrImageLoss
from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

import detr_ft.model.matcher as matcher_module
from detr_ft.model.criterion import FocalSetCriterion, SetCriterion
from detr_ft.model.matcher import HungarianMatcher
from detr_ft.types import PAD_BOX

pytestmark = pytest.mark.compat

NUM_CLASSES, NUM_QUERIES, NUM_LAYERS = 5, 10, 3  # NUM_LAYERS = final + 2 auxiliary


def make_config() -> DetrConfig:
    """Non-default costs and coefficients, so that from_config must read them all (ints: 5.x types them so)."""
    return DetrConfig(
        num_labels=NUM_CLASSES,
        auxiliary_loss=True,
        decoder_layers=NUM_LAYERS,
        class_cost=2,
        bbox_cost=4,
        giou_cost=3,
        bbox_loss_coefficient=4,
        giou_loss_coefficient=3,
        eos_coefficient=0.2,
    )


def make_targets(counts: list[int], pad_to: int, gen: torch.Generator, shuffle: bool = False):
    """Padded labels [B, T], boxes [B, T, 4], valid [B, T] for images with `counts` objects."""
    batch_size = len(counts)
    labels = torch.zeros(batch_size, pad_to, dtype=torch.long)
    boxes = torch.tensor(PAD_BOX).repeat(batch_size, pad_to, 1)
    valid = torch.zeros(batch_size, pad_to, dtype=torch.bool)
    for i, n in enumerate(counts):
        slots = torch.randperm(pad_to, generator=gen)[:n].sort().values if shuffle else torch.arange(n)
        labels[i, slots] = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
        centers = 0.2 + 0.6 * torch.rand(n, 2, generator=gen)
        sizes = 0.05 + 0.35 * torch.rand(n, 2, generator=gen)
        boxes[i, slots] = torch.cat([centers, sizes], -1)
        valid[i, slots] = True
    return labels, boxes, valid


def make_outputs(batch_size: int, gen: torch.Generator, dtype=torch.float32, num_logits=NUM_CLASSES + 1):
    """Leaf tensors: logits [L, B, Q, C+1] and pred_boxes [L, B, Q, 4]; index -1 is the final layer."""
    logits = torch.randn(NUM_LAYERS, batch_size, NUM_QUERIES, num_logits, generator=gen, dtype=dtype)
    pred_boxes = torch.randn(NUM_LAYERS, batch_size, NUM_QUERIES, 4, generator=gen, dtype=dtype).sigmoid()
    return logits.requires_grad_(), pred_boxes.requires_grad_()


def ours(criterion, logits, pred_boxes, labels, boxes, valid, as_dicts=False):
    aux = [(logits[i], pred_boxes[i]) for i in range(NUM_LAYERS - 1)]
    if as_dicts:
        aux = [{"logits": lg, "pred_boxes": bx} for lg, bx in aux]
    return criterion(logits[-1], pred_boxes[-1], labels, boxes, valid, aux_outputs=aux)


def random_counts(gen: torch.Generator) -> list[int]:
    """2-4 images, at least one empty, at least one with objects."""
    batch_size = int(torch.randint(2, 5, (1,), generator=gen))
    counts = torch.randint(0, 6, (batch_size,), generator=gen).tolist()
    counts[0], counts[-1] = 0, max(counts[-1], 1)
    return counts


@pytest.mark.parametrize("seed", range(6))
def test_matches_transformers_detr_loss(seed):
    gen = torch.Generator().manual_seed(seed)
    counts = random_counts(gen)
    labels, boxes, valid = make_targets(counts, max(counts) + 2, gen, shuffle=seed % 2 == 1)
    logits, pred_boxes = make_outputs(len(counts), gen)
    config = make_config()

    targets = [{"class_labels": labels[i][valid[i]], "boxes": boxes[i][valid[i]]} for i in range(len(counts))]
    ref_loss, ref_dict, _ = ForObjectDetectionLoss(
        logits=logits[-1], labels=targets, device=logits.device, pred_boxes=pred_boxes[-1],
        config=config, outputs_class=logits, outputs_coord=pred_boxes,
    )
    ref_grads = torch.autograd.grad(ref_loss, (logits, pred_boxes))

    criterion = SetCriterion.from_config(config)
    got = ours(criterion, logits, pred_boxes, labels, boxes, valid, as_dicts=seed % 2 == 0)
    assert set(got) == set(ref_dict) | {"loss"}
    for key, value in ref_dict.items():
        torch.testing.assert_close(got[key], value.float(), atol=1e-5, rtol=0, msg=key)
    torch.testing.assert_close(got["loss"], ref_loss, atol=1e-5, rtol=0)
    for g, r in zip(torch.autograd.grad(got["loss"], (logits, pred_boxes)), ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra_slots", [1, 7])
def test_padding_changes_nothing(extra_slots):
    gen = torch.Generator().manual_seed(extra_slots)
    counts = [3, 0, 5, 1]
    logits, pred_boxes = make_outputs(len(counts), gen, dtype=torch.float64)
    criterion = SetCriterion.from_config(make_config())

    def loss_and_grads(pad_to, shuffle):
        target_gen = torch.Generator().manual_seed(0)  # same objects whatever the padding
        labels, boxes, valid = make_targets(counts, pad_to, target_gen)
        if shuffle:  # real objects need not come first
            order = torch.stack([torch.randperm(pad_to, generator=gen) for _ in counts])
            labels, valid = labels.gather(1, order), valid.gather(1, order)
            boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        out = ours(criterion, logits, pred_boxes, labels, boxes.double(), valid)
        return out, torch.autograd.grad(out["loss"], (logits, pred_boxes))

    ref, ref_grads = loss_and_grads(max(counts), shuffle=False)
    for shuffle in (False, True):
        got, grads = loss_and_grads(max(counts) + extra_slots, shuffle)
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], atol=1e-6, rtol=0, msg=key)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pad_to", [0, 3])
def test_batch_without_objects(pad_to):
    gen = torch.Generator().manual_seed(0)
    labels, boxes, valid = make_targets([0, 0], pad_to, gen)
    logits, pred_boxes = make_outputs(2, gen)
    out = ours(SetCriterion.from_config(make_config()), logits, pred_boxes, labels, boxes, valid)

    assert torch.isfinite(out["loss"])
    for key in ("loss_bbox", "loss_giou", "loss_bbox_0", "loss_giou_1"):
        assert out[key] == 0
    grad_logits, grad_boxes = torch.autograd.grad(out["loss"], (logits, pred_boxes))
    assert torch.isfinite(grad_logits).all() and grad_logits.abs().sum() > 0  # no-object is still trained
    assert torch.equal(grad_boxes, torch.zeros_like(grad_boxes))


def test_nan_and_degenerate_predictions():
    gen = torch.Generator().manual_seed(0)
    labels, boxes, valid = make_targets([3, 2], 4, gen)
    boxes[1, 0, 2] = 0.0  # a zero-width target
    logits, pred_boxes = make_outputs(2, gen)
    with torch.no_grad():
        pred_boxes[:, :, 0] = float("nan")  # query 0: NaN box
        pred_boxes[:, :, 1, 2:] = 0.0  # query 1: zero width and height
        pred_boxes[:, :, 2, 2] = float("inf")  # query 2: infinite width
        logits[:, :, 3] = float("nan")  # query 3: NaN logits (its boxes are fine)
    matcher = HungarianMatcher(1, 5, 2)

    cost = matcher.cost_matrix(logits[-1], pred_boxes[-1], labels, boxes, valid)
    assert torch.isfinite(cost[valid[:, None, :].expand_as(cost)]).all()
    assert torch.isinf(cost[~valid[:, None, :].expand_as(cost)]).all()
    src_idx, matched = matcher(logits[-1], pred_boxes[-1], labels, boxes, valid)
    assert torch.equal(matched, valid)
    assert not ({0, 2, 3} & set(src_idx[matched].tolist()))  # broken queries are matched last

    # Only the final layer has NaN logits in the loss; aux layers get clean logits.
    out = SetCriterion.from_config(make_config())(
        logits[-1].nan_to_num(), pred_boxes[-1], labels, boxes, valid,
        aux_outputs=[(logits[i].nan_to_num(), pred_boxes[i]) for i in range(NUM_LAYERS - 1)],
    )
    assert all(torch.isfinite(v) for v in out.values())
    grads = torch.autograd.grad(out["loss"], (logits, pred_boxes))
    assert all(torch.isfinite(g).all() for g in grads)


def test_bf16_autocast_on_cpu():
    gen = torch.Generator().manual_seed(0)
    labels, boxes, valid = make_targets([2, 4, 0], 5, gen)
    head = torch.nn.Linear(8, NUM_CLASSES + 1 + 4)
    features = torch.randn(3, NUM_QUERIES, 8, generator=gen)
    criterion = SetCriterion.from_config(make_config())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(features)
        logits, pred_boxes = out[..., : NUM_CLASSES + 1], out[..., NUM_CLASSES + 1 :].sigmoid()
        assert logits.dtype == torch.bfloat16
        cost = criterion.matcher.cost_matrix(logits, pred_boxes, labels, boxes, valid)
        losses = criterion(logits, pred_boxes, labels, boxes, valid)
    assert cost.dtype == torch.float32
    # computed from the float32 values of the bf16 outputs, not in bf16
    cost_fp32 = criterion.matcher.cost_matrix(logits.float(), pred_boxes.float(), labels, boxes, valid)
    torch.testing.assert_close(cost, cost_fp32, atol=0, rtol=0)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert torch.isfinite(head.weight.grad).all()


def test_one_host_copy_and_assignment_on_valid_columns_only(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    counts = [2, 0, 4]
    labels, boxes, valid = make_targets(counts, 6, gen, shuffle=True)
    logits, pred_boxes = make_outputs(len(counts), gen)

    copies, shapes = [], []
    real_cpu, real_lsa = torch.Tensor.cpu, matcher_module.linear_sum_assignment
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(self.shape) or real_cpu(self, *a, **k))
    monkeypatch.setattr(
        matcher_module, "linear_sum_assignment", lambda c: shapes.append(c.shape) or real_lsa(c)
    )
    ours(SetCriterion.from_config(make_config()), logits, pred_boxes, labels, boxes, valid)

    assert copies == [(NUM_LAYERS, len(counts), NUM_QUERIES, 6)]  # all layers, one copy
    assert shapes == [(NUM_QUERIES, n) for _ in range(NUM_LAYERS) for n in counts if n]


def test_more_objects_than_queries():
    gen = torch.Generator().manual_seed(0)
    labels, boxes, valid = make_targets([NUM_QUERIES + 2, 1], NUM_QUERIES + 3, gen)
    logits, pred_boxes = make_outputs(2, gen)
    src_idx, matched = HungarianMatcher()(logits[-1], pred_boxes[-1], labels, boxes, valid)
    assert matched.sum(1).tolist() == [NUM_QUERIES, 1]
    assert sorted(src_idx[0][matched[0]].tolist()) == list(range(NUM_QUERIES))
    out = ours(SetCriterion.from_config(make_config()), logits, pred_boxes, labels, boxes, valid)
    assert torch.isfinite(out["loss"])


def test_num_boxes_all_reduced(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed unavailable")
    gen = torch.Generator().manual_seed(0)
    labels, boxes, valid = make_targets([2, 3], 3, gen)
    logits, pred_boxes = make_outputs(2, gen)
    criterion = SetCriterion.from_config(make_config())
    expected = ours(criterion, logits, pred_boxes, labels, boxes, valid)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        got = ours(criterion, logits, pred_boxes, labels, boxes, valid)
    finally:
        torch.distributed.destroy_process_group()
    torch.testing.assert_close(got["loss"], expected["loss"])
    assert np.isclose(float(criterion._normalisers(valid, valid, NUM_QUERIES)[0]), 5.0)


def make_conditional_config() -> ConditionalDetrConfig:
    return ConditionalDetrConfig(
        num_labels=NUM_CLASSES,
        auxiliary_loss=True,
        decoder_layers=NUM_LAYERS,
        class_cost=3,
        bbox_cost=4,
        giou_cost=1,
        bbox_loss_coefficient=4,
        giou_loss_coefficient=3,
        focal_alpha=0.3,
    )


@pytest.mark.parametrize("seed", range(3))
def test_focal_variant_matches_transformers_conditional_detr_loss(seed):
    gen = torch.Generator().manual_seed(seed)
    counts = random_counts(gen)
    labels, boxes, valid = make_targets(counts, max(counts) + 2, gen, shuffle=seed % 2 == 1)
    logits, pred_boxes = make_outputs(len(counts), gen, num_logits=NUM_CLASSES)  # no no-object logit
    config = make_conditional_config()

    targets = [{"class_labels": labels[i][valid[i]], "boxes": boxes[i][valid[i]]} for i in range(len(counts))]
    ref_loss, ref_dict, _ = DeformableDetrForObjectDetectionLoss(
        logits=logits[-1], labels=targets, device=logits.device, pred_boxes=pred_boxes[-1],
        config=config, outputs_class=logits, outputs_coord=pred_boxes,
    )
    ref_grads = torch.autograd.grad(ref_loss, (logits, pred_boxes))

    criterion = SetCriterion.from_config(config)
    assert isinstance(criterion, FocalSetCriterion)
    got = ours(criterion, logits, pred_boxes, labels, boxes, valid)
    assert set(got) == set(ref_dict) | {"loss"}
    # 4.57 logs the softmax cardinality (argmax != last class) for sigmoid logits; 5.x fixed it.
    check_cardinality = "loss_cardinality" in DeformableDetrImageLoss.__dict__
    for key, value in ref_dict.items():
        if check_cardinality or not key.startswith("cardinality_error"):
            torch.testing.assert_close(got[key], value.float(), atol=1e-5, rtol=0, msg=key)
    torch.testing.assert_close(got["loss"], ref_loss, atol=1e-5, rtol=0)
    for g, r in zip(torch.autograd.grad(got["loss"], (logits, pred_boxes)), ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=0)


def test_focal_variant_without_objects():
    gen = torch.Generator().manual_seed(0)
    labels, boxes, valid = make_targets([0, 0, 0], 2, gen)
    logits, pred_boxes = make_outputs(3, gen, num_logits=NUM_CLASSES)
    out = ours(SetCriterion.from_config(make_conditional_config()), logits, pred_boxes, labels, boxes, valid)
    assert all(torch.isfinite(v) for v in out.values()) and out["loss_bbox"] == 0 and out["loss_giou_0"] == 0
    grad_logits, grad_boxes = torch.autograd.grad(out["loss"], (logits, pred_boxes))
    assert grad_logits.abs().sum() > 0 and not grad_boxes.any()


@pytest.mark.compat
def test_detr_forward_with_auxiliary_heads_matches_transformers_loss(varied_model, synthetic_dir):
    """A real ``DetrForObjectDetection`` forward (two decoder layers: one auxiliary head) on a padded
    batch of 4 synthetic images: detr-ft's loss (``DetrModule.compute_loss``, its own output path
    and criterion) equals ``model(pixel_values, pixel_mask, labels=...).loss`` from transformers."""
    from detr_ft.checkpoint import model_from_checkpoint
    from detr_ft.data.batching import Collator
    from detr_ft.data.coco import load_index
    from detr_ft.data.dataset import DetectionDataset
    from detr_ft.engine import DetrModule, OptimConfig
    from detr_ft.model.build import ModelBundle

    model, resize, categories, family = model_from_checkpoint(varied_model.ckpt)
    index = load_index(synthetic_dir, "train")
    dataset = DetectionDataset(index, resize, train=False)
    batch = Collator(resize.mean, resize.std)([dataset[i] for i in range(4)]).to_device_normalised("cpu")
    assert not batch.pixel_mask.all() and batch.valid.sum() > 4  # padded pixels and several objects
    module = DetrModule(ModelBundle(model, resize, family, pretrained=False), categories, OptimConfig())
    targets = [{"class_labels": batch.labels[i][batch.valid[i]], "boxes": batch.boxes[i][batch.valid[i]]}
               for i in range(len(batch))]
    with torch.no_grad():
        theirs = model(pixel_values=batch.pixel_values, pixel_mask=batch.pixel_mask.long(), labels=targets)
        ours = module.compute_loss(batch, with_aux=True)
        last_layer_only = module.compute_loss(batch, with_aux=False)
    assert len(theirs.auxiliary_outputs) == model.config.decoder_layers - 1 == 1
    torch.testing.assert_close(ours["loss"], theirs.loss, atol=1e-5, rtol=1e-6)
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(ours[key], theirs.loss_dict[key], atol=1e-5, rtol=1e-6, msg=key)
    assert abs(last_layer_only["loss"] - theirs.loss) > 1e-2  # the auxiliary head counts

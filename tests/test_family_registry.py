"""The family registry: every family through the same paths, held to transformers' own.

Parametrised by family (``model/families.py``): presets, an unsupported detector,
the model directory's own preprocessing (Detector == transformers' pipeline on a
directory carrying the family's image processor), transformers' loss on the real
objects only, and resume.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from detr_ft.cli import main
from detr_ft.errors import UserError
from detr_ft.model.build import build_model, resize_from_processor
from detr_ft.model.families import FAMILIES, SUPPORTED_FAMILIES
from detr_ft.model.outputs import detection_outputs
from detr_ft.types import UNNORMALISED
from test_families import ALL_PRESETS, available, small_images

pytestmark = pytest.mark.compat

LABELS = {0: "circle", 1: "square", 2: "triangle"}
FAMILY_PARAMS = [pytest.param(f, id=f.model_type, marks=p.marks)
                 for f, p in zip(FAMILIES, available([f.preset for f in FAMILIES]))]
# What the parity tests perturb, so that scores and boxes differ across queries: the class heads
# and the learned queries (DETR's random init gives every query the same output).
PERTURBED = ("class_labels_classifier", "class_embed", "enc_score_head", "query_position_embeddings",
             "query_refpoint_embeddings")


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_preset_builds_its_family_scored_as_registered(family):
    bundle = build_model(family.preset, LABELS)
    assert bundle.family == bundle.model.config.model_type == family.model_type
    assert bundle.resize == family.resize and not bundle.pretrained
    gen = torch.Generator().manual_seed(0)
    out = detection_outputs(bundle.model.eval(), torch.randn(1, 3, 64, 96, generator=gen),
                            torch.ones(1, 64, 96, dtype=torch.long), with_aux=False)
    width = {"softmax": 4, "sigmoid": 3}[family.scoring]  # softmax: a no-object logit
    assert out.logits.shape == (1, bundle.model.config.num_queries, width)
    assert out.boxes.shape == (1, bundle.model.config.num_queries, 4)


# --- detr-ft's criterion: transformers' loss, whatever the padding ------------------------


@pytest.mark.parametrize("family", [p for p in FAMILY_PARAMS if p.values[0].criterion_pads_targets])
def test_criterion_is_the_familys_transformers_loss_and_padding_changes_nothing(family):
    """Every loss part (final and auxiliary layers) equals transformers' own loss for the family to
    1e-5; padded object slots, real objects first or scattered, change neither loss nor gradients."""
    from test_families import images, padded_targets

    from detr_ft.model.criterion import SetCriterion

    model = build_model(family.preset, LABELS).model.train()
    criterion = SetCriterion.from_config(model.config)
    pixel_values, pixel_mask = images(3, 64, 96, real_widths=[96, 64, 80])
    counts = [2, 0, 3]
    params = [p for p in model.parameters() if p.requires_grad]

    def ours(pad_to, shuffle):
        out = detection_outputs(model, pixel_values, pixel_mask)
        losses = criterion(out.logits, out.boxes, *padded_targets(counts, pad_to, 3, shuffle=shuffle), out.aux)
        return losses, torch.autograd.grad(losses["loss"], params, allow_unused=True)

    labels, boxes, valid = padded_targets(counts, 3, 3)
    targets = [{"class_labels": labels[i][valid[i]], "boxes": boxes[i][valid[i]]} for i in range(3)]
    ref = model(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=targets)
    parts = [k for k in ref.loss_dict if k.startswith(("loss_ce", "loss_bbox", "loss_giou"))]
    assert len(parts) == 3 * model.config.decoder_layers  # the auxiliary layers took part
    base, base_grads = ours(3, False)
    for key in parts:
        torch.testing.assert_close(base[key], ref.loss_dict[key], atol=1e-5, rtol=0, msg=key)
    torch.testing.assert_close(base["loss"], ref.loss, atol=1e-5, rtol=0)
    for pad_to, shuffle in [(6, False), (6, True)]:
        padded, grads = ours(pad_to, shuffle)
        for key in parts:
            torch.testing.assert_close(padded[key], base[key], atol=1e-6, rtol=0, msg=key)
        for g, r in zip(grads, base_grads):
            assert (g is None) == (r is None)
            if g is not None:
                torch.testing.assert_close(g, r, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", [p for p in FAMILY_PARAMS if p.values[0].loss_divides_by_local_objects])
def test_per_process_losses_rescaled_average_to_the_whole_batchs(family):
    """DDP: each process runs transformers' loss on its share of the batch, divided by its own object
    count; scaled by ``box_count_scale`` the processes' mean is the whole batch's loss in one process
    (eval mode: no denoising queries, batch norms on running statistics, so the images are independent);
    unscaled it is not."""
    from test_families import images, padded_targets

    from detr_ft.model.outputs import box_count_scale

    torch.manual_seed(0)
    model = build_model(family.preset, LABELS).model.eval()
    pixel_values, pixel_mask = images(4, 64, 96, real_widths=[96, 64, 80, 96])
    counts = [1, 0, 4, 3]  # two processes: 1 object and 7
    labels, boxes, valid = padded_targets(counts, 4, 3)
    targets = [{"class_labels": labels[i][valid[i]], "boxes": boxes[i][valid[i]]} for i in range(4)]

    def loss(idx):
        _, losses = family.loss_forward(model, pixel_values[idx], pixel_mask[idx].bool(), [targets[i] for i in idx])
        return losses["loss"]

    with torch.no_grad():
        whole = loss([0, 1, 2, 3])
        shares = [([0, 1], 1), ([2, 3], 7)]
        parts = [loss(idx) for idx, _ in shares]
    scaled = sum(part * box_count_scale(n, sum(counts), 2) for part, (_, n) in zip(parts, shares)) / 2
    local = sum(parts) / 2  # each process's own count, as transformers divides
    # DEIMv2 divides its box terms by the matched pairs of all layers together, not the objects: there
    # the factor is a close approximation, not the identity
    approximate = family.model_type == "deimv2"
    torch.testing.assert_close(scaled, whole, rtol=5e-3 if approximate else 1e-5, atol=1e-6)
    assert abs(local - whole) > 10 * abs(scaled - whole) and abs(local - whole) > 0.05 * whole


@pytest.mark.parametrize("family,preset", [("deimv2", "deimv2-tiny"), ("lw_detr", "lwdetr-tiny"),
                                           ("rf_detr", "rfdetr-tiny")])
def test_a_family_this_transformers_lacks_is_one_line_naming_the_version(family, preset, monkeypatch):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    monkeypatch.delitem(CONFIG_MAPPING_NAMES, family, raising=False)  # as in transformers 4.57
    with pytest.raises(UserError, match=rf"--model {preset}: the {family} family needs transformers 5.18 or newer"):
        build_model(preset, LABELS)


# --- an unsupported detector -----------------------------------------------------------


@pytest.fixture(scope="module")
def yolos_dir(tmp_path_factory):
    """A directory holding only a YOLOS config (never loaded: refused from its model_type)."""
    from transformers import YolosConfig

    out = tmp_path_factory.mktemp("yolos")
    YolosConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(out)
    return out


def test_unsupported_detector_is_one_line_exit_2(yolos_dir, synthetic_dir, tmp_path, capsys):
    rc = main(["train", "--data-dir", str(synthetic_dir), "--model", str(yolos_dir), "--output-dir",
               str(tmp_path / "run"), "--max-epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "a yolos model; detr-ft trains " + ", ".join(SUPPORTED_FAMILIES) in err
    from detr_ft.detector import Detector

    with pytest.raises(UserError, match="a yolos model; detr-ft trains"):
        Detector.load(yolos_dir)


# --- the model directory's own preprocessing --------------------------------------------


def family_processor(family):
    """The family's own transformers image processor (its defaults), at a small size: fixed height x
    width for the RT-DETR line (aspect ratio not kept, no normalisation) and the preset's square for a
    family whose preset has one (LW-DETR, RF-DETR: ImageNet statistics), shortest/longest edges and
    ImageNet statistics for the DETR line."""
    import transformers

    cls = getattr(transformers, family.processor + "Pil", None) or getattr(transformers, family.processor)
    if family.resize.fixed is not None:  # a windowed ViT: square multiples of patch x windows
        return cls(size={"height": family.resize.fixed[0], "width": family.resize.fixed[1]})
    size = {"height": 96, "width": 128} if fixed_processor(family) else {"shortest_edge": 96, "longest_edge": 160}
    return cls(size=size)


def fixed_processor(family) -> bool:
    """Whether the family's directories resize to a fixed height x width: where its processor's default
    does (the RT-DETR line) or its preset does (LW-DETR, RF-DETR)."""
    import transformers

    cls = getattr(transformers, family.processor + "Pil", None) or getattr(transformers, family.processor)
    default = cls().size
    edges = default.get("shortest_edge") if isinstance(default, dict) else getattr(default, "shortest_edge", None)
    return family.resize.fixed is not None or not edges


def test_resize_follows_the_processor_config(tmp_path):
    """RT-DETR's processor: 640 x 640, aspect ratio not kept, pixels / 255 only; DETR's: edges, ImageNet."""
    import transformers

    from detr_ft.types import IMAGENET_MEAN, IMAGENET_STD

    rtdetr = tmp_path / "rtdetr"
    (getattr(transformers, "RTDetrImageProcessorPil", None) or transformers.RTDetrImageProcessor)().save_pretrained(rtdetr)
    spec = resize_from_processor(str(rtdetr), {})
    assert spec.fixed == (640, 640) and (spec.mean, spec.std) == UNNORMALISED and not spec.normalised
    assert spec.output_size(300, 500) == (640, 640) and spec.max_canvas == (640, 640)
    detr = tmp_path / "detr"
    (getattr(transformers, "DetrImageProcessorPil", None) or transformers.DetrImageProcessor)().save_pretrained(detr)
    spec = resize_from_processor(str(detr), {})
    assert spec.fixed is None and (spec.shortest, spec.longest) == (800, 1333)
    assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)


@pytest.fixture(scope="module")
def aspect_images(tmp_path_factory):
    """Three images, landscape, portrait and square, with a few shapes each."""
    out = tmp_path_factory.mktemp("aspect")
    paths = []
    for i, (w, h) in enumerate([(150, 100), (90, 140), (120, 120)]):
        im = Image.new("RGB", (w, h), (40 + 60 * i, 90, 160))
        draw = ImageDraw.Draw(im)
        draw.ellipse([w * 0.1, h * 0.2, w * 0.5, h * 0.6], fill=(230, 40, 40))
        draw.rectangle([w * 0.55, h * 0.5, w * 0.9, h * 0.9], fill=(30, 220, 60))
        paths.append(out / f"im{i}.png")
        im.save(paths[-1])
    return paths


def perturbed_model_dir(family, path):
    """The family's preset (seeded init) with seeded-normal head weights, saved with the family's own processor.

    Seeded: the RT-DETR line picks its queries by a top-k over encoder tokens, and where a random init
    gives near-equal token scores, float rounding (folded batch norms) can swap one query."""
    torch.manual_seed(0)
    model = build_model(family.preset, LABELS).model
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(h in name for h in PERTURBED):
                p.add_(torch.randn(p.shape, generator=gen) * (3.0 if "query" in name else 0.1))
    model.save_pretrained(path)
    family_processor(family).save_pretrained(path)
    return path


@pytest.mark.parametrize("family", FAMILY_PARAMS)
def test_detector_on_a_directory_gives_the_pipelines_detections(family, aspect_images, tmp_path):
    from test_export import pipeline_detections

    from detr_ft.detector import Detector

    model_dir = perturbed_model_dir(family, tmp_path / "model")
    detector = Detector.load(model_dir, device="cpu")
    assert (detector.resize.fixed is not None) == fixed_processor(family)
    ours = detector.predict(aspect_images, threshold=0.0, batch_size=1)
    theirs = pipeline_detections(model_dir, aspect_images, threshold=0.0)
    for path, a, b in zip(aspect_images, ours, theirs):
        # RT-DETR's processor keeps the top num_queries (query, class) pairs, detr-ft the top 100
        # (as Conditional DETR's): the pipeline's are then the first of detr-ft's.
        assert len(a) == len(b) > 0 if family.processor != "RTDetrImageProcessor" else len(a) >= len(b) > 0
        assert len({(round(d["score"], 4), tuple(d["box"])) for d in b}) >= 10, b  # outputs vary across queries
        width, height = Image.open(path).size
        size = max(width, height)
        for d in b:  # detr-ft clips boxes to the image, the pipeline does not
            d["box"] = [min(max(v, 0), width if k % 2 == 0 else height) for k, v in enumerate(d["box"])]
        assert not mismatched(b, a, size), (path.name, mismatched(b, a, size)[:3])


SCORE_TOL = 1e-4  # detr-ft resizes with the processors' own kernel: the same pixels, the same scores
BOX_TOL = 0.01  # of the image's longer side, beside the pipeline's whole pixels (transformers 4.57's
# Conditional DETR post-processing puts a box up to 1.4 px from 5.x's; tests/test_export.py holds 5.x to 0.5 px)


def mismatched(expected: list[dict], actual: list[dict], size: int) -> list[tuple[dict, dict | None]]:
    """The detections of ``expected`` that the best one-to-one pairing with ``actual`` (same label, score
    within SCORE_TOL, box within BOX_TOL * size + 1 px, the pipeline's boxes being whole pixels) leaves without a partner within those tolerances.
    One to one over all of them at once: near-equal detections cannot take each other's partner."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    cost = np.full((len(expected), len(actual)), 1e6)
    for i, e in enumerate(expected):
        for j, a in enumerate(actual):
            if e["label"] == a["label"]:
                box = max(abs(u - v) for u, v in zip(e["box"], a["box"])) / (BOX_TOL * size + 1)  # +1: int pixels
                cost[i, j] = max(abs(e["score"] - a["score"]) / SCORE_TOL, box)
    rows, cols = linear_sum_assignment(cost)
    partner = dict(zip(rows, cols))
    return [(e, actual[partner[i]] if i in partner else None) for i, e in enumerate(expected)
            if i not in partner or cost[i, partner[i]] > 1]


# --- train --pad --num-buckets, --resume: bit-identical to an uninterrupted run -------------------

# every family but DETR, whose resume test_resume.py holds to a run killed with SIGKILL, and RT-DETRv2 and
# DEIMv2, which resume through RT-DETR's and D-FINE's code (forward, denoising draws, loss); each case is
# three short trainings of 4 tiny images
RESUME_PRESETS = [p for p in ALL_PRESETS if p.values[0] not in ("detr-tiny", "rtdetr-v2-tiny", "deimv2-tiny")]


@pytest.mark.parametrize("preset", RESUME_PRESETS)
def test_train_pad_buckets_and_resume_bit_identical(preset, tiny_data_dir, tmp_path, capsys):
    """2 epochs of 2 steps == 1 epoch, then --resume to 2 (weights bit-identical); --num-buckets says in one
    line that it has no effect where transformers' loss sees the real objects only. With --ema: the averaged
    and the live weights, the optimizer's moments and the schedule match too (the RT-DETR line's random
    denoising queries included)."""
    from detr_ft.model.families import family_of_preset

    def train(out, epochs, *extra):
        argv = ["train", "--data-dir", str(tiny_data_dir), "--model", preset, "--batch-size", "2", "--num-workers",
                "0", "--train-only", "--pad", "--num-buckets", "2", "--deterministic", "--max-epochs", str(epochs),
                "--output-dir", str(out), "--lr", "1e-3", "--ema", *small_images(preset), *extra]
        assert main(argv) == 0
        return capsys.readouterr().out

    said = train(tmp_path / "part", 1)
    note = [line for line in said.splitlines() if "--num-buckets has no effect" in line]
    assert len(note) == (0 if family_of_preset(preset).criterion_pads_targets else 1)
    train(tmp_path / "part", 2, "--resume")
    train(tmp_path / "full", 2)
    a = torch.load(tmp_path / "full" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 4
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert_same_training_state(a, b)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints' live weights (kept apart under EMA), optimizer moments and schedule: bit-identical."""
    assert ("current_model_state" in a) == ("current_model_state" in b)
    for k in a.get("current_model_state", {}):
        assert torch.equal(a["current_model_state"][k], b["current_model_state"][k]), k
    sa, sb = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert sa.keys() == sb.keys() and sa
    for i in sa:
        assert sa[i].keys() == sb[i].keys() and all(torch.equal(sa[i][k], sb[i][k]) for k in sa[i]), i
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_fine_tuning_a_fixed_size_directory_trains_and_exports_its_preprocessing(synthetic_dir, tmp_path):
    """An RT-DETR directory whose processor resizes to 96 x 128 without normalising: training feeds
    that (one static canvas) and the export carries it on."""
    import json

    from detr_ft.config import TrainConfig
    from detr_ft.export import export
    from detr_ft.model.families import family_named
    from detr_ft.train import fit

    model_dir = perturbed_model_dir(family_named("rt_detr"), tmp_path / "model")
    _, module, summary = fit(TrainConfig(output_dir=str(tmp_path / "run"), data_dir=str(synthetic_dir),
                                         model=str(model_dir), max_steps=1, max_epochs=-1, batch_size=4,
                                         num_workers=0, train_only=True, max_inf_frames=0, device="cpu"))
    assert [tuple(c) for c in summary["canvases"]] == [(96, 128)]  # one static canvas
    assert module.bundle_info["resize"]["fixed"] == (96, 128)
    processor = json.loads((export(str(tmp_path / "run" / "last.ckpt"), tmp_path / "hf")
                            / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 96, "width": 128} and processor["do_normalize"] is False

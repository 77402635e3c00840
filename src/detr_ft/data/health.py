"""``detr-ft data check``: is a dataset fit to learn from, before an hour of training says so.

Reads the splits with the readers training uses (``read_split``: a record training would
refuse is refused here too, exit 2), then looks for what the readers let through but
makes a fine-tune learn little: classes missing from a split or with very few objects,
the same picture (byte for byte, or resized/re-encoded: a perceptual hash) in train and
test, boxes a few pixels small after the model's resize, images without objects,
same-class boxes on top of each other (duplicate annotations), annotation ids that
repeat or restart per image, category ids that are not 1..C. It also suggests
``--num-buckets``, ``--pad-canvases`` and ``--image-size`` from the data. No torch and
no transformers are imported (unless ``--model`` names a model whose resize must be read).
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from detr_ft.data.coco import annotation_path
from detr_ft.data.image_hash import file_digest, near_pairs, phash
from detr_ft.data.padding import bucket_size, compute_buckets, pad_canvases, padded_pixel_fraction
from detr_ft.types import DatasetIndex, ResizeSpec

# facebook/detr-resnet-50's resize (model/build.py's DETR_RESIZE; that module imports torch)
DEFAULT_RESIZE = ResizeSpec(shortest=800, longest=1333)
COCO_SMALL, COCO_MEDIUM = 32 ** 2, 96 ** 2  # COCO's area limits of small and medium objects (pixels)
MAX_EXAMPLES = 10
MAX_BUCKETS = 6
ASPECT_TOLERANCE = 0.1  # near-duplicates: aspect ratios within 10% (a resized copy keeps its own)


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of the findings (the CLI's flags)."""

    resize: ResizeSpec = DEFAULT_RESIZE
    min_box_pixels: float = 4.0      # a box side shorter than this after the resize is "tiny"
    few_objects: int = 10            # a class with fewer training objects is "rare"
    near_duplicate_bits: int = 10    # pHash bits (of 64) that may differ in a near-duplicate
    overlap_iou: float = 0.9         # same-class boxes overlapping more are likely duplicates
    empty_share_warning: float = 0.1  # images without objects above this share: a warning, else a note


@dataclass
class Finding:
    """One problem found: ``level`` is "warning" (fix before training) or "info" (worth knowing)."""

    level: str
    code: str
    message: str
    examples: list = field(default_factory=list)


@dataclass
class SplitData:
    """One split's index with its boxes flattened.

    boxes: [M, 4] float (x, y, w, h) pixels; labels [M]; owner [M] record index of each box;
    scale [N] each image's resize factor (resized / original side).
    """

    name: str
    index: DatasetIndex
    boxes: np.ndarray
    labels: np.ndarray
    owner: np.ndarray
    scale: np.ndarray

    @classmethod
    def of(cls, name: str, index: DatasetIndex, resize: ResizeSpec) -> "SplitData":
        recs = index.records
        boxes = np.concatenate([r.boxes for r in recs]) if recs else np.zeros((0, 4), np.float32)
        labels = np.concatenate([r.labels for r in recs]) if recs else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(recs)), [r.num_objects for r in recs])
        scale = np.array([resize.output_size(r.height, r.width)[0] / r.height for r in recs])
        return cls(name, index, boxes.reshape(-1, 4), labels, owner, scale)

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.index.categories))

    @property
    def sizes(self) -> np.ndarray:
        """[N, 2] (width, height) of the images as displayed."""
        return np.array([(r.width, r.height) for r in self.index.records], dtype=np.int64).reshape(-1, 2)


def read_splits(data_dir, hf_dataset: str | None, on_bad_data: str, resize: ResizeSpec) -> list[SplitData]:
    """train, and test when the dataset has one, read as training reads them."""
    from detr_ft.data.source import read_split

    train = read_split(data_dir, "train", on_bad_data, hf_dataset=hf_dataset)
    splits = [SplitData.of("train", train, resize)]
    if hf_dataset or annotation_path(Path(data_dir).expanduser(), "test").is_file():
        test = read_split(data_dir, "test", on_bad_data, categories=train.categories, hf_dataset=hf_dataset)
        splits.append(SplitData.of("test", test, resize))
    return splits


# ---- findings -------------------------------------------------------------------------------------

def reader_findings(s: SplitData) -> list[Finding]:
    """What the reader left out (--on-bad-data skip), clipped or dropped."""
    rep, out = s.index.report, []
    if rep.skipped_records:
        out.append(Finding("warning", "skipped_records", f"{s.name}: {rep.skipped_records} bad record(s) left out "
                           f"(--on-bad-data skip); training would refuse them without it", rep.problems[:MAX_EXAMPLES]))
    if rep.dropped_boxes:
        out.append(Finding("warning", "degenerate_boxes", f"{s.name}: {rep.dropped_boxes} degenerate box(es) "
                           f"(zero or negative width or height, NaN, or wholly outside the image) are dropped "
                           f"when training reads them; fix or remove them"))
    if rep.clipped_boxes:
        out.append(Finding("info", "clipped_boxes", f"{s.name}: {rep.clipped_boxes} box(es) reach beyond their "
                           f"image and are clipped to it"))
    return out


def class_findings(splits: list[SplitData], few: int) -> list[Finding]:
    """Classes without objects in a split; classes with fewer than ``few`` training objects."""
    names = splits[0].index.categories.names
    out = []
    for s in splits:
        counts = s.class_counts
        missing = [names[k] for k in np.flatnonzero(counts == 0)]
        if missing and counts.sum():
            why = ("the model never sees them" if s.name == "train"
                   else "their AP cannot be measured and mAP averages without them")
            out.append(Finding("warning", f"classes_missing_{s.name}",
                               f"{len(missing)} class(es) have no objects in {s.name}: {', '.join(missing[:20])} "
                               f"-- {why}; move some of their images (detr-ft data split re-splits stratified)",
                               missing))
    counts = splits[0].class_counts
    rare = [(names[k], int(counts[k])) for k in np.flatnonzero((counts > 0) & (counts < few))]
    if rare:
        out.append(Finding("warning", "rare_classes",
                           f"{len(rare)} class(es) have fewer than {few} training objects: "
                           f"{', '.join(f'{n} ({c})' for n, c in rare[:20])}; expect poor AP for them",
                           [{"class": n, "objects": c} for n, c in rare]))
    return out


def empty_findings(s: SplitData, warn_share: float) -> list[Finding]:
    counts = s.index.object_counts()
    if len(counts) and counts.sum() == 0:
        return [Finding("warning", f"no_objects_{s.name}", f"{s.name}: none of its {len(counts)} images has an "
                        f"object; there is nothing to {'learn' if s.name == 'train' else 'evaluate'}")]
    empty = [s.index.records[i].image_id for i in np.flatnonzero(counts == 0)]
    if not empty:
        return []
    share = len(empty) / len(counts)
    level = "warning" if share > warn_share else "info"
    return [Finding(level, f"empty_images_{s.name}", f"{s.name}: {len(empty)} of {len(counts)} images "
                    f"({share:.0%}) have no objects; fine as background examples, unless they were left "
                    f"unannotated", empty[:MAX_EXAMPLES])]


def tiny_box_findings(s: SplitData, settings: CheckSettings) -> list[Finding]:
    """Boxes whose short side is under ``min_box_pixels`` after the model's resize."""
    if not len(s.boxes):
        return []
    side = np.minimum(s.boxes[:, 2], s.boxes[:, 3]) * s.scale[s.owner]
    tiny = np.flatnonzero(side < settings.min_box_pixels)
    if not len(tiny):
        return []
    r = settings.resize
    examples = [{"image_id": s.index.records[s.owner[i]].image_id, "bbox": [round(float(v), 2) for v in s.boxes[i]],
                 "resized_side": round(float(side[i]), 2)} for i in tiny[:MAX_EXAMPLES]]
    return [Finding("warning", f"tiny_boxes_{s.name}",
                    f"{s.name}: {len(tiny)} box(es) are under {settings.min_box_pixels:g} px on a side after the "
                    f"resize to short side {r.shortest} (long at most {r.longest}); the model can hardly see them: "
                    f"a larger --image-size, or check they are not annotation slips", examples)]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] IoU of (x, y, w, h) boxes."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def overlap_findings(s: SplitData, min_iou: float) -> list[Finding]:
    """Pairs of same-class boxes in one image overlapping above ``min_iou``: likely one object annotated twice."""
    names, pairs = s.index.categories.names, []
    for r in s.index.records:
        for label in np.unique(r.labels):
            boxes = r.boxes[r.labels == label]
            if len(boxes) > 1:
                iou = np.triu(box_iou(boxes, boxes), k=1)
                pairs += [{"image_id": r.image_id, "class": names[label], "iou": round(float(iou[i, j]), 3)}
                          for i, j in zip(*np.nonzero(iou > min_iou))]
    if not pairs:
        return []
    return [Finding("warning", f"duplicate_boxes_{s.name}",
                    f"{s.name}: {len(pairs)} pair(s) of same-class boxes overlap with IoU > {min_iou:g}, most "
                    f"likely objects annotated twice; DETR's one-to-one matching then teaches duplicate "
                    f"predictions", pairs[:MAX_EXAMPLES])]


def annotation_id_findings(s: SplitData) -> list[Finding]:
    """Annotation ids missing, repeated, or restarting in every image (COCO files only)."""
    annotations = s.index.coco_annotations()
    if annotations is None:
        return []
    anns = [a for a in annotations if isinstance(a, dict)]
    ids = [a.get("id") for a in anns]
    out = []
    missing = sum(not isinstance(i, int) or isinstance(i, bool) for i in ids)
    if missing:
        out.append(Finding("warning", f"annotation_ids_missing_{s.name}", f"{s.name}: {missing} annotation(s) "
                           f"have no integer 'id'; COCO tools (pycocotools, evaluation) need one per annotation"))
    repeats = {i: n for i, n in Counter(i for i in ids if isinstance(i, int)).items() if n > 1}
    if repeats:
        firsts: dict = {}
        for a in anns:
            if isinstance(a.get("id"), int):
                firsts[a.get("image_id")] = min(firsts.get(a.get("image_id"), a["id"]), a["id"])
        common_start, n_images = Counter(firsts.values()).most_common(1)[0]
        restart = n_images >= 2 and n_images >= len(firsts) / 2
        how = (f"they restart in every image ({n_images} images number their annotations from {common_start})"
               if restart else "")
        out.append(Finding("warning", f"annotation_ids_repeat_{s.name}",
                           f"{s.name}: {len(repeats)} annotation id(s) are used more than once"
                           f"{'; ' + how if how else ''}; COCO tools key annotations by id and lose or mix "
                           f"the repeats -- renumber them 1..N (detr-ft itself does not read them)",
                           sorted(repeats)[:MAX_EXAMPLES]))
    return out


def category_findings(s: SplitData) -> list[Finding]:
    """Category ids that are not 1..C (or 0..C-1), and names used twice."""
    cats, out = s.index.categories, []
    ids = list(cats.ids)
    if ids not in (list(range(1, len(ids) + 1)), list(range(len(ids)))):
        out.append(Finding("info", "category_ids", f"category ids {ids[:20]} are not 1..{len(ids)}: detr-ft "
                           f"maps them to 0..{len(ids) - 1} for the model (num_classes = {len(ids)}) and back in "
                           f"its outputs; a tool that sizes its head from the largest id would need "
                           f"{max(ids) + 1} classes"))
    twice = sorted(n for n, k in Counter(cats.names).items() if k > 1)
    if twice:
        out.append(Finding("warning", "category_names_repeat", f"class name(s) used by more than one category "
                           f"id: {', '.join(twice)}; merge them or rename one", twice))
    return out


def fingerprints(s: SplitData) -> tuple[list[str], list[int]]:
    """(SHA-1 of the bytes, dHash) of every image of the split."""
    digests, hashes = [], []
    for r in s.index.records:
        data = s.index.image_bytes(r)
        digests.append(file_digest(data))
        hashes.append(phash(io.BytesIO(data)))
    return digests, hashes


def duplicate_findings(train: SplitData, test: SplitData, max_bits: int) -> list[Finding]:
    """The same image in train and test: identical bytes, or pHashes within ``max_bits`` bits and
    aspect ratios within ``ASPECT_TOLERANCE``."""
    (d_train, h_train), (d_test, h_test) = fingerprints(train), fingerprints(test)
    name = lambda s, i: s.index.records[i].file_name  # noqa: E731
    by_digest = {d: i for i, d in enumerate(d_train)}
    exact = [(by_digest[d], j) for j, d in enumerate(d_test) if d in by_digest]
    aspect = lambda s, i: s.index.records[i].aspect  # noqa: E731
    near = [(i, j, bits) for i, j, bits in near_pairs(h_train, h_test, max_bits)  # a copy keeps its shape
            if d_train[i] != d_test[j] and abs(aspect(train, i) / aspect(test, j) - 1) <= ASPECT_TOLERANCE]
    out = []
    if exact:
        out.append(Finding("warning", "duplicates_exact", f"{len(exact)} test image(s) are byte-identical to "
                           f"training images: the test score overstates what the model learned; remove them "
                           f"from one split",
                           [{"train": name(train, i), "test": name(test, j)} for i, j in exact[:MAX_EXAMPLES]]))
    if near:
        out.append(Finding("warning", "duplicates_near", f"{len(near)} train/test pair(s) look the same "
                           f"(perceptual hash within {max_bits} of 64 bits: resized, re-encoded or lightly edited "
                           f"copies); check them and keep each picture in one split",
                           [{"train": name(train, i), "test": name(test, j), "bits": b}
                            for i, j, b in near[:MAX_EXAMPLES]]))
    return out


# ---- suggestions ----------------------------------------------------------------------------------

def suggest_num_buckets(counts: np.ndarray) -> dict | None:
    """The fewest buckets (each a compiled shape) whose padded target slots stay under 25%."""
    if not len(counts) or counts.sum() == 0:
        return None
    waste = {}
    for k in range(1, MAX_BUCKETS + 1):
        buckets = compute_buckets(counts, k)
        waste[k] = 1.0 - counts.sum() / sum(bucket_size(int(c), buckets) for c in counts)
        if waste[k] <= 0.25:
            break
    k = k if waste[k] <= 0.25 else min(waste, key=waste.get)
    return {"value": k, "padded_target_slots": round(waste[k], 3), "padded_with_1": round(waste[1], 3),
            "why": f"with --pad/--compile, {k} bucket(s) pad {waste[k]:.0%} of the target slots "
                   f"(1 bucket: {waste[1]:.0%}); each bucket is one more compiled shape"}


def suggest_pad_canvases(resized: list[tuple[int, int]], resize: ResizeSpec) -> dict | None:
    if not resized:
        return None
    square = padded_pixel_fraction(resized, pad_canvases(resize))
    auto = padded_pixel_fraction(resized, pad_canvases(resize, "auto"))
    value = "auto" if auto < square - 0.1 else "square"
    return {"value": value, "padded_pixels_square": round(square, 3), "padded_pixels_auto": round(auto, 3),
            "why": f"with --pad, a square canvas is {square:.0%} padding, a landscape and a portrait one "
                   f"(auto) {auto:.0%}"}


def suggest_image_size(train: SplitData, settings: CheckSettings) -> dict | None:
    """Smaller when the images are upsampled (no detail to gain), larger when many boxes end up tiny."""
    if not len(train.index.records):
        return None
    r = settings.resize
    short_sides = np.minimum(train.sizes[:, 0], train.sizes[:, 1])
    native = int(np.median(short_sides))
    value, why = r.shortest, "the model's resize suits the data"
    if native < r.shortest:
        value = max(32, int(round(native / 32)) * 32)
        why = f"the images' median short side is {native} px: the resize to {r.shortest} upsamples them"
    elif len(train.boxes):
        side = np.minimum(train.boxes[:, 2], train.boxes[:, 3]) * train.scale[train.owner]
        p5 = float(np.percentile(side, 5))
        if p5 < settings.min_box_pixels:
            need = r.shortest * settings.min_box_pixels / max(p5, 1e-3)
            value = int(min(native, int(np.ceil(need / 32)) * 32))
            why = (f"5% of the training boxes are under {p5:.1f} px after the resize to {r.shortest}; "
                   f"a short side of {value} (at most the images' own {native}) enlarges them")
    longest = int(round(value * r.longest / r.shortest))
    return {"value": [value, longest], "current": [r.shortest, r.longest], "why": why}


# ---- the check ------------------------------------------------------------------------------------

def _stats(a: np.ndarray) -> dict | None:
    """min, median, mean and max of the values (None when there are none)."""
    if not len(a):
        return None
    return {"min": float(a.min()), "median": float(np.median(a)), "mean": round(float(a.mean()), 3),
            "max": float(a.max())}


def split_summary(s: SplitData) -> dict:
    counts = s.index.object_counts()
    sizes = s.sizes
    areas = s.boxes[:, 2] * s.boxes[:, 3]
    aspects = np.array([r.aspect for r in s.index.records])
    return {
        "images": len(s.index.records), "objects": int(counts.sum()),
        "images_without_objects": int((counts == 0).sum()),
        "objects_per_image": _stats(counts),
        "per_class": dict(zip(s.index.categories.names, map(int, s.class_counts))),
        "box_sizes": {"small": int((areas < COCO_SMALL).sum()),
                      "medium": int(((areas >= COCO_SMALL) & (areas < COCO_MEDIUM)).sum()),
                      "large": int((areas >= COCO_MEDIUM).sum())},
        "image_width": _stats(sizes[:, 0]), "image_height": _stats(sizes[:, 1]),
        "orientation": {"landscape": int((aspects < 1).sum()), "portrait": int((aspects > 1).sum()),
                        "square": int((aspects == 1).sum())},
        "reader": s.index.report.to_dict(),
    }


def check_dataset(data_dir, hf_dataset: str | None = None, on_bad_data: str = "error",
                  settings: CheckSettings = CheckSettings()) -> tuple[dict, list[SplitData]]:
    """(the report as a JSON-able dict, the splits read). Raises ``UserError`` only for what training
    would refuse."""
    splits = read_splits(data_dir, hf_dataset, on_bad_data, settings.resize)
    train = splits[0]
    findings = category_findings(train) + class_findings(splits, settings.few_objects)
    for s in splits:
        findings += (reader_findings(s) + empty_findings(s, settings.empty_share_warning)
                     + tiny_box_findings(s, settings) + overlap_findings(s, settings.overlap_iou)
                     + annotation_id_findings(s))
    if len(splits) == 2:
        findings += duplicate_findings(train, splits[1], settings.near_duplicate_bits)
    else:
        findings.append(Finding("info", "no_test_split", "no test split (annotations/test.json): training "
                                "needs one unless --train-only; make one with detr-ft data split"))
    resized = [settings.resize.output_size(r.height, r.width) for r in train.index.records]
    suggestions = {"num_buckets": suggest_num_buckets(train.index.object_counts()),
                   "pad_canvases": suggest_pad_canvases(resized, settings.resize),
                   "image_size": suggest_image_size(train, settings)}
    report = {
        "dataset": str(hf_dataset or data_dir),
        "classes": list(train.index.categories.names),
        "category_ids": list(train.index.categories.ids),
        "settings": {k: v for k, v in asdict(settings).items() if k != "resize"} | {
            "resize": [settings.resize.shortest, settings.resize.longest]},
        "splits": {s.name: split_summary(s) for s in splits},
        "findings": [asdict(f) for f in findings],
        "warnings": sum(f.level == "warning" for f in findings),
        "suggestions": {k: v for k, v in suggestions.items() if v is not None},
    }
    return report, splits

"""data check / convert / split on small datasets made here (images of 40-56 px)."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detr_ft.cli import main
from detr_ft.data.coco import load_index

CLASSES = {3: "cat", 5: "dog", 9: "bird"}  # category id -> name (ids not contiguous on purpose)


def picture(seed: int, size=(48, 40)) -> Image.Image:
    """A distinct picture: a random 4x4 colour grid, smoothly enlarged, with a little noise."""
    rng = np.random.default_rng(seed)
    grid = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
    noisy = np.asarray(grid, dtype=np.int16) + rng.integers(-6, 7, (size[1], size[0], 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def truth(n_images: int = 6) -> list[dict]:
    """Images with their size and objects [(category id, [x, y, w, h])], boxes integral (VOC's grid)."""
    rng = np.random.default_rng(7)
    out = []
    for k in range(n_images):
        w, h = (48, 40) if k % 2 else (40, 56)
        objects = []
        for j in range(1 + k % 3):
            bw, bh = int(rng.integers(4, 16)), int(rng.integers(4, 16))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            objects.append((list(CLASSES)[(k + j) % 3], [x, y, bw, bh]))
        out.append({"name": f"img{k}", "size": (w, h), "objects": objects, "split": "test" if k >= 4 else "train"})
    return out


def write_coco(root: Path, split: str, images: list[dict], categories=CLASSES, ann_ids=None) -> Path:
    """``root/images/<name>.png`` and ``root/annotations/<split>.json``; annotation ids 1.. unless given."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    doc = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in categories.items()]}
    for i, im in enumerate(images):
        file_name = f"{im['name']}.png"
        if not (root / "images" / file_name).exists():
            im.get("image", picture(zlib.crc32(im["name"].encode()), im["size"])).save(root / "images" / file_name)
        doc["images"].append({"id": i + 1, "file_name": file_name, "width": im["size"][0], "height": im["size"][1]})
        for cid, box in im["objects"]:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": i + 1, "category_id": cid,
                                       "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    if ann_ids is not None:
        for ann, ann_id in zip(doc["annotations"], ann_ids(doc["annotations"])):
            ann["id"] = ann_id
    path = root / "annotations" / f"{split}.json"
    path.write_text(json.dumps(doc))
    return path


# ---- writers of the three source formats, from the truth ---------------------------------------------

def write_yolo(src: Path, images: list[dict]) -> None:
    names = list(CLASSES.values())
    src.mkdir(parents=True, exist_ok=True)
    (src / "classes.txt").write_text("\n".join(names) + "\n")
    for k, im in enumerate(images):
        split = "val" if im["split"] == "test" else "train"
        (src / "images" / split).mkdir(parents=True, exist_ok=True)
        (src / "labels" / split).mkdir(parents=True, exist_ok=True)
        picture(k, im["size"]).save(src / "images" / split / f"{im['name']}.png")
        w, h = im["size"]
        lines = [f"{list(CLASSES).index(c)} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                 for c, (x, y, bw, bh) in im["objects"]]
        (src / "labels" / split / f"{im['name']}.txt").write_text("\n".join(lines) + "\n")


def write_voc(src: Path, images: list[dict]) -> None:
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (src / d).mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(images):
        picture(k, im["size"]).save(src / "JPEGImages" / f"{im['name']}.png")
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{im['name']}.png"
        for c, (x, y, bw, bh) in im["objects"]:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = CLASSES[c]
            box = ET.SubElement(obj, "bndbox")
            for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x + 1, y + 1, x + bw, y + bh)):  # 1-based, inclusive
                ET.SubElement(box, tag).text = str(v)
        ET.ElementTree(root).write(src / "Annotations" / f"{im['name']}.xml")
    for split, name in (("train", "train"), ("test", "val")):
        (src / "ImageSets" / "Main" / f"{name}.txt").write_text(
            "\n".join(im["name"] for im in images if im["split"] == split) + "\n")


def write_labelme(src: Path, images: list[dict]) -> None:
    for k, im in enumerate(images):
        folder = src / ("val" if im["split"] == "test" else "train")
        folder.mkdir(parents=True, exist_ok=True)
        picture(k, im["size"]).save(folder / f"{im['name']}.png")
        shapes = [{"label": CLASSES[c], "points": [[x + bw, y + bh], [x, y]], "shape_type": "rectangle"}
                  for c, (x, y, bw, bh) in im["objects"]]
        shapes.append({"label": "outline", "points": [[1, 1], [5, 1], [3, 4]], "shape_type": "polygon"})
        (folder / f"{im['name']}.json").write_text(json.dumps(
            {"imagePath": f"{im['name']}.png", "imageWidth": im["size"][0], "imageHeight": im["size"][1],
             "shapes": shapes}))


WRITERS = {"yolo": write_yolo, "voc": write_voc, "labelme": write_labelme}


def objects_by_image(data_dir: Path, split: str) -> dict[str, list]:
    """{image stem: sorted [(class name, [x, y, w, h])]} as detr-ft's reader sees the split."""
    index = load_index(data_dir, split)
    names = index.categories.names
    return {Path(r.file_name).stem: sorted((names[k], list(map(float, b))) for b, k in zip(r.boxes, r.labels))
            for r in index.records}


@pytest.mark.parametrize("fmt", ["yolo", "voc", "labelme"])
def test_convert_round_trip_keeps_boxes_classes_and_splits(fmt, tmp_path, capsys):
    images = truth()
    WRITERS[fmt](tmp_path / "src", images)
    out = tmp_path / "out"
    assert main(["data", "convert", "--from", fmt, str(tmp_path / "src"), "--out", str(out)]) == 0
    for split in ("train", "test"):
        got = objects_by_image(out, split)
        want = {im["name"]: sorted((CLASSES[c], b) for c, b in im["objects"]) for im in images if im["split"] == split}
        assert set(got) == set(want), split
        for name, objects in want.items():
            assert [n for n, _ in got[name]] == [n for n, _ in objects], name
            np.testing.assert_allclose([b for _, b in got[name]], [b for _, b in objects], atol=0.5, err_msg=name)
    assert sorted(load_index(out, "train").categories.names) == sorted(CLASSES.values())
    if fmt == "labelme":
        assert "6 polygon" in capsys.readouterr().out  # a non-rectangle shape per image: reported, not converted


def test_convert_single_set_is_split_stratified(tmp_path):
    images = [dict(im, split=None) for im in truth(12)]
    write_yolo(tmp_path / "src", images)  # split None -> everything under train/
    for folder in ("images", "labels"):
        (tmp_path / "src" / folder / "train").rename(tmp_path / "src" / folder / "all")
    assert main(["data", "convert", "--from", "yolo", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--split", "0.75", "--seed", "3"]) == 0
    train, test = load_index(tmp_path / "out", "train"), load_index(tmp_path / "out", "test")
    assert len(train) + len(test) == 12 and 2 <= len(test) <= 4
    for index in (train, test):
        assert set(np.concatenate([r.labels for r in index.records])) == {0, 1, 2}


# ---- data check --------------------------------------------------------------------------------------

def run_check(tmp_path: Path, data_dir: Path, *flags: str) -> dict:
    out = tmp_path / "check"
    assert main(["data", "check", "--data-dir", str(data_dir), "--output-dir", str(out), *flags]) == 0
    report = json.loads((out / "data_check.json").read_text())
    html = (out / "data_check.html").read_text()
    for file in report["figures"].values():
        assert (out / file).stat().st_size > 1000 and f'src="{file}"' in html
    return report


def codes(report: dict) -> set[str]:
    return {f["code"] for f in report["findings"]}


def problem_dataset(root: Path) -> None:
    """Train and test with planted problems: an exact and a near-duplicate across the splits, a class
    absent from test, a degenerate box, a 1-px box, two copies of one box, an image without objects,
    and annotation ids that restart in every image."""
    train = [{"name": f"t{k}", "size": (48, 40), "objects": [(3, [2, 2, 20, 20]), (5, [24, 10, 20, 25])]}
             for k in range(6)]
    train[1]["objects"].append((9, [5, 5, 0, 12]))                         # degenerate: zero width
    train[2]["objects"].append((9, [30, 30, 1, 1]))                        # tiny after the resize
    train[3]["objects"].append((3, [2, 2, 20, 21]))                        # the same cat twice (IoU 0.95)
    train[4]["objects"] = []                                               # no objects
    train[5]["objects"].append((9, [10, 20, 12, 12]))
    write_coco(root, "train", train, ann_ids=lambda anns: [
        1 + sum(a["image_id"] == ann["image_id"] for a in anns[:i]) for i, ann in enumerate(anns)])
    t0 = Image.open(root / "images" / "t0.png")
    t1 = Image.open(root / "images" / "t1.png")
    (root / "images" / "v_copy.png").write_bytes((root / "images" / "t0.png").read_bytes())
    buf = io.BytesIO()
    t1.resize((40, 33), Image.Resampling.BILINEAR).save(buf, "JPEG", quality=75)  # resized and re-encoded
    near = Image.open(buf).convert("RGB")
    test = [{"name": "v_copy", "size": t0.size, "objects": [(3, [2, 2, 20, 20])]},
            {"name": "v_near", "size": near.size, "image": near, "objects": [(5, [4, 4, 10, 10])]},
            {"name": "v_other", "size": (48, 40), "objects": [(3, [8, 8, 20, 20])]}]
    write_coco(root, "test", test)


def test_check_finds_each_planted_problem(tmp_path, capsys):
    problem_dataset(tmp_path / "data")
    report = run_check(tmp_path, tmp_path / "data", "--image-size", "32")
    found = codes(report)
    for code in ("duplicates_exact", "duplicates_near", "classes_missing_test", "degenerate_boxes",
                 "tiny_boxes_train", "duplicate_boxes_train", "empty_images_train", "annotation_ids_repeat_train"):
        assert code in found, (code, found)
    by_code = {f["code"]: f for f in report["findings"]}
    assert by_code["duplicates_exact"]["examples"] == [{"train": "t0.png", "test": "v_copy.png"}]
    assert [(e["train"], e["test"]) for e in by_code["duplicates_near"]["examples"]] == [("t1.png", "v_near.png")]
    assert by_code["classes_missing_test"]["examples"] == ["bird"]
    assert "restart in every image" in by_code["annotation_ids_repeat_train"]["message"]
    assert [(e["bbox"], e["resized_side"]) for e in by_code["tiny_boxes_train"]["examples"]] == [
        ([30.0, 30.0, 1.0, 1.0], 0.8)]  # 1 px x 32 / 40: the resize to short side 32
    assert [e["class"] for e in by_code["duplicate_boxes_train"]["examples"]] == ["cat"]
    assert report["settings"]["resize"] == [32, 53]
    out = capsys.readouterr().out
    assert "WARNING" in out and "suggest --num-buckets" in out


def test_check_of_a_clean_dataset_finds_none_of_them(synthetic_dir, tmp_path):
    report = run_check(tmp_path, synthetic_dir)
    assert not codes(report) & {"duplicates_exact", "duplicates_near", "degenerate_boxes", "tiny_boxes_train",
                                "duplicate_boxes_train", "annotation_ids_repeat_train"}
    assert report["splits"]["train"]["images"] == 16 and set(report["suggestions"]) == {
        "num_buckets", "pad_canvases", "image_size"}


def test_check_of_a_dataset_without_objects_and_of_one_class(tmp_path):
    empty = [{"name": f"e{k}", "size": (40, 40), "objects": []} for k in range(3)]
    write_coco(tmp_path / "empty", "train", empty)
    report = run_check(tmp_path, tmp_path / "empty")
    assert "no_objects_train" in codes(report) and "num_buckets" not in report["suggestions"]
    assert report["splits"]["train"]["objects"] == 0
    one = [{"name": f"o{k}", "size": (48, 40), "objects": [(5, [4, 4, 20, 20])]} for k in range(4)]
    write_coco(tmp_path / "one", "train", one[:3], categories={5: "dog"})
    write_coco(tmp_path / "one", "test", one[3:], categories={5: "dog"})
    report = run_check(tmp_path, tmp_path / "one", "--model", "detr-tiny")
    assert report["settings"]["resize"] == [128, 192]  # the preset's resize, read without building the model
    assert report["classes"] == ["dog"] and report["splits"]["test"]["per_class"] == {"dog": 1}
    assert report["suggestions"]["num_buckets"]["value"] == 1  # one object per image: one bucket, no padding
    assert not codes(report) & {"classes_missing_test", "duplicates_exact", "duplicates_near"}


# ---- data split --------------------------------------------------------------------------------------

def test_split_is_stratified_seeded_and_keeps_ids(tmp_path):
    images = [{"name": f"s{k}", "size": (40, 40), "objects": [(list(CLASSES)[k % 3], [1, 1, 9, 9])]
               + ([(9, [20, 20, 5, 5])] if k % 5 == 0 else [])} for k in range(30)]
    path = write_coco(tmp_path / "src", "all", images, ann_ids=lambda anns: [1000 + 7 * i for i in range(len(anns))])
    original = json.loads(path.read_text())

    def split(seed: int, out: str) -> tuple[dict, dict]:
        assert main(["data", "split", "--annotations", str(path), "--out", str(tmp_path / out), "--split", "0.8",
                     "--seed", str(seed)]) == 0
        return tuple(json.loads((tmp_path / out / "annotations" / f"{s}.json").read_text()) for s in ("train", "test"))

    train, test = split(1, "a")
    assert sorted(a["id"] for a in train["annotations"] + test["annotations"]) == sorted(
        a["id"] for a in original["annotations"])
    assert sorted(i["id"] for i in train["images"] + test["images"]) == list(range(1, 31))
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in test["images"]}
    for doc, share in ((train, 0.8), (test, 0.2)):
        for cid in CLASSES:  # every class in both splits, in about the asked share
            n = sum(a["category_id"] == cid for a in doc["annotations"])
            total = sum(a["category_id"] == cid for a in original["annotations"])
            assert abs(n - share * total) <= 1.5, (cid, n, total)
    assert split(1, "b") == (train, test)
    assert split(2, "c")[1] != test
    assert load_index(tmp_path / "a", "test").categories.names == tuple(CLASSES.values())  # images/ linked


# ---- bad input ---------------------------------------------------------------------------------------

def bad_yolo(src: Path) -> None:
    write_yolo(src, truth(4))
    (src / "labels" / "train" / "img1.txt").write_text("0 0.5 0.5 0.2\n")


def bad_voc(src: Path) -> None:
    write_voc(src, truth(4))
    (src / "Annotations" / "img2.xml").write_text("<annotation><object>")


def bad_coco(root: Path) -> None:
    write_coco(root, "train", truth(4))
    doc = json.loads((root / "annotations" / "train.json").read_text())
    doc["annotations"][0]["category_id"] = 42
    (root / "annotations" / "train.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("make, argv, needle", [
    (bad_yolo, ["data", "convert", "--from", "yolo", "{src}", "--out", "{out}"], "img1.txt line 1"),
    (bad_voc, ["data", "convert", "--from", "voc", "{src}", "--out", "{out}"], "img2.xml: not readable XML"),
    (bad_coco, ["data", "check", "--data-dir", "{src}", "--output-dir", "{out}"], "category_id 42"),
    (None, ["data", "split", "--annotations", "{src}/a.json", "--out", "{out}", "--split", "1.5"], "--split 1.5"),
    (None, ["data", "check", "--data-dir", "{src}", "--image-size", "4", "--output-dir", "{out}"], "--image-size 4"),
    (None, ["data", "convert", "--from", "labelme", "{src}/missing", "--out", "{out}"], "not a folder"),
    (None, ["data", "check", "--data-dir", "{src}", "--model", "{src}/no-model", "--output-dir", "{out}"],
     "not a model folder"),
])
def test_bad_input_is_one_line_and_exit_2(make, argv, needle, tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    if make:
        make(src)
    assert main([a.format(src=src, out=out) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in err, err
    if make in (bad_yolo, bad_coco):  # the same data goes through with --on-bad-data skip, counted
        skip_argv = [a.format(src=src, out=tmp_path / "skip") for a in argv] + ["--on-bad-data", "skip"]
        assert main(skip_argv) == 0
        if make is bad_coco:
            report = json.loads((tmp_path / "skip" / "data_check.json").read_text())
            assert "skipped_records" in codes(report)


def test_check_of_a_hf_dataset_reports_as_the_coco_folder_does(tmp_path):
    """The same planted dataset as a 🤗 DatasetDict: the same split summaries and cross-split duplicates."""
    pytest.importorskip("datasets")
    from datasets import Dataset, DatasetDict
    from test_interop import coco_split_to_rows, cppe5_features

    problem_dataset(tmp_path / "data")
    splits = {}
    for split in ("train", "test"):
        rows, names = coco_split_to_rows(tmp_path / "data", split)
        splits[split] = Dataset.from_dict(rows, features=cppe5_features(names))
    DatasetDict(splits).save_to_disk(str(tmp_path / "hf"))
    coco = run_check(tmp_path / "coco", tmp_path / "data")
    out = tmp_path / "hf-check"
    assert main(["data", "check", "--hf-dataset", str(tmp_path / "hf"), "--output-dir", str(out)]) == 0
    hf = json.loads((out / "data_check.json").read_text())
    assert hf["splits"] == coco["splits"]
    assert {"duplicates_exact", "duplicates_near"} <= codes(hf)

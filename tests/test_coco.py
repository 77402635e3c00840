"""The COCO reader: category mapping, empty images, EXIF orientation, bad records."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detr_ft.data.coco import load_index
from detr_ft.data.dataset import DetectionDataset
from detr_ft.data.transforms import load_image
from detr_ft.errors import UserError
from detr_ft.types import ResizeSpec


def write_dataset(root, images, annotations, categories, split="train", pixels=None):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for img in images:
        path = root / "images" / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        (pixels or {}).get(img["file_name"], Image.new("RGB", (img["width"], img["height"]), "gray")).save(path)
    doc = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / f"{split}.json").write_text(json.dumps(doc))
    return root


CATS = [{"id": 9, "name": "gloves"}, {"id": 3, "name": "mask"}, {"id": 40, "name": "goggles"}]


def test_non_contiguous_ids_map_to_sorted_indices_and_back(tmp_path):
    images = [{"id": 7, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    anns = [{"id": 1, "image_id": 7, "category_id": 40, "bbox": [1, 2, 10, 5]},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [5, 5, 4, 4]}]
    index = load_index(write_dataset(tmp_path, images, anns, CATS), "train")
    assert index.categories.ids == (3, 9, 40)
    assert index.categories.names == ("mask", "gloves", "goggles")
    assert index.categories.id2label == {0: "mask", 1: "gloves", 2: "goggles"}
    by_id = {r.image_id: r for r in index.records}
    assert by_id[7].labels.tolist() == [2, 0]
    assert [index.categories.ids[i] for i in by_id[7].labels] == [40, 3]
    # the image without annotations is kept, with no objects
    assert by_id[2].num_objects == 0


def test_boxes_beyond_the_image_are_clipped_and_degenerate_dropped(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [30, 20, 20, 20]},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 4]},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [5, 5, float("nan"), 4]}]
    index = load_index(write_dataset(tmp_path, images, anns, CATS), "train")
    assert index.records[0].boxes.tolist() == [[30, 20, 10, 10]]
    assert index.report.clipped_boxes == 1 and index.report.dropped_boxes == 2


def test_bad_records_error_or_skip(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
              {"id": 1, "file_name": "b.png", "width": 40, "height": 30},
              {"id": 3, "file_name": "../escape.png", "width": 40, "height": 30}]
    anns = [{"id": 1, "image_id": 99, "category_id": 3, "bbox": [1, 1, 2, 2]},
            {"id": 2, "image_id": 1, "category_id": 12345, "bbox": [1, 1, 2, 2]},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [1, 1, 2]}]
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (40, 30)).save(root / "images" / "a.png")
    (root / "annotations" / "train.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                 "categories": CATS}))
    with pytest.raises(UserError) as e:
        load_index(root, "train")
    msg = str(e.value)
    assert "train.json" in msg and "5 bad record" in msg and "--on-bad-data skip" in msg
    assert "duplicate image id" in msg and "leaves the images folder" in msg and "\n" not in msg
    index = load_index(root, "train", on_bad_data="skip")
    assert len(index) == 1 and index.records[0].num_objects == 0
    assert index.report.skipped_records == 5


def test_json_syntax_error_names_file_and_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(UserError, match=r"train.json: invalid JSON at line 2"):
        load_index(tmp_path, "train")


def test_missing_data_dir_and_split(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_index(tmp_path / "nope", "train")
    (tmp_path / "images").mkdir()
    with pytest.raises(UserError, match="annotations/test.json"):
        load_index(tmp_path, "test")


def test_index_checks_png_and_jpeg_files_without_decoding_them(tmp_path, monkeypatch):
    from PIL import ImageFile

    images = [{"id": 1, "file_name": "sub/a.jpg", "width": 40, "height": 30},
              {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    root = write_dataset(tmp_path, images, [], CATS)

    def no_decoding(self):
        raise AssertionError("the index decoded an image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    index = load_index(root, "train")  # headers and completeness only
    assert [r.file_name for r in index.records] == ["sub/a.jpg", "b.png"]
    monkeypatch.undo()
    (root / "images" / "sub" / "a.jpg").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="not a readable image"):
        load_image(index.image_path(index.records[0]))


def test_exif_orientation_is_applied_and_boxes_stay_aligned(tmp_path):
    # Stored 60 wide x 40 high with a red block at the stored top-left; EXIF orientation 6
    # (rotate 90° clockwise to display) shows it 40 wide x 60 high with the block at the top-right.
    stored = Image.new("RGB", (60, 40), "black")
    stored.paste((255, 0, 0), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "images" / "r.jpg"
    path.parent.mkdir(parents=True)
    stored.save(path, exif=exif.tobytes(), quality=95)
    shown = load_image(path)
    assert shown.size == (40, 60)
    red = np.argwhere(np.asarray(shown)[:, :, 0] > 128)
    y0, x0 = red.min(0)
    y1, x1 = red.max(0) + 1
    assert (x0, y0, x1, y1) == pytest.approx((20, 0, 40, 10), abs=1)
    # annotated in display coordinates, the box is where the block is after loading
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "r.jpg", "width": 40, "height": 60}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [20, 0, 20, 10]}],
        "categories": CATS}))
    sample = DetectionDataset(load_index(tmp_path, "train"), ResizeSpec(60, 60))[0]
    assert sample.orig_size == (60, 40)
    assert sample.boxes.tolist()[0] == pytest.approx([0.75, 10 / 120, 0.5, 10 / 60])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16"])
def test_any_pillow_mode_loads_as_rgb(tmp_path, mode):
    im = Image.new(mode, (20, 10))
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    im.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (20, 10)


@pytest.mark.compat
@pytest.mark.parametrize("size", [(300, 200), (64, 48), (200, 300), (333, 517), (96, 171)])
def test_resize_gives_the_pixels_of_transformers_image_processors(size):
    """The uint8 resize the dataset, predict and export use: exactly the pixels of transformers'
    processors' resize (Pillow's BILINEAR), shrinking and enlarging, so a model exported to the hub
    format sees in ``pipeline()`` the pixels it was trained and evaluated on."""
    from transformers.image_transforms import resize
    from transformers.image_utils import ChannelDimension, PILImageResampling

    from detr_ft.data.transforms import image_tensor

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 240 x 320
    noisy = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for pixels in (smooth, noisy):
        image = Image.fromarray(pixels)
        ours = image_tensor(image, size).permute(1, 2, 0).numpy()
        theirs = resize(pixels, size, resample=PILImageResampling.BILINEAR, input_data_format=ChannelDimension.LAST)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs)
    assert torch.equal(image_tensor(image), torch.from_numpy(noisy).permute(2, 0, 1))  # no size: as it is


@pytest.mark.parametrize("size", [(300, 200), (64, 48), (333, 517)])
def test_training_resize_kernel_is_pillows_within_rounding(size):
    """Training's fast uint8 kernel (torch's antialiased bilinear): Pillow's pixels within 2 grey levels,
    shrinking and enlarging; eval and predict keep Pillow's own."""
    from detr_ft.data.transforms import image_tensor

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    image = Image.fromarray(noisy)
    fast = image_tensor(image, size, fast=True).permute(1, 2, 0).numpy().astype(int)
    exact = image_tensor(image, size).permute(1, 2, 0).numpy().astype(int)
    assert fast.shape == exact.shape and np.abs(fast - exact).max() <= 2 and abs(np.mean(fast - exact)) < 0.3


def test_flip_mirrors_pixels_and_boxes_together(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[5:15, 2:12] = 255  # a white block on the left
    write_dataset(tmp_path, [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}],
                  [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 5, 10, 10]}], CATS,
                  pixels={"a.png": Image.fromarray(pixels)})
    index = load_index(tmp_path, "train")
    plain = DetectionDataset(index, ResizeSpec(40, 60))[0]
    flipped = DetectionDataset(index, ResizeSpec(40, 60), train=True, hflip=1.0)[0]
    assert torch.equal(flipped.image, plain.image.flip(-1))
    assert flipped.boxes.tolist()[0] == pytest.approx([1 - 7 / 60, 10 / 40, 10 / 60, 10 / 40])
    white = np.argwhere(flipped.image[0].numpy() > 128)
    assert white[:, 1].min() == 48 and white[:, 1].max() == 57  # the block moved to the right, as the box did

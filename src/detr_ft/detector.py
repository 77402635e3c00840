"""Inference API: ``Detector.load(path).predict(images)``.

``path`` is a detr-ft checkpoint (``.ckpt``), a Hugging Face model directory
(from ``detr-ft export``, or any DETR-family object-detection directory) or an
ONNX file from ``detr-ft export --format onnx`` (run by ONNX Runtime).
Images are PIL images, numpy arrays (H, W, 3) or file paths. Preprocessing and
post-processing are detr-ft's own and give what transformers'
``pipeline("object-detection")`` gives on the exported directory::

    from detr_ft import Detector

    detector = Detector.load("runs/train/last.ckpt")       # or an export directory
    for det in detector.predict("photo.jpg", threshold=0.5):
        print(det["label"], det["score"], det["box"])       # box: [x0, y0, x1, y1] pixels
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from detr_ft.data.batching import Batch
from detr_ft.data.dataset import Sample
from detr_ft.data.shape_plan import ShapePlan
from detr_ft.data.transforms import resized_tensor, to_rgb
from detr_ft.devices import bf16_autocast, inference_device
from detr_ft.errors import UserError
from detr_ft.image_input import as_image, aspect_ratio, detection_dicts, predict_arguments  # noqa: F401  (aspect_ratio: predict.py)
from detr_ft.model.families import family_of
from detr_ft.model.outputs import detection_outputs
from detr_ft.model.postprocess import Detections, postprocess
from detr_ft.model.speed import channels_last_where_it_helps, fold_batch_norms
from detr_ft.types import Categories, ResizeSpec


class Detector:
    """A fine-tuned detector with its preprocessing and class names.

    Made for inference: the model's batch norms are folded into its convolutions, which
    run channels-last on CPU and CUDA unless ``channels_last=False`` (``model/speed.py``);
    export from the checkpoint, not from ``Detector.model``. ``autocast=True`` runs the
    network under bf16 autocast (faster on GPUs and on CPUs with bf16 instructions; scores
    and boxes move by bf16 rounding).
    """

    def __init__(self, model, resize_spec: ResizeSpec, categories: Categories, device: str = "auto",
                 shapes: ShapePlan | None = None, channels_last: bool = True, autocast: bool = False,
                 thresholds: dict[int, float] | None = None, source: str = "this detector"):
        self.device = inference_device(device)
        self.thresholds = thresholds  # {category id: score}: threshold="auto" (detr_ft.thresholds)
        self.source = source
        self.autocast = autocast
        self.model = model.eval().to(self.device)
        fold_batch_norms(self.model)
        channels_last_where_it_helps(self.model, self.device, channels_last)
        self.resize = resize_spec
        self.categories = categories
        self.use_shapes(shapes or ShapePlan())

    def use_shapes(self, plan: ShapePlan) -> None:
        """Shape every batch as ``plan`` says (``data/shape_plan.py``): default, each batch padded
        to its largest image; ``ShapePlan.for_inference(resize, pad=True, ...)``, static shapes."""
        self.shapes = plan
        self.collator = plan.collator(self.resize)

    def use_canvas(self, canvas: tuple[int, int] | None, fill_to: int | None = None) -> None:
        """Pad every batch to a fixed (H, W) canvas (static shapes), or to the batch maximum (None);
        ``fill_to`` also fills short batches with blank images to a fixed batch size."""
        self.use_shapes(ShapePlan.fixed(canvas, fill_to))

    @classmethod
    def load(cls, path, device: str = "auto", canvas: tuple[int, int] | None = None,
             channels_last: bool = True, autocast: bool = False, image_size=None,
             thresholds=None) -> "Detector":
        """A detector from a detr-ft checkpoint file or a Hugging Face model directory; an
        ``.onnx`` file from ``detr-ft export --format onnx`` gives an ``OnnxDetector`` (same API).

        device: auto (CUDA, then MPS, then CPU), cpu, cuda, hpu or mps.
        canvas: a fixed (H, W) to pad every batch to (static shapes), or None.
        channels_last: channels-last convolutions where they are faster (CPU, CUDA).
        autocast: bf16 autocast for the network.
        image_size: (SHORT,) or (SHORT, LONG) to resize to instead of the saved rule (``--image-size``).
        thresholds: a metrics.json (or config.json) with per-class thresholds for ``threshold="auto"``;
        default: the export's config.json, or the metrics.json beside a checkpoint.
        """
        from detr_ft.thresholds import load_thresholds

        path = Path(path).expanduser()
        if path.suffix.lower() == ".onnx":  # ONNX Runtime, no torch model (onnx_runtime.py)
            from detr_ft.onnx_runtime import OnnxDetector

            if image_size:
                raise UserError(f"--image-size: {path} runs at the resize it was exported with; export the "
                                f"checkpoint again to change it")
            detector = OnnxDetector.load(path, device=device, canvas=canvas)
            if thresholds is not None:
                detector.thresholds = load_thresholds(path, thresholds)
            return detector
        if path.is_dir():
            from detr_ft.export import load_export

            model, resize_spec, categories = load_export(path)
        elif path.is_file():
            from detr_ft.checkpoint import model_from_checkpoint

            model, resize_spec, categories, _ = model_from_checkpoint(path)
        else:
            raise UserError(f"{path}: no such checkpoint file or model directory")
        resize_spec = resize_spec.with_image_size(image_size)
        what = f"--image-size {' '.join(map(str, image_size))}" if image_size else str(path)
        family_of(model).check_image_size(model.config, resize_spec, what)
        return cls(model, resize_spec, categories, device=device, shapes=ShapePlan.fixed(canvas),
                   channels_last=channels_last, autocast=autocast, thresholds=load_thresholds(path, thresholds),
                   source=str(path))

    def sample(self, image: Image.Image, image_id: int = 0) -> Sample:
        image = to_rgb(image)
        return Sample(resized_tensor(image, self.resize), torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                      image_id, (image.height, image.width))

    def detect_samples(self, samples: list[Sample], threshold: float | str = 0.0) -> list[Detections]:
        """Detections at a score ``threshold``, or "auto": each class's own (``self.thresholds``)."""
        per_class = self.class_thresholds() if threshold == "auto" else None
        # per class: score >= its threshold (a threshold is a detection's score), so none dropped before
        dets = self.detect_batch(self.batch_on_device(samples), 0.0 if per_class else threshold)
        return [keep_above(d, per_class) for d in dets] if per_class else dets

    def batch_on_device(self, samples: list[Sample]) -> Batch:
        """The samples collated (on the canvas, if any) and on the device, normalised: what
        ``detect_batch`` takes."""
        return self.collator(samples).to_device_normalised(self.device, non_blocking=True)

    def class_thresholds(self) -> list[float]:
        """The score threshold of each class in label order; where there are none, a ``UserError``
        saying how to get them."""
        from detr_ft.thresholds import for_classes, require

        return for_classes(require(self.thresholds, self.source), self.categories.ids)

    @torch.inference_mode()
    def detect_batch(self, batch: Batch, threshold: float = 0.0) -> list[Detections]:
        """Detections above ``threshold`` for a batch on the device, normalised
        (``Batch.to_device_normalised``)."""
        with bf16_autocast(self.device, self.autocast):
            out = detection_outputs(self.model, batch.pixel_values, batch.pixel_mask, with_aux=False)
        return postprocess(out.logits, out.boxes, batch.orig_sizes, self.categories, threshold,
                           scoring=family_of(self.model).scoring)

    def predict(self, images, threshold: float = 0.5, batch_size: int = 8) -> list:
        """Detect objects.

        images: one image or a list of them; each a PIL image, a numpy array
        [H, W, 3] (uint8, RGB) or a file path (EXIF orientation applied).
        threshold: a score, or "auto": each class's F1-optimal threshold as eval measured it
        (``detr_ft.thresholds``; an error saying how to get them where there are none).
        Returns, per image, the detections above ``threshold`` by descending
        score: dicts with ``label`` (class name), ``category_id`` (the dataset's
        id), ``score`` and ``box`` [x0, y0, x1, y1] in pixels of the image. As
        transformers' pipeline: one image gives one list, a list gives a list of lists.
        """
        images, single = predict_arguments(images, threshold, batch_size, self)
        # Batches of like shape (a landscape and a portrait image would pad each other to a
        # square); the results go back in the order given.
        results: list = [None] * len(images)
        for ids in self.shapes.inference_batches([aspect_ratio(im) for im in images], batch_size):
            chunk = [as_image(images[i]) for i in ids]
            for i, dets in zip(ids, self.detect_samples([self.sample(im) for im in chunk], threshold)):
                results[i] = detection_dicts(dets, self.categories)
        return results[0] if single else results


def keep_above(dets: Detections, per_label: list[float]) -> Detections:
    """The detections whose score reaches their class's threshold (``per_label``: one per contiguous label)."""
    t = torch.tensor(per_label, dtype=dets.scores.dtype, device=dets.scores.device)[dets.labels]
    return dets.select(dets.scores >= t)

"""``detr-ft bench``: detr-ft beside the stock transformers path of the original example.

Each benchmark runs detr-ft and its baseline in the same process, on the same
weights (one initial state copied into both models) and the same inputs, and
times them alternately — one step of each in turn, the order rotating — so that
load from other processes falls on both sides alike. Warm-up steps are not
timed; a figure is the fastest of the timed steps (or passes) — timeit's rule:
other processes only ever add time — and the medians are in the notes.

==========  ==============================================================  =========
benchmark   detr-ft vs the stock path                                       unit
==========  ==============================================================  =========
train       detr-ft's step (forward, padding-aware criterion with matching,  images/s
            or the family's transformers loss; finite check, backward, clip,
            AdamW as train runs it: fused in float32) vs the family's
            ...ForObjectDetection (DETR's by default) computing its own loss
            from ``labels`` as a list of dicts, the per-tensor AdamW; the
            same batch tensors on both sides
overhead    our step time / the bare network's (forward + backward + clip +  x bare
            our AdamW on the same batch, a trivial loss over the same
            outputs, no matching); ``baseline`` is the stock step's ratio
static      end to end with data loading (workers 0): detr-ft's static       images/s
            recipe (landscape and portrait canvases, orientation batches,
            one object bucket) vs the original's (DetrImageProcessor per
            sample, every image on the square longest x longest canvas,
            targets padded to the bucket by repeating objects)
data        detr-ft's loader vs DetrImageProcessor per sample plus the       images/s
            original collate, epochs over the training set with 0 and 2
            workers (the same canvases as ``static``)
startup     the object buckets: detr-ft's index from the JSON vs the         s
            original's pass decoding every image through the processor
infer       ``Detector.predict`` (batched) vs ``pipeline("object-           images/s
            detection")`` on the same exported directory and image files
latency     batch-1 detection from an image already on the device: forward   ms
            + post-processing (with ``--compile`` on CUDA: CUDA graphs)
peak RSS    train and infer, each side alone in a fresh spawned process      MiB
==========  ==============================================================  =========

``--model`` takes any family's preset or a model directory: the stock side is then that family's
transformers classes (``Family.processor``, its ``...ForObjectDetection`` and loss); a family whose
forward takes only some canvases (``Family.canvas``) runs at a fixed ``--image-size`` it takes, and a
family without a no-object class gets no object-bucket padding of its stock targets (noted).

``speedup`` > 1 means detr-ft is better: ours / baseline for throughputs,
baseline / ours for times, sizes and ratios.

Modules: ``config`` (what to run, ``Record``), ``measure`` (timing and memory
rules), ``models`` (both sides' models from one state), ``stock`` (the original
example's path, the baseline), ``workspace`` (the shared dataset),
``benchmarks`` (one function per benchmark), ``memory`` (peak-RSS child
processes), ``run`` (running them all and reporting).
"""

"""``detr-ft demo``: the whole pipeline offline on the synthetic dataset.

make data -> train a tiny preset -> evaluate on the held-out split -> predict.
"""

from __future__ import annotations

import time
from pathlib import Path

from detr_ft.config import TrainConfig
from detr_ft.data.synthetic import SyntheticSpec, generate

# The demo's recipe: small images and a tiny preset, sized for a 2-core CPU.
DEMO_SPEC = SyntheticSpec(size=128, min_objects=0, max_objects=4)
DEMO_TRAIN_IMAGES = 2000
DEMO_VAL_IMAGES = 200


def demo_train_config(data_dir: Path, out_dir: Path, minutes: float) -> TrainConfig:
    return TrainConfig(
        output_dir=str(out_dir), data_dir=str(data_dir), model="detr-tiny", max_epochs=1000,
        max_minutes=minutes, batch_size=16, num_workers=1, pad=False, num_buckets=0, lr=4e-4, lr_backbone=4e-4,
        lr_schedule="cosine", warmup_steps=100, max_inf_frames=8, seed=0,
    )


def run_demo(out_dir: Path, minutes: float = 10.0) -> dict:
    """Run the demo within about ``minutes`` of wall time; print where everything is."""
    from detr_ft.evaluate import run_eval
    from detr_ft.predict import run_predict
    from detr_ft.train import run_train

    started = time.perf_counter()
    out_dir = Path(out_dir)
    data_dir = out_dir / "data"
    print(f"[1/4] synthetic dataset -> {data_dir}")
    generate(data_dir, train=DEMO_TRAIN_IMAGES, val=DEMO_VAL_IMAGES, seed=0, spec=DEMO_SPEC)
    spent = (time.perf_counter() - started) / 60
    # leave time for evaluation and prediction after training
    train_minutes = max(0.2, minutes - spent - max(0.3, 0.08 * minutes))
    print(f"[2/4] training detr-tiny for about {train_minutes:.1f} minutes")
    summary = run_train(demo_train_config(data_dir, out_dir / "train", train_minutes))
    ckpt = out_dir / "train" / "last.ckpt"
    print("[3/4] evaluating on the held-out split")
    metrics = run_eval(str(ckpt), str(data_dir), out_dir / "eval", split="test")
    print("[4/4] predicting")
    pred = run_predict(str(ckpt), out_dir / "predict", data_dir=str(data_dir), threshold=0.5, max_inf_frames=12)
    total = (time.perf_counter() - started) / 60
    print(f"\ndetr-ft demo finished in {total:.1f} minutes")
    print(f"  validation mAP50: {metrics['map_50']:.3f}   mAP: {metrics['map']:.3f}")
    print(f"  dataset:          {data_dir}")
    print(f"  checkpoint:       {ckpt}")
    print(f"  training curves:  {out_dir / 'train' / 'curves.png'}")
    print(f"  metrics:          {out_dir / 'eval' / 'metrics.json'}")
    print(f"  annotated images: {pred['annotated']}")
    return {"map_50": metrics["map_50"], "map": metrics["map"], "minutes": total, "train": summary}

"""Training with and without ``--pad --num-buckets 1 --compile`` (a benchmark, not a test).

detr-tiny on a synthetic set of square images that all resize to one size, so
that the fixed canvas (``--pad-size`` = that size) adds no pixels and the two
runs see the same pixels: what differs is the static shapes (canvas, one object
bucket) and torch.compile. Both runs go through ``detr-ft train``'s own ``fit``
in this one process, alternating (dynamic, static, dynamic, static, ...), each
with a fresh model from the same seed. Per run:

- steady images/s: training epochs after the first (data loading included,
  validation excluded), the fastest epoch of the run;
- first-epoch seconds; the compile time is the static run's first epoch less
  its steady epoch time, less the same excess of the dynamic run (warm-up that
  both have);
- recompiles over the whole run, validation included (``metrics.json``).

Inductor's on-disk caches are off, so every static run compiles from cold, as a
user's first run does.

    PYTHONPATH=src python benchmarks/static_compile.py [--rounds 2] [--epochs 4] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train", type=int, default=160, help="training images (batch 16)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    import lightning as L

    from detr_ft.log_policy import configure_logging
    from detr_ft.config import TrainConfig
    from detr_ft.data.synthetic import SyntheticSpec, generate
    from detr_ft.devices import machine_facts
    from detr_ft.model.build import build_model

    configure_logging(debug=False)
    out = args.out or Path(tempfile.mkdtemp(prefix="detr-ft-static-compile-"))
    side = build_model("detr-tiny", {0: "x"}).resize.shortest  # square images resize to side x side
    data = out / "data"
    generate(data, train=args.train, val=32, seed=0, spec=SyntheticSpec(size=side, aspect_ratios=(1.0,)))

    class Epochs(L.Callback):
        def __init__(self):
            self.seconds: list[float] = []
            self.images: list[int] = []

        def on_train_epoch_start(self, trainer, module):
            self.t0, self.n = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.n += len(batch)

        def on_train_epoch_end(self, trainer, module):
            self.seconds.append(time.perf_counter() - self.t0)
            self.images.append(self.n)

    variants = {
        "dynamic": dict(pad=False, num_buckets=0, compile=False),
        "static+compile": dict(pad=True, num_buckets=1, pad_size=[side, side], compile=True),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, flags in variants.items():
            epochs = Epochs()
            cfg = TrainConfig(output_dir=str(out / f"{name}-{r}"), data_dir=str(data), model="detr-tiny",
                              max_epochs=args.epochs, batch_size=16, num_workers=0, seed=0, hflip=0.5,
                              max_inf_frames=0, device="cpu", **flags)
            from detr_ft.train import fit

            started = time.perf_counter()
            _, _, summary = fit(cfg, extra_callbacks=(epochs,))
            steady = min(epochs.seconds[1:])
            runs[name].append({"steady_images_per_second": epochs.images[1] / steady,
                               "first_epoch_s": epochs.seconds[0], "steady_epoch_s": steady,
                               "wall_s": time.perf_counter() - started, "recompiles": summary.get("recompiles"),
                               "canvases": summary.get("canvases"), "buckets": summary.get("buckets")})
            print(f"{name} round {r}: {runs[name][-1]}", file=sys.stderr)

    def best(name, key, fn=max):
        return fn(run[key] for run in runs[name])

    dyn, sta = "dynamic", "static+compile"
    warmup_dynamic = [run["first_epoch_s"] - run["steady_epoch_s"] for run in runs[dyn]]
    compile_s = [run["first_epoch_s"] - run["steady_epoch_s"] - min(warmup_dynamic) for run in runs[sta]]
    report = {
        "machine": machine_facts(),
        "setup": {"model": "detr-tiny", "image": f"{side}x{side}", "batch": 16, "train_images": args.train,
                  "epochs": args.epochs, "rounds": args.rounds},
        "images_per_second": {dyn: round(best(dyn, "steady_images_per_second"), 2),
                              sta: round(best(sta, "steady_images_per_second"), 2)},
        "speedup": round(best(sta, "steady_images_per_second") / best(dyn, "steady_images_per_second"), 3),
        "compile_seconds": round(min(compile_s), 1),
        "recompiles": [run["recompiles"] for run in runs[sta]],
        "runs": runs,
    }
    (out / "static_compile.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=1))
    print(f"all runs: {out / 'static_compile.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

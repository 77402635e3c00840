"""Training curves and per-class AP charts (matplotlib, Agg back end)."""

from __future__ import annotations

import csv
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        if r.get(y) not in (None, "") and r.get(x) not in (None, ""):
            xs.append(float(r[x]))
            ys.append(float(r[y]))
    return xs, ys


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss parts per optimizer step (left) and validation mAP per epoch (right)."""
    if not Path(metrics_csv).is_file():
        return None
    rows = read_metrics_csv(metrics_csv)
    plt = _pyplot()
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in ("train_loss", "train_loss_ce", "train_loss_bbox", "train_loss_giou"):
        xs, ys = _series(rows, "step", name)
        if xs:
            ax_loss.plot(xs, ys, label=name.removeprefix("train_"), linewidth=1.2)
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend()
    for name in ("val_map", "val_map_50", "val_map_75"):
        xs, ys = _series(rows, "epoch", name)
        if xs:
            ax_map.plot([x + 1 for x in xs], ys, marker="o", label=name.removeprefix("val_"))
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("COCO AP (validation)")
    ax_map.set_ylim(0, 1)
    ax_map.set_title("validation mAP")
    ax_map.grid(alpha=0.3)
    if ax_map.lines:
        ax_map.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def plot_per_class(per_class: dict[str, float], out_png: Path, title: str = "AP per class") -> Path:
    """Horizontal bars of AP@[.5:.95] per class."""
    plt = _pyplot()
    names = list(per_class)
    values = [max(0.0, per_class[n]) for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    bars = ax.barh(names, values, color="#4477aa")
    for bar, v in zip(bars, values):
        ax.text(v + 0.01, bar.get_y() + bar.get_height() / 2, f"{v:.3f}", va="center")
    ax.set_xlim(0, 1.1)
    ax.invert_yaxis()
    ax.set_xlabel("AP@[.5:.95]")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)

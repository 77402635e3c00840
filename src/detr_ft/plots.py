"""Training curves and per-class AP charts (matplotlib, Agg back end)."""

from __future__ import annotations

import csv
from pathlib import Path

from detr_ft.draw import class_colour

LOSS_PARTS = (("train_loss_ce", "class (CE)"), ("train_loss_bbox", "box L1"), ("train_loss_giou", "GIoU"))
MAP_SERIES = (("val_map", "mAP@[.5:.95]"), ("val_map_50", "mAP@.5"), ("val_map_75", "mAP@.75"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    """(xs, ys) of the rows where both columns are filled (the CSV leaves the others empty)."""
    xs, ys = [], []
    for r in rows:
        if r.get(y) not in (None, "") and r.get(x) not in (None, ""):
            xs.append(float(r[x]))
            ys.append(float(r[y]))
    return xs, ys


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (the first points average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _plot_steps(ax, xs, ys, colour, label) -> int:
    """Raw per-step values faintly, their moving average over 1/20 of the run on top;
    returns the window."""
    window = max(1, len(ys) // 20)
    if window > 1:
        ax.plot(xs, ys, color=colour, alpha=0.25, linewidth=0.8)
    ax.plot(xs, smooth(ys, window), color=colour, linewidth=1.8, label=label,
            marker="o" if len(ys) <= 30 else None, markersize=3)
    return window


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Three panels from metrics.csv: the training loss per optimizer step (all decoder
    layers), its parts (final layer) per step, and the validation mAP per epoch."""
    if not Path(metrics_csv).is_file():
        return None
    rows = read_metrics_csv(metrics_csv)
    plt = _pyplot()
    fig, (ax_loss, ax_parts, ax_map) = plt.subplots(1, 3, figsize=(16, 4.8))
    window = 1
    xs, ys = _series(rows, "step", "train_loss")
    if xs:
        window = _plot_steps(ax_loss, xs, ys, class_colour(0), "loss")
        ax_loss.legend(loc="upper right")
    ax_loss.set_title("training loss (weighted sum, all decoder layers)")
    for k, (name, label) in enumerate(LOSS_PARTS):
        xs, ys = _series(rows, "step", name)
        if xs:
            _plot_steps(ax_parts, xs, ys, class_colour(k + 1), label)
    if ax_parts.lines:
        ax_parts.legend(loc="upper right")
    ax_parts.set_title("loss parts (final decoder layer, unweighted)")
    for ax in (ax_loss, ax_parts):
        ax.set_xlabel("optimizer step" + (f"  (faint: each step; line: mean of {window})" if window > 1 else ""))
        ax.set_ylabel("loss")
        top = max((max(line.get_ydata()) for line in ax.lines), default=1.0)
        ax.set_ylim(0, top * 1.1 or 1.0)  # from 0, with room above the highest point
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)

    best = 0.0
    for k, (name, label) in enumerate(MAP_SERIES):
        xs, ys = _series(rows, "epoch", name)
        if xs:
            ax_map.plot([x + 1 for x in xs], ys, marker="o", color=class_colour(k), label=label)
            best = max(best, max(ys))
            if name == "val_map":
                ax_map.annotate(f"{ys[-1]:.3f}", (xs[-1] + 1, ys[-1]), textcoords="offset points", xytext=(0, 7),
                                ha="center", fontsize=9)
    if ax_map.lines:
        ax_map.legend(loc="upper left")
        ax_map.set_ylim(0, min(1.0, max(0.05, best * 1.25)))
        ax_map.xaxis.get_major_locator().set_params(integer=True)
    else:
        ax_map.text(0.5, 0.5, "no validation in this run", ha="center", va="center", transform=ax_map.transAxes,
                    color="grey")
        ax_map.set_xticks([])
        ax_map.set_yticks([])
    ax_map.set_xlabel("epoch")
    ax_map.set_ylabel("COCO AP")
    ax_map.set_title("validation")
    ax_map.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def plot_per_class(per_class: dict[str, float], out_png: Path, title: str = "AP per class") -> Path:
    """Horizontal bars of AP@[.5:.95] per class, in each class's drawing colour, with
    their mean (COCO's mAP); a class without ground truth (AP -1) is marked as such."""
    plt = _pyplot()
    names = list(per_class)
    values = [max(0.0, per_class[n]) for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.6))
    bars = ax.barh(names, values, color=[class_colour(i) for i in range(len(names))])
    for bar, name in zip(bars, names):
        ap = per_class[name]
        text = f"{ap:.3f}" if ap >= 0 else "no ground truth"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=9)
    measured = [v for v in per_class.values() if v >= 0]
    if measured:
        mean = sum(measured) / len(measured)
        ax.axvline(mean, color="#444444", linestyle="--", linewidth=1)
        ax.text(mean, -0.75, f" mean {mean:.3f}", va="bottom", fontsize=9, color="#444444")
    ax.set_xlim(0, 1.15)
    ax.set_ylim(len(names) - 0.5, -1.0)
    ax.set_xlabel("AP@[.5:.95]")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)

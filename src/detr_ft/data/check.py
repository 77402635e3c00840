"""``detr-ft data check``: run the health check, print it, write data_check.json, .html and the PNGs."""

from __future__ import annotations

import json
from pathlib import Path

from detr_ft.data.health import DEFAULT_RESIZE, CheckSettings, check_dataset
from detr_ft.errors import UserError
from detr_ft.types import ResizeSpec


def resize_for_check(model: str | None, image_size: list[int] | None) -> ResizeSpec:
    """The resize the check measures boxes after: ``--image-size SHORT [LONG]`` (LONG default
    SHORT x 1333/800), else ``--model``'s (a preset's table, a model folder's image processor config,
    or a hub id's from the Hugging Face cache: torch and transformers are imported then, no model is
    built), else DETR-R50's 800/1333."""
    if image_size:
        short = image_size[0]
        long = image_size[1] if len(image_size) > 1 else int(round(short * DEFAULT_RESIZE.longest /
                                                                   DEFAULT_RESIZE.shortest))
        if len(image_size) > 2 or short < 8 or long < short:
            raise UserError(f"--image-size {' '.join(map(str, image_size))}: give SHORT [LONG] in pixels, "
                            f"SHORT at least 8 and LONG at least SHORT")
        return ResizeSpec(short, long)
    if not model:
        return DEFAULT_RESIZE
    from detr_ft.model.build import PRESETS, resize_from_processor

    if model in PRESETS:
        return PRESETS[model][1]
    local = Path(model).expanduser()
    if local.is_dir():
        return resize_from_processor(str(local), {})
    if local.exists() or model.startswith((".", "/", "~")):
        raise UserError(f"--model {model}: not a model folder; pass a Hugging Face model directory, a preset "
                        f"({', '.join(PRESETS)}), or --image-size SHORT [LONG]")
    return resize_from_processor(model, {"local_files_only": True})  # a hub id: from the cache, else DETR's


def describe(report: dict) -> str:
    """The report as text for the terminal."""
    lines = [f"data check: {report['dataset']} ({len(report['classes'])} classes; resize "
             f"{report['settings']['resize'][0]}/{report['settings']['resize'][1]})"]
    for name, s in report["splits"].items():
        lines.append(f"  {name}: {s['images']} images, {s['objects']} objects, {s['images_without_objects']} "
                     f"without objects; boxes small/medium/large {s['box_sizes']['small']}/"
                     f"{s['box_sizes']['medium']}/{s['box_sizes']['large']}")
    for f in report["findings"]:
        lines.append(f"{f['level'].upper()}: {f['message']}")
    for name, s in report["suggestions"].items():
        value = " ".join(map(str, s["value"])) if isinstance(s["value"], list) else s["value"]
        lines.append(f"suggest --{name.replace('_', '-')} {value}: {s['why']}")
    lines.append(f"{report['warnings']} warning(s)")
    return "\n".join(lines)


def run_check(out: Path, data_dir, hf_dataset: str | None = None, on_bad_data: str = "error",
              settings: CheckSettings = CheckSettings()) -> dict:
    """Check the dataset, print the report, write it into ``out``; the report."""
    from detr_ft.data.check_figures import write_figures
    from detr_ft.data.check_html import render

    report, splits = check_dataset(data_dir, hf_dataset, on_bad_data, settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(splits, out)
    report["figures"] = figures
    (out / "data_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "data_check.html").write_text(render(report, figures), encoding="utf-8")
    print(describe(report))
    print(f"report: {out / 'data_check.json'}, {out / 'data_check.html'}")
    return report

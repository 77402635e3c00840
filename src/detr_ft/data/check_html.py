"""``data_check.html``: the check's report as one self-contained page (its pictures are PNGs beside it)."""

from __future__ import annotations

import json
from html import escape

STYLE = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
.warning{color:#a40000}.info{color:#555}img{max-width:100%;margin:.5em 0}code{background:#f3f3f3}"""

SUMMARY_ROWS = ("images", "objects", "images_without_objects")


def _finding(f: dict) -> str:
    examples = ""
    if f["examples"]:
        examples = f"<br><small>e.g. {escape(json.dumps(f['examples'][:5]))}</small>"
    return f'<li class="{f["level"]}"><b>{f["level"]}</b> <code>{escape(f["code"])}</code>: ' \
           f'{escape(f["message"])}{examples}</li>'


def _splits_table(splits: dict) -> str:
    names = list(splits)
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    rows = [f"<tr><td>{k.replace('_', ' ')}</td>" + "".join(f"<td>{splits[n][k]}</td>" for n in names) + "</tr>"
            for k in SUMMARY_ROWS]
    for size in ("small", "medium", "large"):
        rows.append(f"<tr><td>{size} boxes (COCO areas)</td>"
                    + "".join(f"<td>{splits[n]['box_sizes'][size]}</td>" for n in names) + "</tr>")
    classes = list(splits[names[0]]["per_class"])
    rows += [f"<tr><td>class <b>{escape(c)}</b></td>" + "".join(f"<td>{splits[n]['per_class'][c]}</td>"
                                                                for n in names) + "</tr>" for c in classes]
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _suggestions(suggestions: dict) -> str:
    items = []
    for name, s in suggestions.items():
        value = " ".join(map(str, s["value"])) if isinstance(s["value"], list) else s["value"]
        items.append(f"<li><code>--{name.replace('_', '-')} {escape(str(value))}</code>: {escape(s['why'])}</li>")
    return f"<ul>{''.join(items)}</ul>" if items else "<p>none (no objects)</p>"


def render(report: dict, figures: dict[str, str]) -> str:
    """The page: findings, a table per split, suggestions, then the figures (relative links)."""
    findings = "".join(_finding(f) for f in report["findings"]) or "<li>nothing found</li>"
    pictures = "".join(f'<h3>{escape(name.replace("_", " "))}</h3><img src="{escape(file)}" alt="{escape(name)}">'
                       for name, file in figures.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>detr-ft data check</title>"
            f"<style>{STYLE}</style></head><body><h1>Data check: {escape(report['dataset'])}</h1>"
            f"<p>{report['warnings']} warning(s); {len(report['classes'])} class(es); resize "
            f"{report['settings']['resize'][0]}/{report['settings']['resize'][1]}.</p>"
            f"<h2>Findings</h2><ul>{findings}</ul><h2>Splits</h2>{_splits_table(report['splits'])}"
            f"<h2>Suggested settings</h2>{_suggestions(report['suggestions'])}<h2>Pictures</h2>{pictures}"
            f"</body></html>\n")

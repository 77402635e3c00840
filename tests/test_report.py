"""End to end: eval's and train's analysis files, report.html in a real headless browser,
and per-class thresholds through predict --threshold auto, Detector and export."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from detr_ft.cli import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
ANALYSIS_FILES = ("confusion_matrix.png", "pr_curves.png", "error_breakdown.png", "report.html")


@pytest.fixture(scope="module")
def evaluated(trained_run, synthetic_dir, tmp_path_factory):
    """eval of the trained run with 20 bootstrap resamples: (output dir, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("eval")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["eval", "--ckpt-path", str(trained_run / "last.ckpt"), "--data-dir", str(synthetic_dir),
                     "--output-dir", str(out), "--bootstrap", "20"]) == 0
    return out, buf.getvalue()


def test_eval_writes_the_analysis(evaluated, synthetic_dir):
    out, stdout = evaluated
    for name in ANALYSIS_FILES:
        assert (out / name).is_file(), name
    m = json.loads((out / "metrics.json").read_text())
    cm = m["confusion_matrix"]
    assert cm["labels"][-1] == "background" and len(cm["counts"]) == len(cm["labels"])
    objects = len(json.loads((synthetic_dir / "annotations" / "test.json").read_text())["annotations"])
    assert sum(sum(row) for row in cm["counts"][:-1]) == objects  # each object once, found or missed
    assert set(m["error_breakdown"]["delta_ap"]) == {"classification", "localisation", "both", "duplicate",
                                                     "background", "missed"}
    assert m["bootstrap"]["resamples"] == 20
    lo, hi = m["bootstrap"]["map_50"]
    assert lo <= m["map_50"] <= hi
    assert f"[{lo:.4f}, {hi:.4f}]" in stdout  # the interval in the table
    for name, curve in m["pr_curves"].items():  # the curve's AP50 is the evaluator's
        assert curve["ap50"] == pytest.approx(max(0.0, m["per_class_50"][name]), abs=1e-6)


def test_train_writes_the_analysis_and_the_report_has_its_curves(trained_run):
    m = json.loads((trained_run / "metrics.json").read_text())
    assert {"confusion_matrix", "thresholds", "error_breakdown", "bootstrap"} <= set(m)
    page = (trained_run / "report.html").read_text()
    assert 'src="curves.png"' in page and "<script src" not in page and "http" not in page


@pytest.fixture(scope="session")
def browser() -> str:
    """Chromium's path; the test skips, saying why, where there is none (before any other set-up)."""
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        pytest.skip("no Chromium to test report.html in: install it (apt-get install chromium); "
                    f"looked for {', '.join(BROWSERS)} on PATH")
    return found


def load_in_browser(browser: str, page: Path, profile: Path) -> tuple[str, list[str]]:
    """(the DOM after load, the console messages) of ``page`` in headless Chromium (its profile in ``profile``)."""
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                          f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert "<html" in run.stdout, f"{browser} gave no page (exit {run.returncode}): {run.stderr[-2000:]}"
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    return run.stdout, console


@pytest.mark.parametrize("source", ["eval", "train"])
def test_report_loads_in_a_browser_with_every_image(browser, source, evaluated, trained_run, tmp_path):
    out = evaluated[0] if source == "eval" else trained_run
    dom, console = load_in_browser(browser, out / "report.html", tmp_path / "profile")
    assert console == []  # the page logs nothing unless something failed
    assert 'data-images="ok"' in dom, dom[:300]
    images = dom.count("<img ")
    assert images >= (5 if source == "train" else 4)  # charts (+ training curves) + gallery
    # the check really checks: the same page with one image gone
    broken = tmp_path / "broken"
    shutil.copytree(out, broken, ignore=shutil.ignore_patterns("*.ckpt"))
    (broken / "pr_curves.png").unlink()
    dom, console = load_in_browser(browser, broken / "report.html", tmp_path / "profile")
    assert 'data-images="failed"' in dom and any("pr_curves.png" in line for line in console)


def write_thresholds(path: Path, by_id: dict[int, float]) -> Path:
    path.write_text(json.dumps({"thresholds": {str(c): {"threshold": t, "name": str(c)} for c, t in by_id.items()}}))
    return path


def test_threshold_auto_in_detector_predict_and_export(trained_run, synthetic_dir, tmp_path, capsys):
    from detr_ft import Detector
    from detr_ft.errors import UserError

    images = sorted((synthetic_dir / "images").glob("*"))[:3]
    detector = Detector.load(trained_run / "last.ckpt")
    everything = [d for dets in detector.predict(images, threshold=0.0) for d in dets]
    by_class: dict[int, list[float]] = {}
    for d in everything:
        by_class.setdefault(d["category_id"], []).append(d["score"])
    assert len(by_class) >= 2
    chosen = {c: float(sorted(s)[len(s) // 2]) for c, s in by_class.items()}  # each class's median score
    path = write_thresholds(tmp_path / "metrics.json", chosen)
    expected = sorted((d["category_id"], round(d["score"], 5)) for d in everything
                      if d["score"] >= chosen[d["category_id"]])

    with_file = Detector.load(trained_run / "last.ckpt", thresholds=path)
    got = [d for dets in with_file.predict(images, threshold="auto") for d in dets]
    assert sorted((d["category_id"], round(d["score"], 5)) for d in got) == expected

    out = tmp_path / "pred"
    assert main(["predict", "--ckpt-path", str(trained_run / "last.ckpt"), "--images", *map(str, images),
                 "--threshold", "auto", "--thresholds", str(path), "--output-dir", str(out)]) == 0
    written = json.loads((out / "detections.json").read_text())
    assert sorted((d["category_id"], round(d["score"], 5)) for d in written) == expected

    export_dir = tmp_path / "export"
    assert main(["export", "--ckpt-path", str(trained_run / "last.ckpt"), "--out", str(export_dir),
                 "--thresholds", str(path)]) == 0
    config = json.loads((export_dir / "config.json").read_text())
    assert {int(k): v for k, v in config["detr_ft_thresholds"].items()} == chosen
    assert Detector.load(export_dir).thresholds == chosen

    # none to be found: one line saying how to get them, exit 2
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(trained_run / "last.ckpt", bare / "last.ckpt")
    with pytest.raises(UserError, match="detr-ft eval"):
        Detector.load(bare / "last.ckpt").predict(images[0], threshold="auto")
    capsys.readouterr()
    assert main(["predict", "--ckpt-path", str(bare / "last.ckpt"), "--images", str(images[0]),
                 "--threshold", "auto", "--output-dir", str(tmp_path / "p2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threshold auto" in err[0] and "detr-ft eval" in err[0]


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--bootstrap", "-1"], "--bootstrap"),
    (["predict", "--threshold", "often"], "--threshold"),
    (["predict", "--threshold", "auto", "--thresholds", "{missing}"], "missing.json: file not found"),
    (["predict", "--threshold", "auto", "--thresholds", "{bad}"], "not valid JSON"),
    (["export", "--thresholds", "{empty}", "--out", "{out}"], "has no per-class thresholds"),
])
def test_threshold_and_bootstrap_mistakes_exit_2_with_one_line(argv, needle, trained_run, synthetic_dir, tmp_path,
                                                               capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "empty.json").write_text("{}")
    paths = {"missing": tmp_path / "missing.json", "bad": tmp_path / "bad.json", "empty": tmp_path / "empty.json",
             "out": tmp_path / "export"}
    argv = [a.format(**paths) for a in argv]
    where = ["--images", str(next((synthetic_dir / "images").iterdir()))] if argv[0] == "predict" else \
        ["--data-dir", str(synthetic_dir)] if argv[0] == "eval" else []
    try:
        code = main([argv[0], "--ckpt-path", str(trained_run / "last.ckpt"), *where, *argv[1:],
                     "--output-dir", str(tmp_path / "o")])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and needle in err[0], err

"""``esper report``'s HTML pages (self-contained, escaped, rendered by headless Chromium where it
is installed) and its comparison table printed whole on narrow consoles and pipes."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from esper.cli import main
from esper.karn import comparison_renderables, default_page_path, load_run, report_main
from esper.runs import RunSummary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_SRC = re.compile(r'<img [^>]*src="([^"]*)"')
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("report") / "runs"
    plans = {  # a grown run with seeds, a static one, a short grown one (no seeds yet)
        "grown": ["heuristic", "--epochs", "20"],
        "static": ["static", "--epochs", "6"],
        "grown-s1": ["heuristic", "--epochs", "6", "--seed", "1"],
    }
    for name, argv in plans.items():
        assert main(["train", *argv, "--run-dir", str(root / name), "--no-live"]) == 0
    return [root / name for name in plans]


@pytest.fixture(scope="module")
def reported(runs) -> list[Path]:
    console = Console(record=True, width=200, force_terminal=False)
    assert report_main([str(d) for d in runs], console) == 0
    return runs


def _summary(run_dir: Path) -> RunSummary:
    return RunSummary.from_dict(json.loads((run_dir / "summary.json").read_text()))


def _plots(run_dirs: list[Path]) -> int:
    names = ("accuracy.png", "lifecycle.png", "alpha.png", "compute.png")
    return sum((d / name).is_file() for d in run_dirs for name in names)


def _assert_self_contained(page: str) -> list[bytes]:
    """No external reference of any kind; returns the embedded images' bytes."""
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "url(" not in page and "<link" not in page
    images = []
    for src in IMG_SRC.findall(page):
        assert src.startswith("data:image/png;base64,"), src[:40]
        images.append(base64.b64decode(src.split(",", 1)[1], validate=True))
    assert all(image.startswith(PNG_MAGIC) for image in images)
    return images


def test_every_run_gets_a_self_contained_report_page(reported):
    grown, static, _ = reported
    page = (grown / "report.html").read_text()
    images = _assert_self_contained(page)
    assert len(images) == 4  # accuracy, lifecycle, alpha, compute
    assert images[0] == (grown / "accuracy.png").read_bytes()
    summary = _summary(grown)
    assert f"{summary.final_val_accuracy:.2f}" in page
    assert summary.seeds  # the grown run's seed table is checked
    for seed in summary.seeds:
        assert seed["seed_id"] in page and seed["final_stage"] in page
    static_page = (static / "report.html").read_text()
    assert len(_assert_self_contained(static_page)) == 2  # no seed plots: accuracy, compute
    assert "<h2>Seeds</h2>" not in static_page


def test_several_runs_get_a_side_by_side_page_next_to_them(reported):
    page_path = reported[0].parent / "comparison.html"
    assert default_page_path(reported) == page_path
    page = page_path.read_text()
    images = _assert_self_contained(page)
    # The curves of all runs, quality against compute, then every plot of every run (static
    # runs have no seed plots).
    assert len(images) == 2 + _plots(reported) and _plots(reported) >= 4 + 2 + 2
    for run_dir in reported:
        assert f"{_summary(run_dir).final_val_accuracy:.2f}" in page
        assert f'href="{run_dir.name}/report.html"' in page
    assert "static vs grown" in page
    assert '<tr class="mean"><td>heuristic</td><td>digits</td><td>mean of 2</td>' in page
    assert "no lifecycle.png" in page  # the static run's missing seed plots are said, not hidden


def test_out_chooses_the_page_and_a_folder_is_refused(runs, tmp_path, capsys):
    out = tmp_path / "pages" / "mine.html"
    assert main(["report", str(runs[1]), "--out", str(out)]) == 0
    _assert_self_contained(out.read_text())
    assert main(["report", str(runs[1]), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder" in err


def test_values_from_a_run_are_escaped(runs, tmp_path):
    run_dir = tmp_path / "odd"
    shutil.copytree(runs[0], run_dir)
    summary = _summary(run_dir)
    summary.seeds[0]["blueprint"] = "<b>bold</b>"
    (run_dir / "summary.json").write_text(json.dumps(summary.to_dict()))
    assert report_main([str(run_dir)], Console(file=io.StringIO())) == 0
    page = (run_dir / "report.html").read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold" not in page


# --------------------------------------------------------------------- the table, whole


def _printed(renderables, console: Console) -> str:
    for renderable in renderables:
        console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("copies", [1, 3])  # 3 runs, and 9 runs (more than fit sideways)
def test_comparison_prints_whole_on_an_80_column_console(runs, tmp_path, copies):
    loaded = [load_run(d) for d in runs] * copies
    console = Console(record=True, width=80, force_terminal=False)
    text = _printed(comparison_renderables(loaded, console), console)
    assert "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    for word in ("heuristic", "static", "digits", "final val acc (%)", "fossilized", "culled"):
        assert word in text, word
    for run in loaded:
        assert f"{run.summary.final_val_accuracy:.2f}" in text
        assert f"{run.summary.total_params:,}" in text


@pytest.mark.parametrize("width", [120, 200])
def test_a_wide_enough_console_keeps_one_row_per_run(runs, width):
    loaded = [load_run(d) for d in runs]
    console = Console(record=True, width=width, force_terminal=False)
    text = _printed(comparison_renderables(loaded, console), console)
    assert "…" not in text
    # Two heuristic runs and their mean; headers may wrap between words at 120 columns (12
    # columns with digits' test split).
    assert sum(1 for line in text.splitlines() if "│ heuristic │ digits" in line) == 3


def test_report_to_a_pipe_prints_the_table_whole(runs, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("COLUMNS", None)
    argv = [
        sys.executable,
        "-m",
        "esper",
        "report",
        *map(str, runs),
        "--out",
        str(tmp_path / "p.html"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    assert "…" not in done.stdout and "\x1b" not in done.stdout
    for word in ("heuristic", "static", "digits", "total params"):
        assert word in done.stdout


# --------------------------------------------------------------------- headless Chromium

# Injected into a copy of the page only: the page itself has no script.
COUNT_IMAGES = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-rendered',"
    " [...document.images].filter(i => i.complete && i.naturalWidth > 0).length + '/' +"
    " document.images.length + ' tables ' + document.querySelectorAll('table').length));"
    "</script></body>"
)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    argv = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--hide-scrollbars", *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")
@pytest.mark.parametrize("page_name", ["report.html", "comparison.html"])
def test_headless_chromium_renders_every_image_and_table(reported, tmp_path, page_name):
    if page_name == "report.html":  # the grown run's page: summary and seed tables, 4 plots
        page, images, tables = reported[0] / page_name, 4, 2
    else:  # comparison table; the curves, quality against compute and every run's plots
        page, images, tables = reported[0].parent / page_name, 2 + _plots(reported), 1
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", COUNT_IMAGES))
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri()).stdout
    assert f'data-rendered="{images}/{images} tables {tables}"' in dom
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1280,1600", f"--screenshot={shot}", page.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1280)
    assert (pixels[..., :3] < 0.5).any(axis=-1).mean() > 0.01  # ink: not a blank page

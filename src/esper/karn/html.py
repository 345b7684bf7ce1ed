"""Self-contained HTML report pages: ``report.html`` per run and a side-by-side page for several.

Each page is one file: the PNGs are embedded as base64 ``data:`` URIs, the style sheet is inline,
there is no script, and nothing refers to a server or the network, so a page can be mailed,
attached to an issue or opened from a laptop's disk as it is. Every value taken from a run
(names, reasons, numbers) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from esper._atomic import atomic_path
from esper.karn.compare import KEY_HEADERS, comparison_rows, comparison_title, metrics_for
from esper.karn.overlay import (
    compute_figure,
    has_compute,
    overlay_figure,
    run_label,
    run_labels,
)
from esper.karn.run_data import RunData

#: A run's own page, in its run directory.
RUN_PAGE = "report.html"
#: The side-by-side page's file name when ``esper report --out`` is not given.
COMPARISON_PAGE = "comparison.html"
# The plots every run directory gets from write_plots, in page order, with their captions.
PLOTS = (
    ("accuracy.png", "Accuracy per epoch; growth events marked above the plot"),
    ("lifecycle.png", "Seed lifecycle per slot (x: culled)"),
    ("alpha.png", "Blend alpha of every seed"),
    ("compute.png", "Validation accuracy against the training FLOPs spent; growth marked"),
)
# (RunSummary field, label, format) for a run page's summary table; fields without a value
# (test numbers of a task without a test split) are left out.
SUMMARY_ROWS = (
    ("final_val_accuracy", "final validation accuracy (%)", "{:.2f}"),
    ("best_val_accuracy", "best validation accuracy (%)", "{:.2f}"),
    ("final_val_loss", "final validation loss", "{:.4f}"),
    ("final_train_loss", "final train loss", "{:.4f}"),
    ("test_accuracy", "test accuracy (%)", "{:.2f}"),
    ("test_loss", "test loss", "{:.4f}"),
    ("host_params", "host parameters", "{:,}"),
    ("total_params", "total parameters", "{:,}"),
    ("fossilized", "seeds fossilized", "{}"),
    ("culled", "seeds culled", "{}"),
    ("rollbacks", "governor rollbacks", "{}"),
    ("epochs", "epochs", "{}"),
    ("wall_seconds", "wall time (s)", "{:.1f}"),
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1800px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f0f0f0; } th[scope="row"] { text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.mean td { font-weight: bold; background: #fafafa; }
figure { margin: 0.8em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.side { display: grid; grid-template-columns: repeat(var(--runs), minmax(320px, 1fr));
        gap: 1em; overflow-x: auto; }
.side > * { min-width: 0; }
.muted { color: #777; font-size: 0.9em; }
"""


def write_run_page(run: RunData, images: Iterable[Path]) -> Path:
    """Write ``report.html`` into the run's directory.

    Args:
        run: A loaded run.
        images: The run's PNGs (from :func:`esper.karn.plots.write_plots`) to embed; those
            named in ``PLOTS`` are shown in that order with their captions.

    Returns:
        The page's path.
    """
    by_name = {Path(p).name: Path(p) for p in images}
    body = [
        f"<h1>{_e(run_label(run))}</h1>",
        f'<p class="muted">run directory {_e(str(run.run_dir))}</p>',
        "<h2>Summary</h2>",
        _summary_table(run),
    ]
    if run.summary.seeds:
        body += ["<h2>Seeds</h2>", _seed_table(run.summary.seeds)]
    body.append("<h2>Plots</h2>")
    for name, caption in PLOTS:
        if name in by_name:
            body.append(_figure(by_name[name].read_bytes(), caption, f"{name} of {run_label(run)}"))
    path = run.run_dir / RUN_PAGE
    _write(path, f"esper report: {run_label(run)}", body)
    return path


def write_comparison_page(runs: Sequence[RunData], path: str | os.PathLike[str]) -> Path:
    """Write the side-by-side page of several runs.

    The page holds the comparison table, every run's validation curves in one figure, and each
    plot of every run next to the same plot of the others. Each run's own plots are read from
    its directory (write them first with :func:`esper.karn.plots.write_plots`).

    Args:
        runs: The runs compared.
        path: The page to write; missing parent folders are created.

    Returns:
        The page's path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = run_labels(runs)
    body = [
        f"<h1>{_e(comparison_title(runs))} ({len(runs)} run{'s' if len(runs) != 1 else ''})</h1>",
        _comparison_table(runs),
        _run_links(runs, labels, path.parent),
        "<h2>Validation curves</h2>",
        _figure(_png(overlay_figure(runs)), "Every run's validation accuracy and loss", "curves"),
    ]
    if any(has_compute(run) for run in runs):
        caption = "Every run's validation accuracy against the training FLOPs it spent"
        figure = _figure(_png(compute_figure(runs)), caption, "compute")
        body += ["<h2>Quality against compute</h2>", figure]
    for name, caption in PLOTS:
        cells = [
            _figure((run.run_dir / name).read_bytes(), label, f"{name} of {label}")
            if (run.run_dir / name).is_file()
            else f'<p class="muted">{_e(label)}: no {_e(name)} (no seeds recorded)</p>'
            for run, label in zip(runs, labels, strict=True)
        ]
        body += [f"<h2>{_e(caption)}</h2>", _side_by_side(cells, len(runs))]
    _write(path, comparison_title(runs), body)
    return path


# ------------------------------------------------------------------------------ pieces


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software" chunk: matplotlib would put its web address into the image.
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _figure(png: bytes, caption: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _side_by_side(cells: list[str], columns: int) -> str:
    return f'<div class="side" style="--runs: {columns}">{"".join(cells)}</div>'


def _summary_table(run: RunData) -> str:
    rows = []
    for name, label, spec in SUMMARY_ROWS:
        value = getattr(run.summary, name)
        if value is None:
            continue
        text = spec.format(value)
        rows.append(f'<tr><th scope="row">{_e(label)}</th><td class="num">{_e(text)}</td></tr>')
    return f"<table>{''.join(rows)}</table>"


def _seed_table(seeds: list[dict]) -> str:
    head = "".join(
        f"<th>{h}</th>" for h in ("seed", "slot", "blueprint", "germinated", "stages", "final")
    )
    rows = [
        "<tr>"
        + "".join(
            f"<td>{_e(cell)}</td>"
            for cell in (
                s.get("seed_id", "?"),
                s.get("slot", "?"),
                s.get("blueprint", "?"),
                s.get("germinated_epoch", "—"),
                " → ".join(str(x) for x in s.get("stages", [])),
                s.get("final_stage", "?"),
            )
        )
        + "</tr>"
        for s in seeds
        if isinstance(s, dict)
    ]
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _comparison_table(runs: Sequence[RunData]) -> str:
    headers = [*KEY_HEADERS, *(m.header for m in metrics_for(runs)), "run directory"]
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    rows = []
    for row in comparison_rows(runs):
        keys = "".join(f"<td>{_e(v)}</td>" for v in (row.mode, row.task, row.label))
        where = f"<td>{_e(row.run_dir.name if row.run_dir else '')}</td>"
        cells = "".join(f'<td class="num">{_e(v)}</td>' for v in row.cells)
        opening = '<tr class="mean">' if row.is_mean else "<tr>"
        rows.append(f"{opening}{keys}{cells}{where}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _run_links(runs: Sequence[RunData], labels: list[str], here: Path) -> str:
    """Relative links to each run's own page (they sit on the same disk, not on a server)."""
    items = []
    for run, label in zip(runs, labels, strict=True):
        try:
            target = Path(os.path.relpath(run.run_dir.resolve() / RUN_PAGE, here.resolve()))
        except ValueError:  # another drive (Windows): no relative path; name the run only
            items.append(f"<li>{_e(label)}: {_e(str(run.run_dir / RUN_PAGE))}</li>")
            continue
        items.append(f'<li><a href="{_e(target.as_posix())}">{_e(label)}</a></li>')
    return f'<p class="muted">Each run\'s own page:</p><ul>{"".join(items)}</ul>'


def _write(path: Path, title: str, body: list[str]) -> None:
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    with atomic_path(path) as tmp:  # a page opened while it is rewritten is never half a page
        tmp.write_text(page, encoding="utf-8")

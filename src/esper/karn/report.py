"""``esper report``: plots and a page for each run directory, a side-by-side page and a
static-versus-grown comparison table for several.

The public entry points are :func:`load_run`, :func:`write_plots`, :func:`comparison_rows`
(the table as data, :mod:`esper.karn.compare`), :func:`comparison_table` and
:func:`comparison_renderables` (the table for a console, :mod:`esper.karn.tables`) and
:func:`report_main`; the CLI turns a :class:`ReportError` into a one-line message and exit code
2. The HTML pages are written by :mod:`esper.karn.html`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from esper.karn.compare import ComparisonRow, comparison_rows
from esper.karn.html import COMPARISON_PAGE, write_comparison_page, write_run_page
from esper.karn.plots import write_plots
from esper.karn.run_data import ReportError, RunData, load_run
from esper.karn.tables import comparison_renderables, comparison_table

__all__ = [
    "ComparisonRow",
    "ReportError",
    "RunData",
    "comparison_renderables",
    "comparison_rows",
    "comparison_table",
    "default_page_path",
    "load_run",
    "report_main",
    "write_plots",
]


def default_page_path(run_dirs: Sequence[Path]) -> Path:
    """Where the side-by-side page goes without ``--out``: ``comparison.html`` in the folder
    that holds the runs (their common parent; the current directory when they share none).

    Args:
        run_dirs: The run directories being compared.

    Returns:
        The page's path.
    """
    try:
        common = Path(os.path.commonpath([str(d.resolve().parent) for d in run_dirs]))
    except ValueError:  # different drives: nothing in common
        common = Path.cwd()
    return common / COMPARISON_PAGE


def report_main(
    run_dirs: Sequence[str], console: Console, out: str | os.PathLike[str] | None = None
) -> int:
    """Write plots and ``report.html`` for every run directory and, for several runs, a
    side-by-side page and a comparison table.

    Every directory is loaded and checked before any file is written, so a typo in the last
    path does not leave the first runs half-reported.

    Args:
        run_dirs: Paths of run directories.
        console: Where to print what was written and the table.
        out: The side-by-side page (written for one run too when given); default
            :func:`default_page_path` when there are several runs.

    Returns:
        0 on success.

    Raises:
        ReportError: If no directory is given, one cannot be loaded, or ``out`` is a folder.
    """
    if not run_dirs:
        raise ReportError("no run directories given")
    runs = [load_run(d) for d in run_dirs]
    page = Path(out) if out is not None else None
    if page is None and len(runs) > 1:
        page = default_page_path([r.run_dir for r in runs])
    if page is not None and page.is_dir():
        raise ReportError(
            f"--out {page} is a folder; give a file name such as {page / COMPARISON_PAGE}"
        )
    for run in runs:
        written = write_plots(run)
        written.append(write_run_page(run, written))
        names = ", ".join(p.name for p in written)
        console.print(f"{escape(str(run.run_dir))}: wrote {names}", highlight=False, soft_wrap=True)
        if not run.has_seeds:
            console.print("  (no seeds recorded: lifecycle and alpha plots skipped)", style="dim")
    if page is not None:
        write_comparison_page(runs, page)
        console.print(f"side by side: {escape(str(page))}", highlight=False, soft_wrap=True)
    if len(runs) > 1:
        for renderable in comparison_renderables(runs, console):
            console.print(renderable)
    return 0

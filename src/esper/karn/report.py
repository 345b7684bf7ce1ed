"""``esper report``: plots for each run directory and a static-versus-grown comparison table.

The public entry points are :func:`load_run`, :func:`write_plots`, :func:`comparison_table` and
:func:`report_main`; the CLI turns a :class:`ReportError` into a one-line message and exit code 2.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from statistics import fmean

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from esper.karn.plots import write_plots
from esper.karn.run_data import ReportError, RunData, load_run

__all__ = ["ReportError", "RunData", "comparison_table", "load_run", "report_main", "write_plots"]

# (header, how to read the value from a run, how to format it)
_COLUMNS = (
    ("final val acc (%)", lambda r: r.summary["final_val_accuracy"], "{:.2f}"),
    ("best val acc (%)", lambda r: r.summary["best_val_accuracy"], "{:.2f}"),
    ("final val loss", lambda r: r.summary["final_val_loss"], "{:.4f}"),
    ("host params", lambda r: r.summary["host_params"], "{:,.0f}"),
    ("total params", lambda r: r.summary["total_params"], "{:,.0f}"),
    ("fossilized", lambda r: r.count("fossilized"), "{:g}"),
    ("culled", lambda r: r.count("culled"), "{:g}"),
)


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def _mean(values: list[float | None]) -> float | None:
    # A diverged seed (NaN loss) or an empty run (None) should not turn the whole mean into NaN.
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return fmean(finite) if finite else None


def comparison_table(runs: Sequence[RunData]) -> Table:
    """One row per run, plus a mean row for every (mode, task) with more than one run.

    Args:
        runs: Loaded runs, in any order; rows are sorted by task, mode and seed.

    Returns:
        A Rich table with columns mode, task, seed, final/best validation accuracy, final
        validation loss, host/total parameters, fossilized and culled seeds.

    Raises:
        ReportError: If ``runs`` is empty.
    """
    if not runs:
        raise ReportError("no runs to compare")
    modes = sorted({r.mode for r in runs})
    title = "static vs grown" if {"static", "heuristic"} <= set(modes) else "runs"
    table = Table(title=f"Comparison: {title}")
    for header in ("mode", "task", "seed"):
        table.add_column(header)
    for header, _, _ in _COLUMNS:
        table.add_column(header, justify="right")

    groups: dict[tuple[str, str], list[RunData]] = defaultdict(list)
    for run in runs:
        groups[(run.task, run.mode)].append(run)
    for (task, mode), members in sorted(groups.items()):
        members.sort(key=lambda r: (r.seed is None, r.seed))
        for run in members:
            cells = [_fmt(get(run), spec) for _, get, spec in _COLUMNS]
            table.add_row(mode, task, _fmt(run.seed, "{}"), *cells)
        if len(members) > 1:
            means = [_fmt(_mean([get(r) for r in members]), spec) for _, get, spec in _COLUMNS]
            table.add_row(mode, task, f"mean of {len(members)}", *means, style="bold")
            table.add_section()
    return table


def report_main(run_dirs: Sequence[str], console: Console) -> int:
    """Write plots for every run directory and, for several runs, print a comparison table.

    Every directory is loaded and checked before any file is written, so a typo in the last
    path does not leave the first runs half-reported.

    Args:
        run_dirs: Paths of run directories.
        console: Where to print what was written and the table.

    Returns:
        0 on success.

    Raises:
        ReportError: If no directory is given or one cannot be loaded.
    """
    if not run_dirs:
        raise ReportError("no run directories given")
    runs = [load_run(d) for d in run_dirs]
    for run in runs:
        names = ", ".join(p.name for p in write_plots(run))
        console.print(f"{escape(str(run.run_dir))}: wrote {names}", highlight=False)
        if not run.has_seeds:
            console.print("  (no seeds recorded: lifecycle and alpha plots skipped)", style="dim")
    if len(runs) > 1:
        console.print(comparison_table(runs))
    return 0

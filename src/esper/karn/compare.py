"""The comparison of runs as data: the rows the terminal table and the HTML page both show."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean

from esper.karn.run_data import ReportError, RunData

#: The columns that name a row, before the metrics.
KEY_HEADERS = ("mode", "task", "seed")


@dataclass(frozen=True)
class Metric:
    """A compared number.

    Attributes:
        header: Column header.
        get: Reads the value from a run (None when the run has none).
        spec: ``str.format`` spec for a value.
        optional: Shown only when some compared run has a value (test numbers: only tasks
            with a test split have them).
    """

    header: str
    get: Callable[[RunData], float | None]
    spec: str
    optional: bool = False


METRICS = (
    Metric("final val acc (%)", lambda r: r.summary.final_val_accuracy, "{:.2f}"),
    Metric("best val acc (%)", lambda r: r.summary.best_val_accuracy, "{:.2f}"),
    Metric("final val loss", lambda r: r.summary.final_val_loss, "{:.4f}"),
    Metric("test acc (%)", lambda r: r.summary.test_accuracy, "{:.2f}", True),
    Metric("test loss", lambda r: r.summary.test_loss, "{:.4f}", True),
    Metric("host params", lambda r: r.summary.host_params, "{:,.0f}"),
    Metric("total params", lambda r: r.summary.total_params, "{:,.0f}"),
    Metric("fossilized", lambda r: r.summary.fossilized, "{:.3g}"),
    Metric("culled", lambda r: r.summary.culled, "{:.3g}"),
)


@dataclass(frozen=True)
class ComparisonRow:
    """One row of the comparison: a run, or the mean of a (task, mode) group.

    Attributes:
        mode: The run's mode (``heuristic``, ``static``).
        task: The run's task.
        label: The seed, or ``"mean of N"``.
        cells: The formatted values, one per metric of :func:`metrics_for`.
        is_mean: True for a group's mean row.
        last_in_group: True for the last row of a group of several runs (a section ends there).
        run_dir: The run's directory; None for a mean row.
    """

    mode: str
    task: str
    label: str
    cells: tuple[str, ...]
    is_mean: bool = False
    last_in_group: bool = False
    run_dir: Path | None = None


def metrics_for(runs: Sequence[RunData]) -> list[Metric]:
    """The metrics compared for these runs: all but the optional ones no run has."""
    return [m for m in METRICS if not m.optional or any(m.get(r) is not None for r in runs)]


def comparison_rows(runs: Sequence[RunData]) -> list[ComparisonRow]:
    """The comparison as data: one row per run, plus a mean row per (mode, task) group of two
    or more.

    Args:
        runs: Loaded runs, in any order; rows are sorted by task, mode and seed.

    Returns:
        The rows, in display order; their cells follow :func:`metrics_for`.

    Raises:
        ReportError: If ``runs`` is empty.
    """
    if not runs:
        raise ReportError("no runs to compare")
    metrics = metrics_for(runs)
    groups: dict[tuple[str, str], list[RunData]] = defaultdict(list)
    for run in runs:
        groups[(run.task, run.mode)].append(run)
    rows: list[ComparisonRow] = []
    for (task, mode), members in sorted(groups.items()):
        members.sort(key=lambda r: (r.seed is None, r.seed))
        for run in members:
            cells = tuple(_fmt(m.get(run), m.spec) for m in metrics)
            rows.append(ComparisonRow(mode, task, _fmt(run.seed, "{}"), cells, run_dir=run.run_dir))
        if len(members) > 1:
            means = tuple(_fmt(_mean([m.get(r) for r in members]), m.spec) for m in metrics)
            rows.append(ComparisonRow(mode, task, f"mean of {len(members)}", means, True, True))
    return rows


def comparison_title(runs: Sequence[RunData]) -> str:
    """``"Comparison: static vs grown"`` when both kinds of run are there, else ``"...: runs"``."""
    modes = {r.mode for r in runs}
    return f"Comparison: {'static vs grown' if {'static', 'heuristic'} <= modes else 'runs'}"


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else spec.format(value)


def _mean(values: list[float | None]) -> float | None:
    # A diverged seed (NaN loss) or an empty run (None) should not turn the whole mean into NaN.
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return fmean(finite) if finite else None

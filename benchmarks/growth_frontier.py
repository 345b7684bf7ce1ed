"""Growth against tuned static hosts: is a grown model better than a static host of the same
training cost, when every arm gets the same learning-rate sweep?

``growth_comparison.py`` compares a grown model with one static host widened to its size, all at
the task's one learning rate. That says little on its own: a static baseline at an untuned rate
is a weak baseline, and growth's published gains have vanished once the baseline's rate was
tuned to its budget. This benchmark trains static hosts at several widths and budgets (epochs),
draws their Pareto front of test metric against training FLOPs, and places the grown runs
(``heuristic``, grown from the smallest width) against it. Usage::

    python benchmarks/growth_frontier.py --task fashion --out runs/frontier \\
        --widths 1.0 1.25 1.5 --budgets 30 45 -- --threads 1

The protocol, the same for every arm (a static width at a budget, or a grown configuration):

- **Learning rate.** The arm trains at ``--lr-factors`` times the task's rate (default ×0.5, ×1,
  ×2; ``esper train --lr``, which scales the seeds' rate with the host's) on the tuning seeds
  (``--tune-seeds``: the first K of ``--seeds``, all by default). The rate whose runs have the
  best mean *final validation* metric is chosen; when it is the largest or smallest tried, the
  sweep goes on by a factor of 2 past it, up to ``--max-extend`` times, so a chosen rate sits
  inside the sweep (the table marks one that still sits at its edge). The chosen rate then runs
  on every seed. Nothing chooses on the test split.
- **Seeds.** The same seed draws the same data split and batch order in every arm, so per-seed
  differences are paired.
- **Against the front.** The static front is the set of static arms (at their chosen rates) that
  no other static arm beats at lower mean compute; it is read at a grown arm's mean FLOPs,
  linearly in log FLOPs between neighbouring front arms, per seed. The grown arm's *margin* is
  the mean over seeds of (grown − front) in the direction where positive means growth is
  better, with the standard error of that paired difference and a bootstrap 95% interval.
- **FLOPs to the best static.** The training FLOPs at which a grown run's validation metric
  (measured every epoch) first reaches the final validation metric of the best static arm on the
  same seed, as a fraction of that static run's training FLOPs (the measure of G_stack and LiGO;
  validation, because the test split is measured once, on the final model).

Everything after ``--`` goes unchanged to every ``esper train`` call (it is checked first, so a
typo fails before any training); the benchmark sets the mode, task, seed, width, budget and
rate itself. Widths are ``esper train --width-multiplier`` values. Depth is not varied.

Each run lives in ``OUT/{mode}-{task}-w{width}-e{epochs}-lr{factor}-s{seed}``. A run whose
``summary.json`` exists is read, not retrained, and a killed run is continued with ``esper train
--resume`` (or started afresh if it died before its first checkpoint), so an interrupted
benchmark picks up where it stopped. ``OUT/train-args-{task}.json`` records the arguments after
``--`` and the grown runs' growth patience; a rerun with different ones is refused rather than
mixing old results into a new table.

The metric is the final model's test accuracy, or test loss for language-model tasks (their
output is a vocabulary). A task without a test split (``digits``, ``pyref``) is measured on its
final validation split instead, the split the rate was chosen on, and the table says so.
Outputs, in ``OUT`` (named by task, so several tasks can share one ``OUT``):

- ``frontier-{task}.md``: per arm, the chosen rate, mean ± sample std of the metric over seeds,
  mean training FLOPs and final parameters, whether a static arm is on the front; for grown arms
  the front's metric at their FLOPs, the paired margin and the FLOPs to the best static; and the
  sweep of every arm (validation metric per rate tried);
- ``frontier-{task}.png``: metric against training FLOPs (front line, static and grown points per
  seed and mean) and against final parameters;
- ``frontier-{task}.json``: every run's numbers, every arm's sweep and the table's numbers.

``--json`` also prints that object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from esper._atomic import atomic_path
from esper.karn.run_data import ReportError, load_run
from esper.leyline import DEFAULT_GROWTH_PATIENCE, get_topology
from esper.leyline.formats import FRONTIER_RECORD, migrate, stamped
from esper.runs import RunSummary, UsageError
from esper.runs.flags import OneLineParser, add_spec_arguments, spec_from_args
from esper.tolaria.tasks import TaskSpec, get_task

DEFAULT_WIDTHS = (1.0, 1.25, 1.5)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
#: Multiples of the task's learning rate every arm tries first.
DEFAULT_LR_FACTORS = (0.5, 1.0, 2.0)
#: How many times a sweep whose best rate sits at its edge is extended past it (by 2 each).
DEFAULT_MAX_EXTEND = 2
#: Longer budgets than the task's, as multiples of its epochs: with the task's own they put
#: static points on both sides of a grown run's compute.
DEFAULT_BUDGET_SCALES = (1.0, 1.5)
#: Resamples of the bootstrap interval, and the generator's seed (a table is reproducible).
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
#: How a run is started: ``esper train`` through this interpreter, so it is the installation
#: this script imports whatever ``PATH`` holds.
TRAIN = (sys.executable, "-m", "esper", "train")
#: ``esper train`` flags the benchmark sets itself; after ``--`` they would override its choice.
RESERVED_TRAIN_FLAGS = {
    "mode": "a mode",
    "task": "--task",
    "seed": "--seed",
    "run_dir": "--run-dir",
    "width_multiplier": "--width-multiplier",
    "epochs": "--epochs",
    "lr": "--lr",
    "resume": "--resume",
}


class FrontierError(ValueError):
    """Bad input or a failed run: printed as one line."""


@dataclass(frozen=True)
class MetricSpec:
    """Which ``summary.json`` number the frontier compares, and how to read it.

    Attributes:
        key: the :class:`esper.runs.RunSummary` field (``test_accuracy``, ``final_val_loss``,
            ...); :meth:`value` reads it.
        label: column header and axis label.
        higher_is_better: accuracy rises, loss falls; the front and the verdict follow this.
        fmt: ``str.format`` spec for one value.
        note: said above the table and the plot (why this is not the usual metric), or "".
    """

    key: str
    label: str
    higher_is_better: bool
    fmt: str
    note: str = ""

    def better(self, a: float, b: float) -> bool:
        """True when ``a`` is strictly better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def value(self, summary: RunSummary) -> float | None:
        """The run's number (None: a test number of a run without a test split)."""
        return getattr(summary, self.key)


ACCURACY = MetricSpec("test_accuracy", "test acc (%)", True, "{:.2f}")
LOSS = MetricSpec("test_loss", "test loss", False, "{:.4f}")
#: Language models (the output is a vocabulary) report loss; next-token accuracy is not the
#: number anyone compares them by. Classifiers report accuracy.
METRIC_BY_OUTPUT = {"num_classes": ACCURACY, "vocab_size": LOSS}


def metric_for(spec: TaskSpec, summaries: Sequence[RunSummary]) -> MetricSpec:
    """The metric for this task's runs: test accuracy or loss, or the final validation one when
    some run has no test split (a number measured on another split would not compare)."""
    metric = METRIC_BY_OUTPUT[get_topology(spec.topology).output_key]
    if all(metric.value(s) is not None for s in summaries):
        return metric
    name = metric.key.removeprefix("test_")
    return MetricSpec(
        key=f"final_val_{name}",
        label=metric.label.replace("test", "final val"),
        higher_is_better=metric.higher_is_better,
        fmt=metric.fmt,
        note=f"{spec.name} has no test split: the final validation {name} is compared",
    )


def validation_metric(metric: MetricSpec) -> MetricSpec:
    """The final validation number of ``metric``'s kind (accuracy or loss): what a rate is chosen
    on, and what the FLOPs-to-quality measure compares."""
    name = metric.key.removeprefix("test_").removeprefix("final_val_")
    return MetricSpec(
        key=f"final_val_{name}",
        label=f"final val {'acc (%)' if name == 'accuracy' else 'loss'}",
        higher_is_better=metric.higher_is_better,
        fmt=metric.fmt,
    )


def epoch_curve(run_dir: Path, metric: MetricSpec) -> list[tuple[float, float]]:
    """``(training FLOPs so far, validation metric)`` at the end of every epoch of a run, from its
    event log; ``metric`` says accuracy or loss.

    Raises:
        FrontierError: the run cannot be read, or an epoch lacks the number or its FLOPs.
    """
    attr = "val_accuracy" if metric.key.endswith("accuracy") else "val_loss"
    try:
        epochs = load_run(run_dir).epochs
    except ReportError as exc:
        raise FrontierError(str(exc)) from None
    curve = [(r.train_flops, getattr(r, attr)) for r in epochs]
    if any(flops is None or value is None for flops, value in curve):
        raise FrontierError(f"{run_dir}: an epoch record lacks its FLOPs or its {attr}")
    return curve


@dataclass(frozen=True)
class Arm:
    """One configuration the sweep tunes: a mode (``static`` or a growing one), a host width
    multiplier and a budget in epochs."""

    mode: str
    width: float
    epochs: int

    @property
    def grown(self) -> bool:
        return self.mode != "static"

    @property
    def label(self) -> str:
        kind = f"grown ({self.mode})" if self.grown else "static"
        return f"{kind} ×{self.width:g}, {self.epochs} ep"


@dataclass(frozen=True)
class Sweep:
    """An arm's learning-rate sweep.

    Attributes:
        tried: ``{factor: mean final validation metric over the tuning seeds}``, by factor.
        chosen: the factor chosen (best validation).
        at_edge: the chosen factor is still the largest or smallest tried after the allowed
            extensions: a better rate may lie outside the sweep.
    """

    tried: dict[float, float]
    chosen: float
    at_edge: bool


def sweep_rates(
    validation: Callable[[float], float],
    factors: Sequence[float],
    *,
    higher_is_better: bool,
    max_extend: int,
) -> Sweep:
    """Try each factor, choose the best by ``validation``, and extend the sweep by a factor of 2
    past an edge where the best one sits, at most ``max_extend`` times.

    Args:
        validation: a factor's mean final validation metric over the tuning seeds (it trains
            them on first call).
        factors: the factors to try first (at least one, all > 0).
        higher_is_better: the metric's direction.
        max_extend: extensions allowed (0: the sweep is ``factors`` alone).

    Returns:
        The sweep. Ties go to the factor nearest 1 (in log), then the smaller.

    Raises:
        FrontierError: no factor, or one not finite and > 0.
    """
    if not factors or not all(math.isfinite(f) and f > 0 for f in factors):
        raise FrontierError(f"--lr-factors must be finite and > 0, got {list(factors)}")
    tried: dict[float, float] = {}
    pending = sorted(set(factors))
    extensions = 0
    while True:
        for factor in pending:
            tried[factor] = validation(factor)
        sign = 1.0 if higher_is_better else -1.0
        chosen = max(tried, key=lambda f: (sign * tried[f], -abs(math.log(f)), -f))
        low, high = min(tried), max(tried)
        edge = len(tried) > 1 and chosen in (low, high)
        if not edge or extensions >= max_extend:
            return Sweep(dict(sorted(tried.items())), chosen, at_edge=edge)
        pending = [chosen * 2 if chosen == high else chosen / 2]
        extensions += 1


@dataclass(frozen=True)
class Point:
    """One finished run, as the frontier sees it."""

    mode: str
    width: float
    epochs: int
    lr: float
    seed: int
    metric: float
    val_metric: float
    train_flops: float
    params: int
    run_dir: str


@dataclass(frozen=True)
class Row:
    """One arm at its chosen rate, over its seeds: a line of the table.

    Attributes:
        lr_factor, lr: the chosen rate, as a multiple of the task's and as itself.
        lrs_tried: ``{rate: mean final validation metric over the tuning seeds}``.
        lr_at_edge: the chosen rate is still at an edge of the sweep.
        on_front: static rows: not dominated by another static arm (None for grown rows).
        front_metric: grown rows: the static front's metric at this row's mean FLOPs; None
            for static rows and where the FLOPs fall outside the front's range.
        delta: ``metric_mean - front_metric`` (None with it).
        margin, margin_se, margin_ci: the paired margin over the front (positive: growth is
            better), its standard error over seeds and a bootstrap 95% interval.
        reach_fraction: the mean over seeds of the FLOPs at which the grown run first matched
            the best static arm's final validation metric, as a fraction of that static run's
            FLOPs; None when some seed never did (``reached`` says how many did).
    """

    label: str
    mode: str
    width: float
    epochs: int
    seeds: int
    lr_factor: float
    lr: float
    lrs_tried: dict[str, float]
    lr_at_edge: bool
    metric_mean: float
    metric_std: float | None
    flops_mean: float
    params_mean: float
    on_front: bool | None = None
    front_metric: float | None = None
    delta: float | None = None
    margin: float | None = None
    margin_se: float | None = None
    margin_ci: tuple[float, float] | None = None
    reach_fraction: float | None = None
    reached: str | None = None


def pareto_front(points: Sequence[tuple[float, float]], *, higher_is_better: bool) -> list[int]:
    """Indices of the points no other point dominates, ordered by FLOPs.

    A point dominates another when it costs no more FLOPs, has a metric at least as good, and
    is strictly better in one of the two. Identical points do not dominate each other.

    Args:
        points: ``(train_flops, metric)`` pairs.
        higher_is_better: the metric's direction (accuracy: True, loss: False).

    Returns:
        Indices into ``points`` of the front, FLOPs ascending.
    """

    def at_least(a: float, b: float) -> bool:
        return a >= b if higher_is_better else a <= b

    front = []
    for i, (flops_i, metric_i) in enumerate(points):
        dominated = any(
            flops_j <= flops_i
            and at_least(metric_j, metric_i)
            and (flops_j, metric_j) != (flops_i, metric_i)
            for j, (flops_j, metric_j) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def interpolate_front(front: Sequence[tuple[float, float]], flops: float) -> float | None:
    """The front's metric at ``flops``, linear in log FLOPs between neighbouring front points.

    Log FLOPs because the widths are spaced geometrically in cost; a line there is the straight
    segment drawn on the plot's log axis.

    Args:
        front: ``(train_flops, metric)`` points of the front, FLOPs ascending.
        flops: where to read it (> 0).

    Returns:
        The interpolated metric, or None outside the front's FLOP range (nothing is
        extrapolated: no static run says what the front does there).

    Raises:
        ValueError: ``flops`` or a front point's FLOPs not positive, or the front not ascending.
    """
    if flops <= 0 or any(f <= 0 for f, _ in front):
        raise ValueError(f"FLOPs must be > 0 (got {flops} and front {[f for f, _ in front]})")
    if any(b[0] < a[0] for a, b in zip(front, front[1:], strict=False)):
        raise ValueError("the front must be ordered by FLOPs, ascending")
    for (f0, m0), (f1, m1) in zip(front, front[1:], strict=False):
        if f0 <= flops <= f1:
            if f1 == f0:
                return m0
            t = (math.log(flops) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return m0 + t * (m1 - m0)
    if front and flops == front[0][0]:  # a one-point front
        return front[0][1]
    return None


def paired_margin(
    differences: Sequence[float],
) -> tuple[float, float | None, tuple[float, float] | None]:
    """Mean of per-seed paired differences, its standard error and a bootstrap 95% interval
    (percentiles of the resampled means; fixed generator seed). With one seed only the mean.

    Raises:
        ValueError: no differences.
    """
    if not differences:
        raise ValueError("paired_margin needs at least one difference")
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return mean, None, None
    se = statistics.stdev(differences) / math.sqrt(len(differences))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = np.asarray(differences, dtype=np.float64)
    draws = rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    means = values[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return mean, se, (float(low), float(high))


def flops_to_reach(
    curve: Sequence[tuple[float, float]], target: float, *, higher_is_better: bool
) -> float | None:
    """The training FLOPs at the first epoch whose validation metric is at least as good as
    ``target``; None when no epoch reaches it."""
    for flops, value in curve:
        if (value >= target) if higher_is_better else (value <= target):
            return flops
    return None


def _arm(p: Point) -> Arm:
    return Arm(p.mode, p.width, p.epochs)


def frontier_rows(
    points: Sequence[Point], sweeps: dict[Arm, Sweep], metric: MetricSpec, base_lr: float
) -> list[Row]:
    """Aggregate the chosen rates' runs into table rows (static arms by width and budget, then
    grown ones) and place each grown arm against the static front of the arms' means, with the
    paired margin per seed.

    Args:
        points: every arm's runs at its chosen rate.
        sweeps: every arm's sweep.
        metric: the compared metric.
        base_lr: the task's rate (the factors' unit).
    """
    groups: dict[Arm, list[Point]] = {}
    for p in sorted(points, key=lambda p: (p.mode != "static", p.mode, p.width, p.epochs, p.seed)):
        groups.setdefault(_arm(p), []).append(p)
    rows = []
    for arm, runs in groups.items():
        values = [p.metric for p in runs]
        sweep = sweeps[arm]
        rows.append(
            Row(
                label=arm.label,
                mode=arm.mode,
                width=arm.width,
                epochs=arm.epochs,
                seeds=len(runs),
                lr_factor=sweep.chosen,
                lr=base_lr * sweep.chosen,
                lrs_tried={f"{base_lr * f:g}": v for f, v in sweep.tried.items()},
                lr_at_edge=sweep.at_edge,
                metric_mean=statistics.fmean(values),
                metric_std=statistics.stdev(values) if len(values) > 1 else None,
                flops_mean=statistics.fmean(p.train_flops for p in runs),
                params_mean=statistics.fmean(p.params for p in runs),
            )
        )
    static = [r for r in rows if r.mode == "static"]
    means = [(r.flops_mean, r.metric_mean) for r in static]
    front_idx = pareto_front(means, higher_is_better=metric.higher_is_better)
    front = [static[i] for i in front_idx]
    by_seed = {arm: {p.seed: p.metric for p in runs} for arm, runs in groups.items()}
    sign = 1.0 if metric.higher_is_better else -1.0
    placed = [replace(r, on_front=i in front_idx) for i, r in enumerate(static)]
    for r in rows[len(static) :]:
        at = interpolate_front([(f.flops_mean, f.metric_mean) for f in front], r.flops_mean)
        if at is None:
            placed.append(r)
            continue
        differences = []
        for seed, grown in by_seed[Arm(r.mode, r.width, r.epochs)].items():
            per_seed = [by_seed[Arm(f.mode, f.width, f.epochs)].get(seed) for f in front]
            if None in per_seed:  # a static arm without this seed: no pair
                continue
            front_seed = interpolate_front(
                [(f.flops_mean, v) for f, v in zip(front, per_seed, strict=True)], r.flops_mean
            )
            differences.append(sign * (grown - front_seed))
        margin = se = ci = None
        if differences:
            margin, se, ci = paired_margin(differences)
        placed.append(
            replace(
                r,
                front_metric=at,
                delta=r.metric_mean - at,
                margin=margin,
                margin_se=se,
                margin_ci=ci,
            )
        )
    return placed


def best_static(rows: Sequence[Row], metric: MetricSpec) -> Row | None:
    """The static arm with the best mean metric (the cheaper one on a tie)."""
    best = None
    for r in sorted((r for r in rows if r.mode == "static"), key=lambda r: r.flops_mean):
        if best is None or metric.better(r.metric_mean, best.metric_mean):
            best = r
    return best


def with_reach(
    row: Row,
    grown: Sequence[Point],
    static: Sequence[Point],
    curves: dict[str, list[tuple[float, float]]],
    *,
    higher_is_better: bool,
) -> Row:
    """``row`` with its FLOPs-to-best-static: per seed, the FLOPs at which the grown run's
    validation curve first matches the static run's final validation metric, over the static
    run's FLOPs; the mean over seeds when every paired seed got there.

    Args:
        row: a grown arm's row.
        grown: its runs; ``static``: the best static arm's runs.
        curves: each grown run's :func:`epoch_curve`, by run directory.
        higher_is_better: the metric's direction.
    """
    targets = {p.seed: p for p in static}
    fractions = []
    paired = 0
    for p in grown:
        target = targets.get(p.seed)
        if target is None:
            continue
        paired += 1
        at = flops_to_reach(curves[p.run_dir], target.val_metric, higher_is_better=higher_is_better)
        if at is not None:
            fractions.append(at / target.train_flops)
    fraction = statistics.fmean(fractions) if fractions and len(fractions) == paired else None
    return replace(row, reach_fraction=fraction, reached=f"{len(fractions)} of {paired}")


def _signed(value: float, fmt: str) -> str:
    return f"{'+' if value > 0 else ''}{fmt.format(value)}"


def render_table(rows: Sequence[Row], metric: MetricSpec) -> str:
    """The rows as a markdown table; the last column says in words whether growth beat the
    front, so the sign of a loss difference needs no thought."""
    header = (
        f"| configuration | seeds | lr | {metric.label} mean ± std | train FLOPs | final params "
        f"| on static front | static front at these FLOPs | vs front |"
    )
    lines = [header, "| --- " * 9 + "|"]
    for r in rows:
        std = "—" if r.metric_std is None else metric.fmt.format(r.metric_std)
        front = at = versus = "—"
        if r.on_front is not None:
            front = "yes" if r.on_front else "no"
        elif r.front_metric is None:
            at = "outside static FLOP range"
        else:
            at = metric.fmt.format(r.front_metric)
            if metric.better(r.metric_mean, r.front_metric):
                verdict = "better"
            elif metric.better(r.front_metric, r.metric_mean):
                verdict = "worse"
            else:
                verdict = "equal"
            versus = f"{_signed(r.delta, metric.fmt)} ({verdict})"
        lr = f"{r.lr:g} (×{r.lr_factor:g}{', at edge' if r.lr_at_edge else ''})"
        lines.append(
            f"| {r.label} | {r.seeds} | {lr} | {metric.fmt.format(r.metric_mean)} ± {std} "
            f"| {r.flops_mean:.3e} | {r.params_mean:,.0f} | {front} | {at} | {versus} |"
        )
    return "\n".join(lines)


def render_headline(rows: Sequence[Row], metric: MetricSpec, best: Row | None) -> str:
    """The grown arms' two headline numbers: the paired margin over the tuned front at equal
    FLOPs, and the FLOPs they need to match the best static arm."""
    target = "—" if best is None else best.label
    lines = [
        "| configuration | margin over the front ± SE (positive: growth better) | 95% bootstrap "
        f"interval | margin / SE | FLOPs to match {target} (validation), × its FLOPs |",
        "| --- " * 5 + "|",
    ]
    for r in rows:
        if r.mode == "static":
            continue
        margin = interval = ratio = "—"
        if r.margin is None:
            margin = "outside static FLOP range"
        else:
            se = "—" if r.margin_se is None else metric.fmt.format(r.margin_se)
            margin = f"{_signed(r.margin, metric.fmt)} ± {se}"
            if r.margin_ci is not None:
                low, high = (metric.fmt.format(v) for v in r.margin_ci)
                interval = f"[{low}, {high}]"
            if r.margin_se:
                ratio = f"{r.margin / r.margin_se:+.1f}"
        if r.reach_fraction is not None:
            reach = f"{r.reach_fraction:.2f} (reached by {r.reached} seeds)"
        else:
            reach = f"not reached (reached by {r.reached} seeds)" if r.reached else "—"
        lines.append(f"| {r.label} | {margin} | {interval} | {ratio} | {reach} |")
    return "\n".join(lines)


def render_sweeps(rows: Sequence[Row], selection: MetricSpec) -> str:
    """Every arm's sweep: the mean final validation metric of each rate tried, the chosen in
    bold."""
    lines = [
        f"| configuration | {selection.label} on the tuning seeds, per rate |",
        "| --- | --- |",
    ]
    for r in rows:
        chosen = f"{r.lr:g}"
        cells = [
            f"**{lr}: {selection.fmt.format(v)}**"
            if lr == chosen
            else f"{lr}: {selection.fmt.format(v)}"
            for lr, v in r.lrs_tried.items()
        ]
        lines.append(f"| {r.label} | {', '.join(cells)} |")
    return "\n".join(lines)


def frontier_figure(points: Sequence[Point], rows: Sequence[Row], metric: MetricSpec) -> Figure:
    """Metric against training FLOPs (with the static front) and against final parameters."""
    fig = Figure(figsize=(11, 4.2))
    by_flops, by_params = fig.subplots(1, 2)
    static_rows = [r for r in rows if r.mode == "static"]
    grown_rows = [r for r in rows if r.mode != "static"]
    direction = "higher" if metric.higher_is_better else "lower"
    for ax, x_point, x_row, xlabel in (
        (by_flops, "train_flops", "flops_mean", "training FLOPs (log)"),
        (by_params, "params", "params_mean", "final parameters (log)"),
    ):
        for mode, marker, color in (("static", "o", "#1f5fa8"), ("grown", "^", "#e15554")):
            runs = [p for p in points if (p.mode == "static") == (mode == "static")]
            means = static_rows if mode == "static" else grown_rows
            ax.scatter(
                [getattr(p, x_point) for p in runs],
                [p.metric for p in runs],
                marker=marker,
                color=color,
                alpha=0.35,
                s=22,
                label=f"{mode}, per seed",
            )
            ax.scatter(
                [getattr(r, x_row) for r in means],
                [r.metric_mean for r in means],
                marker=marker,
                color=color,
                edgecolor="black",
                s=80,
                zorder=3,
                label=f"{mode}, mean",
            )
            for r in means:
                name = f"×{r.width:g}, {r.epochs} ep"
                ax.annotate(
                    name if mode == "static" else f"grown from {name}",
                    (getattr(r, x_row), r.metric_mean),
                    textcoords="offset points",
                    xytext=(6, -10 if mode == "static" else 6),
                    fontsize=8,
                )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric.label}; {direction} is better")
        ax.grid(True, which="both", alpha=0.3)
    front = sorted((r for r in static_rows if r.on_front), key=lambda r: r.flops_mean)
    by_flops.plot(
        [r.flops_mean for r in front],
        [r.metric_mean for r in front],
        color="#1f5fa8",
        label="tuned static Pareto front",
    )
    by_flops.set_title("metric vs training compute")
    by_params.set_title("metric vs final size")
    by_flops.legend(fontsize=8)
    return fig


def train_command(
    arm: Arm, task: TaskSpec, seed: int, factor: float, run_dir: Path, extra: list[str]
) -> list[str]:
    """The ``esper train`` command line of one run: ``arm`` at ``factor`` times the task's
    rate."""
    return [
        *TRAIN,
        arm.mode,
        *("--task", task.name, "--seed", str(seed), "--width-multiplier", f"{arm.width:g}"),
        *("--epochs", str(arm.epochs), "--lr", repr(task.lr * factor)),
        *("--run-dir", str(run_dir), *extra),
    ]


def run_dir_for(out: Path, arm: Arm, task: TaskSpec, factor: float, seed: int) -> Path:
    """Where one run lives."""
    return out / f"{arm.mode}-{task.name}-w{arm.width:g}-e{arm.epochs}-lr{factor:g}-s{seed}"


def check_train_args(task: str, extra: list[str]) -> None:
    """Fail before any training when the arguments after ``--`` are not valid ``esper train``
    arguments or set what the benchmark sets itself.

    Raises:
        FrontierError: the argument is named in the message.
    """
    parser = _train_parser()
    args = parser.parse_args(extra)  # unknown flags: one line, exit code 2
    given = [flag for dest, flag in RESERVED_TRAIN_FLAGS.items() if getattr(args, dest) is not None]
    if given:
        raise FrontierError(
            f"arguments after -- must not set {', '.join(given)}: the benchmark sets them itself"
        )
    try:
        # The run's own validation (--epochs 0, unknown blend, ...).
        spec_from_args(args, mode="static", task=task, seed=0, width_multiplier=1.0)
    except UsageError as exc:
        raise FrontierError(f"arguments after --: {exc}") from None


def _train_parser() -> OneLineParser:
    """``esper train``'s run flags, and ``--resume``, which the benchmark sets itself."""
    parser = OneLineParser(prog="growth_frontier.py: arguments after --")
    add_spec_arguments(parser)
    parser.add_argument("--resume", default=None)
    return parser


def resolved_widths(spec: TaskSpec, widths: Sequence[float]) -> dict[float, int]:
    """Each multiplier's actual host width, refusing two that build the same host.

    Raises:
        FrontierError: a width is not positive, or two give the same host.
    """
    topology = get_topology(spec.topology)
    actual: dict[float, int] = {}
    for w in sorted(widths):
        if not (math.isfinite(w) and w > 0):
            raise FrontierError(f"--widths must be finite and > 0, got {w:g}")
        width = topology.widen(spec.host_config, w)[topology.width_key]
        twin = next((v for v, a in actual.items() if a == width), None)
        if twin is not None:
            raise FrontierError(
                f"--widths {twin:g} and {w:g} both give {topology.width_key}={width} for task "
                f"{spec.name!r}; choose widths that differ by at least one unit of width"
            )
        actual[w] = width
    return actual


def run_once(cmd: list[str], run_dir: Path) -> RunSummary:
    """The run's summary: read if it finished, continued if it was killed, else trained."""
    summary = run_dir / "summary.json"
    if not summary.is_file():
        if (run_dir / "checkpoint.pt").is_file():
            cmd = [*TRAIN, "--resume", str(run_dir)]
        elif _killed_before_training(run_dir):
            for file in run_dir.iterdir():
                file.unlink()
        elif run_dir.is_dir() and any(run_dir.iterdir()):
            raise FrontierError(
                f"{run_dir} holds an unfinished run without a checkpoint; delete it and rerun"
            )
        print("$ esper train", " ".join(cmd[len(TRAIN) :]), flush=True)
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise FrontierError(
                f"esper train exited with {done.returncode} for {run_dir} (its error is above); "
                f"rerun the benchmark to continue"
            )
    try:
        return RunSummary.from_dict(json.loads(summary.read_text()))
    except ValueError as exc:  # JSONDecodeError and FormatError included
        raise FrontierError(f"{summary}: {exc}") from None


def _killed_before_training(run_dir: Path) -> bool:
    """True for a run killed between writing its configuration and its first checkpoint: it
    holds nothing but ``config.json`` and an empty event log, so starting afresh loses
    nothing (``esper train`` refuses a folder that holds files, and there is no checkpoint to
    resume)."""
    if not run_dir.is_dir():
        return False
    events = run_dir / "events.jsonl"
    names = {f.name for f in run_dir.iterdir()}
    return names <= {"config.json", "events.jsonl"} and (
        not events.is_file() or events.stat().st_size == 0
    )


def growth_patience(extra: list[str]) -> int:
    """The grown runs' growth patience: ``--growth-patience`` after ``--``, else the default."""
    given = _train_parser().parse_args(extra).growth_patience
    return DEFAULT_GROWTH_PATIENCE if given is None else given


def _record_train_args(out: Path, task: str, extra: list[str]) -> None:
    path = out / f"train-args-{task}.json"
    patience = growth_patience(extra)
    if path.is_file():
        record = migrate(FRONTIER_RECORD, json.loads(path.read_text()))
        before = record["train_args"]
        if before != extra:
            raise FrontierError(
                f"{out} holds {task} runs made with `-- {' '.join(before)}`, not "
                f"`-- {' '.join(extra)}`; use the same arguments or another --out"
            )
        grown_at = record["growth_patience"]
        if grown_at != patience:
            raise FrontierError(
                f"{out} holds {task} runs grown at growth patience {grown_at}, not {patience} "
                "(the default changed); use another --out"
            )
        return
    record = stamped(
        FRONTIER_RECORD, {"task": task, "train_args": extra, "growth_patience": patience}
    )
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, TaskSpec, list[str]]:
    """The benchmark's own arguments, its task, and the arguments after ``--`` for every run."""
    cut = argv.index("--") if "--" in argv else len(argv)
    own, extra = argv[:cut], argv[cut + 1 :]
    parser = OneLineParser(
        prog="growth_frontier.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", default="digits", help="an esper task name")
    parser.add_argument("--out", required=True, help="folder for the runs and the results")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument(
        "--widths",
        type=float,
        nargs="+",
        default=list(DEFAULT_WIDTHS),
        help="static host width multipliers; growth starts from the smallest",
    )
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=None,
        help="epochs every static width trains for (default: the task's, and 1.5 times it)",
    )
    parser.add_argument(
        "--grown-budgets",
        type=int,
        nargs="+",
        default=None,
        help="epochs of the grown runs (default: the smallest budget)",
    )
    parser.add_argument(
        "--lr-factors",
        type=float,
        nargs="+",
        default=list(DEFAULT_LR_FACTORS),
        help="multiples of the task's learning rate every arm tries first",
    )
    parser.add_argument(
        "--max-extend",
        type=int,
        default=DEFAULT_MAX_EXTEND,
        help="times a sweep whose best rate is at its edge goes on past it (by a factor of 2)",
    )
    parser.add_argument(
        "--tune-seeds",
        type=int,
        default=None,
        help="the rate is chosen on the first K seeds' validation (default: all seeds)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the results as one JSON line, last"
    )
    args, unknown = parser.parse_known_args(own)
    if unknown:
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (arguments for esper train go after --)"
        )
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds has duplicates: {args.seeds}")
    try:
        spec = get_task(args.task)
    except ValueError as exc:
        parser.error(str(exc))
    if args.budgets is None:
        args.budgets = sorted({max(1, round(spec.epochs * s)) for s in DEFAULT_BUDGET_SCALES})
    if args.grown_budgets is None:
        args.grown_budgets = [min(args.budgets)]
    for flag, values in (("--budgets", args.budgets), ("--grown-budgets", args.grown_budgets)):
        if any(v < 1 for v in values) or len(set(values)) != len(values):
            parser.error(f"{flag} must be distinct epoch counts >= 1, got {values}")
    if not all(math.isfinite(f) and f > 0 for f in args.lr_factors):
        parser.error(f"--lr-factors must be finite and > 0, got {args.lr_factors}")
    if args.max_extend < 0:
        parser.error(f"--max-extend must be >= 0, got {args.max_extend}")
    if args.tune_seeds is None:
        args.tune_seeds = len(args.seeds)
    if not 1 <= args.tune_seeds <= len(args.seeds):
        parser.error(f"--tune-seeds must be between 1 and {len(args.seeds)}, got {args.tune_seeds}")
    return args, spec, extra


def main(argv: list[str] | None = None) -> int:
    args, spec, extra = _parse(sys.argv[1:] if argv is None else list(argv))
    out = Path(args.out)
    kind = METRIC_BY_OUTPUT[get_topology(spec.topology).output_key]
    selection = validation_metric(kind)
    runs: dict[tuple[Arm, float, int], tuple[Path, RunSummary]] = {}

    def run(arm: Arm, factor: float, seed: int) -> RunSummary:
        key = (arm, factor, seed)
        if key not in runs:
            run_dir = run_dir_for(out, arm, spec, factor, seed)
            cmd = train_command(arm, spec, seed, factor, run_dir, extra)
            runs[key] = (run_dir, run_once(cmd, run_dir))
        return runs[key][1]

    tune = args.seeds[: args.tune_seeds]
    try:
        widths = resolved_widths(spec, args.widths)
        check_train_args(spec.name, extra)
        _record_train_args(out, spec.name, extra)
        arms = [Arm("static", w, e) for w in widths for e in sorted(args.budgets)]
        arms += [Arm("heuristic", min(widths), e) for e in sorted(args.grown_budgets)]
        sweeps: dict[Arm, Sweep] = {}
        for arm in arms:
            sweeps[arm] = sweep_rates(
                lambda factor, arm=arm: statistics.fmean(
                    selection.value(run(arm, factor, seed)) for seed in tune
                ),
                args.lr_factors,
                higher_is_better=selection.higher_is_better,
                max_extend=args.max_extend,
            )
            for seed in args.seeds:
                run(arm, sweeps[arm].chosen, seed)
        chosen = [
            (arm, seed, *runs[(arm, sweeps[arm].chosen, seed)])
            for arm in arms
            for seed in args.seeds
        ]
        metric = metric_for(spec, [s for *_, s in chosen])
        points = [
            Point(
                arm.mode,
                arm.width,
                arm.epochs,
                spec.lr * sweeps[arm].chosen,
                seed,
                metric.value(s),
                selection.value(s),
                s.train_flops,
                s.total_params,
                str(d),
            )
            for arm, seed, d, s in chosen
        ]
        rows = frontier_rows(points, sweeps, metric, spec.lr)
        best = best_static(rows, metric)
        if best is not None:
            best_points = [p for p in points if _arm(p) == Arm(best.mode, best.width, best.epochs)]
            rows = [
                r
                if r.mode == "static"
                else with_reach(
                    r,
                    grown := [p for p in points if _arm(p) == Arm(r.mode, r.width, r.epochs)],
                    best_points,
                    {p.run_dir: epoch_curve(Path(p.run_dir), selection) for p in grown},
                    higher_is_better=selection.higher_is_better,
                )
                for r in rows
            ]
    except FrontierError as exc:
        sys.stderr.write(f"growth_frontier.py: error: {exc}\n")
        return 2
    sweeps_by_label = {r.label: r.lrs_tried for r in rows}
    width_key = get_topology(spec.topology).width_key
    hosts = ", ".join(f"×{w:g} → {width_key} {a}" for w, a in widths.items())
    factors = ", ".join(f"×{f:g}" for f in sorted(args.lr_factors))
    title = (
        f"# Growth frontier: {spec.name}\n\nseeds {args.seeds} (rates chosen on {tune}); widths "
        f"{hosts}; budgets {sorted(args.budgets)} epochs; grown from ×{min(widths):g} for "
        f"{sorted(args.grown_budgets)} epochs; rates tried first: {factors} the task's "
        f"{spec.lr:g}; esper train arguments: `{' '.join(extra) or '(defaults)'}`\n"
    )
    if metric.note:
        title += f"\n{metric.note}, the split the rates were chosen on.\n"
    text = (
        f"{title}\n{render_table(rows, metric)}\n\n## Growth against the tuned front\n\n"
        f"{render_headline(rows, metric, best)}\n\n## Learning-rate sweeps\n\n"
        f"{render_sweeps(rows, selection)}\n"
    )
    stem = f"frontier-{spec.name}"
    _write(out / f"{stem}.md", text)
    fig = frontier_figure(points, rows, metric)
    note = f"\n{metric.note}" if metric.note else ""
    fig.suptitle(f"{spec.name}: tuned static arms vs grown (heuristic), seeds {args.seeds}{note}")
    FigureCanvasAgg(fig)
    with atomic_path(out / f"{stem}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    payload = {
        "task": spec.name,
        "metric": asdict(metric),
        "selection": asdict(selection),
        "seeds": args.seeds,
        "tune_seeds": tune,
        "widths": {f"{w:g}": a for w, a in widths.items()},
        "width_key": width_key,
        "budgets": sorted(args.budgets),
        "grown_budgets": sorted(args.grown_budgets),
        "base_lr": spec.lr,
        "lr_factors": sorted(args.lr_factors),
        "train_args": extra,
        # Every run with its arm's sweep: the rates tried (with their validation metric) and,
        # as its own "lr", the one chosen.
        "points": [asdict(p) | {"lrs_tried": sweeps_by_label[_arm(p).label]} for p in points],
        "rows": [asdict(r) for r in rows],
        "best_static": None if best is None else best.label,
    }
    _write(out / f"{stem}.json", json.dumps(payload, indent=2) + "\n")
    print(f"\n{text}\nwritten: {out / stem}.md, {stem}.png, {stem}.json")
    if args.json:
        print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Growth versus size: is a grown model better than a static host of the same training cost?

``growth_comparison.py`` compares a grown model with one static host widened to its size. One
widened host says little on its own: a point can beat it and still sit below what static hosts
reach for the same compute. This benchmark trains static hosts at several widths, draws their
Pareto front of test metric against training FLOPs, and places the grown runs (``heuristic``,
grown from the smallest width) against it. Usage::

    python benchmarks/growth_frontier.py --task fashion --out runs/frontier \\
        --seeds 0 1 2 --widths 1.0 1.25 1.5 2.0 -- --epochs 30 --threads 1

Everything after ``--`` goes unchanged to every ``esper train`` call (it is checked first, so a
typo fails before any training). Widths are ``esper train --width-multiplier`` values: the host's
width (CNN ``base_channels``, transformer ``n_embd``, rounded as the host needs) times the
multiplier. Depth is not varied: ``esper train`` has no flag that overrides a host's depth, so
the frontier is over widths only.

Each run lives in ``OUT/{mode}-{task}-w{width}-s{seed}``. A run whose ``summary.json`` exists is
read, not retrained, and a killed run is continued with ``esper train --resume`` (or started
afresh if it died before its first checkpoint), so an interrupted benchmark picks up where it
stopped. ``OUT/train-args-{task}.json`` records the arguments after ``--`` and the grown runs'
growth patience; a rerun with different ones (or under another default patience) is refused
rather than mixing old results into a new table.

The metric is the final model's test accuracy, or test loss for language-model tasks (their
output is a vocabulary). A task without a test split (``digits``, ``pyref``) is measured on its
final validation split instead, and the table says so. Outputs, in ``OUT`` (named by task, so
several tasks can share one ``OUT``):

- ``frontier-{task}.md``: per configuration, mean ± sample std of the metric over seeds, mean
  training FLOPs and final parameters, whether a static width is on the front, and for the grown
  runs the front's metric at their mean FLOPs (linear in log FLOPs) and the difference;
- ``frontier-{task}.png``: metric against training FLOPs (front line, static and grown points per
  seed and mean) and against final parameters;
- ``frontier-{task}.json``: every run's numbers and the table's, for further analysis.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from esper._atomic import atomic_path
from esper.leyline import DEFAULT_GROWTH_PATIENCE, get_topology
from esper.leyline.formats import FRONTIER_RECORD, migrate, stamped
from esper.runs import RunSummary, UsageError
from esper.runs.flags import OneLineParser, add_spec_arguments, spec_from_args
from esper.tolaria.tasks import TaskSpec, get_task

DEFAULT_WIDTHS = (1.0, 1.25, 1.5, 2.0)
DEFAULT_SEEDS = (0, 1, 2)
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


@dataclass(frozen=True)
class Point:
    """One finished run, as the frontier sees it."""

    mode: str
    width: float
    seed: int
    metric: float
    train_flops: float
    params: int
    run_dir: str


@dataclass(frozen=True)
class Row:
    """One configuration (mode and width) over its seeds: a line of the table.

    Attributes:
        on_front: static rows: not dominated by another static width (None for grown rows).
        front_metric: grown rows: the static front's metric at this row's mean FLOPs; None
            for static rows and where the FLOPs fall outside the front's range.
        delta: ``metric_mean - front_metric`` (None with it).
    """

    label: str
    mode: str
    width: float
    seeds: int
    metric_mean: float
    metric_std: float | None
    flops_mean: float
    params_mean: float
    on_front: bool | None = None
    front_metric: float | None = None
    delta: float | None = None


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


def frontier_rows(points: Sequence[Point], metric: MetricSpec) -> list[Row]:
    """Aggregate runs into table rows (static widths ascending, then grown) and place each
    against the static front of the configurations' means."""
    groups: dict[tuple[str, float], list[Point]] = {}
    for p in sorted(points, key=lambda p: (p.mode != "static", p.width, p.seed)):
        groups.setdefault((p.mode, p.width), []).append(p)
    rows = []
    for (mode, width), runs in groups.items():
        values = [p.metric for p in runs]
        rows.append(
            Row(
                label=f"{'static' if mode == 'static' else f'grown ({mode})'} ×{width:g}",
                mode=mode,
                width=width,
                seeds=len(runs),
                metric_mean=statistics.fmean(values),
                metric_std=statistics.stdev(values) if len(values) > 1 else None,
                flops_mean=statistics.fmean(p.train_flops for p in runs),
                params_mean=statistics.fmean(p.params for p in runs),
            )
        )
    static = [r for r in rows if r.mode == "static"]
    means = [(r.flops_mean, r.metric_mean) for r in static]
    front_idx = pareto_front(means, higher_is_better=metric.higher_is_better)
    front = [means[i] for i in front_idx]
    placed = [replace(r, on_front=i in front_idx) for i, r in enumerate(static)]
    for r in rows[len(static) :]:
        at = interpolate_front(front, r.flops_mean) if front else None
        placed.append(replace(r, front_metric=at, delta=None if at is None else r.metric_mean - at))
    return placed


def render_table(rows: Sequence[Row], metric: MetricSpec) -> str:
    """The rows as a markdown table; the last column says in words whether growth beat the
    front, so the sign of a loss difference needs no thought."""
    header = (
        f"| configuration | seeds | {metric.label} mean ± std | train FLOPs | final params "
        f"| on static front | static front at these FLOPs | vs front |"
    )
    lines = [header, "| --- " * 8 + "|"]
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
            versus = f"{'+' if r.delta > 0 else ''}{metric.fmt.format(r.delta)} ({verdict})"
        lines.append(
            f"| {r.label} | {r.seeds} | {metric.fmt.format(r.metric_mean)} ± {std} "
            f"| {r.flops_mean:.3e} | {r.params_mean:,.0f} | {front} | {at} | {versus} |"
        )
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
                ax.annotate(
                    f"×{r.width:g}" if mode == "static" else f"grown from ×{r.width:g}",
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
        label="static Pareto front",
    )
    by_flops.set_title("metric vs training compute")
    by_params.set_title("metric vs final size")
    by_flops.legend(fontsize=8)
    return fig


def train_command(
    mode: str, task: str, seed: int, width: float, run_dir: Path, extra: list[str]
) -> list[str]:
    """The ``esper train`` command line of one run."""
    return [
        *TRAIN,
        mode,
        *("--task", task, "--seed", str(seed), "--width-multiplier", f"{width:g}"),
        *("--run-dir", str(run_dir), *extra),
    ]


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
    return args, spec, extra


def main(argv: list[str] | None = None) -> int:
    args, spec, extra = _parse(sys.argv[1:] if argv is None else list(argv))
    out = Path(args.out)
    try:
        widths = resolved_widths(spec, args.widths)
        check_train_args(spec.name, extra)
        _record_train_args(out, spec.name, extra)
        runs = [("static", w) for w in widths] + [("heuristic", min(widths))]
        summaries = []
        for mode, width in runs:
            for seed in args.seeds:
                run_dir = out / f"{mode}-{spec.name}-w{width:g}-s{seed}"
                cmd = train_command(mode, spec.name, seed, width, run_dir, extra)
                summaries.append((mode, width, seed, run_dir, run_once(cmd, run_dir)))
    except FrontierError as exc:
        sys.stderr.write(f"growth_frontier.py: error: {exc}\n")
        return 2
    metric = metric_for(spec, [s for *_, s in summaries])
    points = [
        Point(mode, w, seed, metric.value(s), s.train_flops, s.total_params, str(d))
        for mode, w, seed, d, s in summaries
    ]
    rows = frontier_rows(points, metric)
    table = render_table(rows, metric)
    width_key = get_topology(spec.topology).width_key
    hosts = ", ".join(f"×{w:g} → {width_key} {a}" for w, a in widths.items())
    title = (
        f"# Growth frontier: {spec.name}\n\nseeds {args.seeds}; widths {hosts}; grown from "
        f"×{min(widths):g}; esper train arguments: `{' '.join(extra) or '(defaults)'}`\n"
    )
    if metric.note:
        title += f"\n{metric.note}.\n"
    stem = f"frontier-{spec.name}"
    _write(out / f"{stem}.md", f"{title}\n{table}\n")
    fig = frontier_figure(points, rows, metric)
    note = f"\n{metric.note}" if metric.note else ""
    fig.suptitle(f"{spec.name}: static widths vs grown (heuristic), seeds {args.seeds}{note}")
    FigureCanvasAgg(fig)
    with atomic_path(out / f"{stem}.png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    payload = {
        "task": spec.name,
        "metric": asdict(metric),
        "seeds": args.seeds,
        "widths": {f"{w:g}": a for w, a in widths.items()},
        "width_key": width_key,
        "train_args": extra,
        "points": [asdict(p) for p in points],
        "rows": [asdict(r) for r in rows],
    }
    _write(out / f"{stem}.json", json.dumps(payload, indent=2) + "\n")
    print(f"\n{title}\n{table}\n\nwritten: {out / stem}.md, {stem}.png, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

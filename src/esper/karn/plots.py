"""PNG plots of one run: accuracy with growth events, a per-slot lifecycle swimlane, alpha ramps.

Figures are built with ``matplotlib.figure.Figure`` on an explicit Agg canvas instead of pyplot,
so writing a report never switches the process-wide backend, opens a window, or keeps figures
alive in pyplot's global registry.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy

from esper._atomic import atomic_path
from esper.karn.overlay import compute_figure, has_compute
from esper.karn.run_data import RunData
from esper.leyline import SeedStage
from esper.nissa import LifecycleMark

# One color per stage; the swimlane legend follows SeedStage order.
STAGE_COLORS = {
    "DORMANT": "#dddddd",
    "GERMINATED": "#b8d8ba",
    "TRAINING": "#f2c14e",
    "BLENDING": "#f78154",
    "PROBATIONARY": "#4d9de0",
    "FOSSILIZED": "#3bb273",
    "CULLED": "#e15554",
    "EMBARGOED": "#7768ae",
    "RESETTING": "#999999",
}
UNKNOWN_STAGE_COLOR = "#555555"
MARK_ROW_INCHES = 0.17  # height of one row of growth-event labels above accuracy.png
PLOT_BOX = (0.8, 0.6, 6.9, 3.4)  # accuracy.png's plot: left, bottom, width, height in inches
MARK_STYLE = {  # (color, linestyle) for the vertical lines on accuracy.png
    "germinated": ("#3bb273", "--"),
    "fossilized": ("#1f5fa8", "-"),
    "culled": ("#e15554", ":"),
    "rollback": ("#ff9f1c", "-."),
}


def write_plots(run: RunData) -> list[Path]:
    """Write the run's PNGs into its directory.

    ``accuracy.png`` is always written. ``lifecycle.png`` and ``alpha.png`` only when some epoch
    recorded a seed; a static run has nothing to draw there. ``compute.png`` (accuracy against
    training FLOPs) when the log counts FLOPs.

    Args:
        run: A run from :func:`esper.karn.report.load_run`.

    Returns:
        The paths written, ``accuracy.png`` first.
    """
    written = [_save(accuracy_figure(run), run.run_dir / "accuracy.png")]
    if run.has_seeds:
        written.append(_save(_lifecycle_figure(run), run.run_dir / "lifecycle.png"))
        written.append(_save(_alpha_figure(run), run.run_dir / "alpha.png"))
    if has_compute(run):
        written.append(_save(compute_figure([run]), run.run_dir / "compute.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    # Write then rename, so a report taken while another one runs never sees half a PNG.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def _title(run: RunData, what: str) -> str:
    return f"{what} — {run.mode}, {run.task}, seed {run.seed}"


def accuracy_figure(run: RunData) -> Figure:
    """Validation (and train) accuracy per epoch, with growth events marked.

    Every germinate / fossilize / cull / rollback is a vertical line across the plot; its label
    (the seed it concerns) sits in a strip above the axes, in as many rows as it takes for no
    two labels to overlap, so labels never cover the curve or each other. The y axis stops just
    above 100%.

    Args:
        run: A loaded run.

    Returns:
        The figure (on no pyplot state).
    """
    marks = _mark_labels(run.marks)
    # Axes are placed in inches, not in fractions of the figure: the strip of labels gets
    # exactly one row height per row, and the plot keeps its size however many rows there are.
    fig = Figure(figsize=(PLOT_BOX[0] + PLOT_BOX[2] + 0.3, PLOT_BOX[1] + PLOT_BOX[3] + 0.5))
    ax = fig.add_axes(_inches_to_rect(fig, PLOT_BOX))
    strip = fig.add_axes(_inches_to_rect(fig, PLOT_BOX), sharex=ax) if marks else None
    xs = [r.epoch for r in run.epochs]
    ax.plot(xs, [r.val_accuracy for r in run.epochs], marker="o", ms=3, label="validation")
    train = [(r.epoch, r.train_accuracy) for r in run.epochs if r.train_accuracy is not None]
    if train:
        tx, ty = zip(*train, strict=True)
        ax.plot(tx, ty, color="gray", alpha=0.6, lw=1, ls="--", label="train")
    if not run.epochs:
        ax.text(0.5, 0.5, "no epochs recorded", ha="center", transform=ax.transAxes)
    bottom, top = ax.get_ylim()
    # Accuracy cannot pass 100%: a margin of one point keeps a marker at 100 whole.
    ax.set_ylim(max(bottom, -1.0), min(top, 101.0))
    labelled: set[str] = set()
    for epoch, kind, _ in marks:
        color, ls = MARK_STYLE[kind]
        ax.axvline(
            epoch, color=color, ls=ls, lw=1, label=None if kind in labelled else kind, zorder=0
        )
        labelled.add(kind)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if strip is not None:
        _draw_mark_strip(strip, ax, marks)
    (strip or ax).set_title(_title(run, "Accuracy"))
    return fig


def _inches_to_rect(fig: Figure, box: tuple[float, float, float, float]) -> list[float]:
    """``(left, bottom, width, height)`` in inches as a figure-fraction rectangle."""
    fig_w, fig_h = fig.get_size_inches()
    left, bottom, width, height = box
    return [left / fig_w, bottom / fig_h, width / fig_w, height / fig_h]


def _mark_labels(marks: list[LifecycleMark]) -> list[tuple[int, str, str]]:
    """``(epoch, kind, label)`` per (epoch, kind), naming every seed it concerns, by epoch."""
    grouped: dict[tuple[int, str], list[str]] = defaultdict(list)
    for m in marks:
        # A seed id already names its slot ("seed-1-early-conv_light"); a rollback has none.
        grouped[(m.epoch, m.kind)].append(m.seed_id or m.slot or m.kind)
    return [(epoch, kind, ", ".join(names)) for (epoch, kind), names in sorted(grouped.items())]


def _draw_mark_strip(strip, ax, marks: list[tuple[int, str, str]]) -> None:
    """Labels in the strip above the plot, each in the first row where it overlaps nothing."""
    fig = strip.figure
    renderer = FigureCanvasAgg(fig).get_renderer()
    x_low, x_high = strip.get_xlim()
    middle = (x_low + x_high) / 2
    rows: list[list] = []  # per row, the pixel extents of the labels placed in it
    placed = []
    for epoch, kind, label in marks:
        color, ls = MARK_STYLE[kind]
        strip.axvline(epoch, color=color, ls=ls, lw=1)
        # Right of the line in the left half, left of it in the right half: labels stay inside.
        rightwards = epoch <= middle
        shift = offset_copy(
            strip.get_xaxis_transform(), fig=fig, x=2 if rightwards else -2, units="points"
        )
        text = strip.text(
            epoch, 0.5, label, transform=shift, ha="left" if rightwards else "right", va="center",
            fontsize=7, color=color, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
        )  # fmt: skip
        box = text.get_window_extent(renderer)
        row = next(
            (i for i, boxes in enumerate(rows) if all(_apart(box, b) for b in boxes)), len(rows)
        )
        if row == len(rows):
            rows.append([])
        rows[row].append(box)
        placed.append((text, row))
    for text, row in placed:
        text.set_y(1 - (row + 0.5) / len(rows))
    # Now the height: the plot keeps its box, the strip sits on it with one row per row.
    rows_inches = MARK_ROW_INCHES * len(rows)
    left, bottom, width, height = PLOT_BOX
    fig.set_size_inches(left + width + 0.3, bottom + height + rows_inches + 0.5)
    ax.set_position(_inches_to_rect(fig, PLOT_BOX))
    strip.set_position(_inches_to_rect(fig, (left, bottom + height, width, rows_inches)))
    strip.set_ylim(0, 1)
    strip.set_yticks([])
    strip.tick_params(axis="x", labelbottom=False, length=0)
    for spine in strip.spines.values():
        spine.set_visible(False)


def _apart(a, b, gap: float = 4.0) -> bool:
    """True when two pixel boxes are at least ``gap`` pixels apart horizontally."""
    return a.x0 >= b.x1 + gap or b.x0 >= a.x1 + gap


def _lifecycle_figure(run: RunData) -> Figure:
    lanes = run.slots
    fig = Figure(figsize=(8, 1.2 + 0.6 * len(lanes)))
    ax = fig.add_subplot()
    for y, slot in enumerate(lanes):
        for _seed_id, stage, start, end in _segments(run, slot):
            color = STAGE_COLORS.get(stage, UNKNOWN_STAGE_COLOR)
            ax.broken_barh([(start - 0.5, end - start + 1)], (y - 0.35, 0.7), facecolors=color)
        for seed_id, start in _first_epochs(run, slot):
            ax.text(start - 0.4, y, seed_id, va="center", fontsize=7)
        culls = [m.epoch for m in run.marks if m.kind == "culled" and m.slot == slot]
        ax.plot(culls, [y] * len(culls), "x", color="black", ms=8, ls="none")
    present = {s.stage for r in run.epochs for s in r.seeds.values()}
    order = [s.name for s in SeedStage] + sorted(present - {s.name for s in SeedStage})
    handles = [
        Patch(color=STAGE_COLORS.get(name, UNKNOWN_STAGE_COLOR), label=name)
        for name in order
        if name in present
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_yticks(range(len(lanes)), lanes)
    ax.set_ylim(len(lanes) - 0.5, -0.5)  # first slot on top, as in the model
    if run.epochs:
        ax.set_xlim(run.epochs[0].epoch - 0.5, run.epochs[-1].epoch + 0.5)
    ax.set_xlabel("epoch (x: culled)")
    ax.set_title(_title(run, "Seed lifecycle"))
    return fig


def _segments(run: RunData, slot: str) -> list[tuple[str, str, int, int]]:
    """``(seed_id, stage, first_epoch, last_epoch)`` runs of consecutive epochs in one slot."""
    segments: list[tuple[str, str, int, int]] = []
    prev_epoch = None
    for record in run.epochs:
        snap = record.seeds.get(slot)
        if snap is None:
            prev_epoch = None
            continue
        last = segments[-1] if segments else None
        if last and last[:2] == (snap.seed_id, snap.stage) and prev_epoch == last[3]:
            segments[-1] = (*last[:3], record.epoch)
        else:
            segments.append((snap.seed_id, snap.stage, record.epoch, record.epoch))
        prev_epoch = record.epoch
    return segments


def _first_epochs(run: RunData, slot: str) -> list[tuple[str, int]]:
    """Each seed that lived in ``slot`` with the first epoch it was recorded there."""
    first: dict[str, int] = {}
    for record in run.epochs:
        snap = record.seeds.get(slot)
        if snap is not None:
            first.setdefault(snap.seed_id, record.epoch)
    return list(first.items())


def _alpha_figure(run: RunData) -> Figure:
    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot()
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for record in run.epochs:
        for slot, snap in record.seeds.items():
            if snap.alpha is not None:
                series[f"{slot}/{snap.seed_id} ({snap.blueprint})"].append(
                    (record.epoch, snap.alpha)
                )
    for label, points in series.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("epoch")
    ax.set_ylabel("alpha")
    ax.set_title(_title(run, "Blend alpha"))
    ax.grid(alpha=0.3)
    return fig

"""One figure with every compared run's validation curves, for the side-by-side page.

Each run's accuracy and loss are drawn in its own color; a triangle on the accuracy curve marks
each epoch where the run germinated a seed and a filled circle each fossilization, so a reader
sees at once whether growth moved the curve.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from esper.karn.run_data import RunData

# Marker per growth event kind drawn on the curves (the other kinds stay on each run's own plot).
EVENT_MARKERS = {"germinated": "^", "fossilized": "o"}


def run_label(run: RunData) -> str:
    """``"heuristic digits s0"``: how one run is named in legends and captions."""
    seed = f" s{run.seed}" if run.seed is not None else ""
    return f"{run.mode} {run.task}{seed}"


def run_labels(runs: Sequence[RunData]) -> list[str]:
    """:func:`run_label` per run, with the folder name added where two runs would read alike
    (the same mode, task and seed run twice)."""
    labels = [run_label(run) for run in runs]
    return [
        f"{label} ({run.run_dir.name})" if labels.count(label) > 1 else label
        for label, run in zip(labels, runs, strict=True)
    ]


def overlay_figure(runs: Sequence[RunData]) -> Figure:
    """Validation accuracy (left) and loss (right) per epoch of every run, growth marked.

    Args:
        runs: The runs compared.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(11, 4))
    acc_ax, loss_ax = fig.subplots(1, 2)
    for i, (run, label) in enumerate(zip(runs, run_labels(runs), strict=True)):
        color = f"C{i % 10}"
        epochs = [r.epoch for r in run.epochs]
        accuracy = {r.epoch: r.val_accuracy for r in run.epochs}
        acc_ax.plot(epochs, list(accuracy.values()), color=color, lw=1.2, label=label)
        losses = [(r.epoch, r.val_loss) for r in run.epochs if r.val_loss is not None]
        if losses:
            loss_ax.plot(*zip(*losses, strict=True), color=color, lw=1.2, label=label)
        for kind, marker in EVENT_MARKERS.items():
            at = sorted({m.epoch for m in run.marks if m.kind == kind and m.epoch in accuracy})
            acc_ax.plot(
                at, [accuracy[e] for e in at], marker, color=color, ms=6, ls="none",
                markeredgecolor="black", markeredgewidth=0.5,
            )  # fmt: skip
    bottom, top = acc_ax.get_ylim()
    acc_ax.set_ylim(max(bottom, -1.0), min(top, 101.0))
    acc_ax.set_ylabel("validation accuracy (%)")
    loss_ax.set_ylabel("validation loss")
    loss_ax.set_yscale("log")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    acc_ax.set_title("Validation accuracy (▲ germinated, ● fossilized)", fontsize=10)
    loss_ax.set_title("Validation loss", fontsize=10)
    loss_ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def has_compute(run: RunData) -> bool:
    """Whether every epoch of ``run`` records the training FLOPs spent so far."""
    return bool(run.epochs) and all(r.train_flops is not None for r in run.epochs)


def compute_figure(runs: Sequence[RunData]) -> Figure:
    """Validation accuracy against the training FLOPs spent so far, for each run that counted
    them: the axis on which growth must beat a static host (same quality for less compute, or
    more quality for the same). Growth events are marked as on :func:`overlay_figure`.

    Args:
        runs: The runs to draw (runs without FLOP counts are left out).

    Returns:
        The figure.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for i, (run, label) in enumerate(zip(runs, run_labels(runs), strict=True)):
        if not has_compute(run):
            continue
        color = f"C{i % 10}"
        flops = {r.epoch: r.train_flops for r in run.epochs}
        accuracy = {r.epoch: r.val_accuracy for r in run.epochs}
        ax.plot(list(flops.values()), list(accuracy.values()), color=color, lw=1.2, label=label)
        for kind, marker in EVENT_MARKERS.items():
            at = sorted({m.epoch for m in run.marks if m.kind == kind and m.epoch in flops})
            ax.plot(
                [flops[e] for e in at], [accuracy[e] for e in at], marker, color=color, ms=6,
                ls="none", markeredgecolor="black", markeredgewidth=0.5,
            )  # fmt: skip
    bottom, top = ax.get_ylim()
    ax.set_ylim(max(bottom, -1.0), min(top, 101.0))
    ax.set_xlabel("training FLOPs spent (forward and backward, seeds included)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.set_title("Quality against compute (▲ germinated, ● fossilized)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig

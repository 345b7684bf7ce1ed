"""The learning curves of a growth-policy training (``esper simic train``): one panel each for
the mean episode return, the policy's entropy, the critic's explained variance, the approximate
KL of each update and its clip fraction, against the update number."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from esper.karn.plots import _save

#: (key in a history row, panel title) in the order the panels are drawn.
CURVES = (
    ("return_mean", "mean episode return"),
    ("entropy", "policy entropy (nats)"),
    ("explained_variance", "explained variance"),
    ("approx_kl", "approximate KL"),
    ("clip_fraction", "clip fraction"),
)


def training_curves_figure(history: Sequence[dict], title: str) -> Figure:
    """A figure of the curves in ``history`` (one dict per update, as the policy file keeps)."""
    fig = Figure(figsize=(4.0 * len(CURVES), 3.2))
    updates = [int(row["update"]) for row in history]
    for i, (key, label) in enumerate(CURVES):
        ax = fig.add_subplot(1, len(CURVES), i + 1)
        ax.plot(updates, [float(row.get(key, float("nan"))) for row in history], marker=".")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("update")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def write_training_curves(history: Sequence[dict], path: str | Path, title: str) -> Path:
    """Write :func:`training_curves_figure` as a PNG (atomically) and return its path."""
    return _save(training_curves_figure(history, title), Path(path))

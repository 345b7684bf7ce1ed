"""What the learned controller sees: one fixed-size vector per epoch, built from the signals.

The run's part: progress through the run, losses, the validation quality (accuracy in points,
or the negative loss for a loss-unit task) and their trends, the plateau, parameter counts.
Each slot's part: its stage (one-hot), alpha, epochs in the stage, the seed's counterfactual
contribution and incubation gain (each with a flag saying whether it has been measured yet),
the seed's size relative to the host, how many seeds are fossilized in it, and the live seed's
blueprint (one-hot). Raw scales are kept: the policy normalises observations
with running statistics, so no hand-tuned scaling has to match a task.
"""

from __future__ import annotations

import math

import numpy as np

from esper.leyline import SeedStage, TrainingSignals
from esper.simic.actions import ActionLayout

_STAGES = tuple(SeedStage)
#: Every entry is clipped to this magnitude (a diverged epoch can report an infinite loss).
OBSERVATION_BOUND = 1e6

_RUN_FEATURES = (
    "progress",
    "train_loss",
    "val_loss",
    "val_quality",
    "best_val_quality",
    "quality_delta",
    "loss_delta",
    "plateau_epochs",
    "host_stabilized",
    "recent_loss_share",
    "recent_loss_share_known",
    "log_total_over_host_params",
    "seed_over_host_params",
    "seeds_left",
    "seed_budget_bounded",
)
_SLOT_FEATURES = (
    "alpha",
    "epochs_in_stage",
    "counterfactual",
    "counterfactual_known",
    "incubation_gain",
    "incubation_gain_known",
    "seed_over_host_params",
    "fossils",
)


def observation_names(layout: ActionLayout) -> list[str]:
    """The name of each entry of :func:`observe`'s vector, in order."""
    names = list(_RUN_FEATURES)
    for slot in layout.slots:
        names += [f"{slot}.stage.{s.name}" for s in _STAGES]
        names += [f"{slot}.{f}" for f in _SLOT_FEATURES]
        names += [f"{slot}.blueprint.{b}" for b in layout.blueprints]
    return names


def observation_size(layout: ActionLayout) -> int:
    return len(_RUN_FEATURES) + len(layout.slots) * (
        len(_STAGES) + len(_SLOT_FEATURES) + len(layout.blueprints)
    )


def _known(value: float | None) -> tuple[float, float]:
    return (0.0, 0.0) if value is None else (float(value), 1.0)


def observe(signals: TrainingSignals, layout: ActionLayout) -> np.ndarray:
    """The observation vector (float32, length :func:`observation_size`) for ``signals``.

    Raises:
        ValueError: the signals' slots are not the layout's.
    """
    reports = {r.slot: r for r in signals.slots}
    if tuple(reports) != layout.slots:
        raise ValueError(
            f"the run's slots ({', '.join(reports)}) are not this layout's "
            f"({', '.join(layout.slots)})"
        )
    host = max(signals.host_params, 1)
    progress = signals.epoch / signals.total_epochs if signals.total_epochs else 0.0
    share, share_known = _known(signals.recent_loss_share)
    bounded = signals.seeds_left is not None
    out = [
        progress,
        signals.train_loss,
        signals.val_loss,
        signals.val_quality / 100.0,
        signals.best_val_quality / 100.0,
        signals.quality_delta,
        signals.loss_delta,
        float(signals.plateau_epochs),
        float(signals.host_stabilized),
        share,
        share_known,
        math.log(max(signals.total_params, host) / host),
        signals.seed_params / host,
        float(signals.seeds_left) if bounded else 0.0,
        float(bounded),
    ]
    for slot in layout.slots:
        r = reports[slot]
        m = r.metrics
        out += [1.0 if r.stage == s else 0.0 for s in _STAGES]
        out += [
            float(r.alpha),
            float(m.epochs_in_current_stage),
            *_known(m.counterfactual_contribution),
            *_known(m.incubation_gain),
            r.seed_params / host,
            float(len(r.fossils)),
        ]
        out += [1.0 if r.blueprint_id == b else 0.0 for b in layout.blueprints]
    vector = np.nan_to_num(np.asarray(out, dtype=np.float64), nan=0.0)
    return np.clip(vector, -OBSERVATION_BOUND, OBSERVATION_BOUND).astype(np.float32)

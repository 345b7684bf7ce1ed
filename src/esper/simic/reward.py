"""The learned controller's reward: what the user wants, and nothing a policy can farm.

An episode's return is

    (quality of the final grown model - quality of the static host, same task and seed)
    - rent * (parameters added to the host)

on the validation split (the test split is never read). Quality is validation accuracy in
points for a classifier, and minus 100 x validation loss ("centinats") for a language model, so
one unit is about one accuracy point for either kind of task.

Per-step rewards are the differences of the potential

    phi_t = (quality_t - static quality_t) - rent * added parameters_t

with phi_0 = 0, so they telescope exactly to the return: nothing pays for waiting, for churning
seeds (a culled seed's parameters leave and its quality effect with it), or for a counterfactual
(which is only observed, never rewarded). Until the first germination the grown run is the static
run, so every reward before it is exactly zero.

The critic (never the policy) also sees what only the training environment knows: the potential
so far and the static host's run on the same seed (:meth:`RewardTracker.critic_features`). A
policy acting in a real run has no static twin to compare against, so these inputs are for the
value estimate alone; they let it tell a seed whose static run ended lucky from one that ended
unlucky, which is most of an episode's return on a small validation split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from esper.leyline import DEFAULT_PARAMETER_RENT, get_topology

#: The critic-only inputs, in the order :meth:`RewardTracker.critic_features` gives them.
CRITIC_FEATURES = (
    "potential",  # the return so far
    "static_now",  # the static host's quality after the same epoch
    "static_final",  # the static host's final quality (the return's reference)
    "static_to_go",  # how much the static host still gains: static_final - static_now
    "static_luck",  # static_final minus the mean of its last epochs: the reference's noise
)
#: Epochs averaged for ``static_luck``.
LUCK_WINDOW = 5


def quality(topology: str, val_loss: float, val_accuracy: float) -> float:
    """One number, higher is better: accuracy points, or -100 x loss for a language model."""
    if get_topology(topology).output_key == "vocab_size":
        return -100.0 * float(val_loss)
    return float(val_accuracy)


@dataclass(frozen=True)
class StaticBaseline:
    """The static host's validation quality on one seed: after each epoch, and at the end.

    Attributes:
        per_epoch: quality after epochs 1..E (the numbers the controller's signals carry).
        final: the final model's quality, measured once after the last epoch.
        host_params: the host's parameter count.
    """

    per_epoch: tuple[float, ...]
    final: float
    host_params: int

    def to_dict(self) -> dict:
        return {"per_epoch": list(self.per_epoch), "final": self.final, "host": self.host_params}

    @classmethod
    def from_dict(cls, raw: dict) -> StaticBaseline:
        return cls(tuple(float(q) for q in raw["per_epoch"]), float(raw["final"]), int(raw["host"]))


class RewardTracker:
    """Turns one episode's qualities and parameter counts into telescoping rewards.

    Args:
        baseline: the static host's run on the same task and seed.
        rent: quality units charged per parameter added to the host.
    """

    def __init__(self, baseline: StaticBaseline, rent: float = DEFAULT_PARAMETER_RENT) -> None:
        if rent < 0:
            raise ValueError(f"rent must be >= 0, got {rent}")
        self.baseline = baseline
        self.rent = rent
        self.phi = 0.0

    def potential(self, quality_now: float, static_now: float, total_params: int) -> float:
        added = total_params - self.baseline.host_params
        return (quality_now - static_now) - self.rent * added

    def epoch_reward(self, epoch: int, quality_now: float, total_params: int) -> float:
        """The reward for reaching ``epoch`` (1-based) at ``quality_now`` with this many params."""
        return self._advance(
            self.potential(quality_now, self.baseline.per_epoch[epoch - 1], total_params)
        )

    def final_reward(self, quality_final: float, total_params: int) -> float:
        """The last reward: the final model against the static host's final model."""
        return self._advance(self.potential(quality_final, self.baseline.final, total_params))

    def critic_features(self, epoch: int) -> np.ndarray:
        """The critic's privileged inputs after ``epoch`` (1-based), named by
        :data:`CRITIC_FEATURES` (float32)."""
        per_epoch = self.baseline.per_epoch
        now = per_epoch[min(epoch, len(per_epoch)) - 1]
        final = self.baseline.final
        recent = float(np.mean(per_epoch[-LUCK_WINDOW:]))
        return np.array([self.phi, now, final, final - now, final - recent], dtype=np.float32)

    def _advance(self, phi: float) -> float:
        reward, self.phi = phi - self.phi, phi
        return reward

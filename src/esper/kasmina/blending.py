"""Alpha schedules for BLENDING: ``linear``, ``sigmoid`` and ``gated`` (a learned per-sample gate).

The slot keeps the schedule's alpha in a 0-dim buffer, so changing alpha never changes what
``torch.compile`` traced. Every schedule returns exactly 0 at step 0 and exactly 1 at its last
step, so a finished ramp is a full hand-over, not 0.9933.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from esper.leyline import DEFAULT_SIGMOID_STEEPNESS, get_topology


class BlendAlgorithm(nn.Module):
    """Base class: a schedule over ramp steps plus how the slot's alpha meets the features."""

    algorithm_id = "base"

    def schedule(self, step: int, total: int) -> float:
        """Alpha after ``step`` of ``total`` ramp steps; exactly 0.0 at 0 and 1.0 at the end."""
        if total <= 0 or step >= total:
            return 1.0
        if step <= 0:
            return 0.0
        return self._shape(step / total)

    def _shape(self, t: float) -> float:
        return t

    def alpha(self, x: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
        """The alpha actually used for features ``x``; by default the ramp itself."""
        return ramp


class LinearBlend(BlendAlgorithm):
    algorithm_id = "linear"


class SigmoidBlend(BlendAlgorithm):
    """A logistic ramp rescaled so that it starts at 0 and ends at 1 exactly."""

    algorithm_id = "sigmoid"

    def __init__(self, steepness: float = DEFAULT_SIGMOID_STEEPNESS) -> None:
        super().__init__()
        self.steepness = float(steepness)

    def _shape(self, t: float) -> float:
        k = self.steepness

        def sig(z: float) -> float:
            return 1.0 / (1.0 + math.exp(-z))

        lo, hi = sig(-k / 2), sig(k / 2)
        return (sig(k * (t - 0.5)) - lo) / (hi - lo)


class GatedBlend(BlendAlgorithm):
    """A linear ramp ``r`` modulated per sample by a learned gate ``g(x)`` in (0, 1).

    ``alpha(x) = r + r * (1 - r) * (2 * g(x) - 1)``: it equals ``r`` when the gate is neutral
    (it starts so: zero weights), stays in ``[r**2, r * (2 - r)]``, and is exactly 0 at ``r = 0``
    and exactly 1 at ``r = 1``. Image features (``BCHW``) are pooled per sample; sequence
    features (``BTC``) are gated per position so no token's alpha depends on later tokens; flat
    features (``BC``) are gated per sample.

    Raises:
        ValueError: unknown ``topology`` (the message lists the valid ones).
    """

    algorithm_id = "gated"

    def __init__(self, width: int, topology: str) -> None:
        super().__init__()
        self.topology = topology
        self.layout = get_topology(topology).layout
        self.gate = nn.Linear(width, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def alpha(self, x: torch.Tensor, ramp: torch.Tensor) -> torch.Tensor:
        if self.layout == "BCHW":
            g = torch.sigmoid(self.gate(x.mean(dim=(2, 3))))[:, :, None, None]  # (B, 1, 1, 1)
        else:
            g = torch.sigmoid(self.gate(x))  # (B, T, 1), or (B, 1) for flat features
        return ramp + ramp * (1.0 - ramp) * (2.0 * g - 1.0)


BLEND_ALGORITHMS = ("linear", "sigmoid", "gated")


def build_blend(algorithm_id: str, width: int, topology: str) -> BlendAlgorithm:
    """Create a blend algorithm. Raises ValueError naming the valid ids."""
    if algorithm_id == "linear":
        return LinearBlend()
    if algorithm_id == "sigmoid":
        return SigmoidBlend()
    if algorithm_id == "gated":
        return GatedBlend(width, topology)
    raise ValueError(
        f"unknown blend algorithm {algorithm_id!r}; valid: {', '.join(BLEND_ALGORITHMS)}"
    )

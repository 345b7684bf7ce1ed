"""The governor: catches a collapsing run and rolls it back to the last healthy snapshot."""

from __future__ import annotations

import copy
import math
import statistics
from collections import deque

from esper.kasmina.slot import all_finite
from esper.leyline import (
    DEFAULT_GOVERNOR_HISTORY,
    DEFAULT_GOVERNOR_MIN_HISTORY,
    DEFAULT_GOVERNOR_MIN_SPIKE_FACTOR,
    DEFAULT_GOVERNOR_SENSITIVITY,
    SeedStage,
)


class Governor:
    """Watches the epoch training loss.

    A NaN/Inf loss, or one far above recent history (more than ``sensitivity`` standard
    deviations above the mean *and* more than ``min_spike_factor`` times the mean), is a collapse.
    Snapshots hold the host and fossilized seeds only, and are taken only of healthy states.
    """

    def __init__(
        self,
        history: int = DEFAULT_GOVERNOR_HISTORY,
        sensitivity: float = DEFAULT_GOVERNOR_SENSITIVITY,
        min_spike_factor: float = DEFAULT_GOVERNOR_MIN_SPIKE_FACTOR,
        min_history: int = DEFAULT_GOVERNOR_MIN_HISTORY,
    ) -> None:
        self.losses: deque[float] = deque(maxlen=history)
        self.sensitivity = sensitivity
        self.min_spike_factor = min_spike_factor
        self.min_history = min_history
        self.snapshot: dict | None = None
        self.rollbacks = 0

    def check(self, loss: float) -> str | None:
        """Return why ``loss`` is a collapse, or None (and remember it) when it is healthy."""
        if not math.isfinite(loss):
            return f"non-finite loss {loss}"
        if len(self.losses) >= self.min_history:
            mean = statistics.fmean(self.losses)
            std = statistics.pstdev(self.losses)
            if loss > mean + self.sensitivity * std and loss > self.min_spike_factor * mean:
                return f"loss spike {loss:.4g} vs recent mean {mean:.4g}"
        self.losses.append(loss)
        return None

    def take_snapshot(self, model) -> None:
        """Remember the host's and fossilized seeds' weights (call only on a healthy state)."""
        if not all_finite(model.host_parameters()):
            return
        self.snapshot = {
            "host": copy.deepcopy(model.host_state_dict()),
            # Per slot, every host-side seed, oldest first (stacked fossils, then a FOSSILIZED
            # seed): that order survives stacking, so a restore matches modules by position.
            "fossilized": {
                name: [copy.deepcopy(m.state_dict()) for m in slot.host_side_modules()]
                for name, slot in model.seed_slots.items()
            },
        }

    def rollback(self, model, reason: str = "") -> list[str]:
        """Cull live seeds and restore the snapshot. Returns the culled slots' names."""
        culled = []
        for name, slot in model.seed_slots.items():
            if slot.seed is not None and slot.stage != SeedStage.FOSSILIZED:
                model.cull_seed(slot=name, reason=f"governor rollback: {reason}")
                culled.append(name)
        if self.snapshot is not None:
            model.load_host_state_dict(self.snapshot["host"])
            for name, saved in self.snapshot["fossilized"].items():
                # Seeds fossilized after the snapshot have no saved state and keep their own.
                modules = model.seed_slots[name].host_side_modules()
                for module, sd in zip(modules, saved, strict=False):
                    module.load_state_dict(sd)
        self.rollbacks += 1
        return culled

    def state_dict(self) -> dict:
        """Loss history, the last healthy snapshot and the rollback count (for resume)."""
        return {
            "losses": list(self.losses),
            "snapshot": self.snapshot,
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, state: dict) -> None:
        self.losses = deque(state["losses"], maxlen=self.losses.maxlen)
        self.snapshot = state["snapshot"]
        self.rollbacks = int(state["rollbacks"])

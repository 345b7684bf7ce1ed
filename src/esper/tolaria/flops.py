"""Compute accounting: the floating-point operations a run spends, counted without slowing it.

A model's FLOPs per row of a batch depend only on its structure (what each slot's seeds compute:
shadow pass, blend or fossil, with which blueprint and blend, and whether each seed's input is
detached; see :func:`model_structure`): the
hosts and seeds here are convolutions, linear layers and fixed-length attention, all linear in
the batch size. So the first pass of each structure runs under ``torch.utils.flop_counter``'s
``FlopCounterMode`` (which forwards every op unchanged, so results stay bit-identical) and every
later pass of that structure adds ``flops_per_row * rows``: plain integer arithmetic on the
host, no device sync and no per-step dispatch overhead.

Counted are what ``FlopCounterMode`` counts: matrix products, convolutions and attention, forward
and backward; element-wise work (norms, activations, optimizer updates) is not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator

from torch.utils.flop_counter import FlopCounterMode

from esper.leyline import SeedStage


class FlopMeter:
    """Accumulates the FLOPs of passes over batches, measuring each model structure once.

    Attributes:
        total: FLOPs counted so far (float: a per-row rate times a row count).
    """

    def __init__(self) -> None:
        self.total = 0.0
        self._per_row: dict[Hashable, float] = {}

    @contextlib.contextmanager
    def count(self, structure: Hashable, rows: int) -> Iterator[None]:
        """Count the FLOPs of the pass run inside the block, over a batch of ``rows`` rows.

        Args:
            structure: a key that changes whenever the model's FLOPs per row could change.
            rows: the batch's first dimension.
        """
        per_row = self._per_row.get(structure)
        if per_row is not None:
            self.total += per_row * rows
            yield
            return
        with FlopCounterMode(display=False) as mode:
            yield
        flops = mode.get_total_flops()
        self._per_row[structure] = flops / rows
        self.total += flops

    def knows(self, structure: Hashable) -> bool:
        """Whether ``structure``'s FLOPs per row were measured already (its next pass is not
        counted under ``FlopCounterMode``, so it may run compiled)."""
        return structure in self._per_row

    def state_dict(self) -> dict:
        # The measured rates too: a resumed run then knows the structures it has seen, and
        # (under --compile) runs their next passes compiled, as the uninterrupted run does.
        return {"total": self.total, "rates": [[k, v] for k, v in self._per_row.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.total = float(state["total"])
        self._per_row = {_frozen(k): float(v) for k, v in state.get("rates", [])}


def model_structure(model, *, training: bool, shadows: bool = True) -> tuple:
    """What the FLOPs per row of ``model``'s pass depend on, and nothing else: per slot the
    blueprints of the fossils stacked there and what its current seed computes.

    Stages in which a seed computes nothing share one key: a dormant, germinated, culled,
    embargoed or resetting slot, and a seed in TRAINING in a pass without a shadow pass
    (evaluation, or a training step between two shadow passes). A grown digits run met about 70
    keys a run when each stage had its own, and measuring each one's first pass under
    ``FlopCounterMode`` was 12% of the run's wall time; the totals are the same either way
    (a test counts every pass independently).

    Args:
        model: the morphogenetic model.
        training: a training step (forward and backward) rather than an evaluation pass.
        shadows: the step runs the incubating seeds' shadow passes.
    """
    return (
        training,
        tuple(
            (
                name,
                tuple(blueprint for _, blueprint in slot.fossil_seeds),
                _seed_work(slot, shadow=training and shadows),
            )
            for name, slot in model.seed_slots.items()
        ),
    )


def _seed_work(slot, *, shadow: bool) -> tuple | None:
    """What the slot's current seed computes in a pass (None: nothing). Whether its input is
    detached decides whether the backward goes through it to the host, and a forced alpha (the
    counterfactual) skips a gated blend's gate."""
    stage, seed = slot.stage, slot.seed
    if seed is None:
        return None
    blueprint, isolated = slot.state.blueprint_id, bool(slot.isolate_gradients)
    if stage == SeedStage.TRAINING:
        return ("shadow", blueprint, isolated) if shadow else None
    if stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
        blend = slot.state.blend_algorithm_id if slot.blend is not None else None
        return ("blended", blueprint, blend, isolated, bool(slot._alpha_forced))
    if stage == SeedStage.FOSSILIZED:
        return ("fossilized", blueprint, isolated)
    return None


def _frozen(key):
    """A structure key back from a checkpoint (which may hold its tuples as lists)."""
    return tuple(_frozen(k) for k in key) if isinstance(key, (list, tuple)) else key

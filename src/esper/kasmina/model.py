"""MorphogeneticModel: a built-in host plus one SeedSlot per requested injection point.

The slots sit on the host's modules through the same routes :func:`~esper.kasmina.inject.
inject_slots` installs in any model; the forward is the host's own. What a built-in host adds is
the ability to run from an injection point to the head (``run_blocks``/``head``), so its shadow
pass starts at the incubating slot instead of replaying the layers before it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from esper._atomic import atomic_path
from esper.kasmina.api import MorphogeneticMixin
from esper.kasmina.gates import GateConfig
from esper.kasmina.hosts import build_host
from esper.leyline import (
    DEFAULT_BLENDING_STEPS,
    DEFAULT_EMBARGO_EPOCHS,
    DEFAULT_PROBATION_EPOCHS,
)

#: The format of ``architecture()`` and ``model.pt``: 2 in 0.4.0, the first release (the
#: development versions wrote 1).
CHECKPOINT_FORMAT = 2


class _Downstream(nn.Module):
    """The model from a given slot on, as a module of its own so ``functional_call`` can run it
    on detached parameters. Built per shadow pass, never stored: holding the model as a child
    of something the model holds would be a cycle."""

    def __init__(self, model: MorphogeneticModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, h: torch.Tensor, slot: str) -> torch.Tensor:
        return self.model._run_after(h, slot)


class MorphogeneticModel(MorphogeneticMixin, nn.Module):
    """A host network whose injection points can grow seeds.

    Args:
        host: a host from :mod:`esper.kasmina.hosts` (``CNNHost``, ``TransformerHost``) or any
            module offering the same interface (``injection_points``, ``injection_targets``,
            ``injection_positions``, ``run_blocks``, ``head``).
        device: where the model lives.
        slots: injection points that get a slot, e.g. ``["early", "mid", "late"]``.
        gate_config: gate thresholds (defaults from leyline).
        blending_steps: epochs of the alpha ramp.
        probation_epochs: epochs allowed in PROBATIONARY.
        embargo_epochs: cooldown after a cull.

    With no seeds, the output equals ``host(x)`` exactly.

    Every lifecycle change of every slot is announced as one typed event (``StageChanged``,
    ``GateEvaluated``, ``IsolationViolated`` from :mod:`esper.leyline`) to the listeners given to
    :meth:`subscribe`, in the order the changes happen. Listeners are not part of the model's
    state: not in ``state_dict`` or checkpoints, and a ``copy.deepcopy`` starts without them.

    Raises:
        ValueError: an unknown or repeated slot name (the message lists the host's points).
    """

    def __init__(
        self,
        host: nn.Module,
        device: str | torch.device = "cpu",
        slots: Iterable[str] = ("mid",),
        *,
        gate_config: GateConfig | None = None,
        blending_steps: int = DEFAULT_BLENDING_STEPS,
        probation_epochs: int = DEFAULT_PROBATION_EPOCHS,
        embargo_epochs: int = DEFAULT_EMBARGO_EPOCHS,
    ) -> None:
        super().__init__()
        if isinstance(slots, str):
            slots = [slots]
        slots = list(slots)
        points = host.injection_points
        if not slots:
            raise ValueError(f"at least one slot is required; valid: {', '.join(points)}")
        unknown = [s for s in slots if s not in points]
        if unknown:
            raise ValueError(
                f"unknown slot(s) {', '.join(map(repr, unknown))} for this {host.topology} host; "
                f"valid: {', '.join(points)}"
            )
        if len(set(slots)) != len(slots):
            raise ValueError(f"slots must be unique, got {slots}")
        self.host = host
        self.topology = host.topology
        # Forward order: by position, ties broken by the host's own point order.
        ordered = [name for name in points if name in slots]
        self._positions = {name: host.injection_positions[name] for name in ordered}
        self._install_slots(
            host,
            {name: (points[name], self.topology, host.injection_targets[name]) for name in ordered},
            gate_config,
            {
                "blending_steps": blending_steps,
                "probation_epochs": probation_epochs,
                "embargo_epochs": embargo_epochs,
            },
        )
        self.to(device)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The host with its seeds as their stages say; a seed in TRAINING does not run (see
        :meth:`forward_with_shadows` for the pass that trains it)."""
        return self.host(x)

    def _run_after(self, h: torch.Tensor, name: str) -> torch.Tensor:
        """The network from slot ``name``'s output (``h``) to the head: the slots after it on
        the same host module, then the host's remaining blocks with their slots."""
        position, after = self._positions[name], False
        for other, other_position in self._positions.items():
            if after and other_position == position:
                h = self.seed_slots[other](h)
            after = after or other == name
        return self.host.head(self.host.run_blocks(h, position, self.host.n_blocks))

    def forward_with_shadows(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The output of ``model(x)``, and for every seed in TRAINING its *shadow output*.

        A seed's shadow output is the network's output with that seed blended in at alpha 1 at
        its slot and every other seed as it is, computed with the host's (and every other
        seed's) parameters detached and batch-norm statistics on copies: a loss on it trains
        that seed alone, towards what the model will be once it is blended in, and leaves the
        host's output, gradients and buffers exactly as without the seed. Train on
        ``loss(output) + model.incubation_loss(loss_fn, output, shadows)``.

        Args:
            x: a batch of inputs.

        Returns:
            ``(output, shadows)``: ``shadows`` maps slot names to shadow outputs; it is empty
            when no seed is in TRAINING or gradients are disabled (nothing would learn).
        """
        output, taps = self._tapped_forward(x)
        if not taps or not torch.is_grad_enabled():
            return output, {}
        frozen = self._frozen_tensors(prefix="model.")
        downstream = _Downstream(self)
        # tie_weights=False: ``frozen`` already names every alias of a tied tensor, so
        # functional_call need not walk the module tree again to find them.
        shadows = {
            slot.name: functional_call(
                downstream,
                frozen,
                (slot.shadow_features(at), slot.name),
                strict=False,
                tie_weights=False,
            )
            for slot, at in taps
        }
        return output, shadows

    def host_state_dict(self) -> dict[str, torch.Tensor]:
        # The host module's own keys (no ``host.`` prefix): the form governor snapshots in
        # trainer checkpoints have always had.
        return self.host.state_dict()

    def load_host_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._host_tensors = None
        self.host.load_state_dict(state)

    # ------------------------------------------------------------------ checkpoints

    def architecture(self) -> dict:
        """What the model is made of, as plain data: enough to rebuild it in a fresh process."""
        return {
            "format": CHECKPOINT_FORMAT,
            "host_kind": self.topology,
            "host_config": dict(self.host.config),
            "slots": list(self.seed_slots),
            "slot_settings": dict(self.slot_settings),
            "gate_config": dict(vars(next(iter(self.seed_slots.values())).gates.config)),
        }

    @classmethod
    def from_architecture(
        cls, arch: dict, device: str | torch.device = "cpu"
    ) -> MorphogeneticModel:
        """Rebuild the model :meth:`architecture` describes (no seeds yet: loading the state
        dict puts them in).

        Raises:
            ValueError: an architecture of another format (written by another version).
        """
        if arch.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"model architecture format {arch.get('format')!r} is not {CHECKPOINT_FORMAT}; "
                "it was written by another version of esper"
            )
        host = build_host(arch["host_kind"], arch["host_config"])
        return cls(
            host,
            device=device,
            slots=arch["slots"],
            gate_config=GateConfig(**arch["gate_config"]),
            **arch["slot_settings"],
        )

    def save_checkpoint(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write architecture + weights (seeds described as plain data) atomically to ``path``."""
        payload = {"architecture": self.architecture(), "state_dict": self.state_dict()}
        if extra:
            payload["extra"] = extra
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return Path(path)

    @classmethod
    def load_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device = "cpu"
    ) -> MorphogeneticModel:
        """Rebuild a model (seeds included) from :meth:`save_checkpoint` output, safely."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}")
        payload = torch.load(path, map_location=device, weights_only=True)
        model = cls.from_architecture(payload["architecture"], device=device)
        model.load_state_dict(payload["state_dict"])
        return model

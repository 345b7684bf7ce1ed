"""MorphogeneticModel: a host plus one SeedSlot per requested injection point."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from esper._atomic import atomic_path
from esper.kasmina.events import Listeners
from esper.kasmina.gates import GateConfig, QualityGates
from esper.kasmina.hosts import build_host
from esper.kasmina.lifecycle import SlotStepReport
from esper.kasmina.slot import SeedSlot
from esper.kasmina.telemetry import capture_telemetry
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_BLENDING_STEPS,
    DEFAULT_EMBARGO_EPOCHS,
    DEFAULT_PROBATION_EPOCHS,
    GateResult,
    LifecycleListener,
    SeedStage,
    SeedStateReport,
    affects_output,
)

CHECKPOINT_FORMAT = 1


class _Downstream(nn.Module):
    """The model from a given slot on, as a module of its own so ``functional_call`` can run it
    on detached parameters. Built per shadow pass, never stored: holding the model as a child
    of something the model holds would be a cycle."""

    def __init__(self, model: MorphogeneticModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, h: torch.Tensor, start: int) -> torch.Tensor:
        return self.model._run_from(h, start)


class MorphogeneticModel(nn.Module):
    """A host network whose injection points can grow seeds.

    Args:
        host: a host from :mod:`esper.kasmina.hosts` (``CNNHost``, ``TransformerHost``) or any
            module offering the same segment interface.
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
        self._host_tensors: tuple[list, list] | None = None
        self._listeners = Listeners()
        self.host = host
        self.topology = host.topology
        gates = QualityGates(gate_config)
        self.slot_settings = {
            "blending_steps": blending_steps,
            "probation_epochs": probation_epochs,
            "embargo_epochs": embargo_epochs,
        }
        # Forward order: by position, ties broken by the host's own point order.
        ordered = [name for name in points if name in slots]
        self.seed_slots = nn.ModuleDict(
            {
                name: SeedSlot(name, points[name], self.topology, gates=gates, **self.slot_settings)
                for name in ordered
            }
        )
        self._plan = tuple((name, host.injection_positions[name]) for name in ordered)
        for slot in self.seed_slots.values():
            slot.attach(self)
        self.to(device)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The host with its seeds as their stages say; a seed in TRAINING does not run (see
        :meth:`forward_with_shadows` for the pass that trains it)."""
        return self._run_from(self.host.stem(x), 0)

    def _run_from(self, h: torch.Tensor, start: int, taps: list | None = None) -> torch.Tensor:
        """The network from just before slot ``start`` of the plan to the head's output (``h``
        is the features the blocks before that slot take; 0 starts after the stem). With
        ``taps``, every incubating slot appends ``(index, slot, features after its fossils)``."""
        host = self.host
        done = self._plan[start - 1][1] if start > 0 else 0
        for index, (name, position) in enumerate(self._plan[start:], start):
            h = host.run_blocks(h, done, position)
            done = position
            slot = self.seed_slots[name]
            if taps is None:
                h = slot(h)
                continue
            h = slot.forward_fossils(h)
            if slot.incubating:
                taps.append((index, slot, h))
            h = slot.forward_seed(h)
        return host.head(host.run_blocks(h, done, host.n_blocks))

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
        incubating: list[tuple[int, SeedSlot, torch.Tensor]] = []
        output = self._run_from(self.host.stem(x), 0, taps=incubating)
        if not incubating or not torch.is_grad_enabled():
            return output, {}
        frozen = self._frozen_tensors()
        downstream = _Downstream(self)
        # tie_weights=False: ``frozen`` already names every alias of a tied tensor, so
        # functional_call need not walk the module tree again to find them.
        shadows = {
            slot.name: functional_call(
                downstream,
                frozen,
                (slot.shadow_features(at), index + 1),
                strict=False,
                tie_weights=False,
            )
            for index, slot, at in incubating
        }
        return output, shadows

    def _frozen_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter detached and every buffer copied, by every name it has, for a shadow
        pass. Tied weights (a transformer's head and embedding) appear under each name with one
        detached tensor, so none of them stays live in the pass. A slot's buffers that no
        forward writes (``SeedSlot.FORWARD_READ_ONLY_BUFFERS``) are left out: the pass reads
        the real ones, and copying them every step was a third of the shadow pass's overhead on
        a small CPU model."""
        detached: dict[int, torch.Tensor] = {}
        frozen = {}
        # One walk of the module tree for parameters and buffers alike (named_parameters and
        # named_buffers each walk it again).
        for prefix, module in self.named_modules(remove_duplicate=False):
            base = f"model.{prefix}." if prefix else "model."
            for name, p in module.named_parameters(recurse=False, remove_duplicate=False):
                frozen[base + name] = detached.setdefault(id(p), p.detach())
            skip = module.FORWARD_READ_ONLY_BUFFERS if isinstance(module, SeedSlot) else ()
            for name, b in module.named_buffers(recurse=False, remove_duplicate=False):
                if name not in skip:
                    frozen[base + name] = detached.setdefault(id(b), b.clone())
        return frozen

    def incubation_loss(
        self,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        output: torch.Tensor,
        shadows: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """The loss that trains the seeds in TRAINING: ``loss_fn`` summed over their shadow
        outputs (0 when there are none).

        It also records, per seed and on the device (no synchronisation), the batch's
        *incubation gain* ``loss_fn(output) - loss_fn(shadow)``; ``step_epoch`` averages an
        epoch of them into the seed's ``incubation_gain``, which G2 and G5 read.

        Args:
            loss_fn: maps a network output to a scalar loss (e.g. ``lambda out: F.cross_entropy(
                out, y)``); called once on ``output`` (without gradient) and once per shadow.
            output: the first result of :meth:`forward_with_shadows` for the same batch.
            shadows: its second result.

        Raises:
            ValueError: a shadow names a slot that is not incubating.
        """
        total = torch.zeros((), device=output.device, dtype=torch.float32)
        if not shadows:
            return total
        with torch.no_grad():
            baseline = loss_fn(output.detach()).float()
        for name, shadow in shadows.items():
            slot = self._slot(name)
            if not slot.incubating:
                raise ValueError(
                    f"slot {name!r} is {slot.stage.name}; only a seed in TRAINING has a shadow"
                )
            loss = loss_fn(shadow)
            slot._add_incubation_gain(baseline - loss.detach().float())
            total = total + loss
        return total

    # ------------------------------------------------------------------ events

    def subscribe(self, listener: LifecycleListener) -> LifecycleListener:
        """Call ``listener(event)`` for every lifecycle event of every slot.

        Events arrive as they happen, in a deterministic order (within one ``step_epoch`` or
        capture: slot by slot, in forward order). A listener that raises stops the operation
        that emitted the event.

        Args:
            listener: any callable taking one event; subscribing it twice changes nothing.

        Returns:
            ``listener``, so this works as a decorator.

        Raises:
            TypeError: ``listener`` is not callable.
        """
        return self._listeners.subscribe(listener)

    def unsubscribe(self, listener: LifecycleListener) -> None:
        """Stop calling ``listener``.

        Raises:
            ValueError: ``listener`` is not subscribed to this model.
        """
        self._listeners.unsubscribe(listener)

    # ------------------------------------------------------------------ lifecycle

    def _slot(self, slot: str) -> SeedSlot:
        if slot not in self.seed_slots:
            raise ValueError(
                f"unknown slot {slot!r}; this model's slots: {', '.join(self.seed_slots)}"
            )
        return self.seed_slots[slot]

    def germinate_seed(
        self,
        blueprint_id: str,
        seed_id: str,
        *,
        slot: str,
        blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM,
    ) -> GateResult:
        """Grow a seed of ``blueprint_id`` in ``slot``; see :meth:`SeedSlot.germinate`."""
        return self._slot(slot).germinate(
            blueprint_id, seed_id, blend_algorithm_id=blend_algorithm_id
        )

    def cull_seed(self, *, slot: str, reason: str = "") -> None:
        """Remove the seed in ``slot``; see :meth:`SeedSlot.cull`.

        Args:
            slot: the slot's name.
            reason: why, in words; carried by the ``StageChanged`` event.

        Raises:
            ValueError: unknown slot.
            IllegalTransitionError: nothing to cull, or the seed is FOSSILIZED.
        """
        self._slot(slot).cull(reason=reason)

    def fossilize_seed(self, *, slot: str) -> GateResult:
        """Fossilize the seed in ``slot`` through G5.

        Raises:
            GateFailedError: G5 refused; the message lists the failed checks.
        """
        return self._slot(slot).fossilize()

    def advance_stage(self, target: SeedStage, *, slot: str) -> GateResult:
        return self._slot(slot).advance_stage(target)

    def step_epoch(self) -> dict[str, SlotStepReport]:
        """Advance every slot's mechanical lifecycle by one epoch."""
        return {name: slot.step_epoch() for name, slot in self.seed_slots.items()}

    def record_validation(self, accuracy: float) -> list[str]:
        """Record this epoch's validation accuracy into every slot that holds a seed.

        Args:
            accuracy: validation accuracy in percent.

        Returns:
            The slots that recorded it, in forward order.

        Raises:
            TypeError, ValueError: ``accuracy`` is not a finite number.
        """
        return [name for name, s in self.seed_slots.items() if s.record_validation(accuracy)]

    def record_counterfactual(self, slot: str, contribution: float) -> None:
        """Record the measured contribution (points) of the seed in ``slot``; see
        :meth:`SeedSlot.record_counterfactual`.

        Raises:
            ValueError: unknown slot, a slot without a seed, or a non-finite contribution.
        """
        self._slot(slot).record_counterfactual(contribution)

    def capture_gradient_telemetry(self) -> None:
        """Capture gradient telemetry on every slot holding a seed (call after backward).

        The host's gradient norm is computed once and every slot's numbers come back to the
        host in a single synchronisation.
        """
        capture_telemetry(self.seed_slots.values(), list(self.host_parameters()))

    def host_tensor_ptrs(self) -> frozenset[int]:
        """Storage addresses of the host's parameters and buffers, for the structural check that
        no seed shares a tensor with the host."""
        params, buffers = self._host_own_tensors()
        return frozenset(t.data_ptr() for t in (*params, *buffers) if t.numel())

    def _host_own_tensors(self) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
        # Cached: walking the module tree at every telemetry capture cost more than the rest of
        # the capture. Dropped wherever tensors may be replaced: .to()/.cuda(), load_state_dict.
        if self._host_tensors is None:
            self._host_tensors = (list(self.host.parameters()), list(self.host.buffers()))
        return self._host_tensors

    def _apply(self, fn, *args, **kwargs):
        self._host_tensors = None
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._host_tensors = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @contextlib.contextmanager
    def force_alpha(self, value: float, slots: Iterable[str] | None = None) -> Iterator[None]:
        """Blend every (or the named) seed that affects the output with a fixed alpha."""
        names = list(slots) if slots is not None else list(self.seed_slots)
        with contextlib.ExitStack() as stack:
            for name in names:
                slot = self._slot(name)
                if slot.seed is not None and slot.stage in (
                    SeedStage.BLENDING,
                    SeedStage.PROBATIONARY,
                ):
                    stack.enter_context(slot.force_alpha(value))
            yield

    # ------------------------------------------------------------------ accessors

    def host_parameters(self) -> Iterator[nn.Parameter]:
        """The host's parameters, including those of fossilized seeds (now part of the host),
        stacked ones included."""
        yield from self._host_own_tensors()[0]
        for slot in self.seed_slots.values():
            for module in slot.host_side_modules():
                yield from module.parameters()

    def seed_parameters(self, slot: str | None = None) -> list[nn.Parameter]:
        """Parameters of live (not fossilized) seeds and their blend gates, for one slot or all."""
        names = [slot] if slot is not None else list(self.seed_slots)
        params: list[nn.Parameter] = []
        for name in names:
            s = self._slot(name)
            if s.stage != SeedStage.FOSSILIZED:
                params.extend(s.seed_parameters())
        return params

    def active_seed_slots(self) -> list[str]:
        """Slots whose seed currently affects the output (BLENDING, PROBATIONARY, FOSSILIZED)."""
        return [
            n for n, s in self.seed_slots.items() if s.seed is not None and affects_output(s.stage)
        ]

    def slot_reports(self) -> list[SeedStateReport]:
        return [slot.report() for slot in self.seed_slots.values()]

    def count_parameters(self) -> dict[str, int]:
        """``{"host": ..., "seeds": ..., "total": ...}`` (fossilized seeds count as host)."""
        host = sum(p.numel() for p in self.host_parameters())
        seeds = sum(p.numel() for p in self.seed_parameters())
        return {"host": host, "seeds": seeds, "total": host + seeds}

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

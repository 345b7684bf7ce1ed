"""The model API every morphogenetic model shares: lifecycle calls, events, telemetry, the
incubation loss and parameter accounting, over the model's ``seed_slots``.

Two kinds of model use it: :class:`~esper.kasmina.model.MorphogeneticModel` (a built-in host
run in segments) and any ``nn.Module`` given slots by :func:`~esper.kasmina.inject.inject_slots`.
What differs between them is only how the forward reaches the slots and how the shadow pass
runs the network after one; everything here reads ``self.seed_slots`` and nothing else of the
model's structure. Host tensors are everything not under ``seed_slots``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from esper.kasmina.events import Listeners
from esper.kasmina.gates import GateConfig, QualityGates
from esper.kasmina.lifecycle import SlotStepReport
from esper.kasmina.routes import BYPASS, RoutedAs, RouteTap, install_routes
from esper.kasmina.slot import SeedSlot
from esper.kasmina.telemetry import capture_telemetry
from esper.kasmina.tensors import module_tensors
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_INIT_SCALE,
    GateResult,
    LifecycleListener,
    SeedStage,
    SeedStateReport,
    affects_output,
)

#: Where every model keeps its slots; parameters under it are seeds' (or fossils').
SLOTS_ATTRIBUTE = "seed_slots"
_SLOTS_PREFIX = SLOTS_ATTRIBUTE + "."


class SlotDict(nn.ModuleDict):
    """The model's slots by name, in forward order. A slot may be named after a dotted module
    path (``body.0``), which ``nn.Module`` refuses as a child name: the key it is registered
    under has ``/`` for ``.``, and every lookup and iteration here speaks the real name."""

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "/")

    def __getitem__(self, name: str) -> SeedSlot:
        return self._modules[self._key(name)]

    def __setitem__(self, name: str, slot: nn.Module) -> None:
        self.add_module(self._key(name), slot)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:
        return [slot.name for slot in self._modules.values()]

    def items(self) -> list[tuple[str, SeedSlot]]:
        return [(slot.name, slot) for slot in self._modules.values()]

    def forward(self, x, *args, **kwargs):
        """The identity: the slots run from their routes, never from here. A model whose own
        forward calls each of its children in turn (``for m in self.children(): x = m(x)``)
        meets this container among them, and passes through it unchanged."""
        return x


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    """``t.float()``, without the dispatch when it is float32 already (every training step
    converts a loss per incubating seed)."""
    return t if t.dtype == torch.float32 else t.float()


class MorphogeneticMixin:
    """The lifecycle, event, telemetry and accounting API of a model with ``seed_slots``.

    A class using it calls :meth:`_install_slots` once its host modules are in place.
    """

    def _install_slots(
        self,
        root: nn.Module,
        slots: dict[str, tuple[int, str, str]],
        gate_config: GateConfig | None,
        settings: dict[str, int],
    ) -> None:
        """Create the model's slots and route them onto ``root``'s modules.

        Args:
            root: the module whose submodules the targets name (the host, or the model itself).
            slots: ``{slot name: (width, topology, target module name)}`` in forward order.
            gate_config: the gates every slot shares (leyline's defaults when None).
            settings: the slots' ``blending_steps``, ``probation_epochs``, ``embargo_epochs``.
        """
        gates = QualityGates(gate_config)
        self._host_tensors = None
        self._pending_telemetry = None  # a capture made with wait=False, not yet folded
        self._listeners = Listeners()
        self._route_mode = None
        self.slot_settings = dict(settings)
        self.seed_slots = SlotDict(
            {
                name: SeedSlot(name, width, topology, gates=gates, **settings)
                for name, (width, topology, _) in slots.items()
            }
        )
        install_routes(self, root, {name: target for name, (_, _, target) in slots.items()})

    def _frozen_tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every parameter detached and every buffer copied, by every name it has, for a shadow
        pass. Tied weights (a transformer's head and embedding) appear under each name with one
        detached tensor, so none of them stays live in the pass. A slot's buffers that no
        forward writes (``SeedSlot.buffers_forward_leaves_alone``) are left out: the pass reads
        the real ones, and copying them every step was a third of the shadow pass's overhead on
        a small CPU model."""
        detached: dict[int, torch.Tensor] = {}
        frozen = {}
        # One walk of the tree for parameters and buffers alike, reading each module's own
        # tables: what named_modules and named_parameters/named_buffers(recurse=False) yield
        # (every path to a shared module, None entries left out), at half the Python cost,
        # which on a small model was 1.4% of a training step. Read every step, so a tensor
        # assigned by hand is seen at once.
        stack = [(prefix, self)]
        while stack:
            base, module = stack.pop()
            for key, p in module._parameters.items():
                if p is not None:
                    frozen[base + key] = detached.setdefault(id(p), p.detach())
            skip = module.buffers_forward_leaves_alone() if isinstance(module, SeedSlot) else ()
            for key, b in module._buffers.items():
                if b is not None and key not in skip:
                    frozen[base + key] = detached.setdefault(id(b), b.clone())
            stack.extend(
                (f"{base}{key}.", child)
                for key, child in module._modules.items()
                if child is not None
            )
        return frozen

    def incubation_loss(
        self,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        output: torch.Tensor,
        shadows: dict[str, torch.Tensor],
        *,
        baseline: torch.Tensor | None = None,
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
            baseline: ``loss_fn(output)`` when the caller has it already (the training loss):
                used, detached, instead of computing it again (for a language model's
                vocabulary-wide cross-entropy that is a whole pass of the loss).

        Raises:
            ValueError: a shadow names a slot that is not incubating.
        """
        if not shadows:
            device = output.device if isinstance(output, torch.Tensor) else self._device()
            return torch.zeros((), device=device, dtype=torch.float32)
        total = None
        if baseline is None:
            with torch.no_grad():  # the output may be any structure the loss reads
                baseline = loss_fn(output)
        baseline = _as_float32(baseline.detach())
        for name, shadow in shadows.items():
            slot = self._slot(name)
            if not slot.incubating:
                raise ValueError(
                    f"slot {name!r} is {slot.stage.name}; only a seed in TRAINING has a shadow"
                )
            loss = loss_fn(shadow)
            slot._add_incubation_gain(baseline - _as_float32(loss.detach()))
            total = loss if total is None else total + loss
        return total

    def _device(self) -> torch.device:
        return next(iter(self.seed_slots.values())).alpha_tensor.device

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

    def set_seed_init(self, mode: str, *, scale: float = DEFAULT_INIT_SCALE) -> None:
        """How every slot's next seeds start: ``"zero"`` (the identity) or ``"computed"``
        (the output layer solved from the slot's recent features and loss gradients, so the
        seed lowers the loss from its first step; :mod:`esper.kasmina.computed_init`).

        A computed start needs those features: from now on, the real pass of
        :meth:`forward_with_shadows` keeps a few rows of each open slot's output and their
        gradient for the last few training batches. A plain ``model(x)`` keeps none; a seed
        germinated without any starts at zero. Blueprints without a linear or convolutional
        output layer (``norm``, the CNN ``attention``, ``noop``) always start as built.

        Raises:
            ValueError: an unknown mode (the message lists the valid ones) or a scale <= 0.
        """
        for slot in self.seed_slots.values():
            slot.set_seed_init(mode, scale=scale)

    def reset_init_memory(self) -> None:
        """Forget the features every slot keeps for a computed initialisation (the trainer
        does this at the start of each epoch)."""
        for slot in self.seed_slots.values():
            if slot.init_memory is not None:
                slot.init_memory.clear()

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
        """Advance every slot's mechanical lifecycle by one epoch (each slot's step first folds
        a capture still on its way: the gates read its numbers)."""
        return {name: slot.step_epoch() for name, slot in self.seed_slots.items()}

    def record_validation(self, quality: float) -> list[str]:
        """Record this epoch's validation quality into every slot that holds a seed.

        Args:
            quality: the validation quality in the gates' unit (``GateConfig.unit``): accuracy
                in points, or the negative validation loss for a loss-unit task.

        Returns:
            The slots that recorded it, in forward order.

        Raises:
            TypeError, ValueError: ``quality`` is not a finite number.
        """
        return [name for name, s in self.seed_slots.items() if s.record_validation(quality)]

    def record_counterfactual(self, slot: str, contribution: float) -> None:
        """Record the measured contribution (in the gates' unit) of the seed in ``slot``; see
        :meth:`SeedSlot.record_counterfactual`.

        Raises:
            ValueError: unknown slot, a slot without a seed, or a non-finite contribution.
        """
        self._slot(slot).record_counterfactual(contribution)

    def capture_gradient_telemetry(self, *, wait: bool = True) -> None:
        """Capture gradient telemetry on every slot holding a seed (call after backward).

        The host's gradient norm is computed once and every slot's numbers come back to the
        host in a single readback.

        Args:
            wait: True: the metrics are updated (and ``IsolationViolated`` announced) before
                this returns, at the cost of one host/device synchronisation, which on a GPU
                waits for the backward to finish. False: the readback is queued behind the step
                and folded by the next capture, :meth:`flush_telemetry`, :meth:`step_epoch` or
                :meth:`slot_reports`, whichever comes first, into the metrics of the seeds it
                measured; the numbers are the same. The trainer captures so.
        """
        self.flush_telemetry()
        params, n_host = self._host_parameter_list()
        pending = capture_telemetry(self.seed_slots.values(), params, n_host=n_host, wait=wait)
        if pending is not None:
            # Past nn.Module.__setattr__ (a plain attribute; its checks cost per capture).
            self.__dict__["_pending_telemetry"] = pending

    def flush_telemetry(self) -> None:
        """Fold a capture made with ``wait=False`` into the metrics now (nothing if none is
        pending)."""
        pending = self.__dict__.get("_pending_telemetry")
        if pending is not None:
            self.__dict__["_pending_telemetry"] = None
            pending.fold()

    def host_tensor_ptrs(self) -> frozenset[int]:
        """Storage addresses of the host's parameters and buffers, for the structural check that
        no seed shares a tensor with the host."""
        tensors = self._host_own_tensors()
        # Cached with the tensor lists (one walk per capture for every slot was a tenth of a
        # capture). The first tensor and its address guard against a copy of the model
        # carrying its original's addresses: copy.deepcopy maps the lists and the tensor, not
        # the integers, so the copy's tensor is found at another address.
        cached = self.__dict__.get("_host_ptrs")
        if (
            cached is None
            or cached[0] is not tensors
            or (cached[1] is not None and cached[1].data_ptr() != cached[2])
        ):
            params, buffers = tensors
            live = [t for t in (*params, *buffers) if t.numel()]
            first = live[0] if live else None
            ptrs = frozenset(t.data_ptr() for t in live)
            cached = (tensors, first, None if first is None else first.data_ptr(), ptrs)
            self.__dict__["_host_ptrs"] = cached
        return cached[3]

    def _host_own_tensors(self) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
        """Every parameter and buffer that is not under ``seed_slots``: the host's own."""
        # Cached: walking the module tree at every telemetry capture cost more than the rest of
        # the capture. Dropped wherever tensors may be replaced: .to()/.cuda(), load_state_dict.
        if self._host_tensors is None:
            self._host_tensors = (
                [p for n, p in self.named_parameters() if not n.startswith(_SLOTS_PREFIX)],
                [b for n, b in self.named_buffers() if not n.startswith(_SLOTS_PREFIX)],
            )
        return self._host_tensors

    def _apply(self, fn, *args, **kwargs):
        self._host_tensors = None
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._host_tensors = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _routed(self, mode) -> RoutedAs:
        """Inside the block the slot routes work in ``mode`` (see :mod:`esper.kasmina.routes`);
        the mode before it comes back when the block exits."""
        return RoutedAs(self, mode)

    def _tapped_forward(self, *args, **kwargs) -> tuple[object, list]:
        """``self(*args, **kwargs)`` with every incubating slot recording the features it saw:
        ``(output, [(slot, features after its fossils), ...])`` in forward order, the real
        pass of a shadow pass."""
        tap = RouteTap()
        with RoutedAs(self, tap):
            output = self(*args, **kwargs)
        return output, tap.taps

    def disable_slots(self) -> contextlib.AbstractContextManager[None]:
        """Run the host alone: inside the block every slot passes its features through, so the
        output is the host's without any seed, fossils included (like PEFT's
        ``disable_adapter``). Nothing is changed when the block exits."""
        return self._routed(BYPASS)

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

    def host_state_dict(self) -> dict[str, torch.Tensor]:
        """The host's own entries of ``state_dict`` (nothing under ``seed_slots``): what a
        rollback restores besides the fossils."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(_SLOTS_PREFIX)}

    def load_host_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`host_state_dict` output; every host entry must be there.

        Raises:
            RuntimeError: a host entry is missing or an entry is not the host's.
        """
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(_SLOTS_PREFIX)]
        if missing or unexpected:
            raise RuntimeError(
                f"host state does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def host_parameters(self) -> Iterator[nn.Parameter]:
        """The host's parameters, including those of fossilized seeds (now part of the host),
        stacked ones included."""
        yield from self._host_parameter_list()[0]

    def _host_parameter_list(self) -> tuple[list[nn.Parameter], int]:
        """:meth:`host_parameters` as a list, with their element count. The host's own part and
        its count are cached with the host's tensor lists; fossils (rare) are walked each time.
        Every telemetry capture asks, and a generator and a count per capture were a sixth of
        one."""
        own = self._host_own_tensors()[0]
        cached = self.__dict__.get("_host_numel")
        if cached is None or cached[0] is not own:
            self.__dict__["_host_numel"] = cached = (own, sum(p.numel() for p in own))
        fossils = [
            p
            for slot in self.seed_slots.values()
            for module in slot.host_side_modules()
            for p in module_tensors(module)[0]
        ]
        if not fossils:
            return own, cached[1]
        return own + fossils, cached[1] + sum(p.numel() for p in fossils)

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
        self.flush_telemetry()
        return [slot.report() for slot in self.seed_slots.values()]

    def count_parameters(self) -> dict[str, int]:
        """``{"host": ..., "seeds": ..., "total": ...}`` (fossilized seeds count as host)."""
        host = self._host_parameter_list()[1]
        seeds = sum(p.numel() for p in self.seed_parameters())
        return {"host": host, "seeds": seeds, "total": host + seeds}

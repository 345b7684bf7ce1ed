"""Gradient telemetry of a slot: measured on the device, read back once per capture.

``SlotTelemetry`` is a part of :class:`~esper.kasmina.slot.SeedSlot` (a mixin). A capture has
two halves so that many slots share one host/device synchronisation:

* ``telemetry_probe`` queues the device-side numbers (seed gradient norm, seed-path gradient
  energy that reached the host since the last capture, alpha actually used) without a sync, and
  counts on the host side, from storage addresses, the tensors the seed shares with the host;
* ``fold_telemetry`` turns the materialized numbers into the seed's metrics and announces an
  ``IsolationViolated`` when the capture counted one.

:func:`capture_telemetry` runs both for a set of slots.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from esper.kasmina.blending import GatedBlend
from esper.kasmina.distributed import sum_over_ranks, world_size
from esper.kasmina.tensors import fold_grad_norms, queue_grad_norms
from esper.leyline import IsolationViolated, SeedStage, is_active_stage

if TYPE_CHECKING:
    from esper.kasmina.slot import SeedSlot


@dataclass
class _TelemetryProbe:
    """One slot's measurements for one capture, waiting to be read back with the others.

    Attributes:
        tensors: 0-dim device tensors: the slot's leaked-gradient accumulator (reset by
            :func:`capture_telemetry` once read), alpha used. The seed's gradient norm is
            computed with the other slots', by :func:`capture_telemetry`.
        seed_params: the parameters the seed norm covers.
        shared_tensors: how many of the seed's parameters and buffers are the host's own, when
            isolation is required (0 otherwise). A host-side count: no sync.
    """

    tensors: list[torch.Tensor]
    seed_params: list[nn.Parameter]
    shared_tensors: int = 0


class SlotTelemetry:
    """The telemetry half of a :class:`~esper.kasmina.slot.SeedSlot`."""

    def capture_gradient_telemetry(self) -> None:
        """Fold the gradients of the last backward(s) into the seed's metrics.

        Updates seed and host gradient norms, the parameter-normalized gradient ratio
        ``(seed_norm / host_norm) * sqrt(host_params / seed_params)`` (EMA), and
        ``isolation_violations``: +1 when, while isolation is required, gradient really flowed
        from the seed back into the host since the last capture (through the seed's input), or
        the seed shares a parameter or buffer with the host (a structural leak, counted whether
        or not a gradient used it yet). Ordinary host gradients on the direct path never count.
        One host/device synchronisation per call; none per training step.
        (``MorphogeneticModel.capture_gradient_telemetry`` does every slot with one sync.)
        """
        owner = self._owner[0]
        capture_telemetry([self], list(owner.host_parameters()) if owner is not None else [])

    def telemetry_probe(self) -> _TelemetryProbe | None:
        """Queue this capture's device-side measurements (no sync).

        Returns:
            The probe, or None when the slot holds no live seed.
        """
        if self.seed is None or not is_active_stage(self.state.stage):
            return None
        seed_params, buffers = self._live_seed_tensors()
        # The leak accumulator itself: capture_telemetry copies it into its stack and then
        # resets every slot's at once (a clone and a zero per slot cost more than the rest).
        leak = self._leak_sq
        alpha_used = self._alpha_used if isinstance(self.blend, GatedBlend) else self.alpha_tensor
        shared = (
            len(self._tensors_shared_with_host(self.seed, seed_params, buffers))
            if self.isolation_required
            else 0
        )
        return _TelemetryProbe([leak, alpha_used.float()], seed_params, shared)

    def fold_telemetry(
        self, probe: _TelemetryProbe, host_norm: float, values: list[float], n_host: int
    ) -> None:
        """Update the metrics from one capture's materialized numbers.

        Args:
            probe: what :meth:`telemetry_probe` returned.
            host_norm: the host's gradient norm.
            values: the seed's gradient norm, then ``probe.tensors``, as Python floats.
            n_host: the host's parameter count.
        """
        self._announce_forced()
        seed_norm, leak, alpha = values
        m = self.state.metrics
        m.seed_gradient_norm = seed_norm
        m.host_gradient_norm = host_norm
        m.gradient_captures += 1
        if self.state.stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
            m.current_alpha = alpha
        violated = leak > 0 or probe.shared_tensors > 0
        if violated:
            m.isolation_violations += 1
        if not (math.isfinite(seed_norm) and math.isfinite(leak)):
            m.healthy = False
        else:
            n_seed = sum(p.numel() for p in probe.seed_params)
            if n_seed == 0 or host_norm <= 0.0:
                ratio = 0.0
            else:
                ratio = (seed_norm / host_norm) * math.sqrt(n_host / n_seed)
            if m.gradient_captures == 1:
                m.gradient_ratio = ratio
            else:
                decay = self.gradient_ema_decay
                m.gradient_ratio = decay * m.gradient_ratio + (1.0 - decay) * ratio
        if violated:
            self._emit(IsolationViolated(self.name, self.state.seed_id, m.isolation_violations))


def capture_telemetry(
    slots: Iterable[SeedSlot], host_params: list[nn.Parameter], n_host: int | None = None
) -> None:
    """One gradient-telemetry capture for ``slots``.

    The host's gradient norm is computed once, and every slot's numbers come back to the host
    in a single synchronisation. Slots are folded in the order given, so their events are too.

    Args:
        slots: the slots to capture (those without a live seed are skipped).
        host_params: the host's parameters (fossilized seeds included), for the host norm.
        n_host: their element count, when the caller has it.
    """
    probes = [(slot, slot.telemetry_probe()) for slot in slots]
    probes = [(slot, probe) for slot, probe in probes if probe is not None]
    if not probes:
        return
    device = probes[0][0].alpha_tensor.device
    norms, bounds = queue_grad_norms([host_params, *(p.seed_params for _, p in probes)])
    # One readback for everything: every gradient's norm, then per probe (leak, alpha).
    parts = [*norms, *(t for _, p in probes for t in p.tensors)]
    if any(t.dtype != torch.float32 or t.device != device for t in parts):
        parts = [t.to(device, torch.float32) for t in parts]
    values = torch.stack(parts)
    # Read (stacked, a copy) above: the leak energy since the last capture starts again at 0.
    torch._foreach_zero_([slot._leak_sq for slot, _ in probes])
    world = world_size()
    if world > 1:
        # Gradients are all-reduced, so the norms agree; leaks and a gated alpha are rank-local.
        # One collective: leaks are summed (a leak on any rank is a violation on every rank),
        # everything else averaged, so every rank folds the same numbers.
        leaks = torch.zeros_like(values, dtype=torch.bool)
        leaks[len(norms) :: 2] = True  # each probe is (leak, alpha), after the norms
        values = sum_over_ranks(values)
        values = torch.where(leaks, values, values / world)
    values = values.tolist()
    host_norm, *seed_norms = fold_grad_norms(values[: len(norms)], bounds)
    if n_host is None:
        n_host = sum(p.numel() for p in host_params)
    start = len(norms)
    for (slot, probe), seed_norm in zip(probes, seed_norms, strict=True):
        end = start + len(probe.tensors)
        slot.fold_telemetry(probe, host_norm, [seed_norm, *values[start:end]], n_host)
        start = end

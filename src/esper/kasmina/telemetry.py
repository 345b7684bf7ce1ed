"""Gradient telemetry of a slot: measured on the device, read back once per capture. What
counts as an isolation violation is the contract in docs/design.md, "The gradient-isolation
contract".

``SlotTelemetry`` is a part of :class:`~esper.kasmina.slot.SeedSlot` (a mixin). A capture has
two halves so that many slots share one host/device synchronisation:

* ``telemetry_probe`` names the device-side numbers to read (the seed-path gradient energy
  that reached the host since the last capture, only if a leak hook fired; a gated blend's
  alpha actually used; a schedule's alpha is known on the host) without a sync, and counts on
  the host side, from storage addresses, the tensors the seed shares with the host;
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
    from esper.kasmina.state import SeedState


@dataclass
class _TelemetryProbe:
    """One slot's measurements for one capture, waiting to be read back with the others.

    Attributes:
        seed_params: the parameters the seed norm (computed with the other slots' by
            :func:`capture_telemetry`) covers.
        leak: the slot's leaked-gradient accumulator (reset by :func:`capture_telemetry` once
            read), or None when nothing can be in it: no leak hook fired since the last capture.
        alpha: the alpha used: a 0-dim device tensor for a gated blend (its forward measures
            it), else a Python float (a schedule's alpha is known on the host).
        shared_tensors: how many of the seed's parameters and buffers are the host's own, when
            isolation is required (0 otherwise). A host-side count: no sync.
        state: the seed's state when the probe was taken: a capture folded later (see
            :class:`PendingCapture`) updates that seed's metrics, whatever the slot holds by then.
    """

    seed_params: list[nn.Parameter]
    leak: torch.Tensor | None
    alpha: torch.Tensor | float
    state: SeedState
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
        self._flush_owner_telemetry()  # an earlier capture of the model's folds first
        owner = self._owner[0]
        capture_telemetry([self], list(owner.host_parameters()) if owner is not None else [])

    def _flush_owner_telemetry(self) -> None:
        """Fold a capture of the owning model still on its way (``wait=False``), if any."""
        flush = getattr(self._owner[0], "flush_telemetry", None)
        if flush is not None:
            flush()

    def telemetry_probe(self, *, read_leak: bool = False) -> _TelemetryProbe | None:
        """Queue this capture's device-side measurements (no sync).

        Args:
            read_leak: read the leak accumulator even if no leak hook fired since the last
                capture (every rank of a process group must read the same numbers).

        Returns:
            The probe, or None when the slot holds no live seed.
        """
        if self.seed is None or not is_active_stage(self.state.stage):
            return None
        seed_params, buffers = self._live_seed_tensors()
        # The accumulator itself: capture_telemetry copies it into its readback and then
        # resets every slot's at once. Only a hook adds to it, so until one fires it holds 0.
        leak = self._leak_sq if read_leak or self._leak_seen else None
        if isinstance(self.blend, GatedBlend):
            alpha = self._alpha_used
        else:
            # What the forward multiplies by: the schedule's alpha as the buffer holds it,
            # known here without reading the device.
            alpha = self._alpha_weight(self.alpha_tensor.dtype)
        shared = (
            len(self._tensors_shared_with_host(self.seed, seed_params, buffers))
            if self.isolation_required
            else 0
        )
        return _TelemetryProbe(seed_params, leak, alpha, self.state, shared)

    def fold_telemetry(
        self,
        probe: _TelemetryProbe,
        host_norm: float,
        seed_norm: float,
        leak: float,
        alpha: float,
        n_host: int,
    ) -> None:
        """Update the metrics from one capture's materialized numbers.

        Args:
            probe: what :meth:`telemetry_probe` returned.
            host_norm: the host's gradient norm.
            seed_norm: the seed's gradient norm.
            leak: the seed-path gradient energy that reached the host (0 when not read).
            alpha: the alpha used.
            n_host: the host's parameter count.
        """
        self._announce_forced()
        state = probe.state  # the measured seed's, even if the slot holds another by now
        m = state.metrics
        m.seed_gradient_norm = seed_norm
        m.host_gradient_norm = host_norm
        m.gradient_captures += 1
        if state.stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
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
            self._emit(IsolationViolated(self.name, state.seed_id, m.isolation_violations))


class PendingCapture:
    """A capture whose numbers are on their way to the host: :meth:`fold` puts them into the
    seeds' metrics. On CUDA the copy runs behind the step (a pinned buffer and an event), so
    the capture does not wait for the backward to finish.

    A deep copy of a model does not take its pending capture along (the original folds it).

    Args:
        values: the capture's numbers on the device: every gradient's norm, then per probe its
            leak and gated alpha where it reads them.
        probes: ``(slot, probe)`` pairs, in the order they fold.
        bounds: per group (the host, then each probe's seed), its norms' span in ``values``.
        n_host: the host's parameter count.
        n_norms: how many of ``values`` are norms.
        behind: on CUDA, start the copy to the host now without waiting for it.
    """

    def __init__(
        self,
        values: torch.Tensor,
        probes: list[tuple[SeedSlot, _TelemetryProbe]],
        bounds: list[tuple[int, int]],
        n_host: int,
        n_norms: int,
        *,
        behind: bool = True,
    ) -> None:
        self.ready = None
        if behind and values.device.type == "cuda":
            # The copy runs on the source device's current stream: the event goes there too.
            stream = torch.cuda.current_stream(values.device)
            values = values.to("cpu", non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record(stream)
        self.values, self.probes, self.bounds = values, probes, bounds
        self.n_host, self.n_norms = n_host, n_norms

    def __deepcopy__(self, memo) -> None:
        return None

    def fold(self) -> None:
        """Wait for the numbers (long there, usually, by the next capture) and fold them."""
        if self.ready is not None:
            self.ready.synchronize()
        values = self.values.tolist()
        host_norm, *seed_norms = fold_grad_norms(values[: self.n_norms], self.bounds)
        read = iter(values[self.n_norms :])
        for (slot, probe), seed_norm in zip(self.probes, seed_norms, strict=True):
            leak = next(read) if probe.leak is not None else 0.0
            alpha = next(read) if isinstance(probe.alpha, torch.Tensor) else probe.alpha
            slot.fold_telemetry(probe, host_norm, seed_norm, leak, alpha, self.n_host)


def capture_telemetry(
    slots: Iterable[SeedSlot],
    host_params: list[nn.Parameter],
    n_host: int | None = None,
    *,
    wait: bool = True,
) -> PendingCapture | None:
    """One gradient-telemetry capture for ``slots``.

    The host's gradient norm is computed once, and every slot's numbers come back to the host
    in a single readback. Slots are folded in the order given, so their events are too.

    Args:
        slots: the slots to capture (those without a live seed are skipped).
        host_params: the host's parameters (fossilized seeds included), for the host norm.
        n_host: their element count, when the caller has it.
        wait: fold the numbers into the metrics now (one host/device synchronisation). False:
            queue their readback and return it, to be folded later.

    Returns:
        With ``wait=False``, the :class:`PendingCapture` (None when no slot holds a live seed);
        else None.
    """
    world = world_size()
    # Under a process group every rank reads the same layout (one collective sums them all).
    probes = [(slot, slot.telemetry_probe(read_leak=world > 1)) for slot in slots]
    probes = [(slot, probe) for slot, probe in probes if probe is not None]
    if not probes:
        return None
    device = probes[0][0].alpha_tensor.device
    norms, bounds = queue_grad_norms([host_params, *(p.seed_params for _, p in probes)])
    # One readback for everything: every gradient's norm, then what each probe reads on the
    # device (its leak, a gated alpha).
    parts, is_leak = list(norms), []
    for _, probe in probes:
        if probe.leak is not None:
            parts.append(probe.leak)
            is_leak.append(True)
        if isinstance(probe.alpha, torch.Tensor):
            parts.append(probe.alpha)
            is_leak.append(False)
    if any(t.dtype != torch.float32 or t.device != device for t in parts):
        parts = [t.to(device, torch.float32) for t in parts]
    values = torch.stack(parts) if parts else torch.zeros(0, device=device)
    # Read (stacked, a copy) above: the leak energy since the last capture starts again at 0.
    leaks = [probe.leak for _, probe in probes if probe.leak is not None]
    if leaks:
        torch._foreach_zero_(leaks)
    for slot, _ in probes:
        if slot._leak_seen:  # read first: nn.Module.__setattr__ is slow, and this is rare
            slot._leak_seen = False
    if world > 1:
        # Gradients are all-reduced, so the norms agree; leaks and a gated alpha are rank-local.
        # One collective: leaks are summed (a leak on any rank is a violation on every rank),
        # everything else averaged, so every rank folds the same numbers.
        mask = [False] * len(norms) + is_leak
        summed = torch.tensor(mask, dtype=torch.bool, device=values.device)
        values = sum_over_ranks(values)
        values = torch.where(summed, values, values / world)
    if n_host is None:
        n_host = sum(p.numel() for p in host_params)
    pending = PendingCapture(values, probes, bounds, n_host, len(norms), behind=not wait)
    if wait:
        pending.fold()
        return None
    return pending

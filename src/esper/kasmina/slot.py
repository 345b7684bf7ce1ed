"""SeedSlot: one injection point, the seed living there, its lifecycle and its isolation.

The forward is a wrapper with plain branches:

* no seed, or a seed not yet (or no longer) live: the host features pass through untouched;
* TRAINING (the incubator): the host's output is exactly its input; the seed runs beside it and
  learns from the task loss through a straight-through path;
* BLENDING / PROBATIONARY: ``lerp(host, seed(host), alpha)`` with the alpha actually used;
* FOSSILIZED: the seed's output, directly.

Gradient isolation: when ``isolate_gradients`` is True the seed sees the host features detached,
so no gradient can flow from the seed back into the host. When isolation is *required* (TRAINING
always; BLENDING/PROBATIONARY on a CNN host) but ``isolate_gradients`` is False, the seed's input
is a fresh alias of the host features carrying a gradient hook: whatever gradient reaches it is,
by construction, exactly the gradient flowing from the seed path into the host. The hook adds its
squared norm to a device buffer; nothing is read back until ``capture_gradient_telemetry``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from esper.kasmina.blending import BlendAlgorithm, GatedBlend, build_blend
from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.distributed import all_ranks_agree
from esper.kasmina.errors import GateFailedError, IllegalTransitionError, SlotOccupiedError
from esper.kasmina.gates import QualityGates
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_BLENDING_STEPS,
    DEFAULT_EMBARGO_EPOCHS,
    DEFAULT_GRADIENT_EMA_DECAY,
    DEFAULT_PROBATION_EPOCHS,
    TOPOLOGIES,
    VALID_TRANSITIONS,
    GateLevel,
    GateResult,
    SeedMetrics,
    SeedStage,
    SeedStateReport,
    is_active_stage,
    is_valid_transition,
)

# Stages in which the seed runs in the forward pass. A tuple, not a set: torch.compile (2.13)
# guards an enum's membership in a tuple but not in a frozenset, so a compiled forward would
# silently keep a stale stage's graph.
_RUNS_SEED = (
    SeedStage.TRAINING,
    SeedStage.BLENDING,
    SeedStage.PROBATIONARY,
    SeedStage.FOSSILIZED,
)
# Topologies whose seeds keep isolation while blending. Transformer seeds co-adapt on purpose.
_KEEPS_ISOLATION_WHILE_BLENDING = ("cnn",)


@dataclass
class SeedState:
    """Lifecycle state of the seed in one slot (plain data; saved in checkpoints)."""

    slot: str
    stage: SeedStage = SeedStage.DORMANT
    seed_id: str | None = None
    blueprint_id: str | None = None
    blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM
    previous_stage: SeedStage = SeedStage.UNKNOWN
    stage_history: list[SeedStage] = field(default_factory=lambda: [SeedStage.DORMANT])
    metrics: SeedMetrics = field(default_factory=SeedMetrics)
    #: Schedule alpha (mirrors the slot's alpha buffer; a gated blend modulates it per sample).
    alpha: float = 0.0
    blend_step: int = 0
    embargo_remaining: int = 0
    shape_probe_passed: bool = False

    def to_dict(self) -> dict:
        raw = asdict(self)
        raw["stage"] = int(self.stage)
        raw["previous_stage"] = int(self.previous_stage)
        raw["stage_history"] = [int(s) for s in self.stage_history]
        return raw

    @classmethod
    def from_dict(cls, raw: dict) -> SeedState:
        raw = dict(raw)
        raw["stage"] = SeedStage(raw["stage"])
        raw["previous_stage"] = SeedStage(raw["previous_stage"])
        raw["stage_history"] = [SeedStage(s) for s in raw["stage_history"]]
        raw["metrics"] = SeedMetrics(**raw["metrics"])
        return cls(**raw)


@dataclass
class _TelemetryProbe:
    """One slot's device-side telemetry, waiting to be read back with the others."""

    tensors: list[torch.Tensor]
    seed_params: list[nn.Parameter]


@dataclass
class SlotStepReport:
    """What one ``step_epoch`` did to a slot: stage changes and the gates evaluated."""

    slot: str
    seed_id: str | None
    transitions: list[tuple[SeedStage, SeedStage]] = field(default_factory=list)
    gate_results: list[GateResult] = field(default_factory=list)
    #: Why the lifecycle culled the seed in this step, if it did.
    cull_reason: str | None = None


class _Incubate(torch.autograd.Function):
    """Straight-through incubator: returns the host features unchanged, and hands the gradient
    of the output to both the host (direct path) and the seed (its learning signal).

    The seed's values never enter the output, so a NaN seed cannot reach the host.
    """

    @staticmethod
    def forward(ctx, host: torch.Tensor, seed_out: torch.Tensor) -> torch.Tensor:
        return host.view_as(host)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad


def _points(value: float | None) -> str:
    return "unknown" if value is None else f"{value:+.2f} points"


def _detached(x: torch.Tensor) -> torch.Tensor:
    """``x.detach()``, made contiguous when it is a channels-last CPU tensor: on CPU, group-norm
    backward segfaults (torch 2.13) for a channels-last input that needs no gradient."""
    x = x.detach()
    if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous():
        return x.contiguous()
    return x


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every value of every tensor is finite (one host sync for the whole set)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def _total_grad_norm(params: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    """L2 norm over the gradients of ``params`` as a 0-dim device tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(device, torch.float32) for n in norms]))


class SeedSlot(nn.Module):
    """An injection point that can hold one seed through its lifecycle.

    Args:
        name: the injection point's name (``early``, ``mid``, ...).
        width: feature width (channels or embedding size) at this point.
        topology: ``"cnn"`` or ``"transformer"``; decides the probe shape and whether seeds keep
            isolation while blending.
        gates: the quality gates; defaults to leyline's thresholds.
        blending_steps: epochs of the alpha ramp.
        probation_epochs: epochs in PROBATIONARY before an unfossilized seed is culled.
        embargo_epochs: epochs a slot stays EMBARGOED after a cull.
        gradient_ema_decay: EMA decay of the gradient ratio.
    """

    def __init__(
        self,
        name: str,
        width: int,
        topology: str,
        *,
        gates: QualityGates | None = None,
        blending_steps: int = DEFAULT_BLENDING_STEPS,
        probation_epochs: int = DEFAULT_PROBATION_EPOCHS,
        embargo_epochs: int = DEFAULT_EMBARGO_EPOCHS,
        gradient_ema_decay: float = DEFAULT_GRADIENT_EMA_DECAY,
    ) -> None:
        super().__init__()
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}; valid: {', '.join(TOPOLOGIES)}")
        for label, value in (
            ("blending_steps", blending_steps),
            ("probation_epochs", probation_epochs),
            ("embargo_epochs", embargo_epochs),
        ):
            if value < 1:
                raise ValueError(f"SeedSlot: {label} must be >= 1, got {value}")
        self.name = name
        self.width = int(width)
        self.topology = topology
        self.gates = gates or QualityGates()
        self.blending_steps = int(blending_steps)
        self.probation_epochs = int(probation_epochs)
        self.embargo_epochs = int(embargo_epochs)
        self.gradient_ema_decay = float(gradient_ema_decay)

        self.seed: nn.Module | None = None
        self.blend: BlendAlgorithm | None = None
        self.state = SeedState(slot=name)
        self.isolate_gradients = True
        self._alpha_forced = False
        # A reference to the owning model, kept in a tuple so nn.Module does not register it as a
        # child (which would duplicate the host's parameters); deepcopy maps it with the model.
        self._owner: tuple = (None,)

        # Alpha lives in a buffer so changing it never invalidates a compiled graph.
        self.register_buffer("alpha_tensor", torch.zeros(()))
        # Squared norm of seed-path gradient that reached the host since the last capture.
        self.register_buffer("_leak_sq", torch.zeros(()), persistent=False)
        # Mean alpha actually used by the last gated forward.
        self.register_buffer("_alpha_used", torch.zeros(()), persistent=False)

    # ------------------------------------------------------------------ properties

    @property
    def alpha(self) -> float:
        """The schedule's alpha (a gated blend modulates it per sample around this value)."""
        return self.state.alpha

    @property
    def stage(self) -> SeedStage:
        return self.state.stage

    @property
    def isolation_required(self) -> bool:
        """Whether the contract forbids seed-to-host gradient in the current stage."""
        stage = self.state.stage
        if stage == SeedStage.TRAINING:
            return True
        if stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
            return self.topology in _KEEPS_ISOLATION_WHILE_BLENDING
        return False

    def attach(self, owner: nn.Module | None) -> None:
        """Tell the slot which model owns it (for host-gradient telemetry and sharing checks)."""
        self._owner = (owner,)

    def _device(self) -> torch.device:
        return self.alpha_tensor.device

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stage = self.state.stage
        seed = self.seed
        if seed is None or stage not in _RUNS_SEED:
            return x
        seed_in = self._seed_input(x)
        if stage == SeedStage.FOSSILIZED:
            return seed(seed_in)

        seed_out = seed(seed_in)
        if stage == SeedStage.TRAINING:
            return _Incubate.apply(x, seed_out)

        # BLENDING / PROBATIONARY
        alpha = self.alpha_tensor.to(x.dtype)
        if self.blend is not None and not self._alpha_forced:
            alpha = self.blend.alpha(seed_in, alpha)
            if isinstance(self.blend, GatedBlend):
                self._alpha_used.copy_(alpha.detach().mean())
        return torch.lerp(x, seed_out, alpha)

    def _seed_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.isolate_gradients:
            return _detached(x)
        if self.isolation_required and x.requires_grad and torch.is_grad_enabled():
            probe = x.view_as(x)
            probe.register_hook(self._record_leak)
            return probe
        return x

    def _record_leak(self, grad: torch.Tensor) -> None:
        self._leak_sq.add_(grad.detach().float().pow(2).sum())

    # ------------------------------------------------------------------ alpha

    def set_alpha(self, value: float) -> None:
        """Set the blend alpha (0 = host only, 1 = seed only). Raises ValueError outside [0, 1]."""
        value = float(value)
        if not 0.0 <= value <= 1.0 or math.isnan(value):
            raise ValueError(f"slot {self.name!r}: alpha must be in [0, 1], got {value}")
        self.state.alpha = value
        self.state.metrics.current_alpha = value
        self.alpha_tensor.fill_(value)

    @contextlib.contextmanager
    def force_alpha(self, value: float):
        """Temporarily blend with a fixed ``value`` (gate bypassed), e.g. 0 for a counterfactual."""
        saved_alpha, saved_forced = self.state.alpha, self._alpha_forced
        saved_metric = self.state.metrics.current_alpha
        self.set_alpha(value)
        self._alpha_forced = True
        try:
            yield self
        finally:
            self._alpha_forced = saved_forced
            self.set_alpha(saved_alpha)
            self.state.metrics.current_alpha = saved_metric

    # ------------------------------------------------------------------ lifecycle

    def germinate(
        self,
        blueprint_id: str,
        seed_id: str,
        *,
        blend_algorithm_id: str = DEFAULT_BLEND_ALGORITHM,
    ) -> GateResult:
        """Grow a seed from ``blueprint_id`` into this (DORMANT) slot; it enters GERMINATED.

        Everything is validated before the slot changes: on any error the slot is exactly as
        it was.

        Raises:
            SlotOccupiedError: the slot is not DORMANT.
            ValueError: unknown blueprint or blend algorithm, empty id, a seed that changes the
                feature shape or produces non-finite values, or one that shares a parameter or
                buffer with the host.
        """
        if self.state.stage != SeedStage.DORMANT:
            raise SlotOccupiedError(
                f"slot {self.name!r} is {self.state.stage.name}, not DORMANT; cull the seed "
                f"{self.state.seed_id!r} (and wait out the embargo) before germinating again"
            )
        if not isinstance(seed_id, str) or not seed_id:
            raise ValueError(f"slot {self.name!r}: seed_id must be a non-empty string")
        blueprint = get_blueprint(self.topology, blueprint_id)
        device, dtype = self._device(), self.alpha_tensor.dtype
        seed = blueprint.build(self.width).to(device=device, dtype=dtype)
        blend = build_blend(blend_algorithm_id, self.width, self.topology).to(device, dtype)
        self._check_no_sharing(seed, blueprint_id)
        probe_ok = self._probe_shape(seed)

        candidate = SeedState(
            slot=self.name,
            stage=SeedStage.DORMANT,
            seed_id=seed_id,
            blueprint_id=blueprint_id,
            blend_algorithm_id=blend_algorithm_id,
            shape_probe_passed=probe_ok,
        )
        result = self.gates.check_gate(candidate, SeedStage.GERMINATED)
        if not all_ranks_agree(result.passed):
            raise ValueError(
                f"slot {self.name!r}: blueprint {blueprint_id!r} failed G0: "
                + ("; ".join(result.checks_failed) or "another rank refused")
            )
        # Commit.
        self.seed, self.blend, self.state = seed, blend, candidate
        self.isolate_gradients = True
        self._alpha_forced = False
        self._leak_sq.zero_()
        self.set_alpha(0.0)
        self._enter(SeedStage.GERMINATED)
        seed.train(self.training)
        blend.train(self.training)
        return result

    def _probe_shape(self, seed: nn.Module) -> bool:
        shape = (2, self.width, 4, 4) if self.topology == "cnn" else (2, 4, self.width)
        gen = torch.Generator(device="cpu").manual_seed(0)
        probe = torch.randn(shape, generator=gen).to(self._device(), self.alpha_tensor.dtype)
        was_training = seed.training
        seed.eval()
        try:
            with torch.no_grad():
                out = seed(probe)
        except Exception:  # noqa: BLE001 - any failure on the probe means the shape check failed
            return False
        finally:
            seed.train(was_training)
        return tuple(out.shape) == shape and bool(torch.isfinite(out).all())

    def _host_tensor_ptrs(self) -> frozenset[int]:
        owner = self._owner[0]
        return owner.host_tensor_ptrs() if owner is not None else frozenset()

    def _tensors_shared_with_host(self, module: nn.Module) -> list[torch.Tensor]:
        host_ptrs = self._host_tensor_ptrs()
        return [
            t
            for t in (*module.parameters(), *module.buffers())
            if t.numel() and t.data_ptr() in host_ptrs
        ]

    def _shared_with_host(self, module: nn.Module) -> bool:
        return bool(self._tensors_shared_with_host(module))

    def _check_no_sharing(self, seed: nn.Module, blueprint_id: str) -> None:
        if self._shared_with_host(seed):
            raise ValueError(
                f"slot {self.name!r}: blueprint {blueprint_id!r} shares a parameter or buffer "
                "with the host; seeds must own all their tensors"
            )

    def advance_stage(self, target: SeedStage) -> GateResult:
        """Move to ``target`` if the transition is legal and its gate passes.

        Does exactly what ``step_epoch`` does on the same transition (blending set-up included).
        A refused gate leaves the slot unchanged and returns the failed result.

        Raises:
            IllegalTransitionError: ``target`` is not reachable from the current stage.
        """
        target = SeedStage(target)
        self._require_transition(target)
        if target == SeedStage.CULLED:
            self.cull()
            return GateResult(GateLevel.G0, True, message=f"slot {self.name} culled")
        if target == SeedStage.RESETTING and self.state.embargo_remaining > 0:
            # The embargo is a cooldown: only step_epoch counts it down.
            left = self.state.embargo_remaining
            return GateResult(
                GateLevel.G0,
                False,
                checks_failed=(f"embargo: {left} epoch(s) remaining",),
                message=f"slot {self.name} is embargoed for {left} more epoch(s)",
            )
        result = self.gates.check_gate(self.state, target)
        passed = all_ranks_agree(result.passed)
        if passed:
            self._enter(target)
        elif result.passed:
            result = GateResult(
                result.gate,
                False,
                result.score,
                result.checks_passed,
                (*result.checks_failed, "consensus: another rank refused"),
                result.message,
            )
        return result

    def _require_transition(self, target: SeedStage) -> None:
        stage = self.state.stage
        if not is_valid_transition(stage, target):
            legal = ", ".join(s.name for s in VALID_TRANSITIONS[stage]) or "none (terminal)"
            raise IllegalTransitionError(
                f"slot {self.name!r}: illegal transition {stage.name} -> {target.name}; "
                f"legal from {stage.name}: {legal}"
            )

    def _enter(self, target: SeedStage) -> None:
        """Apply a transition and its set-up. The single place where stages change."""
        state = self.state
        if state.stage != target:
            state.previous_stage = state.stage
            state.stage = target
            state.stage_history.append(target)
        m = state.metrics
        m.epochs_in_current_stage = 0
        m.accuracy_at_stage_start = m.current_val_accuracy
        if target == SeedStage.TRAINING:
            self.isolate_gradients = True
        elif target == SeedStage.BLENDING:
            self.isolate_gradients = self.topology in _KEEPS_ISOLATION_WHILE_BLENDING
            state.blend_step = 1
            self.set_alpha(self.blend.schedule(1, self.blending_steps) if self.blend else 1.0)
        elif target == SeedStage.PROBATIONARY:
            state.blend_step = self.blending_steps
            self.set_alpha(1.0)
        elif target == SeedStage.FOSSILIZED:
            self.isolate_gradients = False
            self.set_alpha(1.0)
            self.blend = None  # the seed's output is used directly from now on
        elif target == SeedStage.EMBARGOED:
            state.embargo_remaining = self.embargo_epochs
        elif target == SeedStage.DORMANT:  # RESETTING -> DORMANT: an empty slot, as step_epoch
            self.state = SeedState(slot=self.name, previous_stage=SeedStage.RESETTING)

    def cull(self) -> None:
        """Remove the seed: the host's output is restored bit for bit; the slot enters CULLED.

        Raises:
            IllegalTransitionError: nothing to cull, or the seed is FOSSILIZED.
        """
        self._require_transition(SeedStage.CULLED)
        self.seed = None
        self.blend = None
        self.isolate_gradients = True
        self._alpha_forced = False
        self._leak_sq.zero_()
        self.set_alpha(0.0)
        self._enter(SeedStage.CULLED)

    def fossilize(self) -> GateResult:
        """Make the seed a permanent part of the host (through G5).

        Raises:
            IllegalTransitionError: the seed is not PROBATIONARY.
            GateFailedError: G5 refused; the message lists the failed checks.
        """
        result = self.advance_stage(SeedStage.FOSSILIZED)
        if not result.passed:
            raise GateFailedError(
                f"slot {self.name!r}: cannot fossilize seed {self.state.seed_id!r}: "
                + "; ".join(result.checks_failed),
                result,
            )
        return result

    def step_epoch(self) -> SlotStepReport:
        """Advance what is mechanical at the end of an epoch; see SYSTEM.md §2 (Quality gates)."""
        state, m = self.state, self.state.metrics
        report = SlotStepReport(slot=self.name, seed_id=state.seed_id)
        start = state.stage
        n_before = len(state.stage_history)
        if is_active_stage(start):
            m.epochs_total += 1
            m.epochs_in_current_stage += 1
            if self.seed is not None and not all_finite(self.seed.parameters()):
                m.healthy = False

        def gate(target: SeedStage) -> bool:
            result = self.advance_stage(target)
            report.gate_results.append(result)
            return result.passed

        if start == SeedStage.GERMINATED:
            gate(SeedStage.TRAINING)
        elif start in (SeedStage.TRAINING, SeedStage.BLENDING) and not all_ranks_agree(m.healthy):
            self.cull()  # unhealthy on any rank: every rank culls (and skips the gate's collective)
            report.cull_reason = "seed produced non-finite values"
        elif start == SeedStage.TRAINING:
            gate(SeedStage.BLENDING)
        elif start == SeedStage.BLENDING:
            state.blend_step = min(state.blend_step + 1, self.blending_steps)
            self.set_alpha(self.blend.schedule(state.blend_step, self.blending_steps))
            gate(SeedStage.PROBATIONARY)
        elif start == SeedStage.PROBATIONARY:
            contribution = m.counterfactual_contribution
            timed_out = m.epochs_in_current_stage >= self.probation_epochs
            keep = m.healthy and not timed_out and (contribution is None or contribution > 0)
            if not all_ranks_agree(keep):  # one architecture on every rank
                self.cull()
                report.cull_reason = (
                    "seed produced non-finite values"
                    if not m.healthy
                    else f"probation ended after {m.epochs_in_current_stage} epochs without "
                    f"fossilization (contribution {_points(contribution)})"
                    if timed_out
                    else f"contribution {_points(contribution)} is not positive"
                )
        elif start == SeedStage.CULLED:
            self._enter(SeedStage.EMBARGOED)
        elif start == SeedStage.EMBARGOED:
            state.embargo_remaining -= 1
            if state.embargo_remaining <= 0:
                self._enter(SeedStage.RESETTING)
        elif start == SeedStage.RESETTING:
            self._enter(SeedStage.DORMANT)

        path = [start, *state.stage_history[n_before:]]  # read off the history, even if reset
        report.transitions = list(zip(path, path[1:], strict=False))
        return report

    def seed_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the live seed and its blend gate (empty when none)."""
        params: list[nn.Parameter] = []
        if self.seed is not None:
            params.extend(self.seed.parameters())
        if self.blend is not None:
            params.extend(self.blend.parameters())
        return params

    def capture_gradient_telemetry(self) -> None:
        """Fold the gradients of the last backward(s) into the seed's metrics.

        Updates seed and host gradient norms, the parameter-normalized gradient ratio
        ``(seed_norm / host_norm) * sqrt(host_params / seed_params)`` (EMA), and
        ``isolation_violations``: +1 when, since the last capture, gradient really flowed from the
        seed back into the host while isolation was required (through the seed's input, or
        through a tensor the seed shares with the host). Ordinary host gradients on the direct
        path never count. One host/device synchronisation per call; none per training step.
        (``MorphogeneticModel.capture_gradient_telemetry`` does every slot with one sync.)
        """
        owner = self._owner[0]
        capture_telemetry([self], list(owner.host_parameters()) if owner is not None else [])

    def telemetry_probe(self) -> _TelemetryProbe | None:
        """Device-side measurements for one capture (no sync): seed gradient norm, leaked
        gradient energy since the last capture, alpha used, and gradient on shared tensors."""
        if self.seed is None or not is_active_stage(self.state.stage):
            return None
        device = self._device()
        seed_params = self.seed_parameters()
        leak = self._leak_sq.clone()
        self._leak_sq.zero_()
        alpha_used = self._alpha_used if isinstance(self.blend, GatedBlend) else self.alpha_tensor
        shared = torch.zeros((), device=device)
        if self.isolation_required:
            tied = self._tensors_shared_with_host(self.seed)
            grads = [t.grad.detach().abs().sum().float() for t in tied if t.grad is not None]
            if grads:
                shared = torch.stack(grads).sum()
        tensors = [_total_grad_norm(seed_params, device), leak, alpha_used.float(), shared]
        return _TelemetryProbe(tensors, seed_params)

    def fold_telemetry(
        self, probe: _TelemetryProbe, host_norm: float, values: list[float], n_host: int
    ) -> None:
        """Update the metrics from one capture's materialized numbers."""
        seed_norm, leak, alpha, shared = values
        m = self.state.metrics
        m.seed_gradient_norm = seed_norm
        m.host_gradient_norm = host_norm
        m.gradient_captures += 1
        if self.state.stage in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
            m.current_alpha = alpha
        if leak > 0 or shared > 0:
            m.isolation_violations += 1
        if not (math.isfinite(seed_norm) and math.isfinite(leak)):
            m.healthy = False
            return
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

    def report(self) -> SeedStateReport:
        """A snapshot of this slot for controllers and telemetry."""
        s = self.state
        return SeedStateReport(
            slot=self.name,
            seed_id=s.seed_id,
            blueprint_id=s.blueprint_id,
            stage=s.stage,
            alpha=s.alpha,
            isolate_gradients=self.isolate_gradients,
            seed_params=sum(p.numel() for p in self.seed_parameters()),
            metrics=SeedMetrics(**asdict(s.metrics)),
            stage_history=tuple(s.stage_history),
        )

    # ------------------------------------------------------------------ checkpointing

    def get_extra_state(self) -> dict:
        """Plain data describing the seed, so a fresh model can rebuild it before loading weights
        (``torch.load(..., weights_only=True)`` accepts it)."""
        return {
            "state": self.state.to_dict(),
            "isolate_gradients": bool(self.isolate_gradients),
            "has_seed": self.seed is not None,
            "has_blend": self.blend is not None,
        }

    def set_extra_state(self, extra: dict) -> None:
        # Runs before the children's weights are loaded, so rebuilding here lets load_state_dict
        # fill a seed into a model that had none.
        state = SeedState.from_dict(extra["state"])
        seed = blend = None
        if extra["has_seed"]:
            blueprint = get_blueprint(self.topology, state.blueprint_id)
            seed = blueprint.build(self.width).to(self._device(), self.alpha_tensor.dtype)
        if extra["has_blend"]:
            blend = build_blend(state.blend_algorithm_id, self.width, self.topology)
            blend = blend.to(self._device(), self.alpha_tensor.dtype)
        for module in (seed, blend):
            if module is not None:
                module.train(self.training)  # rebuilt modules follow the model's train/eval mode
        self.seed, self.blend, self.state = seed, blend, state
        self.isolate_gradients = bool(extra["isolate_gradients"])
        self._alpha_forced = False
        self._leak_sq.zero_()


def capture_telemetry(slots: Iterable[SeedSlot], host_params: list[nn.Parameter]) -> None:
    """One gradient-telemetry capture for ``slots``: the host's gradient norm is computed once,
    and every slot's numbers come back to the host in a single synchronisation."""
    probes = [(slot, slot.telemetry_probe()) for slot in slots]
    probes = [(slot, probe) for slot, probe in probes if probe is not None]
    if not probes:
        return
    host_norm = _total_grad_norm(host_params, probes[0][0].alpha_tensor.device)
    values = torch.stack([host_norm, *(t for _, p in probes for t in p.tensors)]).tolist()
    n_host = sum(p.numel() for p in host_params)
    start = 1
    for slot, probe in probes:
        end = start + len(probe.tensors)
        slot.fold_telemetry(probe, values[0], values[start:end], n_host)
        start = end

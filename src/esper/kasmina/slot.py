"""SeedSlot: one injection point and the seed living there.

The forward is a wrapper with plain branches:

* no seed, or a seed not yet (or no longer) live: the host features pass through untouched;
* TRAINING (the incubator): the host's output is exactly its input and the seed does not run;
  it learns in the model's shadow pass (``MorphogeneticModel.forward_with_shadows``): the rest
  of the network run at the features it would produce blended at alpha 1, with every other
  parameter detached;
* BLENDING / PROBATIONARY: ``lerp(host, seed(host), alpha)`` with the alpha actually used;
* FOSSILIZED: the seed's output, directly.

Gradient isolation: when ``isolate_gradients`` is True the seed sees the host features detached,
so no gradient can flow from the seed back into the host. When isolation is *required* (TRAINING
always; BLENDING/PROBATIONARY where the topology keeps it) but ``isolate_gradients`` is False,
the seed's input is a fresh alias of the host features carrying a gradient hook: whatever
gradient reaches it is, by construction, exactly the gradient flowing from the seed path into
the host. The hook adds its squared norm to a device buffer; nothing is read back until
``capture_gradient_telemetry``. The shadow pass feeds the seed through the same input, so a leak
there is counted the same way.

The rest of the slot lives beside it: the lifecycle and its events in ``lifecycle.py``, the
telemetry capture in ``telemetry.py``, the state in ``state.py``, the incubator's autograd
helpers in ``incubator.py``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict

import torch
from torch import nn

from esper.kasmina.blending import BlendAlgorithm, GatedBlend, build_blend
from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.computed_init import InitMemory
from esper.kasmina.events import Listeners
from esper.kasmina.gates import QualityGates
from esper.kasmina.incubator import _detached
from esper.kasmina.lifecycle import SlotLifecycle, SlotStepReport
from esper.kasmina.state import SeedState
from esper.kasmina.telemetry import SlotTelemetry, capture_telemetry
from esper.kasmina.tensors import all_finite, module_tensors
from esper.leyline import (
    DEFAULT_BLENDING_STEPS,
    DEFAULT_EMBARGO_EPOCHS,
    DEFAULT_GRADIENT_EMA_DECAY,
    DEFAULT_INIT_SCALE,
    DEFAULT_PROBATION_EPOCHS,
    SEED_INITS,
    SeedMetrics,
    SeedStage,
    SeedStateReport,
    get_topology,
)

# Re-exported: these have been imported from here.
__all__ = ["SeedSlot", "SeedState", "SlotStepReport", "all_finite", "capture_telemetry"]

# A blend whose alpha() is this one uses the schedule's alpha as it is (linear, sigmoid).
_RAMP_ALPHA = BlendAlgorithm.alpha

# Feature dtypes in which lerp's backward gives the same bits for a float and a 0-dim weight.
_EXACT_FLOAT_WEIGHT = (torch.float32, torch.float64)

# Stages in which a slot is open for its next seed (or will be once an embargo ends): its
# output features are what that seed will read, so a computed initialisation remembers them.
_OPEN_FOR_GROWTH = (
    SeedStage.DORMANT,
    SeedStage.FOSSILIZED,
    SeedStage.CULLED,
    SeedStage.EMBARGOED,
)

# Stages in which the seed runs in the forward pass. A tuple, not a set: torch.compile (2.13)
# guards an enum's membership in a tuple but not in a frozenset, so a compiled forward would
# silently keep a stale stage's graph.
_RUNS_SEED = (
    SeedStage.BLENDING,
    SeedStage.PROBATIONARY,
    SeedStage.FOSSILIZED,
)


class SeedSlot(SlotLifecycle, SlotTelemetry, nn.Module):
    """An injection point that can hold one seed through its lifecycle.

    Args:
        name: the injection point's name (``early``, ``mid``, ...).
        width: feature width (channels or embedding size) at this point.
        topology: a registered topology (``"cnn"``, ``"transformer"``); decides the probe
            shape and whether seeds keep isolation while blending.
        gates: the quality gates; defaults to leyline's thresholds.
        blending_steps: epochs of the alpha ramp.
        probation_epochs: epochs in PROBATIONARY before an unfossilized seed is culled.
        embargo_epochs: epochs a slot stays EMBARGOED after a cull.
        gradient_ema_decay: EMA decay of the gradient ratio.

    Raises:
        ValueError: unknown topology (the message lists the valid ones), or a step count < 1.
    """

    #: Buffers no forward writes: ``alpha_tensor`` changes only through ``set_alpha``,
    #: ``_gain_sum`` in ``incubation_loss`` and ``_leak_sq`` in backward hooks. A shadow pass
    #: may read the real ones instead of copies (``_alpha_used``, written by a gated forward,
    #: is not among them).
    FORWARD_READ_ONLY_BUFFERS = frozenset({"alpha_tensor", "_gain_sum", "_leak_sq"})
    _WITH_ALPHA_USED = FORWARD_READ_ONLY_BUFFERS | {"_alpha_used"}

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
        spec = get_topology(topology)
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
        self._keeps_isolation_while_blending = spec.keeps_isolation_while_blending
        self._probe_shape_dims = spec.probe_shape(self.width)
        self.gates = gates or QualityGates()
        self.blending_steps = int(blending_steps)
        self.probation_epochs = int(probation_epochs)
        self.embargo_epochs = int(embargo_epochs)
        self.gradient_ema_decay = float(gradient_ema_decay)

        self.seed: nn.Module | None = None
        self.blend: BlendAlgorithm | None = None
        # Seeds fossilized here earlier, oldest first: part of the host, applied before the
        # current seed. A new seed germinated after a fossilized one is stacked on top of it.
        self.fossils = nn.ModuleList()
        self.fossil_seeds: list[tuple[str, str]] = []  # (seed id, blueprint id) per fossil
        self.state = SeedState(slot=name, blending_steps=self.blending_steps)
        self.isolate_gradients = True
        self._alpha_forced = False
        self._alpha_cache: tuple = (None, None, None, 0.0)  # see _alpha_weight
        # A reference to the owning model, kept in a tuple so nn.Module does not register it as a
        # child (which would duplicate the host's parameters); deepcopy maps it with the model.
        self._owner: tuple = (None,)
        # The host module whose output the slot takes (set by the routes), in a tuple likewise.
        self._target: tuple = (None,)
        self._listeners = Listeners()
        self._recorder = None  # the events of the step_epoch in progress, if any

        # Alpha lives in a buffer so changing it never invalidates a compiled graph.
        self.register_buffer("alpha_tensor", torch.zeros(()))
        # Squared norm of seed-path gradient that reached the host since the last capture.
        self.register_buffer("_leak_sq", torch.zeros(()), persistent=False)
        # Whether a leak hook fired since the last capture: until one does, the capture need
        # not read _leak_sq back (it holds 0).
        self._leak_seen = False
        # Mean alpha actually used by the last gated forward.
        self.register_buffer("_alpha_used", torch.zeros(()), persistent=False)
        # Sum of per-batch incubation gains since step_epoch last read them (TRAINING only),
        # and how many batches that is: kept on the device so a step never syncs.
        self.register_buffer("_gain_sum", torch.zeros(()), persistent=False)
        self._gain_batches = 0
        # The recent features and gradients a computed start is solved from (None: new seeds
        # start as built; see ``set_seed_init``), and the computed start's size.
        self.init_scale = DEFAULT_INIT_SCALE
        self.init_memory: InitMemory | None = None
        # How the current seed started: "zero" (as built), "computed" or "copy" (of the block
        # before the slot). Reported with the seed's germination.
        self.seed_start = "zero"

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
            return self._keeps_isolation_while_blending
        return False

    @property
    def incubating(self) -> bool:
        """Whether the slot holds a seed in TRAINING (one that learns in the shadow pass)."""
        return self.seed is not None and self.state.stage == SeedStage.TRAINING

    def attach(self, owner: nn.Module | None) -> None:
        """Tell the slot which model owns it (for host-gradient telemetry, sharing checks and
        the delivery of lifecycle events to the model's listeners)."""
        self._owner = (owner,)

    def _device(self) -> torch.device:
        return self.alpha_tensor.device

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_seed(self.forward_fossils(x))

    def forward_fossils(self, x: torch.Tensor) -> torch.Tensor:
        """The seeds fossilized here before the current one, in order (part of the host)."""
        for fossil in self.fossils:
            x = fossil(x)
        return x

    def forward_seed(self, x: torch.Tensor) -> torch.Tensor:
        """The current seed as its stage says, on features that already went through the
        fossils."""
        stage = self.state.stage
        seed = self.seed
        if seed is None or stage not in _RUNS_SEED:
            return x
        seed_in = self._seed_input(x)
        if stage == SeedStage.FOSSILIZED:
            return seed(seed_in)

        seed_out = seed(seed_in)
        # BLENDING / PROBATIONARY
        blend = self.blend
        scheduled = blend is None or self._alpha_forced or type(blend).alpha is _RAMP_ALPHA
        if scheduled and x.dtype in _EXACT_FLOAT_WEIGHT and not torch.compiler.is_compiling():
            # The schedule's alpha as a Python float: lerp's backward then forms 1 - alpha on
            # the host instead of in two device kernels per slot and step, with the same bits
            # as the buffer would give (tests/test_blueprints_blending.py). Not in half
            # precision, where the buffer's 1 - alpha is rounded to it; nor in a compiled
            # forward, which reads the buffer so that a new alpha is no new graph.
            return torch.lerp(x, seed_out, self._alpha_weight(x.dtype))
        alpha = self.alpha_tensor
        if alpha.dtype != x.dtype:  # a call to .to() costs even when it returns alpha itself
            alpha = alpha.to(x.dtype)
        if not scheduled:
            alpha = blend.alpha(seed_in, alpha)
            if isinstance(blend, GatedBlend):
                self._alpha_used.copy_(alpha.detach().mean())
        return torch.lerp(x, seed_out, alpha)

    def _alpha_weight(self, dtype: torch.dtype) -> float:
        """The value ``alpha_tensor.to(dtype)`` holds, worked out on the host (no device read):
        ``set_alpha`` fills the buffer with ``state.alpha``. Cached until either changes."""
        alpha, own = self.state.alpha, self.alpha_tensor.dtype
        cached = self._alpha_cache
        if cached[0] != alpha or cached[1] != own or cached[2] != dtype:
            value = torch.tensor(alpha, dtype=own).to(dtype).item()
            cached = self._alpha_cache = (alpha, own, dtype, value)
        return cached[3]

    def buffers_forward_leaves_alone(self) -> frozenset[str]:
        """The buffers the slot's forward does not write in its current stage: the
        ``FORWARD_READ_ONLY_BUFFERS``, and ``_alpha_used`` too unless a gated blend runs. A
        shadow pass reads these in place instead of copying them."""
        gated = isinstance(self.blend, GatedBlend) and self.state.stage in (
            SeedStage.BLENDING,
            SeedStage.PROBATIONARY,
        )
        return self.FORWARD_READ_ONLY_BUFFERS if gated else self._WITH_ALPHA_USED

    def shadow_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features this slot would output with its TRAINING seed fully blended in
        (``lerp(x, seed(x), 1)``, which is ``seed(x)``), for the shadow pass; ``x`` has been
        through the fossils. The seed's input is the same as in any other stage: detached under
        isolation, else watched for leaks."""
        return self.seed(self._seed_input(x))

    def set_seed_init(
        self, mode: str, *, scale: float = DEFAULT_INIT_SCALE, memory: InitMemory | None = None
    ) -> None:
        """How the next seeds' output layers start: ``"zero"`` or ``"computed"`` (solved from
        the slot's recent features and loss gradients; see :mod:`esper.kasmina.computed_init`).

        Args:
            mode: one of ``SEED_INITS``.
            scale: a computed seed's output RMS as a fraction of the features' RMS (> 0).
            memory: where the features are kept (a fresh ``InitMemory`` by default); ignored
                for ``"zero"``, which keeps none.

        Raises:
            ValueError: an unknown mode or a scale that is not > 0.
        """
        if mode not in SEED_INITS:
            raise ValueError(
                f"slot {self.name!r}: seed init must be one of {', '.join(SEED_INITS)}, "
                f"got {mode!r}"
            )
        if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"slot {self.name!r}: init scale must be > 0, got {scale!r}")
        self.init_scale = float(scale)
        self.init_memory = (memory or InitMemory()) if mode == "computed" else None

    @property
    def seed_init(self) -> str:
        """How the next seed's output layer starts: ``"computed"`` while the slot keeps
        features for it, else ``"zero"``."""
        return "zero" if self.init_memory is None else "computed"

    def remember(self, features: torch.Tensor) -> None:
        """Keep ``features`` (this slot's output on a training pass) and their gradient for a
        computed initialisation, when one is set and the slot is open for a new seed."""
        memory = self.init_memory
        if (
            memory is not None
            and self.state.stage in _OPEN_FOR_GROWTH
            and features.requires_grad
            and torch.is_grad_enabled()
            and not torch.compiler.is_compiling()
        ):
            memory.record(features)

    def _add_incubation_gain(self, gain: torch.Tensor) -> None:
        """Add one batch's gain: a float32 0-dim tensor without gradient."""
        self._gain_sum.add_(gain)
        self._gain_batches += 1

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
        self._leak_seen = True

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

    # ------------------------------------------------------------------ structure

    def _build_seed(self, blueprint_id: str) -> nn.Module:
        """A fresh seed of ``blueprint_id`` for this slot's width, on its device and dtype.

        Raises:
            ValueError: unknown blueprint (the message lists the valid ones).
        """
        blueprint = get_blueprint(self.topology, blueprint_id)
        return blueprint.build(self.width).to(self._device(), self.alpha_tensor.dtype)

    def _copy_target_into(self, seed: nn.Module, blueprint_id: str) -> None:
        """Load the weights of the module the slot sits on into ``seed`` (a stacking
        blueprint's start).

        Raises:
            ValueError: the slot's module is not of the seed's structure (the message says
                which module and why).
        """
        target = self._target[0]
        problem = None
        if target is None or not isinstance(seed, type(target)):
            what = "no module" if target is None else type(target).__name__
            problem = f"the slot sits on {what}, not on a block the seed can copy"
        else:
            try:
                seed.copy_from(target)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            raise ValueError(
                f"slot {self.name!r}: blueprint {blueprint_id!r} copies the block before the "
                f"slot, but {problem}; use it at a slot after a block"
            )

    def host_side_modules(self) -> list[nn.Module]:
        """The seeds of this slot that are part of the host, oldest first: the fossils, then the
        current seed if it is FOSSILIZED. The order is stable: a FOSSILIZED seed becomes the last
        fossil when a new seed is stacked after it."""
        modules = list(self.fossils)
        if self.seed is not None and self.state.stage == SeedStage.FOSSILIZED:
            modules.append(self.seed)
        return modules

    def seed_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of the live seed and its blend gate (empty when none)."""
        return self._live_seed_tensors()[0]

    def _live_seed_tensors(self) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
        """``(seed_parameters(), the seed's buffers)`` in one walk of the seed (a telemetry
        capture needs both, for the seed's gradient norm and the sharing check)."""
        params, buffers = module_tensors(self.seed) if self.seed is not None else ([], [])
        blend = self.blend
        if blend is not None and (blend._parameters or blend._modules):  # a gate, not a schedule
            params = params + module_tensors(blend)[0]
        return params, buffers

    def _tensors_shared_with_host(
        self,
        module: nn.Module,
        params: list[nn.Parameter] | None = None,
        buffers: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """``module``'s parameters and buffers whose storage is the host's: compared by address
        on the host side, so the check costs no device synchronisation. ``params`` and
        ``buffers``: the module's, when the caller has walked them already."""
        owner = self._owner[0]
        host_ptrs = owner.host_tensor_ptrs() if owner is not None else frozenset()
        if params is None or buffers is None:
            own_params, own_buffers = module_tensors(module)
            params = own_params if params is None else params
            buffers = own_buffers if buffers is None else buffers
        return [t for t in (*params, *buffers) if t.numel() and t.data_ptr() in host_ptrs]

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
            fossils=tuple(seed_id for seed_id, _ in self.fossil_seeds),
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
            "fossils": [list(pair) for pair in self.fossil_seeds],
            "seed_start": self.seed_start,
        }

    def set_extra_state(self, extra: dict) -> None:
        # Runs before the children's weights are loaded, so rebuilding here lets load_state_dict
        # fill a seed into a model that had none.
        state = SeedState.from_dict(extra["state"])
        seed = blend = None
        if extra["has_seed"]:
            seed = self._build_seed(state.blueprint_id)
        if extra["has_blend"]:
            blend = build_blend(state.blend_algorithm_id, self.width, self.topology)
            blend = blend.to(self._device(), self.alpha_tensor.dtype)
        fossil_seeds = [(str(i), str(b)) for i, b in extra["fossils"]]
        fossils = nn.ModuleList(self._build_seed(blueprint_id) for _, blueprint_id in fossil_seeds)
        for module in (seed, blend, fossils):
            if module is not None:
                module.train(self.training)  # rebuilt modules follow the model's train/eval mode
        self.seed, self.blend, self.state = seed, blend, state
        self.fossils, self.fossil_seeds = fossils, fossil_seeds
        self.isolate_gradients = bool(extra["isolate_gradients"])
        self.seed_start = str(extra.get("seed_start", "zero"))  # checkpoints before starts: zero
        self._alpha_forced = False
        self._leak_sq.zero_()
        self._reset_incubation_gain()  # gains gathered before the load belong to another seed

"""Step-time overhead of a MorphogeneticModel over its static-equivalent network.

For each seed stage we build two networks with identical weights:

* the *morphogenetic* model: a ``CNNHost`` with one ``conv_light`` seed in each of the
  ``early``/``mid``/``late`` slots, put in the stage under test through the public lifecycle API;
* the *static equivalent*: a deep copy of the same host and the same seed modules, wired in as
  ordinary layers by hand, computing exactly the same thing for that stage:

  ==========  ============================================================================
  stage       static equivalent at each injection point (``h`` = host features)
  ==========  ============================================================================
  TRAINING    ``h`` unchanged; beside it a *shadow pass* per seed: the rest of the network
              run from ``seed(h.detach())`` with every other parameter detached
              (``torch.func.functional_call``) and batch-norm buffers on copies; the step
              adds each shadow's cross-entropy to the loss (the seed learns from it alone)
  BLENDING    ``h = torch.lerp(h, seed(h.detach()), 0.5)`` (CNN seeds keep isolation)
  FOSSILIZED  ``h = seed(h)``
  ==========  ============================================================================

Outputs are asserted equal (and gradients close) before timing. The ``cost_*`` rows state what
each stage costs over the bare host (the same host, no slots): for TRAINING that is the shadow
pass, the incubator's price; for BLENDING and FOSSILIZED the seeds' own compute. The
``injected_training`` row is the built-in model against the same host given its slots by
``inject_slots`` (whose shadow pass replays the whole forward). Full training
steps (zero_grad, forward, cross-entropy, backward, optional telemetry capture, SGD step) are then
timed interleaved in one process (A B, B A, A B, ...), after warm-up, with the garbage collector
paused, and the ratio of the medians is reported. The telemetry rows compare the *same*
morphogenetic model stepping with and without ``capture_gradient_telemetry()`` (every step, or
every 10th step: those are timed in blocks of 10 steps so the capture step is inside every
sample).

Run ``python benchmarks/step_overhead.py --help`` for the options; ``--json`` makes the last line
of stdout one JSON object. See ``docs/performance.md`` for the method and the numbers.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import datetime
import gc
import json
import math
import os
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from esper.kasmina import CNNHost, MorphogeneticModel
from esper.kasmina.hosts import build_host
from esper.kasmina.inject import inject_slots
from esper.kasmina.routes import strip_routes
from esper.leyline import SeedStage
from esper.testing import image_batch, make_train_step, model_at_stage
from esper.tolaria.tasks import get_task

SLOTS = ("early", "mid", "late")
#: The rows of the result, in the order they are measured.
ROWS = (
    "training",
    "blending",
    "fossilized",
    "telemetry_stride1",
    "telemetry_stride10",
    "cost_training",
    "cost_blending",
    "cost_fossilized",
    "injected_training",
    "incubation_1seed",
    "incubation_2seeds",
    "compiled_training",
    "compiled_blending",
    "compiled_fossilized",
    "compile_cost",
)
#: The rows measured unless ``--rows`` says otherwise: the compiled ones take minutes of
#: compilation on a CPU, so they are asked for by name (``--rows compiled_training ...``).
DEFAULT_ROWS = tuple(row for row in ROWS if not row.startswith("compile"))
#: Dynamo's recompile limit for the compiled rows: a lifecycle needs more graphs than its 8.
RECOMPILE_LIMIT = 64


@dataclass(frozen=True)
class BenchConfig:
    """What to build and how long to time it."""

    device: str = "cpu"
    batch: int = 128  # images per step
    image: int = 32  # input height = width
    width: int = 32  # CNNHost base_channels (block i has width * 2**i channels)
    blocks: int = 3  # CNNHost n_blocks
    blueprint: str = "conv_light"
    reps: int = 80  # timed samples per arm (after warm-up)
    warmup: int = 6  # untimed samples per arm
    # torch intra-op threads. 1 by default: on a shared 2-core machine a 2-thread OpenMP team
    # stalls whenever the scheduler parks one worker (steps varied 150-1600 ms at 2 threads,
    # +-5% at 1). 0 keeps torch's own choice.
    threads: int = 1
    seed: int = 0  # RNG seed for weights and data
    lr: float = 0.01
    compile_backend: str = "inductor"  # for the compiled rows
    # The incubation rows: a task's own host, input size and shadow pass schedule.
    task: str = "fashion"
    task_image: int = 28  # the task's input height = width
    shadow_every: int | None = None  # None: the task's


# --------------------------------------------------------------------------------- networks


class StaticEquivalent(nn.Module):
    """The host with the seeds wired in by hand, for one stage's semantics.

    Args:
        host: a CNNHost (owned; pass a copy).
        seeds: ``{slot name: seed module}`` (owned; pass copies).
        positions: ``{slot name: k}``, the seed runs after the first ``k`` host blocks.
        mode: ``"training"``, ``"blending"`` or ``"fossilized"``.
        alpha: the fixed blend weight for ``"blending"``.
    """

    def __init__(
        self,
        host: CNNHost,
        seeds: dict[str, nn.Module],
        positions: dict[str, int],
        mode: str,
        alpha: float = 0.5,
    ) -> None:
        super().__init__()
        if mode not in ("training", "blending", "fossilized"):
            raise ValueError(f"mode must be training, blending or fossilized, got {mode!r}")
        self.host = host
        self.seeds = nn.ModuleDict(seeds)
        self.plan = tuple(sorted(((n, positions[n]) for n in seeds), key=lambda kv: kv[1]))
        self.mode = mode
        self.alpha = float(alpha)

    def _apply_seed(self, seed: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "training":
            return h  # the seed learns in the shadow pass only
        if self.mode == "blending":
            return torch.lerp(h, seed(h.detach()), self.alpha)
        return seed(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_from(self.host.stem(x), 0)  # (B, classes)

    def run_from(self, h: torch.Tensor, start: int) -> torch.Tensor:
        """From just before seed ``start`` (in forward order) to the head."""
        host = self.host
        done = self.plan[start - 1][1] if start > 0 else 0
        for name, position in self.plan[start:]:
            h = host.run_blocks(h, done, position)
            done = position
            h = self._apply_seed(self.seeds[name], h)
        return host.head(host.run_blocks(h, done, host.n_blocks))

    def forward_with_shadows(self, x: torch.Tensor):
        """``(output, {seed: shadow output})``; shadows only in ``"training"`` mode."""
        host = self.host
        h = host.stem(x)
        done, taps = 0, []
        for index, (name, position) in enumerate(self.plan):
            h = host.run_blocks(h, done, position)
            done = position
            taps.append((index, name, h))
            h = self._apply_seed(self.seeds[name], h)
        out = host.head(host.run_blocks(h, done, host.n_blocks))
        if self.mode != "training":
            return out, {}
        frozen = {n: p.detach() for n, p in self.named_parameters()}
        frozen.update({n: b.clone() for n, b in self.named_buffers()})
        shadows = {
            name: _shadow_run(self, frozen, self.seeds[name](at.detach()), index + 1)
            for index, name, at in taps
        }
        return out, shadows

    def incubation_loss(
        self, loss_fn, output: torch.Tensor, shadows: dict, *, baseline=None
    ) -> torch.Tensor:
        # No incubation gain is measured by hand: the baseline has nothing to feed.
        return sum((loss_fn(s) for s in shadows.values()), torch.zeros(()))


class _RunFrom(nn.Module):
    """``StaticEquivalent.run_from`` as a module, for ``functional_call``."""

    def __init__(self, net: StaticEquivalent) -> None:
        super().__init__()
        self.net = net

    def forward(self, h: torch.Tensor, start: int) -> torch.Tensor:
        return self.net.run_from(h, start)


def _shadow_run(net: StaticEquivalent, frozen: dict, h: torch.Tensor, start: int) -> torch.Tensor:
    params = {f"net.{n}": t for n, t in frozen.items()}
    # As the model does: the dict names every tensor, so no walk of the tree for tied weights.
    return functional_call(_RunFrom(net), params, (h, start), strict=False, tie_weights=False)


def build_morphogenetic(
    cfg: BenchConfig, stage: SeedStage, alpha: float = 0.5
) -> MorphogeneticModel:
    """A CNN host with a ``cfg.blueprint`` seed in every slot, driven to ``stage``.

    The gates are permissive (the benchmark measures step time, not whether a seed deserves to
    advance) and the seeds' weights are re-drawn, so a seed is not the identity: an accidental
    use of its output would then show in the equality check. In BLENDING every alpha is
    ``alpha``, the static equivalent's blend weight.
    """
    torch.manual_seed(cfg.seed)
    host = CNNHost(num_classes=10, n_blocks=cfg.blocks, base_channels=cfg.width)
    model = model_at_stage(
        host, stage, slots=SLOTS, blueprint=cfg.blueprint, device=cfg.device, seed=cfg.seed
    )
    if stage == SeedStage.BLENDING:
        for slot in model.seed_slots.values():
            slot.set_alpha(alpha)
    return model


def build_static(model: MorphogeneticModel, mode: str, alpha: float = 0.5) -> StaticEquivalent:
    """The static equivalent of ``model`` for ``mode``, with copies of its weights."""
    seeds = {name: copy.deepcopy(model.seed_slots[name].seed) for name in SLOTS}
    positions = model.host.injection_positions
    # A copy of the host carries the model's slot routes (forward hooks): strip them.
    host = strip_routes(copy.deepcopy(model.host))
    static = StaticEquivalent(host, seeds, positions, mode, alpha)
    return static.to(model.seed_slots[SLOTS[0]].alpha_tensor.device)


def check_equivalent(static: nn.Module, morph: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Assert both networks give the same outputs and matching gradients on ``x``.

    Outputs must be bit-identical on CPU; on an accelerator, where kernel selection may differ
    between two modules, within ``rtol=1e-4, atol=1e-5``. Runs in eval mode (batch-norm running
    statistics untouched) and leaves the gradients cleared.
    """
    static.eval()
    morph.eval()
    (out_s, shadows_s), (out_m, shadows_m) = (
        static.forward_with_shadows(x),
        morph.forward_with_shadows(x),
    )
    if list(shadows_s) != list(shadows_m) or not all(
        torch.equal(shadows_s[k], shadows_m[k]) for k in shadows_s
    ):
        raise AssertionError("static and morphogenetic shadow outputs differ")
    same = (
        torch.equal(out_s, out_m)
        if x.device.type == "cpu"
        else torch.allclose(out_s, out_m, rtol=1e-4, atol=1e-5)
    )
    if not same:
        diff = (out_s - out_m).abs().max().item()
        raise AssertionError(f"static and morphogenetic outputs differ (max |diff| {diff:.3g})")
    (
        F.cross_entropy(out_s, y)
        + static.incubation_loss(lambda o: F.cross_entropy(o, y), out_s, shadows_s)
    ).backward()
    (
        F.cross_entropy(out_m, y)
        + morph.incubation_loss(lambda o: F.cross_entropy(o, y), out_m, shadows_m)
    ).backward()
    grads_s = [p.grad for p in static.parameters()]
    grads_m = [p.grad for p in morph.parameters()]
    if len(grads_s) != len(grads_m):
        raise AssertionError(f"parameter counts differ: {len(grads_s)} vs {len(grads_m)}")
    rtol, atol = (1e-4, 1e-6) if x.device.type == "cpu" else (1e-3, 1e-5)
    for i, (gs, gm) in enumerate(zip(grads_s, grads_m, strict=True)):
        if (gs is None) != (gm is None) or (
            gs is not None and not torch.allclose(gs, gm, rtol=rtol, atol=atol)
        ):
            raise AssertionError(f"gradient of parameter #{i} differs between the two networks")
    static.zero_grad(set_to_none=True)
    morph.zero_grad(set_to_none=True)
    static.train()
    morph.train()


# --------------------------------------------------------------------------------- timing


def time_interleaved(
    step_a: Callable[[], None],
    step_b: Callable[[], None],
    *,
    reps: int,
    warmup: int,
    block: int,
    device: torch.device,
) -> tuple[list[float], list[float]]:
    """Seconds per ``block`` consecutive steps of A and of B, interleaved (AB, BA, AB, ...)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(step: Callable[[], None]) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(block):
            step()
        sync()
        return time.perf_counter() - start

    times_a: list[float] = []
    times_b: list[float] = []
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection in the middle of one arm's sample would be charged to that arm
    try:
        for i in range(warmup + reps):
            if i % 2 == 0:
                ta, tb = timed(step_a), timed(step_b)
            else:
                tb, ta = timed(step_b), timed(step_a)
            if i >= warmup:
                times_a.append(ta)
                times_b.append(tb)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times_a, times_b


def _data(cfg: BenchConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return image_batch(cfg.batch, cfg.image, seed=cfg.seed + 1, device=device)


def _sgd(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def _time_steps(cfg: BenchConfig, name_a: str, a: nn.Module, name_b: str, b: nn.Module, x, y):
    """One training step of ``a`` against one of ``b``, interleaved, each with its own SGD."""
    times_a, times_b = time_interleaved(
        make_train_step(a, _sgd(a, cfg.lr), x, y),
        make_train_step(b, _sgd(b, cfg.lr), x, y),
        reps=cfg.reps,
        warmup=cfg.warmup,
        block=1,
        device=torch.device(cfg.device),
    )
    return _summary(name_a, times_a, name_b, times_b, block=1)


def compare_stage(cfg: BenchConfig, stage: SeedStage, mode: str) -> dict:
    """Static equivalent (A) against the morphogenetic model (B) in ``stage``."""
    morph = build_morphogenetic(cfg, stage)
    static = build_static(morph, mode)
    x, y = _data(cfg, torch.device(cfg.device))
    check_equivalent(static, morph, x, y)
    return _time_steps(cfg, "static", static, "morph", morph, x, y)


#: What ``--profile`` can profile: a stage, with the static equivalent's mode for it, or
#: ``telemetry`` (the TRAINING model stepping without and with a capture every step).
PROFILED = {
    "training": (SeedStage.TRAINING, "training"),
    "blending": (SeedStage.BLENDING, "blending"),
    "fossilized": (SeedStage.FOSSILIZED, "fossilized"),
    "telemetry": (SeedStage.TRAINING, None),
}


def profile_stage(cfg: BenchConfig, name: str, top: int = 12) -> str:
    """Where a step's time goes: ``cfg.reps`` training steps of the static equivalent and of
    the morphogenetic model in stage ``name``, each under ``cProfile`` after ``cfg.warmup``
    untimed steps; the functions with the most own time, per arm, and the time per step
    (profiling slows both arms alike, so compare the rows, not the absolute times).
    ``telemetry``: the arms are the TRAINING model without and with a capture every step."""
    stage, mode = PROFILED[name]
    morph = build_morphogenetic(cfg, stage)
    x, y = _data(cfg, torch.device(cfg.device))
    if mode is None:
        arms = (("plain", morph, 0), ("telemetry", morph, 1))
    else:
        static = build_static(morph, mode)
        check_equivalent(static, morph, x, y)
        arms = (("static", static, 0), ("morph", morph, 0))
    lines = []
    for label, net, stride in arms:
        step = make_train_step(net, _sgd(net, cfg.lr), x, y, telemetry_stride=stride)
        for _ in range(cfg.warmup):
            step()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(cfg.reps):
            step()
        profiler.disable()
        stats = pstats.Stats(profiler)
        per_step = 1e3 * stats.total_tt / cfg.reps
        lines.append(f"## {label}: {per_step:.3f} ms per step under the profiler")
        lines.append("| own ms/step | total ms/step | calls/step | function |")
        lines.append("| --- | --- | --- | --- |")
        rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
        for (path, line, func), (_, calls, own, total, _) in rows:
            where = f"{Path(path).name}:{line}({func})" if line else func
            lines.append(
                f"| {1e3 * own / cfg.reps:.3f} | {1e3 * total / cfg.reps:.3f} | "
                f"{calls / cfg.reps:g} | `{where}` |"
            )
        lines.append("")
    return "\n".join(lines)


def compare_cost(cfg: BenchConfig, stage: SeedStage) -> dict:
    """The bare host (A: same weights, no slots) against the model in ``stage`` (B): what the
    stage costs per step, seeds and (in TRAINING) the shadow pass included."""
    morph = build_morphogenetic(cfg, stage)
    bare = strip_routes(copy.deepcopy(morph.host))
    x, y = _data(cfg, torch.device(cfg.device))
    return _time_steps(cfg, "host", bare, "morph", morph, x, y)


def compare_injected(cfg: BenchConfig) -> dict:
    """The built-in model in TRAINING (A) against the same host given the same slots by
    ``inject_slots`` (B), same weights: what the generic shadow pass (a replay of the whole
    forward) costs against the built-in one (which starts at the slot)."""
    morph = build_morphogenetic(cfg, SeedStage.TRAINING)
    host = strip_routes(copy.deepcopy(morph.host))
    targets = {name: morph.host.injection_targets[name] for name in SLOTS}
    x, y = _data(cfg, torch.device(cfg.device))
    injected = inject_slots(host, targets, example_input=x)
    injected.load_state_dict({k.removeprefix("host."): v for k, v in morph.state_dict().items()})
    check_equivalent(morph, injected, x, y)
    return _time_steps(cfg, "builtin", morph, "injected", injected, x, y)


#: The incubation rows' seeds: where a run on the task grows its first and second seeds.
INCUBATION_SLOTS = {"incubation_1seed": ("early",), "incubation_2seeds": ("early", "mid")}


def compare_incubation(cfg: BenchConfig, slots: tuple[str, ...]) -> dict:
    """The task's bare host (A) against the same host with a ``cfg.blueprint`` seed in TRAINING
    at each of ``slots`` (B), stepping as a run on the task does: the shadow pass on every
    ``shadow_every``-th step, plain steps in between. Timed in blocks of ``shadow_every`` steps,
    so every sample holds one shadow step: the ratio is what incubation costs per training step
    of a run."""
    task = get_task(cfg.task)
    every = cfg.shadow_every or task.shadow_every
    torch.manual_seed(cfg.seed)
    host = build_host(task.topology, {**task.host_config, "num_classes": 10})
    morph = model_at_stage(
        host,
        SeedStage.TRAINING,
        slots=slots,
        blueprint=cfg.blueprint,
        device=cfg.device,
        seed=cfg.seed,
    )
    bare = strip_routes(copy.deepcopy(morph.host))
    device = torch.device(cfg.device)
    channels = task.host_config.get("in_channels", 3)
    x, y = image_batch(
        cfg.batch, cfg.task_image, channels=channels, seed=cfg.seed + 1, device=device
    )
    block = every
    reps = max(3, cfg.reps // block) if block > 1 else cfg.reps
    warmup = max(1, math.ceil(cfg.warmup / block)) if block > 1 else cfg.warmup
    times_bare, times_morph = time_interleaved(
        make_train_step(bare, _sgd(bare, cfg.lr), x, y),
        make_train_step(morph, _sgd(morph, cfg.lr), x, y, shadow_every=every),
        reps=reps,
        warmup=warmup,
        block=block,
        device=device,
    )
    return {
        **_summary("host", times_bare, "morph", times_morph, block=block),
        "task": task.name,
        "shadow_every": every,
        "seeds": list(slots),
    }


class _Compiled:
    """A network whose shadow-pass forward runs under ``torch.compile`` (compiling the module
    itself would leave ``forward_with_shadows``, a method, eager), for the compiled rows."""

    def __init__(self, net: nn.Module, backend: str) -> None:
        self.net = net
        self.forward_with_shadows = torch.compile(net.forward_with_shadows, backend=backend)

    def incubation_loss(self, *args, **kwargs):
        return self.net.incubation_loss(*args, **kwargs)

    def parameters(self):
        return self.net.parameters()


def compare_compiled(cfg: BenchConfig, stage: SeedStage, mode: str) -> dict:
    """``compare_stage`` with both networks compiled (``cfg.compile_backend``). Compilation
    happens in the warm-up samples, so the ratio is of compiled steps only."""
    morph = build_morphogenetic(cfg, stage)
    static = build_static(morph, mode)
    x, y = _data(cfg, torch.device(cfg.device))
    check_equivalent(static, morph, x, y)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return _time_steps(
            cfg,
            "static",
            _Compiled(static, cfg.compile_backend),
            "morph",
            _Compiled(morph, cfg.compile_backend),
            x,
            y,
        )


def compile_cost(cfg: BenchConfig) -> dict:
    """Seconds the first training step takes after each lifecycle change of one slot, less a
    steady step, for a compiled model (``cfg.compile_backend``): the cold compile with no
    seed, then one recompilation per stage a seed enters."""
    torch.manual_seed(cfg.seed)
    host = CNNHost(num_classes=10, n_blocks=cfg.blocks, base_channels=cfg.width)
    model = MorphogeneticModel(host, slots=list(SLOTS)).to(cfg.device)
    x, y = _data(cfg, torch.device(cfg.device))
    torch._dynamo.reset()
    compiled = _Compiled(model, cfg.compile_backend)
    step = make_train_step(compiled, _sgd(model, cfg.lr), x, y)
    sync = torch.cuda.synchronize if cfg.device.startswith("cuda") else (lambda: None)
    slot = model.seed_slots["mid"]

    def to_training() -> None:
        model.germinate_seed(cfg.blueprint, "cost", slot="mid")
        model.advance_stage(SeedStage.TRAINING, slot="mid")

    def to_blending() -> None:
        slot.state.stage = SeedStage.BLENDING  # the compatibility surface: set directly
        slot.set_alpha(0.5)

    def to_fossilized() -> None:
        slot.state.stage = SeedStage.FOSSILIZED

    def timed(n: int) -> float:
        sync()
        start = time.perf_counter()
        for _ in range(n):
            step()
        sync()
        return (time.perf_counter() - start) / n

    out = {}
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        for name, change in (
            ("dormant", None),
            ("training", to_training),
            ("blending", to_blending),
            ("fossilized", to_fossilized),
        ):
            if change is not None:
                change()
            first = timed(1)
            steady = timed(max(3, cfg.warmup))
            out[f"{name}_compile_s"] = round(first - steady, 3)
            out[f"{name}_step_ms"] = round(steady * 1e3, 4)
    return out


def compare_telemetry(cfg: BenchConfig, stride: int) -> dict:
    """The same TRAINING model stepping without (A) and with (B) telemetry every ``stride``."""
    device = torch.device(cfg.device)
    morph = build_morphogenetic(cfg, SeedStage.TRAINING)
    optimizer = _sgd(morph, cfg.lr)
    x, y = _data(cfg, device)
    block = max(1, stride)  # every sample then contains exactly one capture
    # Blocks of ``stride`` steps: a fifth as many samples (twice the steps) as a 1-step row.
    reps = max(3, cfg.reps // 5) if block > 1 else cfg.reps
    warmup = max(1, math.ceil(cfg.warmup / block)) if block > 1 else cfg.warmup
    times_plain, times_telem = time_interleaved(
        make_train_step(morph, optimizer, x, y),
        make_train_step(morph, optimizer, x, y, telemetry_stride=stride),
        reps=reps,
        warmup=warmup,
        block=block,
        device=device,
    )
    captures = morph.seed_slots[SLOTS[0]].state.metrics.gradient_captures
    if captures == 0:
        raise RuntimeError("telemetry arm captured nothing")
    return _summary("plain", times_plain, "telemetry", times_telem, block=block)


def _warm_process(cfg: BenchConfig) -> None:
    """A few untimed steps before anything is measured: the first steps of a process pay for
    kernel selection, allocator growth and lazy initialisation, which would bias the first row."""
    device = torch.device(cfg.device)
    morph = build_morphogenetic(cfg, SeedStage.BLENDING)
    static = build_static(morph, "blending")
    x, y = _data(cfg, device)
    for model in (static, morph):
        step = make_train_step(model, _sgd(model, cfg.lr), x, y, telemetry_stride=0)
        for _ in range(max(2, cfg.warmup)):
            step()
    morph.capture_gradient_telemetry()


def _summary(name_a: str, times_a: list[float], name_b: str, times_b: list[float], block: int):
    med_a = statistics.median(times_a) / block
    med_b = statistics.median(times_b) / block
    # Ratio of each interleaved pair: a second, pairing-aware estimate of the same quantity.
    paired = statistics.median(b / a for a, b in zip(times_a, times_b, strict=True))
    return {
        f"{name_a}_ms": round(med_a * 1e3, 4),
        f"{name_b}_ms": round(med_b * 1e3, 4),
        "ratio": round(med_b / med_a, 4),
        "paired_ratio": round(paired, 4),
        "samples": len(times_a),
        "steps_per_sample": block,
    }


def run(
    cfg: BenchConfig, *, rows: tuple[str, ...] = DEFAULT_ROWS, log: Callable[[str], None] = print
) -> dict:
    """Run the comparisons named in ``rows`` (:data:`DEFAULT_ROWS` by default), in :data:`ROWS`
    order. ``compile_cost`` goes into the result under its own key, not into ``ratios``.

    Args:
        cfg: what to build and how long to time it.
        rows: a subset of :data:`ROWS`.
        log: receives one line per row as it finishes.

    Returns:
        The result dictionary (see ``--json``); its ``ratios`` and ``medians`` hold ``rows``.

    Raises:
        ValueError: an unknown row name.
    """
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        raise ValueError(f"unknown row(s) {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()
    started = time.perf_counter()
    _warm_process(cfg)
    results: dict[str, dict] = {}
    plan = {
        "training": lambda: compare_stage(cfg, SeedStage.TRAINING, "training"),
        "blending": lambda: compare_stage(cfg, SeedStage.BLENDING, "blending"),
        "fossilized": lambda: compare_stage(cfg, SeedStage.FOSSILIZED, "fossilized"),
        "telemetry_stride1": lambda: compare_telemetry(cfg, 1),
        "telemetry_stride10": lambda: compare_telemetry(cfg, 10),
        "cost_training": lambda: compare_cost(cfg, SeedStage.TRAINING),
        "cost_blending": lambda: compare_cost(cfg, SeedStage.BLENDING),
        "cost_fossilized": lambda: compare_cost(cfg, SeedStage.FOSSILIZED),
        "injected_training": lambda: compare_injected(cfg),
        **{
            name: (lambda slots=slots: compare_incubation(cfg, slots))
            for name, slots in INCUBATION_SLOTS.items()
        },
        "compiled_training": lambda: compare_compiled(cfg, SeedStage.TRAINING, "training"),
        "compiled_blending": lambda: compare_compiled(cfg, SeedStage.BLENDING, "blending"),
        "compiled_fossilized": lambda: compare_compiled(cfg, SeedStage.FOSSILIZED, "fossilized"),
    }
    extra = {}
    for name in (row for row in ROWS if row in rows):
        if name == "compile_cost":
            extra["compile_cost"] = compile_cost(cfg)
            costs = extra["compile_cost"]
            log(
                f"{name:<20} "
                + "  ".join(
                    f"{stage} {costs[stage + '_compile_s']:.2f} s"
                    for stage in ("dormant", "training", "blending", "fossilized")
                )
            )
            continue
        results[name] = plan[name]()
        r = results[name]
        base, other = list(r)[:2]
        log(
            f"{name:<20} {base} {r[base]:9.3f} ms  {other} {r[other]:9.3f} ms  "
            f"ratio {r['ratio']:.4f}  (paired {r['paired_ratio']:.4f}, n={r['samples']})"
        )
    device = torch.device(cfg.device)
    return {
        "device": _device_name(device),
        "ratios": {name: r["ratio"] for name, r in results.items()},
        "medians": results,
        **extra,
        "config": {**asdict(cfg), "threads": threads},
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "date": datetime.date.today().isoformat(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}"


def parse_args(
    argv: list[str] | None = None,
) -> tuple[BenchConfig, tuple[str, ...], bool, str | None]:
    """The command line as ``(config, rows to run, whether to print JSON)``."""
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=d.device, help="cpu or cuda[:n] (default: %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="batch size (default: %(default)s)")
    p.add_argument("--image", type=int, default=d.image, help="input size (default: %(default)s)")
    p.add_argument("--width", type=int, default=d.width, help="host base width (%(default)s)")
    p.add_argument("--blocks", type=int, default=d.blocks, help="host blocks (%(default)s)")
    p.add_argument("--blueprint", default=d.blueprint, help="seed blueprint (%(default)s)")
    p.add_argument("--reps", type=int, default=d.reps, help="timed samples per arm (%(default)s)")
    p.add_argument("--warmup", type=int, default=d.warmup, help="warm-up samples (%(default)s)")
    p.add_argument(
        "--threads",
        type=int,
        default=d.threads,
        help="torch threads; 0 = torch's default (%(default)s)",
    )
    p.add_argument("--seed", type=int, default=d.seed, help="RNG seed (%(default)s)")
    p.add_argument(
        "--rows",
        nargs="+",
        choices=ROWS,
        default=list(DEFAULT_ROWS),
        metavar="ROW",
        help=f"rows to measure, of {', '.join(ROWS)} (default: all but the compiled ones)",
    )
    p.add_argument(
        "--compile-backend",
        default=d.compile_backend,
        help="torch.compile backend of the compiled rows (%(default)s)",
    )
    p.add_argument(
        "--task",
        default=d.task,
        help="the incubation rows' task: its host, at --task-image pixels (%(default)s)",
    )
    p.add_argument(
        "--task-image", type=int, default=d.task_image, help="the task's input size (%(default)s)"
    )
    p.add_argument(
        "--shadow-every",
        type=int,
        default=None,
        help="the incubation rows' shadow pass schedule (default: the task's)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--profile",
        choices=sorted(PROFILED),
        default=None,
        help="instead of timing, profile one stage's steps (cProfile, --reps steps per arm); "
        "telemetry: the TRAINING model without and with a capture every step",
    )
    a = p.parse_args(argv)
    try:
        task = get_task(a.task)
    except ValueError as exc:
        p.error(str(exc))
    if task.topology != "cnn":
        p.error(f"--task must be an image task (a CNN host), not {task.name!r}")
    if a.shadow_every is not None and a.shadow_every < 1:
        p.error("--shadow-every must be >= 1")
    for name in ("batch", "image", "width", "blocks", "reps", "task_image"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup < 0 or a.threads < 0:
        p.error("--warmup and --threads must be >= 0")
    cfg = BenchConfig(
        device=a.device,
        batch=a.batch,
        image=a.image,
        width=a.width,
        blocks=a.blocks,
        blueprint=a.blueprint,
        reps=a.reps,
        warmup=a.warmup,
        threads=a.threads,
        seed=a.seed,
        compile_backend=a.compile_backend,
        task=a.task,
        task_image=a.task_image,
        shadow_every=a.shadow_every,
    )
    return cfg, tuple(a.rows), a.json, a.profile


def main(argv: list[str] | None = None) -> int:
    cfg, rows, as_json, profile = parse_args(argv)
    if profile is not None:
        torch.set_num_threads(cfg.threads or torch.get_num_threads())
        print(profile_stage(cfg, profile))
        return 0
    result = run(cfg, rows=rows)
    if as_json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

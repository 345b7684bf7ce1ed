"""One prepared check for a GPU machine (issue 4): overhead, host/device syncs, recompilations.

Three sections, each independent (a failure in one is reported and the others still run):

1. **timing**: ``step_overhead.py`` (run as its own process) on CUDA at the reference
   configuration (batch 512, 32x32 inputs, CNN base width 32, three ``conv_light`` seeds at
   early/mid/late, SGD), plus the telemetry row at base width 64, next to the reference
   implementation's numbers.
2. **sync**: for TRAINING, TRAINING with the leak hook armed (isolation required but
   ``isolate_gradients`` off), gated BLENDING and FOSSILIZED, the steps between two telemetry
   captures run under ``torch.cuda.set_sync_debug_mode("error")``: any host/device
   synchronisation in forward, backward or the optimizer step raises and is reported. Each
   capture then runs under ``"warn"`` and its synchronisations are counted (by design: one per
   capture). A fifth case captures as the trainer does (``wait=False``, the leak hook armed):
   its count says whether folding the previous capture waits on the device.
3. **recompiles**: a ``torch.compile``-d model goes through a whole lifecycle, DORMANT ->
   GERMINATED -> TRAINING -> BLENDING (the alpha ramp, several epochs) -> PROBATIONARY (with a
   counterfactual forward at alpha 0) -> FOSSILIZED, with a train and an eval pass every epoch.
   Graphs compiled per phase are counted with a counting backend and the guard that failed is
   taken from dynamo's recompile log. The alpha ramp must compile nothing after its first epoch.
   On CUDA the training steps after each epoch's first also run under sync-debug "error".

Usage on the GPU machine::

    python benchmarks/gpu_check.py            # everything, CUDA, inductor (several minutes)
    python benchmarks/gpu_check.py --json     # same, the last line one JSON object

Without CUDA it exits with status 2 and says so. ``--dry-run`` runs every section on CPU (tiny
sizes, the ``eager`` dynamo backend) to test the script itself; it is expected to exit 0. There
the sync section runs its code path but cannot detect a synchronisation (that needs CUDA), so it
checks only the isolation-violation counts; timing and recompiles check the same things as on
CUDA. Exit status 1 means a check failed (a sync between captures, an unexpected isolation
count, the alpha ramp recompiled, the compiled model left the lifecycle) or a section crashed.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import re
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

from esper.kasmina import CNNHost, MorphogeneticModel
from esper.leyline import SeedStage
from esper.testing import (
    image_batch,
    make_train_step,
    model_at_stage,
    permissive_gates,
    perturb_seed,
    set_contribution,
)

#: The benchmark the timing section runs, as its own process (benchmarks never import each
#: other: the shared helpers live in ``esper.testing``).
STEP_OVERHEAD = Path(__file__).resolve().with_name("step_overhead.py")
#: The reference configuration's slots, as in ``step_overhead``.
SLOTS = ("early", "mid", "late")

# Step time over the static-equivalent network, reference implementation on an NVIDIA H200
# (batch 512, 32x32, CNN base width 32, three conv_light seeds, SGD).
REFERENCE = {
    "training": 1.09,
    "blending": 1.08,
    "telemetry_stride1": 1.32,
    "telemetry_stride1@width64": 1.51,
}


# ------------------------------------------------------------------------------- 1. timing


def _run_step_overhead(*flags: str, echo: bool = True) -> dict:
    """Run ``step_overhead.py`` with ``flags`` in a fresh process and return its JSON result
    (its last line of output); with ``echo``, print its rows indented as they come.

    Raises:
        RuntimeError: the benchmark exited with a non-zero status (its stderr is passed through).
    """
    cmd = [sys.executable, str(STEP_OVERHEAD), *flags, "--json"]
    last = None
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if echo and last is not None:  # one line behind: the JSON line is not echoed
                print("  " + last, flush=True)
            last = line.rstrip("\n")
    if proc.returncode != 0 or last is None:
        raise RuntimeError(f"step_overhead.py exited with status {proc.returncode}: {cmd}")
    return json.loads(last)


def check_timing(args) -> dict:
    common = ["--device", args.device, "--batch", str(args.batch)]
    common += ["--reps", str(args.reps), "--warmup", str(args.warmup)]
    # The dry run keeps one thread (see main); on the GPU machine torch picks its own count.
    common += ["--threads", "1" if args.dry_run else "0"]
    result = _run_step_overhead(*common, "--width", str(args.width))
    wide = _run_step_overhead(
        *common, "--width", str(args.wide_width), "--rows", "telemetry_stride1", echo=False
    )
    stride1 = wide["medians"]["telemetry_stride1"]
    print(f"  telemetry_stride1 at width {args.wide_width}: ratio {stride1['ratio']:.4f}")
    result["ratios"][f"telemetry_stride1@width{args.wide_width}"] = stride1["ratio"]
    result["medians"][f"telemetry_stride1@width{args.wide_width}"] = stride1
    return result


# ------------------------------------------------------------------------------- 2. syncs


def _set_sync_mode(mode, on_cuda: bool) -> None:
    """``torch.cuda.set_sync_debug_mode`` on CUDA; a no-op in a CPU dry run (no CUDA to ask)."""
    if on_cuda:
        torch.cuda.set_sync_debug_mode(mode)


def _count_sync_warnings(fn, on_cuda: bool) -> int | None:
    """Run ``fn`` under sync-debug "warn"; the synchronisations it made (None off CUDA)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _set_sync_mode("warn", on_cuda)
        try:
            fn()
        finally:
            _set_sync_mode(0, on_cuda)
    if not on_cuda:
        return None
    return sum("synchroniz" in str(w.message) for w in caught)


def _steps_without_sync(step, n: int, on_cuda: bool) -> str | None:
    """Run ``n`` steps under sync-debug "error"; return the error text, or None if none synced."""
    if on_cuda:
        torch.cuda.synchronize()
    _set_sync_mode("error", on_cuda)
    try:
        for _ in range(n):
            step()
    except RuntimeError as exc:
        return "".join(traceback.format_exception_only(exc)).strip()
    finally:
        _set_sync_mode(0, on_cuda)
    return None


def check_syncs(args) -> dict:
    # (label, stage, blend, leak hook armed, capture waits): the last case captures as the
    # trainer does, its readback behind the step (each capture folds the one before).
    cases = [
        ("TRAINING", SeedStage.TRAINING, "linear", False, True),
        ("TRAINING, leak hook armed", SeedStage.TRAINING, "linear", True, True),
        ("BLENDING, gated alpha", SeedStage.BLENDING, "gated", False, True),
        ("FOSSILIZED", SeedStage.FOSSILIZED, "linear", False, True),
        ("TRAINING, leak, wait=False", SeedStage.TRAINING, "linear", True, False),
    ]
    on_cuda = torch.device(args.device).type == "cuda"
    rows = []
    for label, stage, blend, leaky, wait in cases:
        torch.manual_seed(0)
        host = CNNHost(num_classes=10, n_blocks=3, base_channels=args.width)
        model = model_at_stage(
            host, stage, slots=SLOTS, blueprint=args.blueprint, blend=blend, device=args.device
        )
        if leaky:
            # Isolation is required in TRAINING; with the input not detached the slot arms its
            # leak hook, whose accumulation must not synchronise either.
            for slot in model.seed_slots.values():
                slot.isolate_gradients = False
        x, y = image_batch(args.batch, 32, seed=1, device=args.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        step = make_train_step(model, optimizer, x, y)
        for _ in range(3):  # warm-up outside the check: lazy init, allocator, cuDNN heuristics
            step()
        model.capture_gradient_telemetry()
        errors, capture_syncs = [], []
        for _ in range(args.sync_captures):
            error = _steps_without_sync(step, args.sync_steps, on_cuda)
            if error:
                errors.append(error)
                break
            capture = functools.partial(model.capture_gradient_telemetry, wait=wait)
            capture_syncs.append(_count_sync_warnings(capture, on_cuda))
        model.flush_telemetry()  # a capture behind the step counts once folded
        violations = sum(s.state.metrics.isolation_violations for s in model.seed_slots.values())
        expect_leak = leaky
        rows.append(
            {
                "case": label,
                "steps_checked": args.sync_steps * len(capture_syncs),
                "sync_between_captures": bool(errors),
                "error": errors[0] if errors else None,
                "syncs_per_capture": max(capture_syncs) if on_cuda and capture_syncs else None,
                "isolation_violations": violations,
                "violations_as_expected": (violations > 0) == expect_leak,
            }
        )
        print(
            f"  {label:<28} sync between captures: {'YES' if errors else 'no '}  "
            f"syncs/capture: {rows[-1]['syncs_per_capture']}  violations: {violations}",
            flush=True,
        )
        if errors:
            print("    " + errors[0].replace("\n", "\n    "))
    return {
        "sync_detection_active": on_cuda,
        "cases": rows,
        "ok": not any(r["sync_between_captures"] for r in rows)
        and all(r["violations_as_expected"] for r in rows),
    }


# ------------------------------------------------------------------------------- 3. recompiles


class _LimitLog(logging.Handler):
    """Notices dynamo's warning that a frame hit the recompile (cache size) limit."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "recompile_limit" in message or "cache_size_limit" in message:
            self.messages.append(message.splitlines()[0])


class _RecompileLog(logging.Handler):
    """Collects dynamo's "Recompiling function ..." records (the first failed guard of each)."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Lines "- 0/k: <guard>  # <source>" list, per cached graph, the guard that failed; the
        # first is the newest graph's. Keep a short form of each distinct guard.
        found = []
        for line in record.getMessage().splitlines():
            m = re.match(r"\s*- \d+/\d+: (.*)", line)
            if m:
                found.append(_short_guard(m.group(1)))
        self.reasons.append(", ".join(dict.fromkeys(found)) or "?")


def _short_guard(text: str) -> str:
    """``___check_obj_id(self._modules['seed_slots']._modules['mid'].state.stage, 1)`` ->
    ``seed_slots.mid.state.stage``; global-state guards -> what changed."""
    text = text.split("#")[0].strip()
    if "GLOBAL_STATE" in text:
        return text.split("changed:")[-1].strip() if "changed:" in text else "global state"
    text = re.sub(r"\._modules\['([^']+)'\]", r".\1", text)
    text = re.sub(r"\._(?:parameters|buffers)\['([^']+)'\]", r".\1", text)
    m = re.search(r"\(?(?:L\['self'\]|self)\.([\w.]+)", text)
    return m.group(1) if m else text[:60]


def _attach_recompile_log() -> tuple[_RecompileLog, list[logging.Logger]]:
    torch._logging.set_logs(recompiles=True)
    handler = _RecompileLog()
    loggers = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.endswith("__recompiles")
    ]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False  # keep the record out of stderr; the table reports it
    return handler, loggers


def check_recompiles(args) -> dict:
    import torch._dynamo  # noqa: F401 - makes torch._dynamo.utils importable below
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # A growing model compiles one graph per stage and grad mode (train steps, eval passes);
    # dynamo's default limit of 8 is below a full lifecycle, so raise it as a user would.
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = args.recompile_limit
    else:
        torch._dynamo.config.cache_size_limit = args.recompile_limit
    device = torch.device(args.device)
    inner = torch._dynamo.lookup_backend(args.backend)
    graphs = [0]

    def counting_backend(gm, example_inputs):
        graphs[0] += 1
        return inner(gm, example_inputs)

    handler, loggers = _attach_recompile_log()
    limit_log = _LimitLog()
    # dynamo warns on this logger; "torch._dynamo" does not propagate to "torch".
    limit_logger = logging.getLogger("torch._dynamo.convert_frame")
    limit_logger.addHandler(limit_log)
    torch.manual_seed(0)
    # G2 and G5 opened so the walk needs no real learning; G3 left at its defaults so the alpha
    # ramp runs its full course (blending_steps epochs) before PROBATIONARY.
    host = CNNHost(num_classes=10, n_blocks=3, base_channels=args.width)
    model = MorphogeneticModel(
        host,
        device=device,
        slots=SLOTS,
        gate_config=permissive_gates(full_alpha_ramp=True),
        blending_steps=args.blending_steps,
    )
    compiled = torch.compile(model, backend=counting_backend)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = image_batch(args.batch, 32, seed=1, device=device)
    sync_check = device.type == "cuda" and not args.no_sync_in_lifecycle

    phases: list[dict] = []
    sync_errors: list[str] = []
    # Each epoch: one step that captures telemetry (and may compile), then plain steps.
    capture_step = make_train_step(compiled, optimizer, x, y, telemetry_stride=1)
    plain_step = make_train_step(compiled, optimizer, x, y)

    def live_seeds_have_grads() -> bool:
        """After a backward: every seed that is in the forward (not GERMINATED) got a gradient."""
        return all(
            p.grad is not None
            for s in model.seed_slots.values()
            if s.seed is not None and s.stage != SeedStage.GERMINATED
            for p in s.seed.parameters()
        )

    def epoch(label: str) -> None:
        before, reasons_before = graphs[0], len(handler.reasons)
        model.train()
        capture_step()  # may compile, so outside any sync check
        grads_ok = live_seeds_have_grads()
        if sync_check:  # the steps between two captures must not synchronise
            error = _steps_without_sync(plain_step, args.steps_per_epoch - 1, on_cuda=True)
            if error:
                sync_errors.append(f"{label}: {error}")
        else:
            for _ in range(args.steps_per_epoch - 1):
                plain_step()
        model.capture_gradient_telemetry()
        model.eval()
        with torch.no_grad():
            # The compiled model must follow the lifecycle: compare it with the eager forward.
            gap = (compiled(x) - model(x)).abs().max().item()
            if any(s.stage == SeedStage.PROBATIONARY for s in model.seed_slots.values()):
                with model.force_alpha(0.0):  # the counterfactual evaluation
                    gap = max(gap, (compiled(x) - model(x)).abs().max().item())
        model.train()
        stages = sorted({s.stage.name for s in model.seed_slots.values()})
        alphas = sorted({round(s.alpha, 3) for s in model.seed_slots.values()})
        phases.append(
            {
                "phase": label,
                "stages": stages,
                "alpha": alphas,
                "new_graphs": graphs[0] - before,
                "reasons": handler.reasons[reasons_before:],
                "max_abs_gap_compiled_vs_eager": gap,
                "compiled_matches_eager": gap <= args.match_atol,
                "live_seeds_have_grads": grads_ok,
            }
        )
        print(
            f"  {label:<22} stages {','.join(stages):<13} alpha {alphas}  "
            f"new graphs {graphs[0] - before}  |compiled-eager| {gap:.2g}  "
            f"seed grads {'ok' if grads_ok else 'MISSING'}",
            flush=True,
        )

    try:
        epoch("DORMANT")
        for i, name in enumerate(SLOTS):
            model.germinate_seed(args.blueprint, f"gpu-{name}", slot=name)
            # Random weights, so a stale graph (a seed ignored or used wrongly) shows in outputs.
            perturb_seed(model.seed_slots[name], seed=i, fan_in_scaled=True)
        optimizer.add_param_group({"params": model.seed_parameters()})
        epoch("GERMINATED")
        model.step_epoch()  # -> TRAINING
        epoch("TRAINING")
        model.step_epoch()  # -> BLENDING (G2 after one epoch)
        n = 0
        while all(s.stage == SeedStage.BLENDING for s in model.seed_slots.values()):
            n += 1
            epoch(f"BLENDING epoch {n}")
            model.step_epoch()  # alpha ramp; -> PROBATIONARY when G3 passes
            if n > args.blending_steps + 5:
                raise RuntimeError("the alpha ramp never reached PROBATIONARY")
        epoch("PROBATIONARY")
        for name, slot in model.seed_slots.items():
            set_contribution(slot, 1.0)  # as if measured by the force_alpha(0) pass above
            model.fossilize_seed(slot=name)
        for k in (1, 2):
            epoch(f"FOSSILIZED epoch {k}")
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.propagate = True
        limit_logger.removeHandler(limit_log)
        torch._logging.set_logs()

    blending = [p for p in phases if p["phase"].startswith("BLENDING")]
    ramp_recompiles = sum(p["new_graphs"] for p in blending[1:])
    limit = getattr(torch._dynamo.config, "recompile_limit", None) or getattr(
        torch._dynamo.config, "cache_size_limit", None
    )
    limit_hit = bool(limit_log.messages)
    return {
        "backend": args.backend,
        "phases": phases,
        "total_graphs": graphs[0],
        "graph_breaks": sum(counters.get("graph_break", {}).values()),
        "alpha_ramp_recompiles": ramp_recompiles,
        "blending_epochs": len(blending),
        "recompile_limit": limit,
        "recompile_limit_hit": limit_hit,
        "recompile_limit_messages": limit_log.messages,
        "sync_checked": sync_check,
        "sync_errors": sync_errors,
        "compiled_follows_lifecycle": all(
            p["compiled_matches_eager"] and p["live_seeds_have_grads"] for p in phases
        ),
        "ok": ramp_recompiles == 0
        and not sync_errors
        and not limit_hit
        and all(p["compiled_matches_eager"] and p["live_seeds_have_grads"] for p in phases),
    }


# ------------------------------------------------------------------------------- driver


def _table(results: dict) -> str:
    lines = ["", "== gpu_check summary =="]
    timing = results.get("timing")
    if isinstance(timing, dict) and "ratios" in timing:
        lines.append(f"device: {timing['device']}")
        lines.append(f"{'row':<28}{'measured':>10}{'reference':>11}")
        for name, ratio in timing["ratios"].items():
            ref = REFERENCE.get(name)
            lines.append(f"{name:<28}{ratio:>10.3f}{ref if ref else '-':>11}")
    sync = results.get("sync")
    if isinstance(sync, dict) and "cases" in sync:
        if not sync["sync_detection_active"]:
            lines.append("sync: dry run on CPU, nothing detected by construction")
        lines.append(f"{'sync case':<30}{'sync?':>7}{'syncs/capture':>15}{'violations':>12}")
        for r in sync["cases"]:
            flag = "YES" if r["sync_between_captures"] else "no"
            cap = r["syncs_per_capture"]
            lines.append(f"{r['case']:<30}{flag:>7}{cap!s:>15}{r['isolation_violations']:>12}")
    rec = results.get("recompiles")
    if isinstance(rec, dict) and "phases" in rec:
        lines.append(
            f"recompiles ({rec['backend']}): {rec['total_graphs']} graphs in total, "
            f"{rec['graph_breaks']} graph breaks, limit {rec['recompile_limit']}"
            f"{' (HIT)' if rec['recompile_limit_hit'] else ''}"
        )
        lines.append(f"  {'phase':<22}{'graphs':>7}{'=eager':>8}{'grads':>7}  first failed guard")
        for p in rec["phases"]:
            why = "; ".join(dict.fromkeys(p["reasons"]))[:80]
            match = "yes" if p["compiled_matches_eager"] else "NO"
            grads = "ok" if p["live_seeds_have_grads"] else "NO"
            lines.append(f"  {p['phase']:<22}{p['new_graphs']:>7}{match:>8}{grads:>7}  {why}")
        lines.append(f"alpha ramp recompiles after its first epoch: {rec['alpha_ramp_recompiles']}")
        lines.append(f"compiled model follows the lifecycle: {rec['compiled_follows_lifecycle']}")
    for name, value in results.items():
        if isinstance(value, dict) and "error" in value and len(value) == 1:
            lines.append(f"{name}: FAILED: {value['error'].splitlines()[-1]}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda[:n] (default), or cpu with --dry-run")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, eager backend")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--width", type=int, default=32, help="CNN base width (default 32)")
    p.add_argument("--wide-width", type=int, default=64, help="second width for telemetry")
    p.add_argument("--reps", type=int, default=100, help="timed samples per arm")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--backend", default=None, help="dynamo backend (inductor; eager in dry run)")
    p.add_argument("--blueprint", default="conv_light")
    p.add_argument("--blending-steps", type=int, default=5, help="epochs of the alpha ramp")
    p.add_argument("--steps-per-epoch", type=int, default=6)
    p.add_argument(
        "--recompile-limit", type=int, default=32, help="dynamo recompile limit (default 32)"
    )
    p.add_argument("--sync-steps", type=int, default=10, help="steps between captures")
    p.add_argument("--sync-captures", type=int, default=3)
    p.add_argument("--no-sync-in-lifecycle", action="store_true")
    p.add_argument(
        "--match-atol",
        type=float,
        default=1e-3,
        help="largest |compiled - eager| output difference accepted per phase (default 1e-3)",
    )
    p.add_argument("--skip", action="append", default=[], choices=["timing", "sync", "recompiles"])
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = p.parse_args(argv)
    if args.dry_run:
        args.device = "cpu"
        args.batch, args.width, args.wide_width = 4, 4, 8
        args.reps, args.warmup = 3, 1
        args.steps_per_epoch = max(2, min(args.steps_per_epoch, 3))
        args.backend = args.backend or "eager"
    args.backend = args.backend or "inductor"
    if args.steps_per_epoch < 2 or args.sync_steps < 1 or args.sync_captures < 1:
        p.error("--steps-per-epoch must be >= 2, --sync-steps and --sync-captures >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_check: CUDA is not available here (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}). Run it on a GPU machine, or use --dry-run to exercise the "
            "script on CPU.",
            file=sys.stderr,
        )
        return 2
    if args.dry_run:
        # One thread: on a shared CPU a 2-thread OpenMP team stalls whenever a worker is
        # descheduled, which made tiny steps take ~0.7 s instead of ~2 ms.
        torch.set_num_threads(1)
    results: dict = {"args": vars(args), "torch": torch.__version__}
    sections = [("timing", check_timing), ("sync", check_syncs), ("recompiles", check_recompiles)]
    for name, fn in sections:
        if name in args.skip:
            continue
        if name == "sync" and not args.device.startswith("cuda"):
            print("[sync] dry run: the code path runs, but sync detection needs CUDA")
        print(f"[{name}]", flush=True)
        started = time.perf_counter()
        try:
            results[name] = fn(args)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other sections
            traceback.print_exc()
            results[name] = {"error": "".join(traceback.format_exception_only(exc)).strip()}
        print(f"[{name}] {time.perf_counter() - started:.1f} s", flush=True)
    print(_table(results), flush=True)
    failed = [
        name
        for name in ("sync", "recompiles")
        if isinstance(results.get(name), dict) and results[name].get("ok") is False
    ]
    errored = [n for n, v in results.items() if isinstance(v, dict) and set(v) == {"error"}]
    results["failed"] = failed + errored
    if args.json:
        print(json.dumps(results, default=str), flush=True)
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job: train a task's host statically or let it grow under the heuristic controller.

Usage::

    esper train heuristic --task digits --seed 0
    python -m esper.scripts.train static --task pyref --seed 1
    esper train --resume runs/heuristic-digits-s0-20261126-120000

Every run directory holds ``config.json``, ``events.jsonl`` and ``checkpoint.pt`` (the whole
state, rewritten every ``--checkpoint-every`` epochs), and at the end ``summary.json`` and
``model.pt``.

Under ``torchrun --nproc_per_node N`` one model trains on N processes (gloo on CPU, NCCL on
CUDA); rank 0 alone writes the run directory. See ``docs/distributed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from esper._atomic import atomic_path
from esper.kasmina import MorphogeneticModel, list_blueprints
from esper.kasmina.blending import BLEND_ALGORITHMS
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_GRADIENT_TELEMETRY_STRIDE,
    DEFAULT_GROWTH_PATIENCE,
    DEFAULT_THREADS,
    DEFAULT_TIMING,
    TelemetryEvent,
    TelemetryEventType,
    get_topology,
)
from esper.nissa import (
    ConsoleSink,
    DigestSink,
    JsonlSink,
    LiveSink,
    LoggerContext,
    LoggerUnavailableError,
    TelemetryHub,
    available_loggers,
    check_logger,
    create_logger,
    resumed_state,
)
from esper.scripts.checkpoints import (
    ResumeError,
    read_run_checkpoint,
    remove_stale_temporaries,
    write_run_checkpoint,
)
from esper.tamiyo import HeuristicConfig, HeuristicController
from esper.tamiyo.heuristic import TIMINGS
from esper.tolaria import distributed as ranks
from esper.tolaria.config import TrainerConfig, check_compile_backend
from esper.tolaria.data import DataNotFoundError
from esper.tolaria.tasks import build_task_host, get_task, list_tasks
from esper.tolaria.trainer import Trainer

MODES = ("heuristic", "static", "ppo")
#: Seconds a rank waits in a collective for the others before it gives up (a dead or hung rank).
DEFAULT_DIST_TIMEOUT = 60.0


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line (exit code 2), without the usage block."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


class UsageError(ValueError):
    """Bad command-line input: printed as one line, exit code 2."""


@dataclass(frozen=True)
class RunConfig:
    """One training run, as data (saved to ``config.json``). ``None`` means the task's default."""

    mode: str
    task: str = "digits"
    seed: int = 0
    epochs: int | None = None
    slots: tuple[str, ...] | None = None
    blueprints: tuple[str, ...] | None = None
    blend: str = DEFAULT_BLEND_ALGORITHM
    device: str = "cpu"
    data_dir: str | None = None
    run_dir: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    gradient_telemetry_stride: int = DEFAULT_GRADIENT_TELEMETRY_STRIDE
    #: Multiply the host's base width by this (a static host "widened" for a fair comparison).
    width_multiplier: float = 1.0
    #: Intra-op threads (``torch.set_num_threads``); part of the result on a CPU.
    threads: int = DEFAULT_THREADS
    #: Write ``checkpoint.pt`` every this many epochs (and after the last).
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    #: The most seeds the run may germinate, stacked ones included (None: no bound).
    max_seeds: int | None = None
    #: When the heuristic grows: ``relative`` or ``plateau`` (see ``HeuristicConfig.timing``).
    timing: str = DEFAULT_TIMING
    #: The heuristic tries one seed at a time and germinates no more after this many seeds in a
    #: row were culled (0: never stops; see ``HeuristicConfig.patience``). None: leyline's
    #: default for a heuristic run (resolved here, so ``config.json`` keeps the number the run
    #: used), and nothing for the other modes.
    growth_patience: int | None = None
    #: The live view: True/False as asked with --live/--no-live; None: on when stdout is a
    #: terminal. Display only; it never changes what the run computes.
    live: bool | None = None
    #: Loggers that also receive the run's events (``--log tensorboard``), by registry name.
    log: tuple[str, ...] = ()
    #: ``ppo`` mode: the policy file; None means the policy shipped for the task.
    policy: str | None = None
    #: A ``torch.compile`` backend for the training and evaluation passes (None: eager).
    compile: str | None = None
    #: Steps between incubating seeds' shadow passes (None: the task's default).
    shadow_every: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.task not in list_tasks():
            raise UsageError(f"unknown task {self.task!r}; valid: {', '.join(list_tasks())}")
        if self.epochs is not None and self.epochs < 1:
            raise UsageError(f"--epochs must be >= 1, got {self.epochs}")
        if self.blend not in BLEND_ALGORITHMS:
            raise UsageError(f"unknown blend {self.blend!r}; valid: {', '.join(BLEND_ALGORITHMS)}")
        if self.gradient_telemetry_stride < 0:
            raise UsageError("--telemetry-stride must be >= 0")
        if self.width_multiplier <= 0:
            raise UsageError(f"--width-multiplier must be > 0, got {self.width_multiplier}")
        if self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.checkpoint_every < 1:
            raise UsageError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        if self.max_seeds is not None and self.max_seeds < 0:
            raise UsageError(f"--max-seeds must be >= 0, got {self.max_seeds}")
        if self.shadow_every is not None and self.shadow_every < 1:
            raise UsageError(f"--shadow-every must be >= 1, got {self.shadow_every}")
        if self.growth_patience is None and self.mode == "heuristic":
            object.__setattr__(self, "growth_patience", DEFAULT_GROWTH_PATIENCE)
        if self.growth_patience is not None and self.growth_patience < 0:
            raise UsageError(
                "--growth-patience must be >= 0 (0: never stop growing), "
                f"got {self.growth_patience}"
            )
        if self.growth_patience and self.mode != "heuristic":
            raise UsageError(f"--growth-patience is the heuristic's, not mode {self.mode}'s")
        if self.timing not in TIMINGS:
            raise UsageError(f"unknown --timing {self.timing!r}; valid: {', '.join(TIMINGS)}")
        if self.compile is not None:
            try:
                check_compile_backend(self.compile, "unknown --compile backend")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        if self.policy is not None and self.mode != "ppo":
            raise UsageError(f"--policy drives mode ppo, not {self.mode}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise UsageError(f"unknown device {self.device!r}; valid: cpu, cuda, cuda:N")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"device {self.device!r} requested but CUDA is not available")
        for name in self.log:
            # Before the run directory exists: a missing package must not leave a folder behind.
            try:
                check_logger(name)
            except (ValueError, LoggerUnavailableError) as exc:
                raise UsageError(str(exc)) from None
        spec = get_task(self.task)
        if self.blueprints:
            valid = list_blueprints(spec.topology)
            bad = [b for b in self.blueprints if b not in valid]
            if bad:
                raise UsageError(
                    f"unknown blueprint {bad[0]!r} for task {self.task!r} ({spec.topology}); "
                    f"valid: {', '.join(valid)}"
                )

    @classmethod
    def from_dict(cls, raw: dict) -> RunConfig:
        """The run's configuration from its ``config.json`` (extra keys are ignored)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        # Runs written before ``timing`` existed grew on the plateau rule; resuming one must not
        # change its controller under it.
        values.setdefault("timing", "plateau")
        # ...and before ``shadow_every`` existed, every step ran the shadow pass.
        values.setdefault("shadow_every", 1)
        # ...and before ``growth_patience`` existed, a heuristic run never stopped growing.
        if values.get("mode") == "heuristic":
            values.setdefault("growth_patience", 0)
        for key in ("slots", "blueprints", "log"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def trainer_config(self, spec, epochs: int) -> TrainerConfig:
        """How the trainer trains this run: the task's defaults, overridden by flags."""
        return TrainerConfig(
            optimizer=spec.optimizer,
            lr=self.lr or spec.lr,
            seed_lr=spec.seed_lr,
            batch_size=self.batch_size or spec.batch_size,
            epoch_samples=spec.epoch_samples,
            total_epochs=epochs,
            telemetry_stride=self.gradient_telemetry_stride,
            shadow_every=self.shadow_every or spec.shadow_every,
            seed=self.seed,
            max_seeds=self.max_seeds,
            compile=self.compile,
        )


def _load_policy(path: str | None, task: str, topology: str, slots: tuple[str, ...]):
    """The policy for a ``ppo`` run and where it came from: ``path``, or the one shipped for
    the task. Raises UsageError (one line) when it is missing, damaged or made for another run."""
    from esper.simic.policy import Policy, PolicyError, shipped_policy_path

    where = Path(path) if path is not None else shipped_policy_path(task)
    if path is None and not where.is_file():
        raise UsageError(
            f"no policy is shipped for task {task!r}; train one with `esper simic train --task "
            f"{task} --episodes N --out POLICY` and pass --policy POLICY"
        )
    try:
        policy = Policy.load(where)
        policy.check_fits(task, topology, slots, str(where))
    except PolicyError as exc:
        raise UsageError(str(exc)) from None
    return policy, where


def _default_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.mode}-{cfg.task}-s{cfg.seed}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _prepare_run_dir(cfg: RunConfig) -> Path:
    path = Path(cfg.run_dir) if cfg.run_dir else _default_run_dir(cfg)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--run-dir {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(
            f"--run-dir {path} already holds files; choose a new folder (nothing was overwritten)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _shared_run_dir(cfg: RunConfig) -> Path:
    """The run directory, prepared by rank 0 and told to the others (a default name has a time
    stamp: only one rank may choose it). A refusal reaches every rank as the same UsageError."""
    context = ranks.DistContext.current()
    if context is None:
        return _prepare_run_dir(cfg)
    outcome = None
    if context.is_main:
        try:
            outcome = ("ok", str(_prepare_run_dir(cfg)))
        except UsageError as exc:
            outcome = ("error", str(exc))
    status, value = ranks.broadcast_object(outcome)
    if status == "error":
        raise UsageError(value)
    return Path(value)


def _write_json(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def run_training(cfg: RunConfig, console: Console | None = None) -> dict:
    """Run one training job end to end and return its summary (also written to disk).

    Raises:
        UsageError: bad configuration (unknown slot, existing run directory, ...).
        DataNotFoundError: the task's local data is missing.
    """
    console = console or Console()
    spec = get_task(cfg.task)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = spec.load(cfg.data_dir, cfg.seed)
    slots = tuple(cfg.slots) if cfg.slots else spec.slots
    host_spec = spec if cfg.width_multiplier == 1.0 else widen_task(spec, cfg.width_multiplier)
    host = build_task_host(host_spec, data)
    bad = [s for s in slots if s not in host.injection_points]
    if bad:
        raise UsageError(
            f"unknown slot {bad[0]!r} for task {cfg.task!r}; "
            f"valid: {', '.join(host.injection_points)}"
        )
    epochs = cfg.epochs or spec.epochs
    policy = None
    if cfg.mode == "ppo":
        policy, where = _load_policy(cfg.policy, cfg.task, spec.topology, slots)
        cfg = replace(cfg, policy=str(where))
        trained = (policy.episode.get("epochs"), policy.episode.get("width_multiplier"))
        this_run = (epochs, cfg.width_multiplier)
        if None not in trained and trained != this_run:
            # Allowed (the inputs fit), but the policy never saw runs like this one.
            console.print(
                f"note: {where} was trained on {trained[0]}-epoch runs at width x{trained[1]:g}; "
                f"this run is {this_run[0]} epochs at x{this_run[1]:g} (--epochs, "
                "--width-multiplier)",
                highlight=False,
                soft_wrap=True,
            )
    run_dir = _shared_run_dir(cfg)
    model = MorphogeneticModel(host, device=cfg.device, slots=slots)
    context = ranks.DistContext.current()
    if context is not None and not context.is_main:
        # Every rank built the same model from the same seed; from here each draws its own
        # dropout and seed-init numbers (a new seed is rank 0's anyway: DDP broadcasts it).
        torch.manual_seed(cfg.seed + 7919 * context.rank)
    cfg = replace(cfg, epochs=epochs, slots=slots, run_dir=str(run_dir))
    trainer_cfg = cfg.trainer_config(spec, epochs)
    config_payload = {
        **asdict(cfg),
        "slots": list(slots),
        "trainer": trainer_cfg.to_dict(),
        "resolved": {"host": host.config, "topology": spec.topology},
    }
    if data.provenance is not None:
        config_payload["data"] = data.provenance
    config_payload["world_size"] = 1 if context is None else context.world_size
    if context is None or context.is_main:
        _write_json(run_dir / "config.json", config_payload)
    return _execute(cfg, trainer_cfg, data, model, run_dir, console, checkpoint=None, policy=policy)


def resume_training(
    run_dir: str | Path, console: Console | None = None, *, live: bool | None = None
) -> dict | None:
    """Continue a killed run from its last checkpoint, with its original configuration.

    ``live`` overrides the run's ``--live`` setting: the view is display only and never
    changes what the run computes.

    The event log is cut back to the checkpoint's position, so no event is written twice, and
    the run ends exactly as an uninterrupted one would (bit for bit on the CPU).

    Returns:
        The summary, or None when the run had already finished (nothing is changed then).

    Raises:
        ResumeError: not a run directory, or its checkpoint is missing, truncated or corrupt
            (nothing in the folder is changed).
        DataNotFoundError: the task's local data is missing.
    """
    console = console or Console()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ResumeError(f"{run_dir}: no such run directory")
    if (run_dir / "summary.json").is_file():
        console.print(
            f"run {run_dir} already finished; nothing to resume", highlight=False, soft_wrap=True
        )
        return None
    config_path = run_dir / "config.json"
    try:
        raw = json.loads(config_path.read_text())
        cfg = RunConfig.from_dict(raw)
        if live is not None:
            cfg = replace(cfg, live=live)
        trainer_cfg = TrainerConfig.from_dict(raw["trainer"])
    except FileNotFoundError:
        raise ResumeError(f"{config_path}: missing; is this a run directory?") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ResumeError(f"{config_path}: unreadable run configuration ({exc})") from None
    checkpoint = read_run_checkpoint(run_dir)
    arch = checkpoint["architecture"]
    if list(arch.get("slots", ())) != list(cfg.slots or ()) or arch.get("host_config") != raw.get(
        "resolved", {}
    ).get("host"):
        raise ResumeError(
            f"{run_dir / 'checkpoint.pt'}: its model (slots {arch.get('slots')}) is not the one "
            f"{config_path.name} describes; it belongs to another run"
        )
    offset = checkpoint["trainer"].get("telemetry", {}).get("sinks", {}).get("0", {}).get("offset")
    events = run_dir / "events.jsonl"
    if offset is not None and (not events.is_file() or events.stat().st_size < offset):
        raise ResumeError(f"{events}: shorter than the checkpoint's {offset} bytes")
    spec = get_task(cfg.task)
    torch.set_num_threads(cfg.threads)
    data = spec.load(cfg.data_dir, cfg.seed)
    model = MorphogeneticModel.from_architecture(checkpoint["architecture"], device=cfg.device)
    context = ranks.DistContext.current()
    world = 1 if context is None else context.world_size
    written = int(raw.get("world_size", 1))
    if written != world:
        raise ResumeError(
            f"{run_dir} was trained on {written} process(es); resume it with the same number "
            f"(this is {world}: torchrun --nproc_per_node {written} ... --resume {run_dir})"
        )
    if context is None or context.is_main:
        remove_stale_temporaries(run_dir)
    if context is not None and not context.is_main:
        console = _quiet_console()
    console.print(
        f"resuming {run_dir} after epoch {checkpoint['epoch']}", highlight=False, soft_wrap=True
    )
    return _execute(cfg, trainer_cfg, data, model, run_dir, console, checkpoint=checkpoint)


def _quiet_console() -> Console:
    """Where a rank other than 0 prints: nowhere (rank 0 speaks for the run)."""
    return Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process


def _execute(
    cfg: RunConfig,
    trainer_cfg: TrainerConfig,
    data,
    model: MorphogeneticModel,
    run_dir: Path,
    console: Console,
    *,
    checkpoint: dict | None,
    policy=None,
) -> dict:
    """The epoch loop of a new or resumed run, its checkpoints, and the final files. A ``ppo``
    run's policy is read from ``cfg.policy`` unless the caller has it already."""
    spec = get_task(cfg.task)
    epochs = cfg.epochs
    if cfg.compile is not None and ranks.DistContext.current() is not None:
        raise UsageError("--compile under torchrun is not supported yet; drop --compile")
    controller = None
    if cfg.mode == "heuristic":
        controller = HeuristicController(
            spec.topology,
            HeuristicConfig(
                blueprints=cfg.blueprints,
                blend_algorithm=cfg.blend,
                timing=cfg.timing,
                patience=cfg.growth_patience,
            ),
            seed=cfg.seed,
        )
    elif cfg.mode == "ppo":
        from esper.simic.policy import PolicyController

        if policy is None:  # a resumed run
            policy, _ = _load_policy(cfg.policy, cfg.task, spec.topology, tuple(cfg.slots))
        controller = PolicyController(policy)
    started = time.perf_counter()
    earlier = float(checkpoint["wall_seconds"]) if checkpoint else 0.0
    context = ranks.DistContext.current()
    main = context is None or context.is_main
    if not main:
        console = _quiet_console()
        if checkpoint is not None:
            # The telemetry state is rank 0's (its event log's length); this rank has no log.
            checkpoint = {**checkpoint, "trainer": {**checkpoint["trainer"], "telemetry": {}}}

    def save() -> None:
        wall = earlier + time.perf_counter() - started
        state = trainer.state_dict()  # under torchrun a collective: every rank takes part
        if main:
            write_run_checkpoint(run_dir, trainer, wall_seconds=wall, state=state)

    digest = DigestSink()
    with TelemetryHub() as hub:
        if main:
            hub.add_sink(JsonlSink(run_dir / "events.jsonl"))  # sink 0: its offset is saved
        live = (console.is_terminal if cfg.live is None else cfg.live) and main
        if live and console.is_terminal:
            # A resumed run's view starts with the events before its checkpoint.
            prior = (
                resumed_state(run_dir / "events.jsonl", checkpoint["epoch"]) if checkpoint else None
            )
            hub.add_sink(LiveSink(console, state=prior))
        elif main:
            if live:
                console.print("--live needs a terminal (stdout is not one): plain lines follow")
            live = False
            hub.add_sink(ConsoleSink(console))
        start_epoch = int(checkpoint["epoch"]) if checkpoint else 0
        for name in cfg.log if main else ():
            hub.add_sink(create_logger(name, LoggerContext(run_dir, start_epoch=start_epoch)))
        hub.add_sink(digest)
        trainer = Trainer(model, data, trainer_cfg, controller=controller, hub=hub)
        if checkpoint is not None:
            try:
                trainer.load_state_dict(checkpoint["trainer"])
            except (KeyError, TypeError, ValueError, RuntimeError) as exc:
                # The event log is only cut once everything before it has loaded.
                reason = " ".join(str(exc).split())[:160]
                raise ResumeError(
                    f"{run_dir / 'checkpoint.pt'}: does not fit this run's model ({reason})"
                ) from None
        else:
            hub.emit(
                TelemetryEvent(
                    TelemetryEventType.RUN_STARTED,
                    epoch=0,
                    data={
                        "mode": cfg.mode,
                        "task": cfg.task,
                        "seed": cfg.seed,
                        "epochs": epochs,
                        "slots": list(cfg.slots),
                    },
                )
            )
            save()  # a kill during the first epoch resumes from here
        progress = count_progress(
            f"[bold]{cfg.mode}[/] {cfg.task} s{cfg.seed}",
            console,
            hidden=live,  # the live view has its own progress bar
        )
        with progress:
            bar = progress.add_task("epochs", total=epochs, completed=trainer.epoch)
            while trainer.epoch < epochs:
                r = trainer.run_epoch()
                if not live:
                    _print_epoch(console, r)
                if r.epoch % cfg.checkpoint_every == 0 or r.epoch == epochs:
                    save()
                progress.advance(bar)
        wall = earlier + time.perf_counter() - started
        summary = _summary(cfg, epochs, trainer, wall)
        summary["world_size"] = 1 if context is None else context.world_size
        hub.emit(
            TelemetryEvent(
                TelemetryEventType.RUN_COMPLETED,
                epoch=epochs,
                # Wall-clock times stay out of the event log, so a resumed run's log equals
                # an uninterrupted one's; summary.json has them.
                data={k: v for k, v in summary.items() if k not in _NOT_IN_EVENTS},
            )
        )
        trainer.close()
    if context is not None:
        # The run checks itself: every rank's model and event stream, compared.
        states = ranks.gather_objects(ranks.state_digest(model))
        summary["ranks_identical"] = len(set(states)) == 1
        summary["rank_state_digests"] = states
        summary["rank_event_digests"] = ranks.gather_objects(digest.hexdigest())
    if not main:
        return summary
    model.save_checkpoint(run_dir / "model.pt", extra={"summary_path": "summary.json"})
    _write_json(run_dir / "summary.json", summary)
    _print_final(console, summary, run_dir)
    return summary


def count_progress(label: str, console: Console, *, hidden: bool = False) -> Progress:
    """A transient bar with ``done/total`` and the elapsed time, drawn only on a terminal."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=hidden or not console.is_terminal,
    )


def _print_epoch(console: Console, r) -> None:
    seeds = " ".join(f"{n}:{v['stage'][:4]}({v['alpha']:.2f})" for n, v in r.seeds.items())
    console.print(
        f"epoch {r.epoch:3d}  train {r.train_loss:.4f}  val {r.val_loss:.4f}  "
        f"acc {r.val_accuracy:6.2f}%  {seeds}" + ("  [red]rollback[/]" if r.rolled_back else ""),
        highlight=False,
        soft_wrap=True,
    )


def widen_task(spec, factor: float):
    """The task with its host widened by ``factor`` (for static comparisons at equal size)."""
    widened = get_topology(spec.topology).widen(spec.host_config, factor)
    return replace(spec, host_config=widened)


#: Summary keys left out of the run_completed event (wall-clock times, and the seeds, which
#: have events of their own).
_NOT_IN_EVENTS = ("seeds", "wall_seconds", "counterfactual_seconds")


def _summary(cfg: RunConfig, epochs: int, trainer: Trainer, wall: float) -> dict:
    hist = trainer.history
    last = hist[-1]
    counts = trainer.model.count_parameters()
    seeds = [r.to_dict() for r in trainer.records.values()]
    # The final model, not the last epoch's measurement: the lifecycle step after that
    # measurement may have culled or started blending a seed, and the summary describes the
    # model that is saved.
    final_val_loss, final_val_accuracy = trainer.evaluate()
    test = {}
    if trainer.test_x is not None:  # measured once, on the final model
        test_loss, test_accuracy = trainer.evaluate("test")
        test = {"test_accuracy": test_accuracy, "test_loss": test_loss}
    return {
        "mode": cfg.mode,
        "task": cfg.task,
        "seed": cfg.seed,
        "epochs": epochs,
        "width_multiplier": cfg.width_multiplier,
        "final_val_accuracy": final_val_accuracy,
        "final_val_loss": final_val_loss,
        "final_train_loss": last.train_loss,
        "best_val_accuracy": max(h.val_accuracy for h in hist),
        "best_val_loss": min(h.val_loss for h in hist),
        **test,
        "host_params": counts["host"],
        "total_params": counts["total"],
        "fossilized": sum(1 for s in seeds if s["final_stage"] == "FOSSILIZED"),
        "culled": sum(1 for s in seeds if "CULLED" in s["stages"]),
        "rollbacks": trainer.governor.rollbacks,
        # Compute spent: matmul/conv/attention FLOPs (see esper.tolaria.flops), and the
        # parameters trained summed over epochs.
        "train_flops": round(trainer.train_flops.total),
        "eval_flops": round(trainer.eval_flops.total),
        # The counterfactual passes' part of eval_flops and of the wall time.
        "counterfactual_flops": round(sum(h.counterfactual_flops for h in hist)),
        "counterfactual_seconds": round(sum(h.counterfactual_seconds for h in hist), 3),
        "param_epochs": sum(h.params for h in hist),
        "wall_seconds": round(wall, 3),
        "seeds": seeds,
    }


def _print_final(console: Console, summary: dict, run_dir: Path) -> None:
    table = Table(title=f"{summary['mode']} run on {summary['task']} (seed {summary['seed']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "final_val_accuracy",
        "best_val_accuracy",
        "final_val_loss",
        "test_accuracy",
        "test_loss",
        "host_params",
        "total_params",
        "fossilized",
        "culled",
        "wall_seconds",
    ):
        if key not in summary:  # a task without a test split
            continue
        value = summary[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    for s in summary["seeds"]:
        console.print(
            f"  {s['seed_id']}: {' -> '.join(s['stages'])}", highlight=False, soft_wrap=True
        )
    console.print(f"run directory: {run_dir}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "mode", nargs="?", default=None, help=f"one of: {', '.join(MODES)} (not with --resume)"
    )
    parser.add_argument("--task", default="digits", help=f"one of: {', '.join(list_tasks())}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the task's")
    parser.add_argument(
        "--slots", default=None, help="comma-separated injection points, e.g. early,mid,late"
    )
    parser.add_argument(
        "--blueprints", default=None, help="comma-separated blueprints the controller may grow"
    )
    parser.add_argument(
        "--blend", default=DEFAULT_BLEND_ALGORITHM, help=f"one of: {', '.join(BLEND_ALGORITHMS)}"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None, help="local data for cifar10 / tinystories")
    parser.add_argument("--run-dir", default=None, help="default: a new folder under runs/")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--telemetry-stride", type=int, default=DEFAULT_GRADIENT_TELEMETRY_STRIDE)
    parser.add_argument(
        "--width-multiplier",
        type=float,
        default=None,
        help="widen the host (static comparisons at equal parameters); default 1, or in mode "
        "ppo the width the policy was trained at",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"intra-op CPU threads (default {DEFAULT_THREADS}; the result depends on it)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULT_CHECKPOINT_EVERY,
        help="write checkpoint.pt every N epochs (default 1)",
    )
    parser.add_argument(
        "--max-seeds",
        type=int,
        default=None,
        metavar="N",
        help="germinate at most N seeds in the run, stacked ones included (default: no bound)",
    )
    parser.add_argument(
        "--shadow-every",
        type=int,
        default=None,
        metavar="N",
        help="run an incubating seed's shadow pass every N training steps (default: the "
        "task's; 1 is every step); the others train the host alone",
    )
    parser.add_argument(
        "--timing",
        default=DEFAULT_TIMING,
        help="when the heuristic grows: relative (default: once the validation loss curve has "
        "flattened relative to itself, and not too late to finish a seed) or plateau (after "
        "epochs without an accuracy gain)",
    )
    parser.add_argument(
        "--growth-patience",
        type=int,
        default=None,
        metavar="N",
        help="heuristic: try one seed at a time and germinate no more once N seeds in a row "
        f"were culled (default {DEFAULT_GROWTH_PATIENCE}; 0: never stop, and the next seed "
        "may grow while the last one blends); a fossilized seed starts the count again",
    )
    parser.add_argument(
        "--policy",
        default=None,
        metavar="POLICY",
        help="mode ppo: the policy file from `esper simic train` (default: the one shipped "
        "for the task)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a killed run from its checkpoint, with its original configuration",
    )
    parser.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a live view of slots, stages and numbers (default: on when stdout is a terminal)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="compile the training and evaluation passes with torch.compile (default backend "
        "inductor); each lifecycle change recompiles once",
    )
    parser.add_argument(
        "--dist-timeout",
        type=float,
        default=DEFAULT_DIST_TIMEOUT,
        metavar="SECONDS",
        help="under torchrun: how long a rank waits for the others in a collective before it "
        f"stops with an error (default {DEFAULT_DIST_TIMEOUT:g})",
    )
    parser.add_argument(
        "--log",
        action="append",
        default=None,
        metavar="NAME",
        help=f"also log the run to: {', '.join(available_loggers())} (repeat or comma-separate)",
    )


def _split(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items or None


def config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = _config_from_flags(args)
    if cfg.mode == "ppo":
        # A policy runs the runs it was trained on, unless the flags say otherwise.
        spec = get_task(cfg.task)
        policy, where = _load_policy(cfg.policy, cfg.task, spec.topology, cfg.slots or spec.slots)
        trained = policy.episode
        cfg = replace(
            cfg,
            policy=str(where),
            epochs=cfg.epochs if args.epochs is not None else trained.get("epochs"),
            width_multiplier=(
                cfg.width_multiplier
                if args.width_multiplier is not None
                else float(trained.get("width_multiplier", 1.0))
            ),
            # The incubation the policy learned under (every step before the setting existed).
            shadow_every=(
                cfg.shadow_every
                if args.shadow_every is not None
                else int(trained.get("shadow_every", 1))
            ),
        )
    return cfg


def _config_from_flags(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        mode=args.mode,
        task=args.task,
        seed=args.seed,
        epochs=args.epochs,
        slots=_split(args.slots),
        blueprints=_split(args.blueprints),
        blend=args.blend,
        device=args.device,
        data_dir=args.data_dir,
        run_dir=args.run_dir,
        batch_size=args.batch_size,
        lr=args.lr,
        gradient_telemetry_stride=args.telemetry_stride,
        width_multiplier=1.0 if args.width_multiplier is None else args.width_multiplier,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        max_seeds=args.max_seeds,
        shadow_every=args.shadow_every,
        timing=args.timing,
        growth_patience=args.growth_patience,
        policy=args.policy,
        compile=args.compile,
        live=args.live,
        # --log a --log b,c -> ("a", "b", "c"), each once, in the order given.
        log=tuple(dict.fromkeys(n for v in args.log or () for n in _split(v) or ())),
    )


def _flags_given_with_resume(args: argparse.Namespace) -> list[str]:
    """Options set on the command line besides --resume and --live/--no-live (a resumed run
    keeps its own config; the live view is display only)."""
    fresh = OneLineParser(prog="esper train")
    add_train_arguments(fresh)
    defaults = vars(fresh.parse_args([]))
    return [
        "mode" if key == "mode" else "--" + key.replace("_", "-")
        for key, default in defaults.items()
        if key not in ("resume", "live", "dist_timeout") and getattr(args, key, default) != default
    ]


def print_error(exc: Exception) -> None:
    """One unwrapped line on stderr, whatever the terminal width."""
    message = " ".join(str(exc).split())
    sys.stderr.write(f"esper: error: {message}\n")


class RankStopped(RuntimeError):
    """This rank was told to stop (SIGTERM: torchrun stops the others when one rank fails)."""


def _stop_on_sigterm(signum, frame) -> None:
    raise RankStopped("stopped by the launcher (SIGTERM), most likely because another rank failed")


def _lost_other_ranks(exc: RuntimeError) -> bool:
    """Whether ``exc`` says that a collective failed (a rank died or timed out) or that the
    launcher stopped this rank, rather than a fault of this rank's own."""
    if isinstance(exc, (RankStopped, torch.distributed.DistError)):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection closed", "timed out"))


def train_main(args: argparse.Namespace) -> int:
    """Run from parsed arguments; bad input is one line on stderr and exit code 2. Under
    torchrun, a rank that loses the others (one died, hangs past ``--dist-timeout``, or the
    launcher stops it) says so in one line and exits 1; the run directory keeps its last
    checkpoint."""
    context = None
    if not args.dist_timeout > 0:
        print_error(UsageError(f"--dist-timeout must be > 0 seconds, got {args.dist_timeout}"))
        return 2
    if ranks.launched_by_torchrun():
        context, args.device = ranks.init_from_env(args.device, args.dist_timeout)
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    together = False
    try:
        code = _train_main(args)
        together = True
        return code
    except (UsageError, ResumeError, DataNotFoundError) as exc:
        together = True  # every rank got here alike
        if context is None or context.is_main:  # every rank fails alike: one says so
            print_error(exc)
        return 2
    except RuntimeError as exc:
        if context is None or not _lost_other_ranks(exc):
            raise
        where = f" in {args.resume or args.run_dir}" if (args.resume or args.run_dir) else ""
        # Gloo prefixes its messages with a source location; the reader needs the words.
        reason = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", " ".join(str(exc).split()))
        reason = reason[:160] + ("..." if len(reason) > 160 else "")
        sys.stderr.write(
            f"esper: error: rank {context.rank} of {context.world_size}: lost the other ranks "
            f"({reason}); the last checkpoint{where} is intact: resume with the same torchrun "
            "command and --resume\n"
        )
        return 1
    finally:
        if context is not None:
            ranks.shutdown(together=together)


def _train_main(args: argparse.Namespace) -> int:
    if args.resume is not None:
        extra = _flags_given_with_resume(args)
        if extra:
            raise UsageError(
                f"--resume continues a run with its original configuration; drop {', '.join(extra)}"
            )
        resume_training(args.resume, live=args.live)
        return 0
    if args.mode is None:
        raise UsageError(f"a mode is required: one of {', '.join(MODES)} (or --resume RUN_DIR)")
    run_training(config_from_args(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m esper.scripts.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(parser)
    return train_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

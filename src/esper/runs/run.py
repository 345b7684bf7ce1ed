"""A training run with its directory: :class:`Run` (new or resumed, trained, saved, finished).

The run directory holds ``config.json`` (the spec, the trainer's configuration and what the run
resolved), ``events.jsonl``, ``checkpoint.pt`` (rewritten every ``checkpoint_every`` epochs) and
at the end ``summary.json`` and ``model.pt``. Under ``torchrun`` every rank builds and trains
the same run; rank 0 alone (:attr:`Run.is_main`) writes files and prints.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from esper._atomic import atomic_path
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import (
    ConsoleSink,
    DigestSink,
    JsonlSink,
    LiveSink,
    LoggerContext,
    TelemetryHub,
    create_logger,
    resumed_state,
)
from esper.runs.build import BuiltRun, build_run, trainer_config
from esper.runs.checkpoints import (
    read_run_checkpoint,
    remove_stale_temporaries,
    write_run_checkpoint,
)
from esper.runs.console import count_progress, print_epoch, print_final, quiet_console, say
from esper.runs.errors import ResumeError, UsageError
from esper.runs.spec import RunSpec
from esper.runs.summary import RunSummary
from esper.tolaria import distributed as ranks
from esper.tolaria.config import TrainerConfig
from esper.tolaria.trainer import Trainer

#: The event log is the hub's first sink, so its saved offset is found at this index.
EVENT_LOG_SINK = 0


def _default_run_dir(spec: RunSpec) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{spec.mode}-{spec.task}-s{spec.seed}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _prepare_run_dir(spec: RunSpec) -> Path:
    path = Path(spec.run_dir) if spec.run_dir else _default_run_dir(spec)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--run-dir {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(
            f"--run-dir {path} already holds files; choose a new folder (nothing was overwritten)"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def _shared_run_dir(spec: RunSpec) -> Path:
    """The run directory, prepared by rank 0 and told to the others (a default name has a time
    stamp: only one rank may choose it). A refusal reaches every rank as the same UsageError."""
    context = ranks.DistContext.current()
    if context is None:
        return _prepare_run_dir(spec)
    outcome = None
    if context.is_main:
        try:
            outcome = ("ok", str(_prepare_run_dir(spec)))
        except UsageError as exc:
            outcome = ("error", str(exc))
    status, value = ranks.broadcast_object(outcome)
    if status == "error":
        raise UsageError(value)
    return Path(value)


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def _policy_note(built: BuiltRun) -> str | None:
    """A note when a ``ppo`` run is not the kind of run its policy was trained on (allowed:
    the inputs fit, but the policy never saw runs like this one)."""
    if built.policy is None:
        return None
    trained = (built.policy.episode.get("epochs"), built.policy.episode.get("width_multiplier"))
    this_run = (built.spec.epochs, built.spec.width_multiplier)
    if None in trained or trained == this_run:
        return None
    return (
        f"note: {built.spec.policy} was trained on {trained[0]}-epoch runs at width "
        f"x{trained[1]:g}; this run is {this_run[0]} epochs at x{this_run[1]:g} (--epochs, "
        "--width-multiplier)"
    )


class Run:
    """One training run and its directory. Make one with :meth:`new` or :meth:`resume`, then
    :meth:`train` it (or drive ``run.trainer`` and call :meth:`save` and :meth:`finish`).
    Use it as a context manager, so its event log is closed however the run ends.

    Attributes:
        spec: the resolved run specification.
        run_dir: its directory.
        trainer: the trainer (``trainer.model`` is the model).
        is_main: whether this process writes files and prints (rank 0, or the only process).
    """

    def __init__(
        self,
        built: BuiltRun,
        run_dir: Path,
        hub: TelemetryHub,
        console: Console,
        *,
        live: bool,
        wall_before: float = 0.0,
    ) -> None:
        self.spec = built.spec
        self.run_dir = run_dir
        self.trainer: Trainer = built.trainer
        self.hub = hub
        self.console = console
        self.live = live
        self.context = ranks.DistContext.current()
        self.is_main = self.context is None or self.context.is_main
        self._digest = DigestSink()
        self._wall_before = wall_before
        self._started = time.perf_counter()
        self._closed = False

    # ------------------------------------------------------------------ making one

    @classmethod
    def new(cls, spec: RunSpec, *, console: Console | None = None, live: bool | None = None):
        """Start the run ``spec`` describes in a new directory (``spec.run_dir``, or a new
        folder under ``runs/``), and checkpoint it before its first epoch.

        Args:
            spec: the run.
            console: where it prints (a terminal by default).
            live: the live view; None means on when ``console`` is a terminal. Display only.

        Raises:
            UsageError: bad specification (unknown slot, a directory that holds files, ...);
                nothing is written then.
            DataNotFoundError: the task's local data is missing.
        """
        console = console or Console()
        if not ranks.is_main_process():
            console = quiet_console()
        _refuse_compile_under_torchrun(spec)
        hub = TelemetryHub()
        built = build_run(spec, hub=hub)
        with _closed_on_error(built):
            note = _policy_note(built)
            if note is not None:
                say(console, note)
            run_dir = _shared_run_dir(built.spec)
            built.spec = replace(built.spec, run_dir=str(run_dir))
            run = cls(built, run_dir, hub, console, live=False)
            if run.is_main:
                write_json(run_dir / "config.json", run._config_payload(built))
            run._attach_sinks(live, prior=None, start_epoch=0)
            run._emit_started()
            run.save()  # a kill during the first epoch resumes from here
        return run

    @classmethod
    def resume(cls, run_dir: str | Path, *, console: Console | None = None, live=None):
        """Continue a killed run from its last checkpoint, with its own configuration. The
        event log is cut back to the checkpoint's position, so no event is written twice, and
        the run ends as an uninterrupted one would (bit for bit on the CPU).

        Args:
            run_dir: the run's directory.
            console: where it prints.
            live: overrides the run's live view (display only).

        Returns:
            The run, or None when it had already finished (nothing is changed then).

        Raises:
            ResumeError: not a run directory, or its checkpoint is missing, truncated, corrupt
                or another run's (nothing in the folder is changed).
            DataNotFoundError: the task's local data is missing.
        """
        console = console or Console()
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise ResumeError(f"{run_dir}: no such run directory")
        if (run_dir / "summary.json").is_file():
            say(console, f"run {run_dir} already finished; nothing to resume")
            return None
        spec, started_with, raw = _read_config(run_dir)
        checkpoint = read_run_checkpoint(run_dir)
        _check_checkpoint_fits(run_dir, spec, raw, checkpoint)
        _refuse_compile_under_torchrun(spec)
        hub = TelemetryHub()
        built = build_run(spec, architecture=checkpoint["architecture"], hub=hub)
        with _closed_on_error(built):
            if trainer_config(built.spec, built.task) != started_with:
                raise ResumeError(
                    f"{run_dir / 'config.json'}: its trainer configuration is not the one this "
                    "version of esper builds from its settings; resume it with the version that "
                    "started it"
                )
            wall = checkpoint["wall_seconds"]
            run = cls(built, run_dir, hub, console, live=False, wall_before=wall)
            if run.is_main:
                remove_stale_temporaries(run_dir)
            else:
                run.console = quiet_console()
            say(run.console, f"resuming {run_dir} after epoch {checkpoint['epoch']}")
            prior = (run_dir / "events.jsonl", int(checkpoint["epoch"]))
            run._attach_sinks(live, prior, int(checkpoint["epoch"]))
            run._load(checkpoint)
        return run

    # ------------------------------------------------------------------ running it

    def train(self) -> RunSummary:
        """Train every remaining epoch, checkpointing on the way, and :meth:`finish`."""
        trainer, epochs = self.trainer, self.spec.epochs
        label = f"[bold]{self.spec.mode}[/] {self.spec.task} s{self.spec.seed}"
        # The live view has its own progress bar.
        with count_progress(label, self.console, hidden=self.live) as progress:
            bar = progress.add_task("epochs", total=epochs, completed=trainer.epoch)
            while trainer.epoch < epochs:
                r = trainer.run_epoch()
                if not self.live:
                    print_epoch(self.console, r)
                if r.epoch % self.spec.checkpoint_every == 0 or r.epoch == epochs:
                    self.save()
                progress.advance(bar)
        return self.finish()

    def save(self) -> None:
        """Write ``checkpoint.pt`` (under torchrun every rank takes part; rank 0 writes)."""
        state = self.trainer.state_dict()
        if self.is_main:
            wall = self._wall_seconds()
            write_run_checkpoint(self.run_dir, self.trainer, wall_seconds=wall, state=state)

    def finish(self) -> RunSummary:
        """Measure the final model, announce the end, close the event log, and (rank 0) write
        ``model.pt`` and ``summary.json``. Returns the summary."""
        summary = self._summary()
        self.hub.emit(
            TelemetryEvent(
                TelemetryEventType.RUN_COMPLETED, epoch=self.spec.epochs, data=summary.event_data()
            )
        )
        self.close()
        if self.context is not None:
            # The run checks itself: every rank's model and event stream, compared.
            states = ranks.gather_objects(ranks.state_digest(self.trainer.model))
            summary.ranks_identical = len(set(states)) == 1
            summary.rank_state_digests = states
            summary.rank_event_digests = ranks.gather_objects(self._digest.hexdigest())
        if self.is_main:
            self.trainer.model.save_checkpoint(
                self.run_dir / "model.pt", extra={"summary_path": "summary.json"}
            )
            write_json(self.run_dir / "summary.json", summary.to_dict())
            print_final(self.console, summary, self.run_dir)
        return summary

    def close(self) -> None:
        """Stop the trainer listening to its model and close the event log (idempotent)."""
        if not self._closed:
            self._closed = True
            self.trainer.close()
            self.hub.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def _wall_seconds(self) -> float:
        return float(self._wall_before) + time.perf_counter() - self._started

    def _config_payload(self, built: BuiltRun) -> dict:
        payload = {
            **built.spec.to_dict(),
            "trainer": self.trainer.config.to_dict(),
            "resolved": {"host": built.model.host.config, "topology": built.task.topology},
            "world_size": 1 if self.context is None else self.context.world_size,
        }
        if built.data.provenance is not None:
            payload["data"] = built.data.provenance
        return payload

    def _attach_sinks(self, live: bool | None, prior, start_epoch: int) -> None:
        """Sink 0 is the event log (its offset is saved), then the view, loggers, the digest."""
        hub, console = self.hub, self.console
        if self.is_main:
            hub.add_sink(JsonlSink(self.run_dir / "events.jsonl"))  # index EVENT_LOG_SINK
        wanted = (console.is_terminal if live is None else live) and self.is_main
        if wanted and console.is_terminal:
            # A resumed run's view starts with the events before its checkpoint.
            hub.add_sink(LiveSink(console, state=resumed_state(*prior) if prior else None))
        elif self.is_main:
            if wanted:
                console.print("--live needs a terminal (stdout is not one): plain lines follow")
            wanted = False
            hub.add_sink(ConsoleSink(console))
        else:
            self.console = quiet_console()
        for name in self.spec.log if self.is_main else ():
            hub.add_sink(create_logger(name, LoggerContext(self.run_dir, start_epoch=start_epoch)))
        hub.add_sink(self._digest)
        self.live = wanted

    def _emit_started(self) -> None:
        spec = self.spec
        data = {
            "mode": spec.mode,
            "task": spec.task,
            "seed": spec.seed,
            "epochs": spec.epochs,
            "slots": list(spec.slots),
        }
        self.hub.emit(TelemetryEvent(TelemetryEventType.RUN_STARTED, epoch=0, data=data))

    def _load(self, checkpoint: dict) -> None:
        try:
            # The sinks' positions are rank 0's (its event log's length); no other rank has a log.
            self.trainer.load_state_dict(checkpoint["trainer"], telemetry=self.is_main)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            # The event log is only cut once everything before it has loaded.
            reason = " ".join(str(exc).split())[:160]
            raise ResumeError(
                f"{self.run_dir / 'checkpoint.pt'}: does not fit this run's model ({reason})"
            ) from None

    def _summary(self) -> RunSummary:
        trainer, spec = self.trainer, self.spec
        hist = trainer.history
        seeds = [r.to_dict() for r in trainer.records.values()]
        counts = trainer.model.count_parameters()
        # The final model, not the last epoch's measurement: the lifecycle step after that
        # measurement may have culled or started blending a seed, and the summary describes the
        # model that is saved.
        final_val_loss, final_val_accuracy = trainer.evaluate()
        test_loss = test_accuracy = None
        if trainer.test_x is not None:  # measured once, on the final model
            test_loss, test_accuracy = trainer.evaluate("test")
        return RunSummary(
            mode=spec.mode,
            task=spec.task,
            seed=spec.seed,
            epochs=spec.epochs,
            width_multiplier=spec.width_multiplier,
            final_val_accuracy=final_val_accuracy,
            final_val_loss=final_val_loss,
            final_train_loss=hist[-1].train_loss,
            best_val_accuracy=max(h.val_accuracy for h in hist),
            best_val_loss=min(h.val_loss for h in hist),
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            host_params=counts["host"],
            total_params=counts["total"],
            fossilized=sum(1 for s in seeds if s["final_stage"] == "FOSSILIZED"),
            culled=sum(1 for s in seeds if "CULLED" in s["stages"]),
            rollbacks=trainer.governor.rollbacks,
            # Compute spent: matmul/conv/attention FLOPs (see esper.tolaria.flops), and the
            # parameters trained summed over epochs.
            train_flops=round(trainer.train_flops.total),
            eval_flops=round(trainer.eval_flops.total),
            counterfactual_flops=round(sum(h.counterfactual_flops for h in hist)),
            counterfactual_seconds=round(sum(h.counterfactual_seconds for h in hist), 3),
            param_epochs=sum(h.params for h in hist),
            wall_seconds=round(self._wall_seconds(), 3),
            world_size=1 if self.context is None else self.context.world_size,
            seeds=seeds,
        )


def train_run(
    spec: RunSpec, *, console: Console | None = None, live: bool | None = None
) -> RunSummary:
    """Train the run ``spec`` describes from start to end (:meth:`Run.new`, then
    :meth:`Run.train`) and return its summary."""
    with Run.new(spec, console=console, live=live) as run:
        return run.train()


def resume_run(
    run_dir: str | Path, *, console: Console | None = None, live: bool | None = None
) -> RunSummary | None:
    """Continue a killed run to its end (:meth:`Run.resume`, then :meth:`Run.train`); None
    when it had already finished."""
    run = Run.resume(run_dir, console=console, live=live)
    if run is None:
        return None
    with run:
        return run.train()


@contextmanager
def _closed_on_error(built: BuiltRun):
    """A run that fails while it is being opened lets go of its model and event log (nothing
    already written is removed)."""
    try:
        yield
    except BaseException:
        built.trainer.close()
        if built.trainer.hub is not None:
            built.trainer.hub.close()
        raise


def _refuse_compile_under_torchrun(spec: RunSpec) -> None:
    if spec.compile is not None and ranks.DistContext.current() is not None:
        raise UsageError("--compile under torchrun is not supported yet; drop --compile")


def _read_config(run_dir: Path) -> tuple[RunSpec, TrainerConfig, dict]:
    """The run's spec, the trainer configuration it was started with, and ``config.json``."""
    config_path = run_dir / "config.json"
    try:
        raw = json.loads(config_path.read_text())
        spec = RunSpec.from_dict(raw)
        started_with = TrainerConfig.from_dict(raw["trainer"])
    except FileNotFoundError:
        raise ResumeError(f"{config_path}: missing; is this a run directory?") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ResumeError(f"{config_path}: unreadable run configuration ({exc})") from None
    return spec, started_with, raw


def _check_checkpoint_fits(run_dir: Path, spec: RunSpec, raw: dict, checkpoint: dict) -> None:
    arch = checkpoint["architecture"]
    if list(arch.get("slots", ())) != list(spec.slots or ()) or arch.get("host_config") != raw.get(
        "resolved", {}
    ).get("host"):
        raise ResumeError(
            f"{run_dir / 'checkpoint.pt'}: its model (slots {arch.get('slots')}) is not the one "
            f"{run_dir / 'config.json'} describes; it belongs to another run"
        )
    saved = Trainer.saved_telemetry(checkpoint["trainer"])
    offset = TelemetryHub.saved_position(saved, EVENT_LOG_SINK).get("offset")
    events = run_dir / "events.jsonl"
    if offset is not None and (not events.is_file() or events.stat().st_size < offset):
        raise ResumeError(f"{events}: shorter than the checkpoint's {offset} bytes")
    context = ranks.DistContext.current()
    world = 1 if context is None else context.world_size
    written = int(raw.get("world_size", 1))
    if written != world:
        raise ResumeError(
            f"{run_dir} was trained on {written} process(es); resume it with the same number "
            f"(this is {world}: torchrun --nproc_per_node {written} ... --resume {run_dir})"
        )


__all__ = ["Run", "resume_run", "train_run", "write_json"]

"""What one training run is, as data: :class:`RunSpec`.

Every field carries its command-line help next to it, so ``esper train``'s flags are generated
from this class (:mod:`esper.runs.flags`) and each setting is written once. A spec validates
itself on construction and is saved as the run directory's ``config.json``; ``None`` means the
task's default until :func:`esper.runs.build.resolve_spec` fills it in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields

import torch

from esper.kasmina import list_blueprints
from esper.kasmina.blending import BLEND_ALGORITHMS
from esper.leyline import (
    DEFAULT_BLEND_ALGORITHM,
    DEFAULT_CHECKPOINT_EVERY,
    DEFAULT_GRADIENT_TELEMETRY_STRIDE,
    DEFAULT_GROWTH_PATIENCE,
    DEFAULT_THREADS,
    DEFAULT_TIMING,
    SEED_INITS,
)
from esper.leyline.formats import RUN_SPEC, migrate, stamped
from esper.nissa import LoggerUnavailableError, available_loggers, check_logger
from esper.runs.errors import UsageError
from esper.tamiyo.heuristic import TIMINGS
from esper.tolaria.config import check_compile_backend
from esper.tolaria.tasks import DEFAULT_TASK, get_task, list_tasks

#: How a run grows: under the heuristic, under a learned policy, or not at all.
MODES = ("heuristic", "static", "ppo")


def option(default, help: str | Callable[[], str], **argparse_kwargs) -> object:
    """A :class:`RunSpec` field and its command-line flag.

    Args:
        default: the field's default (``MISSING`` for a required one).
        help: the flag's help text, or a function that makes it (for lists known only once
            every task and logger is registered).
        argparse_kwargs: passed to ``add_argument`` as they are (``type``, ``metavar``,
            ``flag`` to rename the flag, ``split`` for a comma-separated list, ...).
    """
    return field(default=default, metadata={"help": help, **argparse_kwargs})


def _tasks_help() -> str:
    return f"one of: {', '.join(list_tasks())}"


def _blend_help() -> str:
    return f"one of: {', '.join(BLEND_ALGORITHMS)} (default {DEFAULT_BLEND_ALGORITHM})"


def _log_help() -> str:
    return f"also log the run to: {', '.join(available_loggers())} (repeat or comma-separate)"


@dataclass(frozen=True)
class RunSpec:
    """One training run (saved as ``config.json``). ``None`` means the task's default.

    Raises:
        UsageError: a field is out of range or names something unknown (one line that says what
            is valid).
    """

    mode: str = option(MISSING, f"one of: {', '.join(MODES)} (not with --resume)", positional=True)
    task: str = option(DEFAULT_TASK, _tasks_help)
    seed: int = option(0, "the run's seed: data split, sampling, initialisation", type=int)
    epochs: int | None = option(None, "default: the task's (in mode ppo: the policy's)", type=int)
    slots: tuple[str, ...] | None = option(
        None, "comma-separated injection points, e.g. early,mid,late", split=True
    )
    blueprints: tuple[str, ...] | None = option(
        None, "comma-separated blueprints the controller may grow (default: all)", split=True
    )
    blend: str = option(DEFAULT_BLEND_ALGORITHM, _blend_help)
    device: str = option("cpu", "cpu, cuda or cuda:N")
    data_dir: str | None = option(
        None,
        "local data: fashion, a folder with the four IDX files (default "
        "/usr/share/datasets/fashion-mnist); pystd, a folder of .py files (default: the running "
        "Python's library); cifar10, the folder holding cifar-10-batches-py; tinystories, a "
        "text file or a folder with TinyStories-train.txt",
    )
    run_dir: str | None = option(
        None, "default: a new folder under runs/; a folder that holds files is refused"
    )
    batch_size: int | None = option(None, "default: the task's", type=int)
    lr: float | None = option(
        None,
        "the host's learning rate (default: the task's); the seeds' rate scales with it",
        type=float,
    )
    gradient_telemetry_stride: int = option(
        DEFAULT_GRADIENT_TELEMETRY_STRIDE,
        "capture gradient telemetry every N training steps (0: never)",
        type=int,
        flag="--telemetry-stride",
        metavar="N",
    )
    width_multiplier: float | None = option(
        None,
        "widen the host (static comparisons at equal parameters); default 1, or in mode ppo "
        "the width the policy was trained at",
        type=float,
    )
    threads: int = option(
        DEFAULT_THREADS,
        f"intra-op CPU threads (default {DEFAULT_THREADS}; the result depends on it)",
        type=int,
    )
    checkpoint_every: int = option(
        DEFAULT_CHECKPOINT_EVERY,
        f"write checkpoint.pt every N epochs and after the last (default "
        f"{DEFAULT_CHECKPOINT_EVERY})",
        type=int,
        metavar="N",
    )
    max_seeds: int | None = option(
        None,
        "germinate at most N seeds in the run, stacked ones included (default: no bound)",
        type=int,
        metavar="N",
    )
    timing: str = option(
        DEFAULT_TIMING,
        "when the heuristic grows: relative (default: once the validation loss curve has "
        "flattened relative to itself, and not too late to finish a seed) or plateau (after "
        "epochs without an accuracy gain)",
    )
    growth_patience: int | None = option(
        None,
        "heuristic: try one seed at a time and germinate no more once N seeds in a row were "
        f"culled (default {DEFAULT_GROWTH_PATIENCE}; 0: never stop, and the next seed may grow "
        "while the last one blends); a fossilized seed starts the count again",
        type=int,
        metavar="N",
    )
    policy: str | None = option(
        None,
        "mode ppo: the policy file from `esper simic train` (default: the one shipped for the "
        "task)",
        metavar="POLICY",
    )
    compile: str | None = option(
        None,
        "compile the training and evaluation passes with torch.compile (default backend "
        "inductor); each lifecycle change recompiles once",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
    )
    shadow_every: int | None = option(
        None,
        "run an incubating seed's shadow pass every N training steps (default: the task's, or "
        "in mode ppo the policy's; 1 is every step); the others train the host alone",
        type=int,
        metavar="N",
    )
    seed_init: str | None = option(
        None,
        "how a new seed's output layer starts: zero (the identity) or computed (solved from the "
        "slot's recent features and loss gradients, so the seed lowers the loss from its first "
        "step); default: the task's",
        metavar="INIT",
    )
    log: tuple[str, ...] = option((), _log_help, split=True, action="append", metavar="NAME")

    def __post_init__(self) -> None:
        for name in ("slots", "blueprints", "log"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        self._check_names()
        self._check_numbers()
        if self.growth_patience is None and self.mode == "heuristic":
            # Resolved here, so config.json keeps the number the run used.
            object.__setattr__(self, "growth_patience", DEFAULT_GROWTH_PATIENCE)
        if self.mode != "heuristic" and not self.growth_patience:
            object.__setattr__(self, "growth_patience", None)

    def _check_names(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.task not in list_tasks():
            raise UsageError(f"unknown task {self.task!r}; valid: {', '.join(list_tasks())}")
        if self.blend not in BLEND_ALGORITHMS:
            raise UsageError(f"unknown blend {self.blend!r}; valid: {', '.join(BLEND_ALGORITHMS)}")
        if self.seed_init is not None and self.seed_init not in SEED_INITS:
            raise UsageError(
                f"unknown --seed-init {self.seed_init!r}; valid: {', '.join(SEED_INITS)}"
            )
        if self.timing not in TIMINGS:
            raise UsageError(f"unknown --timing {self.timing!r}; valid: {', '.join(TIMINGS)}")
        if self.growth_patience and self.mode != "heuristic":
            raise UsageError(f"--growth-patience is the heuristic's, not mode {self.mode}'s")
        if self.policy is not None and self.mode != "ppo":
            raise UsageError(f"--policy drives mode ppo, not {self.mode}")
        if self.compile is not None:
            try:
                check_compile_backend(self.compile, "unknown --compile backend")
            except ValueError as exc:
                raise UsageError(str(exc)) from None
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
        topology = get_task(self.task).topology
        valid = list_blueprints(topology)
        bad = [b for b in self.blueprints or () if b not in valid]
        if bad:
            raise UsageError(
                f"unknown blueprint {bad[0]!r} for task {self.task!r} ({topology}); "
                f"valid: {', '.join(valid)}"
            )

    def _check_numbers(self) -> None:
        at_least = {
            "--epochs": (self.epochs, 1),
            "--telemetry-stride": (self.gradient_telemetry_stride, 0),
            "--threads": (self.threads, 1),
            "--checkpoint-every": (self.checkpoint_every, 1),
            "--max-seeds": (self.max_seeds, 0),
            "--shadow-every": (self.shadow_every, 1),
            "--batch-size": (self.batch_size, 1),
        }
        for flag, (value, low) in at_least.items():
            if value is not None and value < low:
                raise UsageError(f"{flag} must be >= {low}, got {value}")
        if self.growth_patience is not None and self.growth_patience < 0:
            raise UsageError(
                "--growth-patience must be >= 0 (0: never stop growing), "
                f"got {self.growth_patience}"
            )
        for flag, value in (("--width-multiplier", self.width_multiplier), ("--lr", self.lr)):
            if value is not None and not value > 0:
                raise UsageError(f"{flag} must be > 0, got {value}")

    @classmethod
    def default(cls, name: str):
        """The default of the field ``name`` (what a flag left unset means)."""
        return cls.__dataclass_fields__[name].default

    def to_dict(self) -> dict:
        """The spec as ``config.json`` holds it (lists for tuples, with its format version)."""
        raw = asdict(self)
        for name in ("slots", "blueprints", "log"):
            if raw[name] is not None:
                raw[name] = list(raw[name])
        return stamped(RUN_SPEC, raw)

    @classmethod
    def from_dict(cls, raw: Mapping) -> RunSpec:
        """The spec a ``config.json`` holds, of any version (keys that are not fields are
        ignored: ``config.json`` also records what the run resolved)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in migrate(RUN_SPEC, raw).items() if k in known})

"""The main job: train a task's host statically or let it grow under the heuristic controller.

Usage::

    esper train heuristic --task digits --seed 0
    python -m esper.scripts.train static --task pyref --seed 1

Every run directory holds ``config.json``, ``events.jsonl``, ``summary.json`` and ``model.pt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from esper._atomic import atomic_path
from esper.kasmina import MorphogeneticModel, list_blueprints
from esper.kasmina.blending import BLEND_ALGORITHMS
from esper.leyline import DEFAULT_GRADIENT_TELEMETRY_STRIDE, TelemetryEvent, TelemetryEventType
from esper.nissa import ConsoleSink, JsonlSink, TelemetryHub
from esper.tamiyo import HeuristicConfig, HeuristicController
from esper.tolaria.data import DataNotFoundError
from esper.tolaria.tasks import build_task_host, get_task, list_tasks
from esper.tolaria.trainer import Trainer

MODES = ("heuristic", "static")


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
    blend: str = "linear"
    device: str = "cpu"
    data_dir: str | None = None
    run_dir: str | None = None
    batch_size: int | None = None
    lr: float | None = None
    gradient_telemetry_stride: int = DEFAULT_GRADIENT_TELEMETRY_STRIDE
    #: Multiply the host's base width by this (a static host "widened" for a fair comparison).
    width_multiplier: float = 1.0

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
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise UsageError(f"unknown device {self.device!r}; valid: cpu, cuda, cuda:N")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"device {self.device!r} requested but CUDA is not available")
        spec = get_task(self.task)
        if self.blueprints:
            valid = list_blueprints(spec.topology)
            bad = [b for b in self.blueprints if b not in valid]
            if bad:
                raise UsageError(
                    f"unknown blueprint {bad[0]!r} for task {self.task!r} ({spec.topology}); "
                    f"valid: {', '.join(valid)}"
                )


def _widened(host_config: dict, topology: str, factor: float) -> dict:
    config = dict(host_config)
    if factor == 1.0:
        return config
    if topology == "cnn":
        config["base_channels"] = max(1, round(config.get("base_channels", 32) * factor))
    else:
        heads = config.get("n_head", 1)
        width = max(heads, round(config.get("n_embd", 384) * factor / heads) * heads)
        config["n_embd"] = width
    return config


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
    run_dir = _prepare_run_dir(cfg)
    model = MorphogeneticModel(host, device=cfg.device, slots=slots)
    epochs = cfg.epochs or spec.epochs
    config_payload = {
        **asdict(cfg),
        "epochs": epochs,
        "slots": list(slots),
        "resolved": {
            "host": host.config,
            "topology": spec.topology,
            "optimizer": spec.optimizer,
            "lr": cfg.lr or spec.lr,
            "seed_lr": spec.seed_lr,
            "batch_size": cfg.batch_size or spec.batch_size,
        },
    }
    _write_json(run_dir / "config.json", config_payload)

    controller = None
    if cfg.mode == "heuristic":
        controller = HeuristicController(
            spec.topology,
            HeuristicConfig(blueprints=cfg.blueprints, blend_algorithm=cfg.blend),
            seed=cfg.seed,
        )
    started = time.perf_counter()
    with TelemetryHub() as hub:
        hub.add_sink(JsonlSink(run_dir / "events.jsonl"))
        hub.add_sink(ConsoleSink(console))
        trainer = Trainer(
            model,
            data,
            optimizer=spec.optimizer,
            lr=cfg.lr or spec.lr,
            seed_lr=spec.seed_lr,
            batch_size=cfg.batch_size or spec.batch_size,
            controller=controller,
            hub=hub,
            seed=cfg.seed,
            gradient_telemetry_stride=cfg.gradient_telemetry_stride,
            total_epochs=epochs,
            epoch_samples=spec.epoch_samples,
        )
        hub.emit(
            TelemetryEvent(
                TelemetryEventType.RUN_STARTED,
                epoch=0,
                data={
                    "mode": cfg.mode,
                    "task": cfg.task,
                    "seed": cfg.seed,
                    "epochs": epochs,
                    "slots": list(slots),
                },
            )
        )
        progress = Progress(
            TextColumn(f"[bold]{cfg.mode}[/] {cfg.task} s{cfg.seed}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )
        with progress:
            bar = progress.add_task("epochs", total=epochs)
            for _ in range(epochs):
                r = trainer.run_epoch()
                seeds = " ".join(
                    f"{n}:{v['stage'][:4]}({v['alpha']:.2f})" for n, v in r.seeds.items()
                )
                console.print(
                    f"epoch {r.epoch:3d}  train {r.train_loss:.4f}  val {r.val_loss:.4f}  "
                    f"acc {r.val_accuracy:6.2f}%  {seeds}"
                    + ("  [red]rollback[/]" if r.rolled_back else ""),
                    highlight=False,
                    soft_wrap=True,
                )
                progress.advance(bar)
        wall = time.perf_counter() - started
        summary = _summary(cfg, epochs, trainer, wall)
        hub.emit(
            TelemetryEvent(
                TelemetryEventType.RUN_COMPLETED,
                epoch=epochs,
                data={k: v for k, v in summary.items() if k != "seeds"},
            )
        )
    model.save_checkpoint(run_dir / "model.pt", extra={"summary_path": "summary.json"})
    _write_json(run_dir / "summary.json", summary)
    _print_final(console, summary, run_dir)
    return summary


def widen_task(spec, factor: float):
    """The task with its host widened by ``factor`` (for static comparisons at equal size)."""
    return replace(spec, host_config=_widened(spec.host_config, spec.topology, factor))


def _summary(cfg: RunConfig, epochs: int, trainer: Trainer, wall: float) -> dict:
    hist = trainer.history
    last = hist[-1]
    counts = trainer.model.count_parameters()
    seeds = [r.to_dict() for r in trainer.records.values()]
    return {
        "mode": cfg.mode,
        "task": cfg.task,
        "seed": cfg.seed,
        "epochs": epochs,
        "width_multiplier": cfg.width_multiplier,
        "final_val_accuracy": last.val_accuracy,
        "final_val_loss": last.val_loss,
        "final_train_loss": last.train_loss,
        "best_val_accuracy": max(h.val_accuracy for h in hist),
        "best_val_loss": min(h.val_loss for h in hist),
        "host_params": counts["host"],
        "total_params": counts["total"],
        "fossilized": sum(1 for s in seeds if s["final_stage"] == "FOSSILIZED"),
        "culled": sum(1 for s in seeds if "CULLED" in s["stages"]),
        "rollbacks": trainer.governor.rollbacks,
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
        "host_params",
        "total_params",
        "fossilized",
        "culled",
        "wall_seconds",
    ):
        value = summary[key]
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    for s in summary["seeds"]:
        console.print(
            f"  {s['seed_id']}: {' -> '.join(s['stages'])}", highlight=False, soft_wrap=True
        )
    console.print(f"run directory: {run_dir}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("mode", help=f"one of: {', '.join(MODES)}")
    parser.add_argument("--task", default="digits", help=f"one of: {', '.join(list_tasks())}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="default: the task's")
    parser.add_argument(
        "--slots", default=None, help="comma-separated injection points, e.g. early,mid,late"
    )
    parser.add_argument(
        "--blueprints", default=None, help="comma-separated blueprints the controller may grow"
    )
    parser.add_argument("--blend", default="linear", help=f"one of: {', '.join(BLEND_ALGORITHMS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None, help="local data for cifar10 / tinystories")
    parser.add_argument("--run-dir", default=None, help="default: a new folder under runs/")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--telemetry-stride", type=int, default=DEFAULT_GRADIENT_TELEMETRY_STRIDE)
    parser.add_argument(
        "--width-multiplier",
        type=float,
        default=1.0,
        help="widen the host (static comparisons at equal parameters)",
    )


def _split(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    return items or None


def config_from_args(args: argparse.Namespace) -> RunConfig:
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
        width_multiplier=args.width_multiplier,
    )


def print_error(exc: Exception) -> None:
    """One unwrapped line on stderr, whatever the terminal width."""
    message = " ".join(str(exc).split())
    sys.stderr.write(f"esper: error: {message}\n")


def train_main(args: argparse.Namespace) -> int:
    """Run from parsed arguments; bad input is one line on stderr and exit code 2."""
    try:
        cfg = config_from_args(args)
        run_training(cfg)
    except (UsageError, DataNotFoundError) as exc:
        print_error(exc)
        return 2
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

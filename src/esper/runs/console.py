"""What a run prints: a progress bar, one line per epoch, and the final table."""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from esper.runs.summary import RunSummary

#: The summary numbers the final table shows, in order (missing ones are left out).
FINAL_ROWS = (
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
)


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


def quiet_console() -> Console:
    """Where a rank other than 0 prints: nowhere (rank 0 speaks for the run)."""
    return Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process


def say(console: Console, text: str) -> None:
    """One plain line: no highlighting, no wrapping (paths stay whole)."""
    console.print(text, highlight=False, soft_wrap=True)


def print_epoch(console: Console, r) -> None:
    """One epoch's line: losses, accuracy, and each seed's stage and alpha."""
    seeds = " ".join(f"{n}:{v['stage'][:4]}({v['alpha']:.2f})" for n, v in r.seeds.items())
    console.print(
        f"epoch {r.epoch:3d}  train {r.train_loss:.4f}  val {r.val_loss:.4f}  "
        f"acc {r.val_accuracy:6.2f}%  {seeds}" + ("  [red]rollback[/]" if r.rolled_back else ""),
        highlight=False,
        soft_wrap=True,
    )


def print_final(console: Console, summary: RunSummary, run_dir: Path) -> None:
    """The final table, each seed's path through the lifecycle, and where the run is."""
    table = Table(title=f"{summary.mode} run on {summary.task} (seed {summary.seed})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in FINAL_ROWS:
        value = getattr(summary, key)
        if value is None:  # a task without a test split
            continue
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)
    for s in summary.seeds:
        say(console, f"  {s['seed_id']}: {' -> '.join(s['stages'])}")
    console.print(f"run directory: {run_dir}")

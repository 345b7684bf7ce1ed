"""Reading a run directory (``config.json``, ``events.jsonl``, ``summary.json``) into plain data.

The event log is folded by :class:`esper.nissa.RunState`, the same fold the live view draws
from; a report takes its per-epoch records, growth marks and slots from there. Everything is
validated here, once, so the plotting and table code can trust what it gets and a bad folder
fails with one line naming the file instead of a matplotlib traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esper.nissa import EpochRecord, LifecycleMark, RunState, read_events
from esper.runs.summary import RunSummary

REQUIRED_FILES = ("config.json", "events.jsonl", "summary.json")


class ReportError(ValueError):
    """A run directory cannot be reported on. The message is one line and names the path."""


@dataclass(frozen=True)
class RunData:
    """A loaded run directory: the raw files plus what the fold of its events recorded.

    Attributes:
        run_dir: The folder.
        config: ``config.json``.
        summary: ``summary.json``, read and checked (:class:`esper.runs.RunSummary`).
        state: The fold of ``events.jsonl`` (:class:`esper.nissa.RunState`).
        epochs: Sorted by epoch, one record per epoch.
        marks: Growth events, each once.
        slots: Every slot of the model, in model order where known.
    """

    run_dir: Path
    config: dict[str, Any]
    summary: RunSummary
    state: RunState
    epochs: list[EpochRecord]
    marks: list[LifecycleMark]
    slots: list[str]

    @property
    def mode(self) -> str:
        return self.summary.mode

    @property
    def task(self) -> str:
        return self.summary.task

    @property
    def seed(self) -> int:
        return self.summary.seed

    @property
    def has_seeds(self) -> bool:
        """True when any epoch recorded a seed in any slot (never for a static run)."""
        return any(record.seeds for record in self.epochs)


def load_run(run_dir: str | Path) -> RunData:
    """Load and validate a run directory.

    Args:
        run_dir: Folder holding ``config.json``, ``events.jsonl`` and ``summary.json``.

    Returns:
        The run, with epochs and lifecycle marks derived from the events.

    Raises:
        ReportError: If the folder or a required file is missing or malformed; the one-line
            message names the offending path.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a run directory (no such folder)")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ReportError(
            f"{run_dir}: missing {', '.join(missing)} (a run directory holds "
            f"{', '.join(REQUIRED_FILES)})"
        )
    config = _read_json_object(run_dir / "config.json")
    summary = _read_summary(run_dir / "summary.json")
    try:
        state = RunState.from_events(read_events(run_dir / "events.jsonl"))
    except ValueError as exc:  # already "path:line: what is wrong"
        raise ReportError(str(exc)) from None
    if state.rejected:  # the live view shows such a log; a report would plot it wrong
        raise ReportError(f"{run_dir / 'events.jsonl'}: {state.rejected[0]}")
    declared = config.get("slots") if isinstance(config.get("slots"), list) else []
    return RunData(
        run_dir=run_dir,
        config=config,
        summary=summary,
        state=state,
        epochs=state.epoch_records(),
        marks=list(state.marks),
        slots=state.slot_order(declared),
    )


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(raw, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def _read_summary(path: Path) -> RunSummary:
    """``summary.json`` as a checked :class:`RunSummary`; a missing key, a wrong type or an
    unknown format version is one line naming the file."""
    raw = _read_json_object(path)
    try:
        summary = RunSummary.from_dict(raw)
        summary.check()
    except ValueError as exc:  # FormatError included
        raise ReportError(f"{path}: {exc}") from None
    return summary

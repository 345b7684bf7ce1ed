"""Reading a run directory (``config.json``, ``events.jsonl``, ``summary.json``) into plain data.

Everything is validated here, once, so the plotting and table code can trust what it gets and a
bad folder fails with one line naming the file instead of a matplotlib traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import read_events

T = TelemetryEventType

REQUIRED_FILES = ("config.json", "events.jsonl", "summary.json")
# Summary keys the comparison table shows; numeric ones may be null (a run with no epochs).
SUMMARY_TEXT_KEYS = ("mode", "task")
SUMMARY_NUMBER_KEYS = (
    "seed",
    "final_val_accuracy",
    "best_val_accuracy",
    "final_val_loss",
    "host_params",
    "total_params",
)
SUMMARY_COUNT_KEYS = ("fossilized", "culled")  # an int, or a list of seed ids

# Lifecycle events marked on the plots, and the short name each is drawn under.
MARK_KINDS = {
    T.SEED_GERMINATED: "germinated",
    T.SEED_FOSSILIZED: "fossilized",
    T.SEED_CULLED: "culled",
    T.GOVERNOR_ROLLBACK: "rollback",
}


class ReportError(ValueError):
    """A run directory cannot be reported on. The message is one line and names the path."""


@dataclass(frozen=True)
class SeedSnapshot:
    """A slot's seed as recorded at the end of one epoch."""

    seed_id: str
    blueprint: str
    stage: str  # a SeedStage name such as "TRAINING"
    alpha: float | None


@dataclass(frozen=True)
class EpochRecord:
    """One ``epoch_completed`` event. ``seeds`` maps slot name to the seed it held."""

    epoch: int
    val_accuracy: float
    val_loss: float | None = None
    train_accuracy: float | None = None
    seeds: dict[str, SeedSnapshot] = field(default_factory=dict)
    #: Training FLOPs spent up to the end of this epoch (None in logs that predate counting).
    train_flops: float | None = None


@dataclass(frozen=True)
class LifecycleMark:
    """A moment worth a marker on the plots: germinate, fossilize, cull or governor rollback."""

    epoch: int
    kind: str  # a value of MARK_KINDS
    slot: str | None
    seed_id: str | None


@dataclass(frozen=True)
class RunData:
    """A loaded run directory: the raw files plus the series derived from the events."""

    run_dir: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    events: list[TelemetryEvent]
    epochs: list[EpochRecord]  # sorted by epoch, one record per epoch
    marks: list[LifecycleMark]
    slots: list[str]  # every slot of the model, in model order where known

    @property
    def mode(self) -> str:
        return str(self.summary["mode"])

    @property
    def task(self) -> str:
        return str(self.summary["task"])

    @property
    def seed(self) -> int | float | None:
        return self.summary["seed"]

    @property
    def has_seeds(self) -> bool:
        """True when any epoch recorded a seed in any slot (never for a static run)."""
        return any(record.seeds for record in self.epochs)

    def count(self, key: str) -> int:
        """``summary[key]`` as a number, for the ``fossilized``/``culled`` int-or-list fields."""
        value = self.summary.get(key) or 0
        return len(value) if isinstance(value, list) else int(value)


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
    summary = _read_json_object(run_dir / "summary.json")
    _check_summary(run_dir / "summary.json", summary)
    try:
        events = read_events(run_dir / "events.jsonl")
    except ValueError as exc:  # already "path:line: what is wrong"
        raise ReportError(str(exc)) from None
    epochs = _epoch_records(run_dir / "events.jsonl", events)
    return RunData(
        run_dir=run_dir,
        config=config,
        summary=summary,
        events=events,
        epochs=epochs,
        marks=_lifecycle_marks(events),
        slots=_slot_order(config, events, epochs),
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


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_summary(path: Path, summary: dict[str, Any]) -> None:
    required = SUMMARY_TEXT_KEYS + SUMMARY_NUMBER_KEYS + SUMMARY_COUNT_KEYS
    missing = [key for key in required if key not in summary]
    if missing:
        raise ReportError(f"{path}: missing key(s) {', '.join(missing)}")
    for key in SUMMARY_NUMBER_KEYS:
        if summary[key] is not None and not _is_number(summary[key]):
            raise ReportError(f"{path}: {key!r} must be a number, got {summary[key]!r}")
    for key in SUMMARY_COUNT_KEYS:
        value = summary[key]
        if not (isinstance(value, list) or (_is_number(value) and value >= 0)):
            raise ReportError(f"{path}: {key!r} must be a count or a list, got {value!r}")


def _optional_number(value: Any) -> float | None:
    return float(value) if _is_number(value) else None


def _epoch_records(path: Path, events: list[TelemetryEvent]) -> list[EpochRecord]:
    # A resumed run appends to events.jsonl and replays the epochs after its checkpoint; the
    # later record of an epoch is the one that counts.
    by_epoch: dict[int, EpochRecord] = {}
    for event in events:
        if event.event_type is not T.EPOCH_COMPLETED:
            continue
        where = f"{path}: epoch_completed event for epoch {event.epoch}"
        if not isinstance(event.epoch, int):
            raise ReportError(f"{where}: 'epoch' must be an integer")
        data = event.data
        if not _is_number(data.get("val_accuracy")):
            raise ReportError(f"{where}: 'val_accuracy' missing or not a number")
        raw_seeds = data.get("seeds") or {}
        if not isinstance(raw_seeds, dict) or not all(
            isinstance(s, dict) for s in raw_seeds.values()
        ):
            raise ReportError(f"{where}: 'seeds' must map slot names to objects")
        seeds = {
            str(slot): SeedSnapshot(
                seed_id=str(s.get("seed_id", "?")),
                blueprint=str(s.get("blueprint", "?")),
                stage=str(s.get("stage", "UNKNOWN")),
                alpha=_optional_number(s.get("alpha")),
            )
            for slot, s in raw_seeds.items()
        }
        by_epoch[event.epoch] = EpochRecord(
            epoch=event.epoch,
            val_accuracy=float(data["val_accuracy"]),
            val_loss=_optional_number(data.get("val_loss")),
            train_accuracy=_optional_number(data.get("train_accuracy")),
            seeds=seeds,
            train_flops=_optional_number(data.get("total_train_flops")),
        )
    return [by_epoch[e] for e in sorted(by_epoch)]


def _lifecycle_marks(events: list[TelemetryEvent]) -> list[LifecycleMark]:
    marks: dict[tuple, LifecycleMark] = {}  # keyed to drop the duplicates a resume replays
    last_epoch = 0
    for event in events:
        if isinstance(event.epoch, int):
            last_epoch = event.epoch
        kind = MARK_KINDS.get(event.event_type)
        if kind is None:
            continue
        # An event without an epoch happened after the last epoch seen so far.
        epoch = event.epoch if isinstance(event.epoch, int) else last_epoch
        mark = LifecycleMark(epoch, kind, event.slot, event.seed_id)
        marks[(mark.epoch, mark.kind, mark.slot, mark.seed_id)] = mark
    return list(marks.values())


def _slot_order(
    config: dict[str, Any], events: list[TelemetryEvent], epochs: list[EpochRecord]
) -> list[str]:
    """Slots as the run declared them, then any others seen in events, in order of appearance."""
    declared: list[Any] = []
    for event in events:
        if event.event_type is T.RUN_STARTED:
            declared = list(event.data.get("slots") or [])
    if not declared and isinstance(config.get("slots"), list):
        declared = list(config["slots"])
    seen = [str(s) for s in declared]
    seen += [slot for record in epochs for slot in record.seeds]
    seen += [e.slot for e in events if e.slot is not None]
    return list(dict.fromkeys(seen))

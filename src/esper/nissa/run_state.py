"""A run rebuilt from its telemetry events alone: the one fold of the event log.

:class:`RunState` is the model behind the live view (``esper train --live``), ``esper watch``
and the reports (``esper report``, :mod:`esper.karn`). The live view and ``esper watch`` feed it
the same event stream, one from the trainer's hub and one from ``events.jsonl``, so what the
terminal shows never depends on which of the two drew it; the reports fold the whole file and
read the typed history it keeps (:mod:`esper.nissa.records`: every epoch, every growth event).
It is plain data and never touches a model or a file.

Each event type that changes the picture has a handler in ``_HANDLERS``; every other type is
ignored. Slot stages come from ``seed_stage_changed`` (an ``epoch_completed`` snapshot lists only
slots that hold a live seed, so a culled or embargoed seed is seen only through stage changes).
"""

from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from esper.leyline import SeedStage, TelemetryEvent, TelemetryEventType, is_active_stage
from esper.nissa.jsonl import read_events
from esper.nissa.records import (
    MARK_KINDS,
    EpochRecord,
    LifecycleMark,
    epoch_problem,
    epoch_record,
    is_number,
    seed_snapshots,
)

T = TelemetryEventType

#: Lifecycle events kept for the "last events" panel.
LIFECYCLE_EVENTS = frozenset(
    {
        T.SEED_GERMINATED,
        T.SEED_STAGE_CHANGED,
        T.SEED_FOSSILIZED,
        T.SEED_CULLED,
        T.GOVERNOR_ROLLBACK,
        T.ISOLATION_VIOLATION,
    }
)


def holds_seed(stage: str | None) -> bool:
    """Whether a slot in the stage named ``stage`` holds a seed module (leyline's active stages),
    so that its alpha and size mean something."""
    return stage in SeedStage.__members__ and is_active_stage(SeedStage[stage])


@dataclass
class SlotState:
    """One injection point and the seed it holds (or held last).

    Attributes:
        name: The slot's name, e.g. ``"mid"``.
        seed_id: The seed in the slot; None before the first germination or once it is DORMANT.
        blueprint: The seed's blueprint.
        stage: A ``SeedStage`` name; ``"DORMANT"`` when empty.
        alpha: Blend weight from the last epoch snapshot; None when not known.
        params: The seed's parameter count, when it can be told from the epoch's counts.
        stage_since: The epoch the current stage began.
        contribution: Last counterfactual contribution in accuracy points.
        incubation_gain: The seed's incubation gain (loss units), once measured.
        violations: Isolation violations counted for this seed so far.
    """

    name: str
    seed_id: str | None = None
    blueprint: str | None = None
    stage: str = "DORMANT"
    alpha: float | None = None
    params: int | None = None
    stage_since: int = 0
    contribution: float | None = None
    incubation_gain: float | None = None
    violations: int = 0

    def new_seed(self, seed_id: str | None, blueprint: str | None, epoch: int) -> None:
        """Forget the previous seed: everything but the name starts over."""
        self.seed_id, self.blueprint = seed_id, blueprint
        self.stage, self.stage_since = "GERMINATED", epoch
        self.alpha = self.params = self.contribution = self.incubation_gain = None
        self.violations = 0


@dataclass
class RunState:
    """The run as its events describe it so far.

    Args:
        history: How many epochs of validation numbers to keep for the sparklines.
        max_events: How many lifecycle events to keep for the "last events" panel.

    Attributes:
        info: The ``run_started`` payload (mode, task, seed, epochs, slots).
        total_epochs: Epochs the run will train, once ``run_started`` said so.
        epoch: The last completed epoch (0 before the first).
        metrics: The last ``epoch_completed`` numbers (losses, accuracies, parameter counts,
            and any ``test_*`` value an event carries).
        val_accuracy, val_loss: Recent validation numbers, oldest first.
        slots: Slot name -> :class:`SlotState`, in model order.
        events: Recent lifecycle events, oldest first.
        rollbacks: Governor rollbacks so far.
        started_at, last_at: Timestamps of the first and the latest event.
        finished: True once ``run_completed`` arrived.
        records: Epoch -> its :class:`EpochRecord`; a replayed epoch (a resume that did not
            cut the log back) keeps its later record. :meth:`epoch_records` sorts them.
        marks: Growth events (germinate, fossilize, cull, rollback), each once, in order.
        rejected: Why each ``epoch_completed`` event that could not be recorded was left out;
            the live view goes on regardless, a report refuses such a log.
    """

    history: int = 120
    max_events: int = 8
    info: dict[str, Any] = field(default_factory=dict)
    total_epochs: int | None = None
    epoch: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    val_accuracy: deque[float] = field(init=False)
    val_loss: deque[float] = field(init=False)
    slots: dict[str, SlotState] = field(default_factory=dict)
    events: deque[TelemetryEvent] = field(init=False)
    rollbacks: int = 0
    started_at: float | None = None
    last_at: float | None = None
    finished: bool = False
    records: dict[int, EpochRecord] = field(default_factory=dict)
    marks: list[LifecycleMark] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    # The last epoch any event named: where an event without one is placed.
    _event_epoch: int = field(default=0, init=False, repr=False)
    # Every slot any event named, in order of first mention (for a report's lanes).
    _named_slots: dict[str, None] = field(default_factory=dict, init=False, repr=False)
    _marked: set[LifecycleMark] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.history < 1 or self.max_events < 0:
            raise ValueError(
                f"history must be >= 1 and max_events >= 0, got {self.history}, {self.max_events}"
            )
        self.val_accuracy = deque(maxlen=self.history)
        self.val_loss = deque(maxlen=self.history)
        self.events = deque(maxlen=self.max_events)

    @classmethod
    def from_events(cls, events: Iterable[TelemetryEvent], **kwargs: Any) -> RunState:
        """A state with ``events`` applied in order.

        Args:
            events: Events in the order they were emitted.
            **kwargs: Passed to the constructor (``history``, ``max_events``).

        Returns:
            The new state.
        """
        state = cls(**kwargs)
        for event in events:
            state.apply(event)
        return state

    def apply(self, event: TelemetryEvent) -> None:
        """Update the state with one event. Unknown or irrelevant event types are ignored.

        Args:
            event: The next event of the run.
        """
        if self.started_at is None:
            self.started_at = event.timestamp
        self.last_at = event.timestamp
        if isinstance(event.epoch, int):
            self._event_epoch = event.epoch
        if event.slot is not None:
            self._named_slots.setdefault(event.slot)
        handler = _HANDLERS.get(event.event_type)
        if handler is not None:
            handler(self, event)
        if event.event_type in LIFECYCLE_EVENTS:
            self.events.append(event)
        kind = MARK_KINDS.get(event.event_type)
        if kind is not None:
            mark = LifecycleMark(self._event_epoch, kind, event.slot, event.seed_id)
            if mark not in self._marked:  # a resume's replay repeats marks already made
                self._marked.add(mark)
                self.marks.append(mark)

    def slot(self, name: str) -> SlotState:
        """The slot called ``name``, added at the end if no event named it before."""
        if name not in self.slots:
            self.slots[name] = SlotState(name)
        return self.slots[name]

    def epoch_records(self) -> list[EpochRecord]:
        """Every recorded epoch, one record each, in epoch order."""
        return [self.records[epoch] for epoch in sorted(self.records)]

    def slot_order(self, declared: Sequence[str] = ()) -> list[str]:
        """Every slot of the run, for a report's lanes.

        Args:
            declared: The slots to start with when ``run_started`` listed none (a run's
                ``config.json`` may).

        Returns:
            The slots the last ``run_started`` listed (else ``declared``), then any other that
            an epoch record holds a seed in, in epoch order, then any other an event named.
        """
        first = self.info.get("slots") or declared
        seen = [str(s) for s in first]
        seen += [slot for record in self.epoch_records() for slot in record.seeds]
        seen += list(self._named_slots)
        return list(dict.fromkeys(seen))

    # -------------------------------------------------------------------- handlers

    def _run_started(self, event: TelemetryEvent) -> None:
        self.info = dict(event.data)
        epochs = event.data.get("epochs")
        self.total_epochs = epochs if isinstance(epochs, int) else None
        self.started_at = event.timestamp
        for name in event.data.get("slots") or ():
            self.slot(str(name))

    def _epoch_completed(self, event: TelemetryEvent) -> None:
        data = event.data
        if isinstance(event.epoch, int):
            self.epoch = event.epoch
        self.metrics = {k: v for k, v in data.items() if is_number(v)}
        if is_number(data.get("val_accuracy")):
            self.val_accuracy.append(float(data["val_accuracy"]))
        if is_number(data.get("val_loss")):
            self.val_loss.append(float(data["val_loss"]))
        seeds = seed_snapshots(data.get("seeds"))
        for name, snap in seeds.items():
            slot = self.slot(name)
            if snap.seed_id != slot.seed_id:  # a seed we joined late (watch, resume)
                slot.new_seed(snap.seed_id, snap.blueprint, self.epoch)
            if snap.stage != slot.stage:
                slot.stage, slot.stage_since = snap.stage, self.epoch
            slot.alpha = snap.alpha
            if snap.params is not None:
                slot.params = snap.params
            if snap.incubation_gain is not None:
                slot.incubation_gain = snap.incubation_gain
        self._infer_seed_params(data)
        problem = epoch_problem(event)
        if problem is None:
            self.records[event.epoch] = epoch_record(event, seeds)
        else:
            self.rejected.append(problem)

    def _infer_seed_params(self, data: dict[str, Any]) -> None:
        """Give the one unfossilized seed without a count what ``total - host`` leaves for it.

        The epoch event counts parameters for the whole model only; when exactly one live seed's
        size is unknown, the difference is its size. A fossilized seed keeps the last count.
        """
        host, total = data.get("host_params"), data.get("total_params")
        if not (is_number(host) and is_number(total)):
            return
        # A fossilized seed's parameters count as host, so only live seeds are in total - host.
        live = [
            s
            for s in self.slots.values()
            if s.seed_id and holds_seed(s.stage) and s.stage != SeedStage.FOSSILIZED.name
        ]
        unknown = [s for s in live if s.params is None]
        if len(unknown) == 1:
            rest = int(total) - int(host) - sum(s.params or 0 for s in live)
            if rest > 0:
                unknown[0].params = rest

    def _seed_germinated(self, event: TelemetryEvent) -> None:
        if event.slot is not None:
            epoch = event.epoch if isinstance(event.epoch, int) else self.epoch
            self.slot(event.slot).new_seed(event.seed_id, event.data.get("blueprint"), epoch)

    def _stage_changed(self, event: TelemetryEvent) -> None:
        if event.slot is None:
            return
        slot = self.slot(event.slot)
        to = str(event.data.get("to", slot.stage))
        slot.stage = to
        slot.stage_since = event.epoch if isinstance(event.epoch, int) else self.epoch
        if event.seed_id is not None and slot.seed_id is None:
            slot.seed_id = event.seed_id
        if to == "DORMANT":  # the slot is free again: nothing of the old seed is in it
            slot.seed_id = slot.blueprint = slot.alpha = slot.params = None
            slot.contribution = slot.incubation_gain = None
            slot.violations = 0

    def _contribution(self, event: TelemetryEvent) -> None:
        value = event.data.get("contribution")
        if event.slot is not None and is_number(value):
            self.slot(event.slot).contribution = float(value)

    def _isolation(self, event: TelemetryEvent) -> None:
        if event.slot is None:
            return
        slot = self.slot(event.slot)
        # Kasmina reports the seed's running total; an event without one counts as one more.
        count = event.data.get("violations")
        slot.violations = int(count) if is_number(count) else slot.violations + 1

    def _rollback(self, event: TelemetryEvent) -> None:
        self.rollbacks += 1

    def _run_completed(self, event: TelemetryEvent) -> None:
        self.finished = True
        # Measured once, on the final model: the run's last event. The final validation numbers
        # can differ from the last epoch's when that epoch's lifecycle step culled or started
        # blending a seed after its validation.
        for key, source in (
            ("test_loss", "test_loss"),
            ("test_accuracy", "test_accuracy"),
            ("val_loss", "final_val_loss"),
            ("val_accuracy", "final_val_accuracy"),
        ):
            if is_number(event.data.get(source)):
                self.metrics[key] = float(event.data[source])


_HANDLERS: dict[TelemetryEventType, Callable[[RunState, TelemetryEvent], None]] = {
    T.RUN_STARTED: RunState._run_started,
    T.EPOCH_COMPLETED: RunState._epoch_completed,
    T.SEED_GERMINATED: RunState._seed_germinated,
    T.SEED_STAGE_CHANGED: RunState._stage_changed,
    T.COUNTERFACTUAL_EVALUATED: RunState._contribution,
    T.SEED_FOSSILIZED: RunState._contribution,
    T.ISOLATION_VIOLATION: RunState._isolation,
    T.GOVERNOR_ROLLBACK: RunState._rollback,
    T.RUN_COMPLETED: RunState._run_completed,
}


def events_through_epoch(events: Iterable[TelemetryEvent], epoch: int) -> list[TelemetryEvent]:
    """The events a run had written when its checkpoint after ``epoch`` was taken.

    A checkpoint is written right after an epoch's ``epoch_completed`` event (or, for epoch 0,
    right after ``run_started``); a resumed run replays everything after it. The live view of a
    resumed run starts from this prefix so it shows the whole run, with nothing twice.

    Args:
        events: The run's events as read from ``events.jsonl`` before the resume cut it back.
        epoch: The checkpoint's epoch.

    Returns:
        The prefix of ``events`` up to and including the event that closed ``epoch``.
    """
    events = list(events)
    end = 0
    for i, event in enumerate(events):
        closes = (epoch == 0 and event.event_type is T.RUN_STARTED) or (
            event.event_type is T.EPOCH_COMPLETED and event.epoch == epoch
        )
        if closes:
            end = i + 1
    return events[:end]


def resumed_state(events_path: str | os.PathLike[str], epoch: int, **kwargs: Any) -> RunState:
    """The state of a run at its checkpoint, for the live view of a resumed run.

    Args:
        events_path: The run's ``events.jsonl``, read before the resume cuts it back.
        epoch: The checkpoint's epoch.
        **kwargs: Passed to :class:`RunState`.

    Returns:
        The state after the events up to the checkpoint (an empty state if the file is gone).

    Raises:
        ValueError: If a line before the end of the file is not a valid event.
    """
    try:
        with warnings.catch_warnings():
            # A line cut by the kill lies after the checkpoint; the resume removes it anyway.
            warnings.simplefilter("ignore", RuntimeWarning)
            events = read_events(events_path)
    except FileNotFoundError:
        events = []
    return RunState.from_events(events_through_epoch(events, epoch), **kwargs)

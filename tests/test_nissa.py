"""Nissa: the hub fans out, survives a failing sink, and JSONL round-trips events."""

from __future__ import annotations

import json
import warnings
from contextlib import closing

import pytest
from rich.console import Console

from esper.leyline import TELEMETRY_SCHEMA_VERSION, TelemetryEvent, TelemetryEventType
from esper.nissa import (
    ConsoleSink,
    JsonlSink,
    MemorySink,
    TelemetryHub,
    TelemetrySink,
    available_sinks,
    create_sink,
    read_events,
)

T = TelemetryEventType


def _event(kind: T = T.SEED_GERMINATED, **kw) -> TelemetryEvent:
    defaults = dict(epoch=3, slot="mid", seed_id="seed-1", data={"blueprint": "norm"})
    defaults.update(kw)
    return TelemetryEvent(kind, **defaults)


class _Broken:
    def __init__(self) -> None:
        self.calls = 0

    def emit(self, event: TelemetryEvent) -> None:
        self.calls += 1
        raise OSError("disk full")

    def close(self) -> None:
        raise OSError("cannot close")


def test_hub_fans_out_in_order_and_closes_sinks():
    a, b = MemorySink(), MemorySink()
    with TelemetryHub([a]) as hub:
        assert hub.add_sink(b) is b
        events = [_event(T.RUN_STARTED), _event(), _event(T.RUN_COMPLETED)]
        for e in events:
            hub.emit(e)
    assert a.events == events and b.events == events
    assert a.closed and b.closed and hub.closed


def test_failing_sink_warns_once_and_others_keep_receiving():
    broken, good = _Broken(), MemorySink()
    hub = TelemetryHub([broken, good])
    with pytest.warns(RuntimeWarning, match="_Broken failed on a seed_germinated event") as rec:
        for _ in range(5):
            hub.emit(_event())
    assert len([w for w in rec if issubclass(w.category, RuntimeWarning)]) == 1
    assert len(good.events) == 5
    assert broken.calls == 5  # still tried: a transient error must not lose later events
    assert hub.failure_count(broken) == 5 and hub.failure_count(good) == 0
    hub.close()  # the close failure is already covered by the one warning per sink
    assert good.closed and hub.failure_count(broken) == 6


def test_close_is_idempotent_and_emit_after_close_raises():
    sink = MemorySink()
    hub = TelemetryHub([sink])
    hub.close()
    hub.close()
    with pytest.raises(RuntimeError, match="closed"):
        hub.emit(_event())
    with pytest.raises(RuntimeError, match="closed"):
        hub.add_sink(MemorySink())


def test_hub_rejects_non_events_and_non_sinks():
    hub = TelemetryHub()
    with pytest.raises(TypeError, match="TelemetryEvent"):
        hub.emit({"event_type": "run_started"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="emit"):
        hub.add_sink(object())  # type: ignore[arg-type]


def test_the_hub_wraps_a_sink_that_only_has_emit_and_keeps_it_as_given():
    class Collects:  # no close, no state: the defaults stand in
        def __init__(self) -> None:
            self.events = []

        def emit(self, event: TelemetryEvent) -> None:
            self.events.append(event)

    own = Collects()
    with TelemetryHub() as hub:
        assert hub.add_sink(own) is own and hub.sinks == (own,)
        hub.emit(_event())
        assert len(own.events) == 1 and hub.state_dict() == {"sinks": {}}


def test_sink_hooks_default_to_nothing_and_a_position_needs_a_sink_that_keeps_one(tmp_path):
    plain = TelemetrySink()
    plain.close()
    plain.load_state_dict({"offset": 3})  # nothing to restore
    assert plain.state_dict() == {}
    with pytest.raises(NotImplementedError, match="emit"):
        plain.emit(_event())
    with TelemetryHub([JsonlSink(tmp_path / "a.jsonl"), MemorySink()]) as hub:
        hub.emit(_event())
        state = hub.state_dict()
    assert list(state["sinks"]) == ["0"]  # only the sinks that keep a position
    with TelemetryHub([MemorySink(), JsonlSink(tmp_path / "b.jsonl")]) as swapped:
        with pytest.raises(ValueError, match="no sink 0 with a saved position"):
            swapped.load_state_dict(state)


def test_hubs_are_independent():
    a, b = MemorySink(), MemorySink()
    TelemetryHub([a]).emit(_event())
    assert a.events and not b.events


def test_registry_builds_sinks_by_name(tmp_path):
    assert {"console", "jsonl", "memory"} <= set(available_sinks())
    assert isinstance(create_sink("memory"), MemorySink)
    sink = create_sink("jsonl", path=tmp_path / "e.jsonl")
    assert isinstance(sink, JsonlSink)
    sink.close()
    with pytest.raises(ValueError, match=r"unknown telemetry sink 'nope'; valid: console"):
        create_sink("nope")


def test_jsonl_round_trip_one_line_per_event(tmp_path):
    path = tmp_path / "run" / "events.jsonl"  # parent is created
    events = [
        _event(T.RUN_STARTED, epoch=None, slot=None, seed_id=None, data={"mode": "static"}),
        _event(),
        _event(T.SEED_STAGE_CHANGED, data={"from": "TRAINING", "to": "BLENDING"}),
    ]
    with TelemetryHub([JsonlSink(path)]) as hub:
        for e in events:
            hub.emit(e)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [e.to_dict() for e in events]
    assert read_events(path) == events


def test_jsonl_flushes_each_event_and_appends(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    sink.emit(_event())
    # Not closed: a crash here must still leave the event on disk.
    assert len(read_events(path)) == 1
    sink.close()
    with closing(JsonlSink(path)) as again:
        again.emit(_event(T.SEED_CULLED, data={"reason": "no gain"}))
    assert [e.event_type for e in read_events(path)] == [T.SEED_GERMINATED, T.SEED_CULLED]


def test_jsonl_rejects_unserialisable_data_without_writing(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    with pytest.raises(TypeError, match="seed_germinated event is not JSON-serialisable"):
        sink.emit(_event(data={"x": object()}))
    sink.close()
    assert path.read_text() == ""
    with pytest.raises(RuntimeError, match="closed"):
        sink.emit(_event())


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"epoch": 1}', "missing 'event_type'"),
        ('{"event_type": "seed_exploded"}', "seed_exploded"),
        ('{"event_type": "run_started", "data": 3}', "'data' must be a JSON object"),
        (
            json.dumps(
                {"event_type": "run_started", "schema_version": TELEMETRY_SCHEMA_VERSION + 1}
            ),
            "upgrade esper",
        ),
    ],
)
def test_read_events_names_file_and_line(tmp_path, bad_line, reason):
    path = tmp_path / "events.jsonl"
    good = json.dumps(_event().to_dict())
    path.write_text(f"{good}\n\n{bad_line}\n{good}\n")
    with pytest.raises(
        ValueError, match=rf"events\.jsonl:3: malformed telemetry event: .*{reason}"
    ):
        read_events(path)


def test_read_events_tolerates_only_a_truncated_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    good = json.dumps(_event().to_dict())
    path.write_text(f"{good}\n{good[:20]}")  # a crash mid-write: no trailing newline
    with pytest.warns(RuntimeWarning, match="incomplete last line"):
        assert len(read_events(path)) == 1
    path.write_text(f"{good}\n{good[:20]}\n")  # complete line, still bad: a real error
    with pytest.raises(ValueError, match=":2:"):
        read_events(path)


def test_read_events_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_events(tmp_path / "nope.jsonl")


def _console_output(events: list[TelemetryEvent]) -> str:
    console = Console(record=True, width=200, force_terminal=False)
    sink = ConsoleSink(console)
    for e in events:
        sink.emit(e)
    sink.close()
    return console.export_text()


def test_console_prints_lifecycle_lines_and_skips_epoch_noise():
    text = _console_output(
        [
            _event(T.EPOCH_COMPLETED, data={"val_accuracy": 50.0}),
            _event(T.COUNTERFACTUAL_EVALUATED, data={"contribution": 1.0}),
            _event(T.SEED_GERMINATED, data={"blueprint": "conv_light", "blend": "sigmoid"}),
            _event(T.SEED_STAGE_CHANGED, data={"from": "TRAINING", "to": "BLENDING"}),
            _event(T.SEED_FOSSILIZED, data={"reason": "G3 passed"}),
            _event(T.SEED_CULLED, data={"reason": "[no] gain"}),  # markup in data is escaped
            _event(
                T.GOVERNOR_ROLLBACK, slot=None, seed_id=None, data={"reason": "nan", "loss": 1e9}
            ),
            _event(T.ISOLATION_VIOLATION, data={"violations": 2}),
        ]
    )
    lines = text.strip().splitlines()
    assert len(lines) == 6
    assert lines[0] == "epoch 3 mid/seed-1 germinated conv_light, blend sigmoid"
    assert lines[1] == "epoch 3 mid/seed-1 TRAINING → BLENDING"
    assert lines[2] == "epoch 3 mid/seed-1 fossilized: G3 passed"
    assert lines[3] == "epoch 3 mid/seed-1 culled: [no] gain"
    assert lines[4] == "epoch 3 governor rollback: nan (loss 1e+09)"
    assert lines[5] == "epoch 3 mid/seed-1 isolation violation violations=2"
    assert "50.0" not in text


def test_console_sink_is_registered_with_a_console():
    console = Console(record=True, force_terminal=False)
    sink = create_sink("console", console=console)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sink.emit(_event())
    assert "germinated" in console.export_text()


def test_format_event_is_the_console_line_and_none_for_other_events():
    from esper.nissa import format_event

    assert format_event(_event(T.EPOCH_COMPLETED)) is None
    assert format_event(_event(T.GATE_EVALUATED)) is None
    line = format_event(_event(T.SEED_CULLED, data={"reason": "[red]x"}))
    assert line is not None and "\\[red]x" in line  # data is escaped, never markup


def test_logger_registry_names_the_valid_loggers_and_refuses_duplicates(monkeypatch):
    from esper.nissa import check_logger, register_logger, sinks

    with pytest.raises(ValueError, match=r"unknown --log 'nope'; valid: .*tensorboard"):
        check_logger("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_logger("tensorboard")(lambda context: MemorySink())
    monkeypatch.setattr(sinks, "_LOGGERS", {})
    with pytest.raises(ValueError, match="valid: none registered"):
        check_logger("tensorboard")


def test_logger_unavailable_error_says_how_to_install():
    from esper.nissa import LoggerUnavailableError

    exc = LoggerUnavailableError("wandb", "wandb", "wandb")
    assert str(exc) == '--log wandb needs the wandb package: pip install "esper[wandb]"'


def test_parse_event_line_round_trips_and_explains_failures():
    from esper.nissa import parse_event_line

    event = _event()
    assert parse_event_line(json.dumps(event.to_dict())).to_dict() == event.to_dict()
    with pytest.raises(ValueError, match="not JSON"):
        parse_event_line("{")

"""The live view: its state agrees with a real run's summary, it renders deterministically from
recorded events, it redraws only from events (rate-limited), and non-terminal output stays plain."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from esper.cli import main
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import (
    LiveSink,
    LiveView,
    RunState,
    SeedSnapshot,
    TelemetryHub,
    events_through_epoch,
    read_events,
    render_run,
    resumed_state,
)
from esper.nissa.live import alpha_bar, sparkline

T = TelemetryEventType
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
EPOCHS = 20  # the digits run below: all three slots are used, seeds are culled and blending


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("live") / "run"
    argv = ["train", "heuristic", "--epochs", str(EPOCHS), "--run-dir", str(run_dir), "--no-live"]
    assert main(argv) == 0
    return run_dir


def final_stages(summary: dict) -> dict[str, tuple[str, str]]:
    """slot -> (seed_id, final stage) of the last seed each slot held, from summary.json."""
    last: dict[str, tuple[str, str]] = {}
    for seed in sorted(summary["seeds"], key=lambda s: s["germinated_epoch"]):
        last[seed["slot"]] = (seed["seed_id"], seed["final_stage"])
    return last


def _text(renderable, width: int = 120) -> str:
    console = Console(record=True, width=width, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def test_state_of_a_real_run_agrees_with_summary(digits_run):
    summary = json.loads((digits_run / "summary.json").read_text())
    state = RunState.from_events(read_events(digits_run / "events.jsonl"))
    assert list(state.slots) == ["early", "mid", "late"]
    expected = final_stages(summary)
    assert expected, "the run grew no seed; pick a run that does"
    for slot, (seed_id, stage) in expected.items():
        got = state.slots[slot]
        # A slot that finished resetting is DORMANT again; summary records stop at RESETTING.
        if stage == "RESETTING" and got.stage == "DORMANT":
            continue
        assert (got.seed_id, got.stage) == (seed_id, stage), slot
    assert state.epoch == EPOCHS and state.total_epochs == EPOCHS and state.finished
    assert state.metrics["val_accuracy"] == pytest.approx(summary["final_val_accuracy"])
    assert state.metrics["total_params"] == summary["total_params"]


def test_rendered_view_of_a_real_run_names_every_slot_and_final_stage(digits_run):
    summary = json.loads((digits_run / "summary.json").read_text())
    view = LiveView()
    for event in read_events(digits_run / "events.jsonl"):
        view.apply(event)
    text = _text(view)
    rows = {line.split()[1]: line for line in text.splitlines() if len(line.split()) > 2}
    for slot, (seed_id, stage) in final_stages(summary).items():
        assert slot in rows, f"no row for slot {slot}"
        assert seed_id in rows[slot] and stage in rows[slot], rows[slot]
    assert f"epoch {EPOCHS}/{EPOCHS}" in text and "finished" in text
    assert f"{summary['final_val_accuracy']:6.2f}%" in text
    assert all(len(line) <= 120 for line in text.splitlines())


def _event(kind, epoch=None, slot=None, seed_id=None, ts=0.0, **data) -> TelemetryEvent:
    return TelemetryEvent(kind, epoch=epoch, slot=slot, seed_id=seed_id, data=data, timestamp=ts)


def _epoch(epoch, seeds, host=100, total=100, **extra) -> TelemetryEvent:
    snap = {
        s: {"seed_id": i, "blueprint": b, "stage": st, "alpha": a} for s, (i, b, st, a) in seeds
    }
    data = {"train_loss": 0.5, "train_accuracy": 80.0, "val_loss": 0.6, "val_accuracy": 70.0}
    data.update(host_params=host, total_params=total, seeds=snap, rolled_back=False, **extra)
    return _event(T.EPOCH_COMPLETED, epoch, ts=float(epoch), **data)


RECORDED = [
    _event(T.RUN_STARTED, 0, mode="heuristic", task="toy", seed=3, epochs=10, slots=["a", "b"]),
    _epoch(1, []),
    _event(T.SEED_GERMINATED, 2, "a", "seed-1", blueprint="conv_light", blend="linear"),
    _event(T.SEED_STAGE_CHANGED, 2, "a", "seed-1", **{"from": "DORMANT", "to": "GERMINATED"}),
    _event(T.SEED_STAGE_CHANGED, 2, "a", "seed-1", **{"from": "GERMINATED", "to": "TRAINING"}),
    _epoch(2, [("a", ("seed-1", "conv_light", "TRAINING", 0.0))], total=130),
    _event(T.SEED_STAGE_CHANGED, 3, "a", "seed-1", **{"from": "TRAINING", "to": "BLENDING"}),
    _event(T.ISOLATION_VIOLATION, 3, "a", "seed-1", violations=2),
    _event(T.COUNTERFACTUAL_EVALUATED, 3, "a", "seed-1", contribution=1.25),
    _event(T.SEED_GERMINATED, 3, "b", "seed-2", blueprint="norm", blend="linear"),
    _epoch(
        3,
        [
            ("a", ("seed-1", "conv_light", "BLENDING", 0.6)),
            ("b", ("seed-2", "norm", "TRAINING", 0)),
        ],
        total=138,
    ),
    _event(T.SEED_STAGE_CHANGED, 4, "b", "seed-2", **{"from": "TRAINING", "to": "CULLED"}),
    _event(T.SEED_CULLED, 4, "b", "seed-2", reason="no gain"),
    _epoch(4, [("a", ("seed-1", "conv_light", "BLENDING", 0.8))], total=130, test_accuracy=66.5),
]


def test_recorded_events_render_slots_alpha_params_contribution_and_violations():
    state = RunState.from_events(RECORDED)
    a, b = state.slots["a"], state.slots["b"]
    assert (a.stage, a.alpha, a.params, a.contribution, a.violations) == (
        "BLENDING", 0.8, 30, 1.25, 2
    )  # fmt: skip
    # b's size is what the total holds beyond the host and a's 30 parameters.
    assert (b.stage, b.params, b.seed_id) == ("CULLED", 8, "seed-2")
    text = _text(LiveView(state))
    row_a = next(line for line in text.splitlines() if " a " in line and "seed-1" in line)
    assert "BLENDING" in row_a and "████████·· 0.80" in row_a and "+1.25 pt" in row_a
    assert re.search(r"\b30\b", row_a) and "1 ep" in row_a and row_a.rstrip(" │").endswith("2")
    row_b = next(line for line in text.splitlines() if " b " in line and "seed-2" in line)
    assert "CULLED" in row_b and "—" in row_b  # a culled seed's alpha is not shown
    assert "0.00" not in row_b and "·" not in row_b  # no alpha bar either
    assert "heuristic · toy · seed 3 · running" in text and "epoch 4/10" in text
    assert "test" in text and "66.50%" in text  # test numbers only because an event has them
    assert "culled: no gain" in text and "germinated norm" in text
    # Deterministic: the same events render the same text (elapsed time comes from events).
    assert _text(LiveView(RunState.from_events(RECORDED))) == text


def test_view_without_test_numbers_shows_none_and_a_slot_returns_to_dormant():
    events = RECORDED[:-1] + [
        _event(T.SEED_STAGE_CHANGED, 5, "b", "seed-2", **{"from": "RESETTING", "to": "DORMANT"})
    ]
    state = RunState.from_events(events)
    assert state.slots["b"].stage == "DORMANT" and state.slots["b"].seed_id is None
    text = _text(LiveView(state))
    assert not any(line.split()[1:2] == ["test"] for line in text.splitlines() if line.split())


def test_narrow_terminal_keeps_slots_and_stages_within_its_width():
    text = _text(LiveView(RunState.from_events(RECORDED)), width=80)
    assert all(len(line) <= 80 for line in text.splitlines())
    for needle in ("BLENDING", "CULLED", "conv_light", "norm", "+1.25 pt"):
        assert needle in text


def test_events_through_epoch_is_the_prefix_a_checkpoint_saw():
    assert events_through_epoch(RECORDED, 0) == RECORDED[:1]
    assert events_through_epoch(RECORDED, 2) == RECORDED[:6]
    assert events_through_epoch(RECORDED, 99) == []


def test_resumed_state_reads_the_log_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = "".join(json.dumps(e.to_dict()) + "\n" for e in RECORDED)
    path.write_text(lines + '{"cut by a kill')  # what a kill mid-write leaves behind
    state = resumed_state(path, 3)
    assert state.epoch == 3 and state.slots["b"].stage == "TRAINING"
    assert resumed_state(tmp_path / "missing.jsonl", 3).epoch == 0


def test_the_fold_keeps_every_epoch_and_growth_mark_the_reports_draw():
    state = RunState.from_events(RECORDED)
    records = state.epoch_records()
    assert [r.epoch for r in records] == [1, 2, 3, 4]
    assert records[2].seeds["b"] == SeedSnapshot("seed-2", "norm", "TRAINING", 0.0)
    # The live row of a slot is the last record's snapshot of its seed: one reading of an event.
    a, last = state.slots["a"], records[-1].seeds["a"]
    assert (a.seed_id, a.stage, a.alpha) == (last.seed_id, last.stage, last.alpha)
    marks = [(m.epoch, m.kind, m.slot, m.seed_id) for m in state.marks]
    assert marks == [(2, "germinated", "a", "seed-1"), (3, "germinated", "b", "seed-2"),
                     (4, "culled", "b", "seed-2")]  # fmt: skip
    assert state.slot_order() == ["a", "b"] and not state.rejected


def test_a_replayed_epoch_keeps_its_later_record_and_each_mark_once():
    replay = [RECORDED[-2], _epoch(4, [("a", ("seed-1", "conv_light", "BLENDING", 0.9))])]
    rollback = _event(T.GOVERNOR_ROLLBACK, None, reason="loss spike")
    state = RunState.from_events([*RECORDED, *replay, rollback])
    assert [r.epoch for r in state.epoch_records()] == [1, 2, 3, 4]
    assert state.epoch_records()[-1].seeds["a"].alpha == 0.9
    # An event without an epoch is placed at the last epoch any event named.
    assert [(m.epoch, m.kind) for m in state.marks][-2:] == [(4, "culled"), (4, "rollback")]


def test_a_malformed_epoch_is_rejected_for_reports_while_the_view_goes_on():
    bad = [
        _event(T.EPOCH_COMPLETED, 5, val_loss=0.3),
        _event(T.EPOCH_COMPLETED, 6, val_accuracy=71.0, seeds=["a"]),
    ]
    state = RunState.from_events([*RECORDED, *bad])
    assert state.epoch == 6 and list(state.val_loss)[-1] == 0.3
    assert [r.epoch for r in state.epoch_records()] == [1, 2, 3, 4]
    assert state.rejected == [
        "epoch_completed event for epoch 5: 'val_accuracy' missing or not a number",
        "epoch_completed event for epoch 6: 'seeds' must map slot names to objects",
    ]
    assert "epoch 6/10" in _text(LiveView(state))


def test_slot_order_starts_from_the_declared_slots_then_adds_what_events_named():
    events = [*RECORDED[1:], _event(T.GATE_EVALUATED, 4, "c", "seed-9", passed=False)]
    assert RunState.from_events(events).slot_order(["x", "a"]) == ["x", "a", "b", "c"]
    assert RunState.from_events(RECORDED).slot_order(["x"]) == ["a", "b"]  # run_started wins


def test_sparkline_and_alpha_bar():
    assert sparkline([1.0, 2.0, 3.0]) == "▁▅█"
    assert sparkline([5.0, 5.0]) == "▅▅"
    assert sparkline([]) == "" and len(sparkline(list(range(100)), width=7)) == 7
    assert alpha_bar(0.5, width=4).plain == "██·· 0.50"
    assert alpha_bar(None).plain == "—"


def _terminal_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, height=40), out


def test_live_sink_redraws_from_events_at_most_a_few_times_a_second():
    console, out = _terminal_console()
    sink = LiveSink(console, refresh_per_second=4)
    started = time.perf_counter()
    for _ in range(50):  # a burst of 700 events in far less than a second
        for event in RECORDED:
            sink.emit(event)
    emit_seconds = time.perf_counter() - started
    sink.close()
    frames = out.getvalue().count("heuristic · toy · seed 3")
    # The first frame, at most one per quarter second during the burst, and the final one.
    assert 1 <= frames <= 2 + 4 * emit_seconds + 1, frames
    assert emit_seconds / 700 < 1e-3  # recording an event costs microseconds, not a render
    assert "culled: no gain" in ANSI.sub("", out.getvalue())  # the last frame shows the end


def test_live_sink_is_idle_without_events():
    console, out = _terminal_console()
    sink = LiveSink(console, refresh_per_second=20)
    sink.emit(RECORDED[0])
    time.sleep(0.3)
    drawn = len(out.getvalue())
    time.sleep(0.4)  # no events: nothing is redrawn
    assert len(out.getvalue()) == drawn
    sink.close()
    sink.close()  # idempotent


def test_live_sink_in_a_hub_and_its_bad_arguments():
    console, out = _terminal_console()
    with TelemetryHub([LiveSink(console, state=resumed_state(Path("/nonexistent"), 0))]) as hub:
        for event in RECORDED:
            hub.emit(event)
    assert "epoch 4/10" in ANSI.sub("", out.getvalue())
    with pytest.raises(ValueError, match="refresh_per_second"):
        LiveSink(console, refresh_per_second=0)
    assert render_run(RunState()) is not None  # an empty state draws a waiting screen
    assert "waiting for run_started" in _text(LiveView())


def _esper(*args: str) -> list[str]:
    return [sys.executable, "-m", "esper", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120", "LINES": "40"}


@pytest.mark.parametrize("flag", [[], ["--live"]])
def test_output_to_a_file_is_plain_lines_without_escape_codes(tmp_path, flag):
    log = tmp_path / "log.txt"
    argv = _esper("train", "heuristic", "--epochs", "3", "--run-dir", str(tmp_path / "r"), *flag)
    with log.open("w") as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=_env(), check=True)
    text = log.read_text()
    assert "\x1b" not in text
    assert "epoch   3  train" in text  # the per-epoch lines, as without --live
    assert ("--live needs a terminal" in text) == bool(flag)


def test_live_view_in_a_terminal_ends_agreeing_with_summary(tmp_path):
    run_dir = tmp_path / "run"
    argv = _esper("train", "heuristic", "--epochs", str(EPOCHS), "--run-dir", str(run_dir))
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=_env())
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=30) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in screen  # a terminal gets the live view, not plain lines
    assert "epoch   1  train" not in screen
    plain = ANSI.sub("", screen)
    summary = json.loads((run_dir / "summary.json").read_text())
    for slot, (seed_id, stage) in final_stages(summary).items():
        rows = [line for line in plain.splitlines() if f"│ {slot} " in line]
        assert rows, f"slot {slot} never shown"
        assert seed_id in rows[-1] and stage in rows[-1], rows[-1]  # the final screen
    assert f"epoch {EPOCHS}/{EPOCHS}" in plain


def _interrupt_after(monkeypatch, epoch: int) -> None:
    """Make the trainer stop like a Ctrl-C right after ``epoch`` (its checkpoint is written)."""
    from esper.tolaria.trainer import Trainer

    original = Trainer.run_epoch

    def run_epoch(self):
        if self.epoch == epoch:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)


def test_a_resumed_runs_live_view_shows_the_whole_run(tmp_path, monkeypatch):
    from esper.runs import resume_run

    run_dir = tmp_path / "run"
    _interrupt_after(monkeypatch, 12)
    # No --live/--no-live: the resumed run decides by its own output (an explicit choice is
    # part of the run's configuration and is kept on resume).
    argv = ["train", "heuristic", "--epochs", "14", "--run-dir", str(run_dir)]
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    monkeypatch.undo()
    console, out = _terminal_console()
    summary = resume_run(run_dir, console=console).to_dict()
    plain = ANSI.sub("", out.getvalue())
    frames = plain.split("heuristic · digits · seed 0")
    assert "epoch 12/14" in frames[1]  # the first frame already holds the first 12 epochs
    full = RunState.from_events(read_events(run_dir / "events.jsonl"))
    assert list(full.val_accuracy) and len(full.val_accuracy) == 14  # the log has each once
    last = frames[-1]
    assert "epoch 14/14" in last and "finished" in last
    for slot, (seed_id, stage) in final_stages(summary).items():
        row = next(line for line in last.splitlines() if f"│ {slot} " in line)
        assert seed_id in row and stage in row, row
    assert f"val acc {sparkline(list(full.val_accuracy))}" in last


def test_the_incubation_gain_g2_and_g5_read_is_shown_per_seed():
    snap = _epoch(4, [("a", ("seed-1", "conv_light", "BLENDING", 0.8))], total=130)
    snap.data["seeds"]["a"]["incubation_gain"] = 0.0123
    state = RunState.from_events([*RECORDED[:-1], snap])
    assert state.slots["a"].incubation_gain == 0.0123
    row_a = next(line for line in _text(LiveView(state)).splitlines() if "seed-1" in line)
    assert "+0.0123" in row_a
    events = [
        *RECORDED[:-1],
        snap,
        _event(T.SEED_STAGE_CHANGED, 5, "a", "seed-1", **{"from": "RESETTING", "to": "DORMANT"}),
    ]
    assert RunState.from_events(events).slots["a"].incubation_gain is None  # a free slot

"""Karn: a synthetic run directory becomes plots and a table; bad folders fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from esper.karn.report import (
    ReportError,
    comparison_table,
    load_run,
    report_main,
    write_plots,
)
from esper.leyline import TelemetryEvent, TelemetryEventType
from esper.nissa import RunState, read_events
from esper.runs import RunSummary

T = TelemetryEventType
SLOTS = ["early", "mid", "late"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Heuristic run: seed-1 in "mid" goes the whole way to FOSSILIZED; seed-2 in "late" is culled.
# epoch -> {slot: (seed_id, blueprint, stage, alpha)}
GROWN_SEEDS = {
    1: {"mid": ("seed-1", "conv_light", "TRAINING", 0.0)},
    2: {"mid": ("seed-1", "conv_light", "TRAINING", 0.0)},
    3: {
        "mid": ("seed-1", "conv_light", "BLENDING", 0.5),
        "late": ("seed-2", "norm", "TRAINING", 0.0),
    },
    4: {"mid": ("seed-1", "conv_light", "PROBATIONARY", 1.0)},
    5: {"mid": ("seed-1", "conv_light", "FOSSILIZED", 1.0)},
    6: {"mid": ("seed-1", "conv_light", "FOSSILIZED", 1.0)},
}


def _lifecycle_events() -> list[TelemetryEvent]:
    def ev(kind, epoch, slot, seed_id, **data) -> TelemetryEvent:
        return TelemetryEvent(kind, epoch=epoch, slot=slot, seed_id=seed_id, data=data)

    return [
        ev(T.SEED_GERMINATED, 1, "mid", "seed-1", blueprint="conv_light", blend="sigmoid"),
        ev(T.SEED_STAGE_CHANGED, 1, "mid", "seed-1", **{"from": "GERMINATED", "to": "TRAINING"}),
        ev(T.SEED_GERMINATED, 3, "late", "seed-2", blueprint="norm", blend="linear"),
        ev(T.SEED_CULLED, 4, "late", "seed-2", reason="no improvement"),
        ev(T.GATE_EVALUATED, 4, "mid", "seed-1", passed=True),
        ev(T.SEED_FOSSILIZED, 5, "mid", "seed-1", reason="G3 passed"),
        ev(T.GOVERNOR_ROLLBACK, None, None, None, reason="loss spike", loss=9.0),
    ]


def write_run(
    run_dir: Path,
    *,
    mode: str = "heuristic",
    seed: int = 0,
    acc_offset: float = 0.0,
    flops: bool = False,
) -> Path:
    """Write config.json, events.jsonl and summary.json following the trainer's schema."""
    grown = mode == "heuristic"
    run_dir.mkdir(parents=True)
    epochs = 6
    config = {"mode": mode, "task": "cifar10", "seed": seed, "epochs": epochs, "slots": SLOTS}
    (run_dir / "config.json").write_text(json.dumps(config))

    events = [TelemetryEvent(T.RUN_STARTED, data=dict(config))]
    accs = [40.0 + 5 * e + acc_offset for e in range(1, epochs + 1)]
    for epoch, acc in enumerate(accs, start=1):
        seeds = GROWN_SEEDS[epoch] if grown else {}
        data = {
            "train_loss": 1.0 / epoch,
            "train_accuracy": acc + 3,
            "val_loss": 1.2 / epoch,
            "val_accuracy": acc,
            "host_params": 1000,
            "total_params": 1200 if grown else 1000,
            "seeds": {
                slot: {"seed_id": s, "blueprint": b, "stage": st, "alpha": a}
                for slot, (s, b, st, a) in seeds.items()
            },
        }
        if flops:
            data["total_train_flops"] = 1e6 * epoch * (1.5 if grown and epoch > 3 else 1.0)
        events.append(TelemetryEvent(T.EPOCH_COMPLETED, epoch=epoch, data=data))
        events.append(
            TelemetryEvent(T.COUNTERFACTUAL_EVALUATED, epoch=epoch, data={"contribution": 0.1})
        )
    if grown:
        events += _lifecycle_events()
    events.append(TelemetryEvent(T.RUN_COMPLETED, epoch=epochs))
    lines = "".join(json.dumps(e.to_dict()) + "\n" for e in events)
    (run_dir / "events.jsonl").write_text(lines)

    summary = RunSummary(
        mode=mode,
        task="cifar10",
        seed=seed,
        epochs=epochs,
        width_multiplier=1.0,
        final_val_accuracy=accs[-1],
        final_val_loss=0.2,
        final_train_loss=1.0 / epochs,
        best_val_accuracy=max(accs),
        best_val_loss=0.2,
        host_params=1000,
        total_params=1200 if grown else 1000,
        fossilized=1 if grown else 0,
        culled=1 if grown else 0,
        rollbacks=1 if grown else 0,
        train_flops=6_000_000,
        eval_flops=1_000_000,
        counterfactual_flops=0,
        counterfactual_seconds=0.0,
        param_epochs=6000,
        wall_seconds=12.5,
        seeds=[
            {
                "seed_id": "seed-1",
                "slot": "mid",
                "blueprint": "conv_light",
                "final_stage": "FOSSILIZED",
                "stages": ["GERMINATED", "TRAINING", "BLENDING", "PROBATIONARY", "FOSSILIZED"],
                "germinated_epoch": 1,
            }
        ]
        if grown
        else [],
    )
    (run_dir / "summary.json").write_text(json.dumps(summary.to_dict()))
    return run_dir


def _render(renderable) -> str:
    console = Console(record=True, width=220, force_terminal=False)
    console.print(renderable)
    return console.export_text()


def test_load_run_derives_epochs_marks_and_slots(tmp_path):
    run = load_run(write_run(tmp_path / "grown"))
    assert (run.mode, run.task, run.seed) == ("heuristic", "cifar10", 0)
    assert [r.epoch for r in run.epochs] == [1, 2, 3, 4, 5, 6]
    assert run.epochs[2].seeds["mid"].stage == "BLENDING"
    assert run.epochs[2].seeds["mid"].alpha == 0.5
    assert run.slots == SLOTS
    assert run.has_seeds
    kinds = [(m.epoch, m.kind, m.seed_id) for m in run.marks]
    assert kinds == [
        (1, "germinated", "seed-1"),
        (3, "germinated", "seed-2"),
        (4, "culled", "seed-2"),
        (5, "fossilized", "seed-1"),
        (5, "rollback", None),  # no epoch on the event: placed at the last epoch seen
    ]
    assert run.summary.fossilized == 1 and run.summary.seeds[0]["seed_id"] == "seed-1"


def test_the_report_and_the_live_view_read_one_fold(tmp_path):
    run = load_run(write_run(tmp_path / "grown"))
    live = RunState.from_events(read_events(run.run_dir / "events.jsonl"))
    assert run.epochs == live.epoch_records() and run.marks == live.marks
    assert run.state.slots.keys() == live.slots.keys() and run.state.epoch == live.epoch == 6


def test_slots_come_from_config_when_run_started_lists_none(tmp_path):
    run_dir = write_run(tmp_path / "grown")
    events = read_events(run_dir / "events.jsonl")
    events[0] = TelemetryEvent(T.RUN_STARTED, data={"mode": "heuristic"})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e.to_dict()) + "\n" for e in events))
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "slots": ["late", "early"]}))
    assert load_run(run_dir).slots == ["late", "early", "mid"]


def test_resumed_run_keeps_the_last_record_of_a_replayed_epoch(tmp_path):
    run_dir = write_run(tmp_path / "grown")
    replay = TelemetryEvent(T.EPOCH_COMPLETED, epoch=6, data={"val_accuracy": 99.0})
    with (run_dir / "events.jsonl").open("a") as f:
        f.write(json.dumps(replay.to_dict()) + "\n")
    run = load_run(run_dir)
    assert len(run.epochs) == 6 and run.epochs[-1].val_accuracy == 99.0


def test_write_plots_for_grown_run(tmp_path):
    run = load_run(write_run(tmp_path / "grown"))
    paths = write_plots(run)
    assert [p.name for p in paths] == ["accuracy.png", "lifecycle.png", "alpha.png"]
    for p in paths:
        assert p.parent == run.run_dir
        assert p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 5000
    assert not list(run.run_dir.glob("*.tmp"))


def test_compute_plot_draws_accuracy_against_training_flops(tmp_path):
    from esper.karn.overlay import compute_figure

    run = load_run(write_run(tmp_path / "grown", flops=True))
    assert [r.train_flops for r in run.epochs][:4] == [1e6, 2e6, 3e6, 6e6]
    paths = write_plots(run)
    assert [p.name for p in paths][-1] == "compute.png"
    assert paths[-1].read_bytes().startswith(PNG_MAGIC)
    line = compute_figure([run]).axes[0].lines[0]
    assert list(line.get_xdata()) == [r.train_flops for r in run.epochs]
    assert list(line.get_ydata()) == [r.val_accuracy for r in run.epochs]
    # A log without FLOP counts (older runs) gets no compute plot.
    old = load_run(write_run(tmp_path / "old"))
    assert "compute.png" not in [p.name for p in write_plots(old)]


def test_write_plots_for_static_run_skips_seed_plots(tmp_path):
    run = load_run(write_run(tmp_path / "static", mode="static"))
    assert not run.has_seeds and run.marks == []
    paths = write_plots(run)
    assert [p.name for p in paths] == ["accuracy.png"]
    assert paths[0].read_bytes().startswith(PNG_MAGIC)
    assert not (run.run_dir / "lifecycle.png").exists()


def test_comparison_table_rows_and_means(tmp_path):
    runs = [
        load_run(write_run(tmp_path / "g0", seed=0)),
        load_run(write_run(tmp_path / "g1", seed=1, acc_offset=2.0)),
        load_run(write_run(tmp_path / "s0", mode="static", seed=0, acc_offset=-5.0)),
    ]
    table = comparison_table(runs)
    headers = [c.header for c in table.columns]
    assert headers == [
        "mode", "task", "seed", "final val acc (%)", "best val acc (%)", "final val loss",
        "host params", "total params", "fossilized", "culled",
    ]  # fmt: skip
    assert table.title == "Comparison: static vs grown"
    rows = [line.split("│")[1:-1] for line in _render(table).splitlines() if "cifar10" in line]
    rows = [[cell.strip() for cell in row] for row in rows]
    assert rows == [
        ["heuristic", "cifar10", "0", "70.00", "70.00", "0.2000", "1,000", "1,200", "1", "1"],
        ["heuristic", "cifar10", "1", "72.00", "72.00", "0.2000", "1,000", "1,200", "1", "1"],
        ["heuristic", "cifar10", "mean of 2", "71.00", "71.00", "0.2000", "1,000", "1,200",
         "1", "1"],
        ["static", "cifar10", "0", "65.00", "65.00", "0.2000", "1,000", "1,000", "0", "0"],
    ]  # fmt: skip


def test_comparison_table_tolerates_nan_and_missing_test_numbers(tmp_path):
    a = write_run(tmp_path / "a", mode="static", seed=0)
    b = write_run(tmp_path / "b", mode="static", seed=1)
    summary = RunSummary.from_dict(json.loads((b / "summary.json").read_text()))
    summary.final_val_loss = float("nan")  # a diverged seed
    summary.test_accuracy, summary.test_loss = 90.0, 0.3
    (b / "summary.json").write_text(json.dumps(summary.to_dict()))
    text = _render(comparison_table([load_run(a), load_run(b)]))
    assert "test acc (%)" in text  # one run has test numbers: the columns are shown
    assert "—" in text and "nan" in text  # shown as they are in the run's own row
    mean_row = next(line for line in text.splitlines() if "mean of 2" in line)
    assert "70.00" in mean_row and "0.2000" in mean_row  # the mean skips NaN
    assert "90.00" in mean_row and "0.3000" in mean_row  # and the run without test numbers


def test_report_main_writes_plots_and_prints_table(tmp_path):
    grown = write_run(tmp_path / "grown")
    static = write_run(tmp_path / "static", mode="static")
    console = Console(record=True, width=220, force_terminal=False)
    assert report_main([str(grown), str(static)], console) == 0
    text = console.export_text()
    assert f"{grown}: wrote accuracy.png, lifecycle.png, alpha.png" in text
    assert f"{static}: wrote accuracy.png" in text
    assert "static vs grown" in text
    assert (grown / "alpha.png").is_file() and (static / "accuracy.png").is_file()


def test_report_main_single_run_prints_no_table(tmp_path):
    console = Console(record=True, width=220, force_terminal=False)
    assert report_main([str(write_run(tmp_path / "grown"))], console) == 0
    assert "Comparison" not in console.export_text()


def test_report_main_checks_every_folder_before_writing(tmp_path):
    good = write_run(tmp_path / "good")
    with pytest.raises(ReportError, match="nope"):
        report_main([str(good), str(tmp_path / "nope")], Console(record=True))
    assert not (good / "accuracy.png").exists()
    with pytest.raises(ReportError, match="no run directories"):
        report_main([], Console(record=True))


def test_report_error_is_a_value_error():
    assert issubclass(ReportError, ValueError)


def test_missing_folder(tmp_path):
    with pytest.raises(ReportError, match=r"nope: not a run directory"):
        load_run(tmp_path / "nope")


def test_missing_summary(tmp_path):
    run_dir = write_run(tmp_path / "grown")
    (run_dir / "summary.json").unlink()
    with pytest.raises(ReportError, match=r"grown: missing summary\.json"):
        load_run(run_dir)


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("summary.json", "{oops", r"summary\.json: not valid JSON \(line 1"),
        ("summary.json", "[]", r"summary\.json: expected a JSON object"),
        ("summary.json", '{"mode": "static"}', r"summary\.json: missing key\(s\) task, seed"),
        ("config.json", "", r"config\.json: not valid JSON"),
        ("events.jsonl", '{"event_type": "run_started"}\nnope\n', r"events\.jsonl:2: malformed"),
        (
            "events.jsonl",
            json.dumps({"event_type": "epoch_completed", "epoch": 1, "data": {}}) + "\n",
            r"events\.jsonl: epoch_completed event for epoch 1: 'val_accuracy' missing",
        ),
        (
            "events.jsonl",
            json.dumps(
                {
                    "event_type": "epoch_completed",
                    "epoch": 2,
                    "data": {"val_accuracy": 50.0, "seeds": {"mid": "seed-1"}},
                }
            )
            + "\n",
            r"events\.jsonl: epoch_completed event for epoch 2: 'seeds' must map slot names",
        ),
    ],
)
def test_malformed_files_name_the_path(tmp_path, file, content, message):
    run_dir = write_run(tmp_path / "grown")
    (run_dir / file).write_text(content)
    with pytest.raises(ReportError, match=message) as info:
        load_run(run_dir)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("final_val_accuracy", "high", "'final_val_accuracy' must be a number, got 'high'"),
        ("final_val_accuracy", None, "'final_val_accuracy' must be a number, got None"),
        ("test_loss", "low", "'test_loss' must be a number, got 'low'"),
        ("mode", 3, "'mode' must be a string, got 3"),
        ("seed", 1.5, "'seed' must be an integer, got 1.5"),
        # The trainer has always written counts; a list of seed ids is refused.
        ("culled", ["x"], r"'culled' must be a count \(an integer >= 0\), got \['x'\]"),
        ("fossilized", True, r"'fossilized' must be a count \(an integer >= 0\), got True"),
        ("seeds", {"a": 1}, r"'seeds' must be a list, got \{'a': 1\}"),
        ("seeds", ["seed-1"], r"'seeds'\[0\] must be a seed record \(an object\), got 'seed-1'"),
        ("format", 99, r"run-summary version 99 is not one this Esper reads"),
    ],
)
def test_summary_with_wrong_types(tmp_path, key, value, message):
    run_dir = write_run(tmp_path / "grown")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary[key] = value
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ReportError, match=r"summary\.json: " + message) as info:
        load_run(run_dir)
    assert "\n" not in str(info.value)


def test_summary_missing_a_key_the_schema_requires(tmp_path):
    run_dir = write_run(tmp_path / "grown")
    summary = json.loads((run_dir / "summary.json").read_text())
    del summary["train_flops"], summary["rollbacks"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(
        ReportError, match=r"summary\.json: missing key\(s\) rollbacks, train_flops$"
    ):
        load_run(run_dir)


def test_summary_reads_what_the_trainer_leaves_out(tmp_path):
    # No test split, one process: those keys are not written, and the summary has no value.
    run = load_run(write_run(tmp_path / "grown"))
    raw = json.loads((run.run_dir / "summary.json").read_text())
    assert "test_accuracy" not in raw and "ranks_identical" not in raw
    assert not run.summary.has_test and run.summary.ranks_identical is None
    assert run.summary.to_dict() == raw


def _crowded_run(tmp_path: Path) -> Path:
    """A run with a growth event at almost every epoch, several kinds at one epoch."""
    run_dir = write_run(tmp_path / "crowded")
    extra = []
    for epoch in range(1, 7):
        for kind in (T.SEED_GERMINATED, T.SEED_CULLED):
            seed = f"seed-{epoch}-{'early' if kind is T.SEED_GERMINATED else 'late'}-conv_light"
            extra.append(TelemetryEvent(kind, epoch=epoch, slot="early", seed_id=seed))
    with (run_dir / "events.jsonl").open("a") as out:
        out.writelines(json.dumps(e.to_dict()) + "\n" for e in extra)
    return run_dir


def test_accuracy_axis_stops_at_100_and_event_labels_never_overlap(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from esper.karn.plots import accuracy_figure

    run = load_run(_crowded_run(tmp_path))
    fig = accuracy_figure(run)
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax, strip = fig.axes  # the plot, then the strip of labels above it
    assert ax.get_ylim()[1] <= 101.0  # not the 120% the labels used to need
    labels = [t for t in strip.texts if t.get_text()]
    assert len(labels) == len({(m.epoch, m.kind) for m in run.marks})
    boxes = [t.get_window_extent(renderer) for t in labels]
    for i, a in enumerate(boxes):
        assert not a.overlaps(ax.get_window_extent(renderer)), labels[i].get_text()
        for j in range(i):
            assert not a.overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
    assert len({round(b.y0) for b in boxes}) > 1  # the crowded labels were stacked in rows


def test_fit_widths_wraps_headers_first_then_words_never():
    from esper.karn.tables import fit_widths

    cells = [["a long header", "x"], ["value", "wordy cell text"]]
    assert fit_widths(cells, 200) == [13, 15]  # natural widths
    # Two columns cost 7 characters of rules and padding; "header" is 6, "wordy" 5.
    assert fit_widths(cells, 7 + 6 + 15) == [6, 15]  # the header wraps first
    assert fit_widths(cells, 7 + 6 + 12) == [6, 12]  # then values, down to their words
    assert fit_widths(cells, 7 + 6 + 5) == [6, 5]
    assert fit_widths(cells, 7 + 10) is None
    assert fit_widths(cells, 3 * 2 + 1 + 20, whole=(1,)) is None

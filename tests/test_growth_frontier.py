"""The growth frontier benchmark: its Pareto front, interpolation and table on numbers worked
out by hand, its input checks, and one end-to-end run on digits.

The script is loaded from its file (benchmarks are scripts, not a package); nothing edits
``sys.path``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from esper.leyline import DEFAULT_GROWTH_PATIENCE
from esper.runs import RunSummary

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "growth_frontier.py"
_spec = importlib.util.spec_from_file_location("_benchmark_growth_frontier", SCRIPT)
gf = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gf  # dataclasses look their module up there while the file runs
_spec.loader.exec_module(gf)

ACC = gf.ACCURACY
LOSS = gf.LOSS


def _point(mode, width, seed, metric, flops, params=100):
    return gf.Point(mode, width, seed, metric, flops, params, f"{mode}-w{width}-s{seed}")


def _summary(**values) -> RunSummary:
    """A run's summary: every required number 1, then ``values``."""
    required = [
        f.name for f in fields(RunSummary) if f.default is MISSING and f.default_factory is MISSING
    ]
    raw = dict.fromkeys(required, 1) | {"mode": "static", "task": "digits"} | values
    summary = RunSummary.from_dict(raw)
    summary.check()
    return summary


# --- Pareto front ------------------------------------------------------------------------------


def test_front_excludes_a_point_that_costs_more_and_scores_less():
    points = [(1e8, 80.0), (2e8, 78.0), (4e8, 90.0)]  # the middle one is dominated by the first
    assert gf.pareto_front(points, higher_is_better=True) == [0, 2]


def test_front_follows_the_metric_direction():
    # The same numbers as losses: now cheaper-and-lower wins, and the dearer 90 is worse.
    points = [(1e8, 80.0), (2e8, 78.0), (4e8, 90.0)]
    assert gf.pareto_front(points, higher_is_better=False) == [0, 1]


def test_front_is_ordered_by_flops_and_keeps_ties_but_not_equal_cost_losers():
    points = [(4e8, 95.0), (1e8, 80.0), (1e8, 80.0), (1e8, 79.0)]
    # The two identical cheap points do not dominate each other; the 79 at the same cost does
    # not survive.
    assert gf.pareto_front(points, higher_is_better=True) == [1, 2, 0]


# --- interpolation -----------------------------------------------------------------------------


def test_interpolation_is_linear_in_log_flops():
    front = [(1e8, 80.0), (1e10, 90.0)]
    # 1e9 is halfway in log FLOPs, though only a tenth of the way in FLOPs.
    assert gf.interpolate_front(front, 1e9) == pytest.approx(85.0)
    assert gf.interpolate_front(front, 1e8) == 80.0
    assert gf.interpolate_front(front, 1e10) == 90.0


def test_interpolation_picks_the_right_segment():
    front = [(1e8, 1.5), (1e9, 1.3), (1e10, 1.2)]
    assert gf.interpolate_front(front, math.sqrt(1e9 * 1e10)) == pytest.approx(1.25)


def test_interpolation_does_not_extrapolate():
    front = [(1e8, 80.0), (1e9, 90.0)]
    assert gf.interpolate_front(front, 5e7) is None
    assert gf.interpolate_front(front, 2e9) is None
    assert gf.interpolate_front([(1e8, 80.0)], 1e8) == 80.0
    assert gf.interpolate_front([(1e8, 80.0)], 2e8) is None


def test_interpolation_rejects_bad_flops():
    with pytest.raises(ValueError, match="FLOPs must be > 0"):
        gf.interpolate_front([(1e8, 80.0), (1e9, 90.0)], 0)
    with pytest.raises(ValueError, match="ascending"):
        gf.interpolate_front([(1e9, 90.0), (1e8, 80.0)], 3e8)


# --- rows and table ----------------------------------------------------------------------------


def _accuracy_points():
    return [
        _point("static", 1.0, 0, 80.0, 1e8, 1000),
        _point("static", 1.0, 1, 82.0, 1e8, 1000),
        _point("static", 1.5, 0, 79.0, 2e8, 2000),  # dominated by x1
        _point("static", 1.5, 1, 79.0, 2e8, 2000),
        _point("static", 2.0, 0, 90.0, 1e10, 4000),
        _point("static", 2.0, 1, 90.0, 1e10, 4000),
        _point("heuristic", 1.0, 0, 88.0, 1e9, 1500),
        _point("heuristic", 1.0, 1, 86.0, 1e9, 1700),
    ]


def test_rows_aggregate_seeds_and_place_growth_against_the_front():
    rows = gf.frontier_rows(_accuracy_points(), ACC)
    assert [(r.mode, r.width) for r in rows] == [
        ("static", 1.0),
        ("static", 1.5),
        ("static", 2.0),
        ("heuristic", 1.0),
    ]
    assert [r.on_front for r in rows] == [True, False, True, None]
    x1, _, _, grown = rows
    assert x1.metric_mean == 81.0
    assert x1.metric_std == pytest.approx(math.sqrt(2.0))  # sample std of 80, 82
    assert grown.params_mean == 1600
    # Front from (1e8, 81) to (1e10, 90): at 1e9, halfway in log FLOPs, 85.5.
    assert grown.front_metric == pytest.approx(85.5)
    assert grown.delta == pytest.approx(87.0 - 85.5)


def test_table_says_growth_is_better_or_worse_in_words():
    table = gf.render_table(gf.frontier_rows(_accuracy_points(), ACC), ACC)
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[0].startswith("| configuration | seeds | test acc (%) mean ± std |")
    assert lines[2].startswith("| static ×1 | 2 | 81.00 ± 1.41 | 1.000e+08 | 1,000 | yes |")
    assert "| static ×1.5 | 2 | 79.00 ± 0.00 |" in lines[3] and "| no |" in lines[3]
    assert lines[5].startswith("| grown (heuristic) ×1 | 2 | 87.00 ± 1.41 |")
    assert lines[5].endswith("| 85.50 | +1.50 (better) |")


def test_a_lower_loss_than_the_front_is_better_though_the_difference_is_negative():
    points = [
        _point("static", 1.0, 0, 1.50, 1e8),
        _point("static", 2.0, 0, 1.30, 1e10),
        _point("heuristic", 1.0, 0, 1.35, 1e9),
    ]
    rows = gf.frontier_rows(points, LOSS)
    assert [r.on_front for r in rows[:2]] == [True, True]
    assert rows[2].front_metric == pytest.approx(1.40)
    table = gf.render_table(rows, LOSS)
    assert table.splitlines()[-1].endswith("| 1.4000 | -0.0500 (better) |")
    assert "1.5000 ± —" in table  # one seed: no sample std


def test_growth_outside_the_static_flop_range_is_not_compared():
    points = [
        _point("static", 1.0, 0, 80.0, 1e8),
        _point("static", 2.0, 0, 90.0, 1e9),
        _point("heuristic", 1.0, 0, 95.0, 5e9),
    ]
    rows = gf.frontier_rows(points, ACC)
    assert rows[2].front_metric is None and rows[2].delta is None
    assert "| outside static FLOP range | — |" in gf.render_table(rows, ACC)


# --- input checks ------------------------------------------------------------------------------


def test_metric_is_loss_for_language_models_and_falls_back_to_validation():
    fashion, pystd, digits = (gf.get_task(t) for t in ("fashion", "pystd", "digits"))
    with_test = _summary(test_accuracy=1.0, test_loss=1.0)
    assert gf.metric_for(fashion, [with_test]) is ACC
    assert gf.metric_for(pystd, [with_test]) is LOSS
    assert ACC.value(with_test) == 1.0 and LOSS.value(with_test) == 1.0
    # A run without test numbers (a summary written before its task had a test split).
    val = gf.metric_for(digits, [with_test, _summary(final_val_accuracy=2.0)])
    assert (val.key, val.higher_is_better) == ("final_val_accuracy", True)
    assert val.label == "final val acc (%)"
    assert val.note == "digits has no test split: the final validation accuracy is compared"
    assert val.value(_summary(final_val_accuracy=2.0)) == 2.0
    assert gf.metric_for(digits, [with_test]) is ACC


def test_a_finished_run_with_a_broken_summary_fails_with_one_line(tmp_path):
    run_dir = tmp_path / "static-digits-w1-s0"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text('{"mode": "static"}')
    with pytest.raises(gf.FrontierError, match=r"summary\.json: missing key\(s\) task, seed"):
        gf.run_once([], run_dir)
    (run_dir / "summary.json").write_text("{oops")
    with pytest.raises(gf.FrontierError, match=r"summary\.json: Expecting property name"):
        gf.run_once([], run_dir)


def test_widths_must_be_positive_and_build_different_hosts():
    digits = gf.get_task("digits")  # base_channels 4
    assert gf.resolved_widths(digits, [2.0, 1.0, 1.5]) == {1.0: 4, 1.5: 6, 2.0: 8}
    with pytest.raises(gf.FrontierError, match="--widths must be finite and > 0, got -1"):
        gf.resolved_widths(digits, [1.0, -1.0])
    with pytest.raises(gf.FrontierError, match="1 and 1.1 both give base_channels=4"):
        gf.resolved_widths(digits, [1.0, 1.1])


def test_runs_grown_under_another_default_patience_are_not_mixed_in(tmp_path):
    gf._record_train_args(tmp_path, "digits", [])
    record = json.loads((tmp_path / "train-args-digits.json").read_text())
    assert record["growth_patience"] == DEFAULT_GROWTH_PATIENCE
    gf._record_train_args(tmp_path, "digits", [])  # the same again: accepted
    # A record written before the key existed (and before records had a format version): its
    # runs grew at the old default, 0.
    del record["growth_patience"], record["format"]
    (tmp_path / "train-args-digits.json").write_text(json.dumps(record))
    with pytest.raises(gf.FrontierError, match=f"patience 0, not {DEFAULT_GROWTH_PATIENCE}"):
        gf._record_train_args(tmp_path, "digits", [])
    assert gf.growth_patience(["--growth-patience", "0"]) == 0


def test_train_args_may_not_set_what_the_benchmark_sets():
    gf.check_train_args("digits", ["--epochs", "2", "--threads", "1"])
    with pytest.raises(gf.FrontierError, match="must not set --seed, --width-multiplier"):
        gf.check_train_args("digits", ["--seed", "3", "--width", "2"])  # an abbreviation too
    with pytest.raises(gf.FrontierError, match="--epochs must be >= 1"):
        gf.check_train_args("digits", ["--epochs", "0"])


def test_bad_command_lines_fail_with_one_line(tmp_path):
    def run(*args):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--out", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        return proc.stderr

    assert "valid tasks: " in run("--task", "nope") and "digits" in run("--task", "nope")
    assert "go after --" in run("--epochs", "2")
    assert "--widths must be finite and > 0, got 0" in run("--widths", "0", "1")
    assert not any(tmp_path.iterdir())  # nothing was trained or written


def test_only_a_run_killed_before_its_first_checkpoint_is_started_afresh(tmp_path):
    run = tmp_path / "run"
    assert not gf._killed_before_training(run)  # no folder: a plain new run
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "events.jsonl").write_text("")
    assert gf._killed_before_training(run)
    (run / "events.jsonl").write_text('{"type": "RUN_STARTED"}\n')
    assert not gf._killed_before_training(run)  # something happened: leave it to a person
    (run / "events.jsonl").write_text("")
    (run / "notes.txt").write_text("mine")
    assert not gf._killed_before_training(run)


# --- end to end --------------------------------------------------------------------------------


def test_benchmark_on_digits_writes_table_plot_and_points_and_resumes(tmp_path):
    out = tmp_path / "frontier"
    cmd = [sys.executable, str(SCRIPT), "--task", "digits", "--out", str(out)]
    cmd += ["--seeds", "0", "--widths", "1", "2", "--", "--epochs", "1", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("$ esper train") == 3  # two static widths, one grown run

    table = (out / "frontier-digits.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows] == [
        "| configuration",
        "| static ×1",
        "| static ×2",
        "| grown (heuristic) ×1",
    ]
    assert "test acc (%) mean ± std" in rows[0]  # digits has a test split
    assert "has no test split" not in table
    assert (out / "frontier-digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "frontier-digits.json").read_text())
    assert [(p["mode"], p["width"], p["seed"]) for p in data["points"]] == [
        ("static", 1.0, 0),
        ("static", 2.0, 0),
        ("heuristic", 1.0, 0),
    ]
    assert data["widths"] == {"1": 4, "2": 8}
    assert all(p["train_flops"] > 0 and p["params"] > 0 for p in data["points"])
    static1, static2, grown = data["points"]
    assert static2["params"] > static1["params"] and static2["train_flops"] > static1["train_flops"]
    assert grown["params"] >= static1["params"]

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "$ esper train" not in again.stdout  # every run was read back, none retrained
    assert json.loads((out / "frontier-digits.json").read_text())["points"] == data["points"]

    more_epochs = [*cmd[: cmd.index("--epochs") + 1], "2", "--threads", "1"]
    changed = subprocess.run(more_epochs, capture_output=True, text=True, timeout=60, env=env)
    assert changed.returncode == 2
    assert "use the same arguments or another --out" in changed.stderr

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
import statistics
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


def _point(mode, width, seed, metric, flops, params=100, *, epochs=10, val=None):
    run_dir = f"{mode}-w{width}-e{epochs}-s{seed}"
    val = metric if val is None else val
    return gf.Point(mode, width, epochs, 0.1, seed, metric, val, flops, params, run_dir)


def _sweeps(points, chosen=1.0):
    """Every arm of ``points`` swept at ×0.5, ×1, ×2 with ``chosen`` best."""
    arms = {gf.Arm(p.mode, p.width, p.epochs) for p in points}
    return {a: gf.Sweep({0.5: 1.0, 1.0: 2.0, 2.0: 1.5}, chosen, at_edge=False) for a in arms}


def _rows(points, metric):
    return gf.frontier_rows(points, _sweeps(points), metric, 0.1)


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
    rows = _rows(_accuracy_points(), ACC)
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
    # Paired per seed: seed 0 has front (80 + 90) / 2 = 85 and grown 88, seed 1 front 86 and
    # grown 86: differences 3 and 0.
    assert grown.margin == pytest.approx(1.5)
    assert grown.margin_se == pytest.approx(statistics.stdev([3.0, 0.0]) / math.sqrt(2))
    low, high = grown.margin_ci
    assert 0.0 <= low <= 1.5 <= high <= 3.0
    assert (x1.lr_factor, x1.lr, x1.lrs_tried) == (1.0, 0.1, {"0.05": 1.0, "0.1": 2.0, "0.2": 1.5})


def test_table_says_growth_is_better_or_worse_in_words():
    table = gf.render_table(_rows(_accuracy_points(), ACC), ACC)
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[0].startswith("| configuration | seeds | lr | test acc (%) mean ± std |")
    assert lines[2].startswith(
        "| static ×1, 10 ep | 2 | 0.1 (×1) | 81.00 ± 1.41 | 1.000e+08 | 1,000 | yes |"
    )
    assert "| static ×1.5, 10 ep | 2 | 0.1 (×1) | 79.00 ± 0.00 |" in lines[3]
    assert "| no |" in lines[3]
    assert lines[5].startswith("| grown (heuristic) ×1, 10 ep | 2 | 0.1 (×1) | 87.00 ± 1.41 |")
    assert lines[5].endswith("| 85.50 | +1.50 (better) |")


def test_a_lower_loss_than_the_front_is_better_though_the_difference_is_negative():
    points = [
        _point("static", 1.0, 0, 1.50, 1e8),
        _point("static", 2.0, 0, 1.30, 1e10),
        _point("heuristic", 1.0, 0, 1.35, 1e9),
    ]
    rows = _rows(points, LOSS)
    assert [r.on_front for r in rows[:2]] == [True, True]
    assert rows[2].front_metric == pytest.approx(1.40)
    table = gf.render_table(rows, LOSS)
    assert table.splitlines()[-1].endswith("| 1.4000 | -0.0500 (better) |")
    assert "1.5000 ± —" in table  # one seed: no sample std
    # The margin is signed so that positive means growth is better, for a loss too.
    assert rows[2].margin == pytest.approx(0.05)
    assert rows[2].margin_se is None and rows[2].margin_ci is None  # one seed


def test_growth_outside_the_static_flop_range_is_not_compared():
    points = [
        _point("static", 1.0, 0, 80.0, 1e8),
        _point("static", 2.0, 0, 90.0, 1e9),
        _point("heuristic", 1.0, 0, 95.0, 5e9),
    ]
    rows = _rows(points, ACC)
    assert rows[2].front_metric is None and rows[2].delta is None and rows[2].margin is None
    assert "| outside static FLOP range | — |" in gf.render_table(rows, ACC)
    assert "| outside static FLOP range | — | — |" in gf.render_headline(rows, ACC, rows[1])


def test_a_static_arm_at_another_budget_is_its_own_row_and_front_point():
    points = [
        _point("static", 1.0, 0, 80.0, 1e8, epochs=10),
        _point("static", 1.0, 0, 84.0, 1.5e8, epochs=15),
        _point("heuristic", 1.0, 0, 83.0, 1.2e8, epochs=10),
    ]
    rows = _rows(points, ACC)
    assert [r.label for r in rows] == [
        "static ×1, 10 ep",
        "static ×1, 15 ep",
        "grown (heuristic) ×1, 10 ep",
    ]
    assert rows[0].on_front and rows[1].on_front
    t = math.log(1.2) / math.log(1.5)
    assert rows[2].front_metric == pytest.approx(80.0 + 4.0 * t)


# --- the learning-rate sweep -------------------------------------------------------------------


def _sweep(values, factors=(0.5, 1.0, 2.0), *, higher=True, max_extend=2):
    asked = []

    def validation(factor):
        asked.append(factor)
        return values(factor)

    return gf.sweep_rates(
        validation, factors, higher_is_better=higher, max_extend=max_extend
    ), asked


def test_an_inner_best_rate_ends_the_sweep():
    sweep, asked = _sweep(lambda f: -abs(math.log(f)))  # best at 1
    assert (sweep.chosen, sweep.at_edge, asked) == (1.0, False, [0.5, 1.0, 2.0])
    assert sweep.tried == {0.5: -math.log(2), 1.0: 0.0, 2.0: -math.log(2)}


def test_a_best_rate_at_an_edge_extends_the_sweep_past_it():
    sweep, asked = _sweep(lambda f: -abs(math.log(f / 4)))  # best at 4: one step up
    assert asked == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert (sweep.chosen, sweep.at_edge) == (4.0, False)
    sweep, asked = _sweep(lambda f: -f, higher=True)  # smaller is always better: down
    assert asked == [0.5, 1.0, 2.0, 0.25, 0.125]
    assert (sweep.chosen, sweep.at_edge) == (0.125, True)  # still at the edge after 2 steps


def test_the_sweep_follows_a_loss_direction_and_breaks_ties_towards_the_task_rate():
    sweep, _ = _sweep(lambda f: abs(math.log(f / 0.5)), higher=False)  # loss lowest at 0.5
    assert sweep.chosen == 0.5 and sweep.tried[0.25] > sweep.tried[0.5]
    sweep, _ = _sweep(lambda f: 1.0, max_extend=0)  # all equal: the task's own rate
    assert (sweep.chosen, sweep.at_edge) == (1.0, False)


def test_the_sweep_refuses_bad_factors():
    with pytest.raises(gf.FrontierError, match="--lr-factors must be finite and > 0"):
        gf.sweep_rates(lambda f: 0.0, [1.0, 0.0], higher_is_better=True, max_extend=0)
    with pytest.raises(gf.FrontierError, match="--lr-factors must be finite and > 0"):
        gf.sweep_rates(lambda f: 0.0, [], higher_is_better=True, max_extend=0)


# --- paired statistics and FLOPs to quality ----------------------------------------------------


def test_paired_margin_is_the_mean_difference_with_its_standard_error():
    mean, se, (low, high) = gf.paired_margin([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert se == pytest.approx(statistics.stdev([1, 2, 3, 4]) / 2)
    assert 1.0 <= low < 2.5 < high <= 4.0
    assert gf.paired_margin([1.0, 2.0, 3.0, 4.0]) == (mean, se, (low, high))  # reproducible
    assert gf.paired_margin([0.5]) == (0.5, None, None)
    with pytest.raises(ValueError, match="at least one"):
        gf.paired_margin([])


def test_flops_to_reach_is_the_first_epoch_at_least_as_good():
    curve = [(1.0, 80.0), (2.0, 85.0), (3.0, 84.0), (4.0, 90.0)]
    assert gf.flops_to_reach(curve, 85.0, higher_is_better=True) == 2.0
    assert gf.flops_to_reach(curve, 95.0, higher_is_better=True) is None
    losses = [(1.0, 2.0), (2.0, 1.5), (3.0, 1.2)]
    assert gf.flops_to_reach(losses, 1.4, higher_is_better=False) == 3.0


def test_reach_fraction_is_paired_by_seed_and_none_when_a_seed_falls_short():
    static = [_point("static", 2.0, s, 90.0, 10.0, val=v) for s, v in ((0, 85.0), (1, 86.0))]
    grown = [_point("heuristic", 1.0, s, 88.0, 6.0) for s in (0, 1)]
    curves = {
        grown[0].run_dir: [(2.0, 80.0), (4.0, 85.0), (6.0, 87.0)],
        grown[1].run_dir: [(2.0, 80.0), (4.0, 84.0), (6.0, 86.5)],
    }
    row = _rows([*static, *grown], ACC)[-1]
    reached = gf.with_reach(row, grown, static, curves, higher_is_better=True)
    assert reached.reach_fraction == pytest.approx((0.4 + 0.6) / 2)
    assert reached.reached == "2 of 2"
    curves[grown[1].run_dir] = [(6.0, 85.9)]
    short = gf.with_reach(row, grown, static, curves, higher_is_better=True)
    assert (short.reach_fraction, short.reached) == (None, "1 of 2")
    assert "not reached (reached by 1 of 2 seeds)" in gf.render_headline([short], ACC, None)


def test_the_best_static_arm_is_the_best_mean_and_the_cheaper_on_a_tie():
    rows = _rows(
        [
            _point("static", 1.0, 0, 80.0, 1e8),
            _point("static", 2.0, 0, 90.0, 1e9),
            _point("static", 3.0, 0, 90.0, 1e10),
            _point("heuristic", 1.0, 0, 95.0, 5e8),
        ],
        ACC,
    )
    assert gf.best_static(rows, ACC).width == 2.0
    assert gf.best_static(rows, LOSS).width == 1.0


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
    gf.check_train_args("digits", ["--batch-size", "32", "--threads", "1"])
    with pytest.raises(gf.FrontierError, match="must not set --seed, --width-multiplier"):
        gf.check_train_args("digits", ["--seed", "3", "--width", "2"])  # an abbreviation too
    with pytest.raises(gf.FrontierError, match="must not set --epochs, --lr"):
        gf.check_train_args("digits", ["--epochs", "3", "--lr", "0.1"])
    with pytest.raises(gf.FrontierError, match="--batch-size must be >= 1"):
        gf.check_train_args("digits", ["--batch-size", "0"])


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
    assert "--budgets must be distinct epoch counts >= 1" in run("--budgets", "0")
    assert "--grown-budgets must be distinct epoch counts >= 1" in run("--grown-budgets", "3", "3")
    assert "--lr-factors must be finite and > 0" in run("--lr-factors", "1", "-2")
    assert "--max-extend must be >= 0, got -1" in run("--max-extend", "-1")
    assert "--tune-seeds must be between 1 and 2, got 3" in run(
        "--seeds", "0", "1", "--tune-seeds", "3"
    )
    assert "must not set --epochs" in run("--", "--epochs", "3")
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


def test_benchmark_on_digits_sweeps_rates_writes_its_results_and_resumes(tmp_path):
    out = tmp_path / "frontier"
    cmd = [sys.executable, str(SCRIPT), "--task", "digits", "--out", str(out), "--json"]
    cmd += ["--seeds", "0", "1", "--tune-seeds", "1", "--widths", "1", "2", "--budgets", "1"]
    cmd += ["--lr-factors", "1", "2", "--max-extend", "0", "--", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    # Three arms (two static widths, one grown): two rates on the tuning seed, then the chosen
    # rate on the other seed.
    assert first.stdout.count("$ esper train") == 3 * 3
    assert "--epochs 1 --lr 0.1 " in first.stdout  # ×2 the task's 0.05

    table = (out / "frontier-digits.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[0] for r in rows[:4]] == [
        "| configuration",
        "| static ×1, 1 ep",
        "| static ×2, 1 ep",
        "| grown (heuristic) ×1, 1 ep",
    ]
    assert "## Growth against the tuned front" in table and "## Learning-rate sweeps" in table
    assert (out / "frontier-digits.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "frontier-digits.json").read_text())
    assert json.loads(first.stdout.strip().splitlines()[-1]) == data  # --json: the last line
    assert data["tune_seeds"] == [0] and data["lr_factors"] == [1.0, 2.0]
    for row in data["rows"]:
        assert set(row["lrs_tried"]) == {"0.05", "0.1"}  # every arm, the same sweep
        assert row["lr"] == pytest.approx(0.05 * row["lr_factor"])
        best = max(row["lrs_tried"].values())  # digits: validation accuracy
        assert row["lrs_tried"][f"{row['lr']:g}"] == best
    by_arm = {(r["mode"], r["width"]): r for r in data["rows"]}
    assert [(p["mode"], p["width"], p["seed"]) for p in data["points"]] == [
        ("static", 1.0, 0),
        ("static", 1.0, 1),
        ("static", 2.0, 0),
        ("static", 2.0, 1),
        ("heuristic", 1.0, 0),
        ("heuristic", 1.0, 1),
    ]
    for point in data["points"]:
        assert point["lr"] == by_arm[(point["mode"], point["width"])]["lr"]
        assert point["lrs_tried"] == by_arm[(point["mode"], point["width"])]["lrs_tried"]
        assert f"-lr{by_arm[(point['mode'], point['width'])]['lr_factor']:g}-" in point["run_dir"]
        assert point["train_flops"] > 0 and point["params"] > 0
    assert data["widths"] == {"1": 4, "2": 8}

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "$ esper train" not in again.stdout  # every run was read back, none retrained
    assert json.loads((out / "frontier-digits.json").read_text())["points"] == data["points"]

    changed = [*cmd[: cmd.index("--threads")], "--batch-size", "32", "--threads", "1"]
    refused = subprocess.run(changed, capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2
    assert "use the same arguments or another --out" in refused.stderr

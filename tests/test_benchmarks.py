"""Smoke tests for the benchmark scripts: they run, their JSON has the promised shape, and
they share their helpers through ``esper.testing`` rather than through one another.

No timing assertions: these run on shared, noisy machines.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from esper.kasmina import GateFailedError
from esper.leyline import DEFAULT_GROWTH_PATIENCE, SeedStage
from esper.runs import RunSummary
from esper.testing import TINY_HOSTS, model_at_stage, permissive_gates, set_contribution
from esper.tolaria.tasks import get_task

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--batch", "2", "--width", "2", "--image", "8", "--reps", "3", "--warmup", "1"]


def _run(script: str, *args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _last_json(stdout: str) -> dict:
    last = stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert isinstance(result, dict)
    return result


def test_step_overhead_json_has_the_required_keys():
    proc = _run("step_overhead.py", *TINY, "--json")
    assert proc.returncode == 0, proc.stderr
    result = _last_json(proc.stdout)
    assert result["device"].startswith("cpu")
    rows = {"training", "blending", "fossilized", "telemetry_stride1", "telemetry_stride10"}
    rows |= {"cost_training", "cost_blending", "cost_fossilized", "injected_training"}
    rows |= {"incubation_1seed", "incubation_2seeds"}
    assert set(result["ratios"]) == rows
    assert all(isinstance(v, float) and v > 0 for v in result["ratios"].values())
    assert set(result["medians"]) == rows
    assert {"static_ms", "morph_ms"} <= set(result["medians"]["training"])
    assert {"plain_ms", "telemetry_ms"} <= set(result["medians"]["telemetry_stride10"])
    assert result["config"]["batch"] == 2
    # The incubation rows: the task's own host at its shadow pass schedule, in blocks of it.
    two = result["medians"]["incubation_2seeds"]
    assert two["task"] == "fashion" and two["seeds"] == ["early", "mid"]
    assert two["shadow_every"] == two["steps_per_sample"] == get_task("fashion").shadow_every
    assert {"host_ms", "morph_ms"} <= set(two)


def test_step_overhead_incubation_rows_follow_the_task_and_shadow_schedule():
    proc = _run(
        "step_overhead.py",
        *TINY,
        "--rows",
        "incubation_1seed",
        "--task",
        "digits",
        "--task-image",
        "8",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = _last_json(proc.stdout)["medians"]["incubation_1seed"]
    assert (one["task"], one["seeds"], one["shadow_every"]) == ("digits", ["early"], 4)
    bad = _run("step_overhead.py", "--task", "pystd")
    assert bad.returncode == 2 and "--task must be an image task" in bad.stderr
    bad = _run("step_overhead.py", "--shadow-every", "0")
    assert bad.returncode == 2 and "--shadow-every must be >= 1" in bad.stderr


def test_step_overhead_profiles_a_stage_per_arm():
    proc = _run("step_overhead.py", *TINY, "--profile", "training")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for arm in ("static", "morph"):
        assert f"## {arm}: " in proc.stdout
    assert "| own ms/step | total ms/step | calls/step | function |" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 2 * 12  # the 12 functions with the most own time, per arm
    bad = _run("step_overhead.py", "--profile", "dormant")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    # The telemetry row: the same TRAINING model without and with a capture every step.
    proc = _run("step_overhead.py", *TINY, "--profile", "telemetry")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "## plain: " in proc.stdout and "## telemetry: " in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "`" in line]
    assert len(rows) == 2 * 12


def test_step_overhead_rejects_bad_sizes():
    proc = _run("step_overhead.py", "--batch", "0")
    assert proc.returncode != 0
    assert "--batch must be >= 1" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_gpu_check_says_clearly_when_cuda_is_missing():
    proc = _run("gpu_check.py", "--skip", "timing")
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr
    assert "--dry-run" in proc.stderr


def test_gpu_check_dry_run_reports_a_lifecycle():
    # On CPU with the eager backend every recompile check can pass (nothing is compiled on the
    # ramp, compiled and eager outputs are identical), so the dry run must exit 0: status 1
    # would mean a real regression, not a CPU limitation.
    proc = _run("gpu_check.py", "--dry-run", "--skip", "timing", "--skip", "sync", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    result = _last_json(proc.stdout)
    assert result["failed"] == []
    rec = result["recompiles"]
    phases = [p["phase"] for p in rec["phases"]]
    assert phases[:3] == ["DORMANT", "GERMINATED", "TRAINING"]
    assert any(p.startswith("BLENDING epoch 2") for p in phases)
    assert "PROBATIONARY" in phases and phases[-1].startswith("FOSSILIZED")
    assert rec["ok"] is True
    assert rec["alpha_ramp_recompiles"] == 0
    assert rec["compiled_follows_lifecycle"] is True
    assert rec["total_graphs"] > 0


def test_gpu_check_dry_run_counts_leaks_whether_the_capture_waits_or_not():
    """The sync section's cases run on CPU too (no sync can be detected there): the leaking
    cases count violations, a capture behind the step (``wait=False``) once it is folded."""
    proc = _run("gpu_check.py", "--dry-run", "--skip", "timing", "--skip", "recompiles", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    cases = {c["case"]: c for c in _last_json(proc.stdout)["sync"]["cases"]}
    for case in cases.values():
        assert case["violations_as_expected"] and not case["sync_between_captures"], case
    assert cases["TRAINING"]["isolation_violations"] == 0
    waited = cases["TRAINING, leak hook armed"]["isolation_violations"]
    assert waited > 0 and cases["TRAINING, leak, wait=False"]["isolation_violations"] == waited


def test_benchmarks_import_no_sibling_and_edit_no_sys_path():
    scripts = sorted(BENCHMARKS.glob("*.py"))
    siblings = {p.stem for p in scripts}
    for script in scripts:
        text = script.read_text()
        assert "sys.path" not in text, script.name
        imported = set()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & siblings, f"{script.name} imports {imported & siblings}"


@pytest.mark.parametrize(
    "stage",
    [SeedStage.TRAINING, SeedStage.BLENDING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED],
)
def test_model_at_stage_puts_every_slot_in_the_stage_with_a_seed_that_is_not_the_identity(stage):
    slots = ("early", "late")
    host = TINY_HOSTS["cnn3"].build()
    x = TINY_HOSTS["cnn3"].inputs()
    with torch.no_grad():
        host_out = host(x)
    model = model_at_stage(host, stage, slots=slots)
    assert [model.seed_slots[n].stage for n in slots] == [stage, stage]
    with torch.no_grad():
        out = model(x)
    if stage == SeedStage.TRAINING:  # the incubator leaves the host's output exactly as it was
        assert torch.equal(out, host_out)
    else:
        assert not torch.allclose(out, host_out)


def test_permissive_gates_still_need_a_measured_contribution_to_fossilize():
    host = TINY_HOSTS["cnn2"].build()
    model = model_at_stage(host, SeedStage.PROBATIONARY, slots=["mid"])
    slot = model.seed_slots["mid"]
    assert slot.stage == SeedStage.PROBATIONARY
    with pytest.raises(GateFailedError, match="not measured"):
        model.fossilize_seed(slot="mid")
    set_contribution(slot, -5.0)  # any measured value passes the permissive G5
    model.fossilize_seed(slot="mid")
    assert slot.stage == SeedStage.FOSSILIZED


@pytest.mark.parametrize("full_alpha_ramp", [False, True])
def test_permissive_gates_end_blending_at_once_or_after_the_whole_ramp(full_alpha_ramp):
    gates = permissive_gates(full_alpha_ramp=full_alpha_ramp)
    host = TINY_HOSTS["cnn2"].build()
    model = model_at_stage(host, SeedStage.BLENDING, slots=["mid"], gate_config=gates)
    slot = model.seed_slots["mid"]
    epochs = 0
    while slot.stage == SeedStage.BLENDING:
        slot.step_epoch()
        epochs += 1
    assert slot.stage == SeedStage.PROBATIONARY
    assert epochs == (slot.blending_steps - 1 if full_alpha_ramp else 1)


def _growth_comparison():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "_benchmark_growth_comparison", BENCHMARKS / "growth_comparison.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_growth_comparison_rows_give_mean_sample_std_and_compute():
    gc = _growth_comparison()
    runs = [
        RunSummary(
            mode="heuristic",
            task="digits",
            seed=seed,
            epochs=20,
            width_multiplier=1.0,
            test_accuracy=acc,
            test_loss=loss,
            final_val_accuracy=acc + 1,
            best_val_accuracy=acc + 2,
            final_val_loss=loss,
            final_train_loss=loss,
            best_val_loss=loss,
            host_params=90,
            total_params=100,
            fossilized=1,
            culled=0,
            rollbacks=0,
            train_flops=2 * 10**12,
            eval_flops=10**9,
            counterfactual_flops=0,
            counterfactual_seconds=0.0,
            param_epochs=2000,
            wall_seconds=1.0,
        )
        for seed, (acc, loss) in enumerate(((80.0, 0.5), (82.0, 0.7), (84.0, 0.9)))
    ]
    assert gc._has_test(runs)
    header = gc._header(True).splitlines()[0]
    row = gc._row("grown", runs)
    assert header.count("|") == row.count("|")
    # Sample std of 80, 82, 84 is 2 (the population std would be 1.63).
    assert "| 82.00 ± 2.00 | 0.7000 ± 0.2000 |" in row
    assert row.endswith("| 100 | 2 | 3 |")
    for run in runs:  # without a test split the test columns go, in the header and the rows
        run.test_accuracy = run.test_loss = None
    assert not gc._has_test(runs)
    assert gc._header(False).splitlines()[0].count("|") == gc._row("grown", runs).count("|")
    assert gc._row("grown", runs).startswith("| grown | 83.00 ± 2.00 | 84.00 ± 2.00 |")


def test_rollout_scaling_runs_the_same_episodes_on_every_pool():
    proc = _run(
        "rollout_scaling.py", "--epochs", "2", "--episodes", "3", "--workers", "1,2", "--json"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _last_json(proc.stdout)
    assert [r["workers"] for r in result["rows"]] == [1, 2] and result["episodes"] == 3
    for row in result["rows"]:
        assert row["same_episodes"] and row["seconds"] > 0 and row["speedup"] > 0
    assert result["rows"][0]["speedup"] == 1.0
    bad = _run("rollout_scaling.py", "--workers", "0")
    assert bad.returncode == 2 and "--workers needs counts >= 1" in bad.stderr


def _load(script: str):
    spec = importlib.util.spec_from_file_location(
        f"_benchmark_{Path(script).stem}", BENCHMARKS / script
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_whole_run_cost_criterion_judges_kept_seeds_and_culled_trials_apart():
    checks = _load("run_overhead.py").cost_checks

    def runs(grown, static, equivalent, kept):
        arch = [("mid", "conv_light")] if kept else []
        return {
            "grown": {"train_flops": grown, "architecture": arch},
            "static": {"train_flops": static},
            "equivalent": {"train_flops": equivalent},
        }

    ok = {0: runs(120, 100, 130, kept=True), 1: runs(109, 100, 100, kept=False)}
    assert checks(ok) == {
        "kept_seeds_at_most_equivalent": True,
        "culled_trials_within_budget": True,
    }
    dear_keep = {**ok, 2: runs(131, 100, 130, kept=True)}
    assert not checks(dear_keep)["kept_seeds_at_most_equivalent"]
    dear_trials = {**ok, 2: runs(111, 100, 100, kept=False)}
    assert checks(dear_trials) == {
        "kept_seeds_at_most_equivalent": True,
        "culled_trials_within_budget": False,
    }


def test_incubation_gain_follows_a_seed_through_its_first_epoch():
    proc = _run(
        "incubation_gain.py",
        *("--task", "digits", "--slot", "mid", "--pre-epochs", "1", "--freeze-host", "--json"),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _last_json(proc.stdout)
    assert "host frozen" in result["setting"]
    parts = len(result["before_update"])
    assert parts >= 2 and len(result["after_update"]) == len(result["held_out"]) == parts
    bad = _run("incubation_gain.py", "--seed-lr-scale", "0")
    assert bad.returncode == 2 and "--seed-lr-scale > 0" in bad.stderr


def test_run_overhead_compares_a_grown_run_with_its_final_architecture_trained_from_the_start():
    # Seed 1 of stock digits keeps one seed (measured); 1 repetition keeps it short.
    proc = _run("run_overhead.py", "--task", "digits", "--seeds", "1", "--reps", "1", "--json")
    result = _last_json(proc.stdout)
    passed = result["checks"]["kept_seeds_at_most_equivalent"]
    assert result["checks"]["culled_trials_within_budget"]  # no run here kept none
    assert proc.returncode == (0 if passed else 1), proc.stderr[-2000:]
    rows, runs = result["rows"], result["per_seed"]["1"]
    assert runs["grown"]["architecture"], "the grown run kept no seed"
    assert runs["equivalent"]["architecture"] == runs["grown"]["architecture"]
    assert rows["static"]["params"] < rows["equivalent"]["params"] <= rows["grown"]["params"]
    # The static-equivalent trains its seeds from the first epoch: more FLOPs than the host.
    assert rows["equivalent"]["train_flops"] > rows["static"]["train_flops"]
    assert 0 < rows["counterfactual"]["eval_flops"] < rows["grown"]["eval_flops"]
    assert runs["static"]["counterfactual_flops"] == 0
    assert "| static-equivalent |" in proc.stdout and "counterfactual passes" in proc.stdout
    assert result["shadow_every"] == 4 and "shadow pass every 4 step(s)" in proc.stdout
    patience = DEFAULT_GROWTH_PATIENCE
    assert result["growth_patience"] == patience and f"growth patience {patience}" in proc.stdout
    # With patience the one seed it keeps costs less than training it from the first epoch
    # (0.99x, measured): the trials before it no longer outweigh the epochs it skipped.
    assert passed, rows
    assert "x its static-equivalent's" in proc.stdout
    bad = _run("run_overhead.py", "--task", "nope")
    assert bad.returncode == 2 and "unknown task 'nope'" in bad.stderr
    bad = _run("run_overhead.py", "--shadow-every", "0")
    assert bad.returncode == 2 and "--shadow-every must be >= 1, got 0" in bad.stderr
    bad = _run("run_overhead.py", "--growth-patience", "-1")
    assert bad.returncode == 2 and "patience must be >= 0" in bad.stderr


def test_distributed_throughput_runs_one_and_two_processes():
    proc = _run("distributed_throughput.py", "--epochs", "1", "--nproc", "1", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _last_json(proc.stdout)
    assert set(result["results"]) == {"1", "2"}
    for row in result["results"].values():
        assert row["rows_per_second"] > 0 and row["ranks_identical"] is True
    assert "| 2 |" in proc.stdout


def test_step_overhead_compiled_rows_and_compile_cost_on_request():
    proc = _run(
        "step_overhead.py",
        *TINY,
        "--rows",
        "compiled_blending",
        "compile_cost",
        "--compile-backend",
        "aot_eager",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _last_json(proc.stdout)
    assert set(result["ratios"]) == {"compiled_blending"}
    costs = result["compile_cost"]
    for stage in ("dormant", "training", "blending", "fossilized"):
        assert f"{stage}_compile_s" in costs and costs[f"{stage}_step_ms"] > 0


def test_growth_comparison_runs_the_grown_arm_with_patience_beside_the_default(tmp_path, capsys):
    import json

    gc = _growth_comparison()
    out = tmp_path / "compare"
    assert (
        gc.main(["--task", "digits", "--seeds", "0", "--growth-patience", "1", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "| grown (heuristic, patience 1) |" in printed
    grown = out / "heuristic-patience1-digits-s0"
    assert json.loads((grown / "config.json").read_text())["growth_patience"] == 1
    # Seed 0 culls its first seed; with patience 1 it tries no other (measured).
    assert len(RunSummary.from_dict(json.loads((grown / "summary.json").read_text())).seeds) == 1
    static = json.loads((out / "static-digits-s0" / "config.json").read_text())
    assert static["growth_patience"] is None
    assert not (out / "heuristic-digits-s0").exists()
    # The default patience labels the row plainly; its folder still names its patience, so
    # runs of an older default in the same --out are not mistaken for it.
    assert gc.main(["--task", "digits", "--seeds", "0", "--out", str(out)]) == 0
    assert "| grown (heuristic) |" in capsys.readouterr().out
    default = out / f"heuristic-patience{DEFAULT_GROWTH_PATIENCE}-digits-s0"
    assert json.loads((default / "config.json").read_text())["growth_patience"] == (
        DEFAULT_GROWTH_PATIENCE
    )
    with pytest.raises(SystemExit) as bad:
        gc.main(["--growth-patience", "-1", "--out", str(out)])
    assert bad.value.code == 2
    assert "--growth-patience must be >= 0, got -1" in capsys.readouterr().err

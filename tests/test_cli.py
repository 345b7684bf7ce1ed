"""The command line: bad input is one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from esper.cli import main


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            ["train", "heuristic", "--task", "mnist"],
            "valid: cifar10, digits, fashion, pyref, pystd, tinystories",
        ),
        (["train", "heuristic", "--slots", "middle"], "valid: early"),
        (["train", "heuristic", "--blueprints", "lora"], "valid: noop, norm"),
        (["train", "growing"], "valid: heuristic, static"),
        (["train", "heuristic", "--blend", "cubic"], "valid: linear, sigmoid, gated"),
        (["train", "static", "--task", "cifar10"], "cifar-10-batches-py"),
        (["report", "/nonexistent/run"], "/nonexistent/run"),
        (["train", "heuristic", "--max-seeds", "-1"], "--max-seeds must be >= 0"),
        (["train", "heuristic", "--shadow-every", "0"], "--shadow-every must be >= 1, got 0"),
        (["train", "heuristic", "--timing", "soon"], "valid: plateau, relative"),
        (["train", "heuristic", "--growth-patience", "-1"], "--growth-patience must be >= 0"),
        (
            ["train", "static", "--growth-patience", "2"],
            "--growth-patience is the heuristic's, not mode static's",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_cifar10_with_missing_data_dir_names_the_folder(capsys, tmp_path):
    assert main(["train", "static", "--task", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cifar-10-batches-py" in err and "Traceback" not in err


def test_existing_run_dir_is_never_overwritten(capsys, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text("{}")
    assert main(["train", "static", "--epochs", "1", "--run-dir", str(run_dir)]) == 2
    assert (run_dir / "summary.json").read_text() == "{}"
    assert "already holds files" in capsys.readouterr().err


def test_static_run_writes_run_directory_and_report(tmp_path):
    run_dir = tmp_path / "static"
    assert main(["train", "static", "--epochs", "2", "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in (
        "mode",
        "task",
        "seed",
        "epochs",
        "final_val_accuracy",
        "final_val_loss",
        "best_val_accuracy",
        "host_params",
        "total_params",
        "fossilized",
        "culled",
        "wall_seconds",
        "seeds",
    ):
        assert key in summary
    assert summary["mode"] == "static" and summary["epochs"] == 2 and summary["seeds"] == []
    assert (run_dir / "config.json").is_file() and (run_dir / "events.jsonl").is_file()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "accuracy.png").stat().st_size > 0


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "esper.scripts.train", "heuristic", "--task", "nope"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "unknown task 'nope'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "heuristic", "--epochs", "abc"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid int value" in err


def test_growth_patience_stops_germinating_after_that_many_culls(tmp_path):
    import json

    # Seed 0 of stock digits culls its first seed (stalled in TRAINING, epoch 16) and, with
    # patience 0, goes on to germinate five more (measured; every one culled).
    run_dir = tmp_path / "run"
    argv = ["train", "heuristic", "--growth-patience", "1", "--run-dir", str(run_dir)]
    assert main([*argv, "--no-live"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["seeds"]) == 1
    config = json.loads((run_dir / "config.json").read_text())
    assert config["growth_patience"] == 1


def test_max_seeds_zero_grows_nothing_and_says_why(tmp_path):
    import json

    run_dir = tmp_path / "run"
    argv = ["train", "heuristic", "--epochs", "20", "--max-seeds", "0", "--run-dir", str(run_dir)]
    assert main([*argv, "--no-live"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["seeds"] == []
    config = json.loads((run_dir / "config.json").read_text())
    assert config["max_seeds"] == 0 and config["trainer"]["max_seeds"] == 0
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    # The heuristic reads the budget from its signals and waits instead of asking in vain.
    assert not [e for e in events if e["event_type"] in ("decision_refused", "seed_germinated")]

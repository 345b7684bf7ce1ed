"""``esper simic`` and ``esper train ppo`` on the command line: a 2-update training, a run under
the policy it wrote, resume, and one clear line for every kind of bad input."""

from __future__ import annotations

import json

import pytest
import torch

from esper.cli import main
from esper.leyline import DEFAULT_GROWTH_PATIENCE
from esper.simic.training import GROWTH_PPO

#: Two updates of two 3-epoch episodes on a half-width digits host: seconds.
SMOKE = ["--task", "digits", "--epochs", "3", "--width-multiplier", "0.5"]
SMOKE += ["--episodes-per-update", "2"]


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("simic") / "policy.pt"
    assert main(["simic", "train", *SMOKE, "--episodes", "4", "--out", str(path)]) == 0
    return path


def test_simic_train_writes_a_policy_that_esper_train_ppo_runs(policy_file, tmp_path, capsys):
    saved = torch.load(policy_file, weights_only=True)
    assert saved["task"] == "digits" and saved["training"]["updates"] == 2
    curves = policy_file.with_name(policy_file.name + ".curves.png")
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Without --epochs and --width-multiplier the run is the kind the policy was trained on.
    run_dir = tmp_path / "run"
    argv = ["train", "ppo", "--task", "digits", "--policy", str(policy_file)]
    assert main([*argv, "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "ppo" and summary["epochs"] == 3
    assert summary["width_multiplier"] == 0.5 and "was trained on" not in capsys.readouterr().out
    # A policy trained now records the task's shadow stride, and its runs use it.
    assert saved["episode"]["shadow_every"] == 4
    # ...and the patience of the heuristic it is cloned from and compared with.
    assert saved["episode"]["growth_patience"] == DEFAULT_GROWTH_PATIENCE
    assert json.loads((run_dir / "config.json").read_text())["trainer"]["shadow_every"] == 4
    # Flags win, and a run unlike the training runs says so.
    wide = tmp_path / "wide"
    assert main([*argv, "--width-multiplier", "1", "--run-dir", str(wide)]) == 0
    assert json.loads((wide / "summary.json").read_text())["width_multiplier"] == 1.0
    assert "trained on 3-epoch runs at width x0.5" in capsys.readouterr().out
    assert json.loads((run_dir / "config.json").read_text())["policy"] == str(policy_file)


def test_simic_train_resumes_and_never_overwrites(policy_file, capsys):
    before = policy_file.read_bytes()
    assert main(["simic", "train", *SMOKE, "--episodes", "6", "--out", str(policy_file)]) == 2
    assert "already exists" in capsys.readouterr().err and policy_file.read_bytes() == before
    more = ["simic", "train", *SMOKE, "--episodes", "6", "--out", str(policy_file), "--resume"]
    assert main(more) == 0
    assert torch.load(policy_file, weights_only=True)["training"]["updates"] == 3
    other_seed = [*more, "--seed", "5"]
    assert main(other_seed) == 2
    assert "another configuration" in capsys.readouterr().err


def test_the_shipped_policies_are_listed_and_run_their_own_kind_of_run(capsys, tmp_path):
    assert main(["simic", "policies"]) == 0
    out = capsys.readouterr().out
    assert "policies shipped with esper" in out and "digits" in out and "pyref" in out
    run_dir = tmp_path / "shipped"
    assert main(["train", "ppo", "--task", "digits", "--run-dir", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["mode"], summary["epochs"], summary["width_multiplier"]) == ("ppo", 30, 0.5)
    # It was trained before digits ran the shadow pass every 4th step: its runs keep every step.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["shadow_every"] == 1 and config["trainer"]["shadow_every"] == 1


def _bad_inputs(tmp_path, policy_file) -> list[tuple[list[str], str]]:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a policy")
    ppo = ["train", "ppo", "--epochs", "1"]
    return [
        (["simic", "train", "--task", "mnist", "--episodes", "2", "--out", "p.pt"], "unknown task"),
        (["simic", "train", "--episodes", "2", "--workers", "0", "--out", "p.pt"], "--workers"),
        (["simic", "train", "--episodes", "0", "--out", "p.pt"], "--episodes must be >= 1"),
        (["simic", "train", "--episodes", "2", "--out", "p.pt", "--resume"], "does not exist"),
        (["simic", "train", "--episodes", "2"], "--out"),
        (["simic", "train", "--episodes", "2", "--out", "p.pt", "--gae-lambda", "2"], "[0, 1]"),
        (
            ["simic", "train", "--episodes", "2", "--out", "p.pt", "--growth-patience", "-1"],
            "--growth-patience must be >= 0, got -1",
        ),
        (
            ["simic", "train", "--episodes", "2", "--out", "p.pt", "--shadow-every", "0"],
            "--shadow-every must be >= 1, got 0",
        ),
        ([*ppo, "--policy", str(tmp_path / "missing.pt")], "no such policy file"),
        ([*ppo, "--policy", str(junk)], "not a readable policy file"),
        ([*ppo, "--task", "pyref", "--policy", str(policy_file)], "trained for task 'digits'"),
        ([*ppo, "--slots", "late", "--policy", str(policy_file)], "trained for slots"),
        (["train", "heuristic", "--policy", str(policy_file)], "--policy drives mode ppo"),
        (["train", "ppo", "--task", "fashion"], "no policy is shipped for task 'fashion'"),
    ]


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors (a missing required flag)
        return int(exc.code)


def test_bad_input_is_one_line_and_exit_2(policy_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, needle in _bad_inputs(tmp_path, policy_file):
        assert _exit_code(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and "Traceback" not in err, (argv, err)
        assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "p.pt").exists() and not (tmp_path / "runs").exists()


def test_ppo_settings_from_the_command_line_reach_the_learner(tmp_path):
    path = tmp_path / "tuned.pt"
    flags = ["--entropy-coef", "0.002", "--gae-lambda", "1", "--lr", "0.0005"]
    assert main(["simic", "train", *SMOKE, "--episodes", "2", "--out", str(path), *flags]) == 0
    ppo = torch.load(path, weights_only=True)["training"]["config"]["ppo"]
    assert (ppo["entropy_coef"], ppo["gae_lambda"], ppo["lr"]) == (0.002, 1.0, 0.0005)
    assert ppo["update_epochs"] == GROWTH_PPO.update_epochs  # the rest keeps its defaults


def test_the_shipped_policies_settings_reach_the_episodes_the_policy_records(tmp_path):
    path = tmp_path / "eager.pt"
    argv = ["simic", "train", *SMOKE, "--episodes", "2", "--out", str(path)]
    assert main([*argv, "--growth-patience", "0", "--shadow-every", "1"]) == 0
    episode = torch.load(path, weights_only=True)["episode"]
    assert episode["growth_patience"] == 0 and episode["shadow_every"] == 1

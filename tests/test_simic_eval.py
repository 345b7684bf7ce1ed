"""Baselines and evaluation for the learned controller: masked-random, behaviour cloning, the
tuned heuristic, paired bootstrap intervals, and benchmarks/controller_eval.py end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from esper.leyline import DEFAULT_GROWTH_PATIENCE, SeedStage
from esper.simic.actions import ActionLayout
from esper.simic.env import EpisodeConfig
from esper.simic.evaluate import (
    ControllerJob,
    MaskedRandomController,
    heuristic_config_from_dict,
    heuristic_config_to_dict,
    make_controller,
    paired_bootstrap,
    tune_heuristic,
)
from esper.simic.imitation import behaviour_clone, demonstrate
from esper.simic.policy import Policy, PolicyError, shipped_policy_path
from esper.simic.training import SimicConfig, behaviour_cloned, new_policy, train_policy
from esper.tamiyo import HeuristicConfig
from esper.testing import slot_report, training_signals

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "controller_eval.py"
SHORT = EpisodeConfig("digits", epochs=20, width_multiplier=0.5)


def test_masked_random_only_takes_legal_actions_and_is_seeded():
    layout = ActionLayout.for_topology("cnn", ("early", "mid", "late"))
    slots = [
        slot_report("early", SeedStage.PROBATIONARY),
        slot_report("mid"),
        slot_report("late", SeedStage.TRAINING),
    ]
    signals = training_signals(slots=slots)
    picks = [MaskedRandomController(layout, seed=3).decide(signals) for _ in range(2)]
    assert picks[0] == picks[1]
    chooser = MaskedRandomController(layout, seed=0)
    chosen = {layout.index(chooser.decide(signals)) for _ in range(200)}
    assert chosen <= set(np.flatnonzero(layout.mask(signals)).tolist()) and len(chosen) > 5


def test_paired_bootstrap_by_hand():
    mean, low, high = paired_bootstrap([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], higher_is_better=True)
    assert (mean, low, high) == (1.0, 1.0, 1.0)
    # A loss: lower is better, so the improvement is other - better.
    mean, low, high = paired_bootstrap([1.0, 1.2], [1.5, 1.4], higher_is_better=False)
    assert mean == pytest.approx(0.35) and low == pytest.approx(0.2) and high == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0], [1.0, 2.0], True)


def test_behaviour_cloning_reproduces_the_heuristics_decisions():
    config = SimicConfig(SHORT, episodes=1)
    policy = new_policy(config)
    demos = demonstrate(SHORT, policy.layout, seeds=[0, 1])
    assert len(demos) == 40 and any(a != 0 for a in demos.actions)  # it grew something
    stats = behaviour_clone(policy.agent, demos)
    assert stats["accuracy"] >= 0.95, stats
    assert all(mask[a] for mask, a in zip(demos.masks, demos.actions, strict=True))
    pairs = zip(demos.obs, demos.masks, strict=True)
    greedy = [policy.agent.act(o, m, greedy=True)[0] for o, m in pairs]
    agree = np.mean(np.array(greedy) == np.array(demos.actions))
    assert agree == pytest.approx(stats["accuracy"])


def test_demonstrations_and_baselines_use_the_episodes_growth_patience():
    legacy = replace(SHORT, growth_patience=0)
    # Seed 3: without patience a second seed grows while the first blends (measured).
    patient = demonstrate(SHORT, SHORT.default_layout(), seeds=[3])
    eager = demonstrate(legacy, SHORT.default_layout(), seeds=[3])
    assert patient.actions != eager.actions
    assert sum(a != 0 for a in eager.actions) > sum(a != 0 for a in patient.actions)
    for config, patience in ((SHORT, DEFAULT_GROWTH_PATIENCE), (legacy, 0)):
        baseline = make_controller(ControllerJob("heuristic", 1000), config, {})
        assert baseline.config == HeuristicConfig(growth_patience=patience)
        assert EpisodeConfig.from_dict(config.to_dict()).growth_patience == patience
    # The shipped policies were cloned from, and are measured against, the heuristic of their
    # day, which never stopped growing: their policy files predate the setting, and read
    # through the migration table as patience 0.
    for task in ("digits", "pyref"):
        raw = torch.load(shipped_policy_path(task), weights_only=True)["episode"]
        assert "heuristic_patience" not in raw and "format" not in raw
        episode = Policy.load(shipped_policy_path(task)).episode
        assert EpisodeConfig.from_dict(episode).growth_patience == 0


def test_training_clones_before_its_first_update(tmp_path):
    rows = []
    config = SimicConfig(
        EpisodeConfig("digits", epochs=4, width_multiplier=0.5),
        episodes=2,
        episodes_per_update=2,
        bc_episodes=2,
    )
    policy = train_policy(config, tmp_path / "p.pt", on_update=rows.append)
    assert rows[0]["update"] == 0 and "bc" in rows[0] and rows[1]["update"] == 1
    assert policy.training["bc"]["steps"] == 8


class _Stop(Exception):
    pass


def test_the_cloned_policy_is_rebuilt_exactly_and_evaluated_beside_ppo(tmp_path):
    config = SimicConfig(
        EpisodeConfig("digits", epochs=3, width_multiplier=0.5),
        episodes=4,
        episodes_per_update=2,
        bc_episodes=2,
    )
    path = tmp_path / "p.pt"

    def stop_after_cloning(row):
        if row["update"] == 0:
            raise _Stop

    with pytest.raises(_Stop):  # the file now holds the policy as cloning left it
        train_policy(config, path, on_update=stop_after_cloning)
    cloned = Policy.load(path)
    trained = train_policy(config, path, resume=True)
    rebuilt = behaviour_cloned(trained)
    for name, tensor in cloned.agent.net.actor.state_dict().items():
        torch.testing.assert_close(rebuilt.agent.net.actor.state_dict()[name], tensor)
        moved = trained.agent.net.actor.state_dict()[name]
        assert not torch.equal(moved, tensor) or name.endswith("bias")  # PPO moved the policy
    torch.testing.assert_close(rebuilt.agent.obs_rms.mean, cloned.agent.obs_rms.mean)
    assert rebuilt.training["updates"] == 0 and rebuilt.training["bc"] == cloned.training["bc"]
    with pytest.raises(PolicyError, match="not warm-started"):
        behaviour_cloned(new_policy(SimicConfig(SHORT, episodes=1)))
    # The benchmark runs it as the "bc" controller, and PPO is compared with it.
    cmd = [sys.executable, str(SCRIPT), "--task", "digits", "--policy", str(path), "--json"]
    cmd += ["--seeds", "1000", "--controllers", "bc,ppo", "--out", str(tmp_path / "eval")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(payload["controllers"]) == {"bc", "ppo"}
    assert "ppo_minus_this" in payload["controllers"]["bc"]
    assert (tmp_path / "eval" / "bc-policy.pt").is_file()


def test_tuned_heuristic_searches_from_the_default_config():
    seen = []
    best, trials = tune_heuristic(
        EpisodeConfig("digits", epochs=4, width_multiplier=0.5),
        budget=3,
        train_seeds=range(4),
        seeds_per_config=1,
        on_trial=seen.append,
    )
    assert len(trials) == 3 == len(seen)
    assert heuristic_config_from_dict(trials[0]["config"]) == HeuristicConfig()
    # Every sampled config keeps the episodes' patience: the search is over the rest.
    assert {t["config"]["growth_patience"] for t in trials} == {DEFAULT_GROWTH_PATIENCE}
    assert best in [heuristic_config_from_dict(t["config"]) for t in trials]
    top = max(trials, key=lambda t: t["score"])
    assert heuristic_config_to_dict(best) == top["config"]
    with pytest.raises(ValueError, match="budget"):
        tune_heuristic(SHORT, budget=1, train_seeds=range(4), seeds_per_config=2)


def test_controller_eval_end_to_end(tmp_path):
    policy = tmp_path / "p.pt"
    episode = EpisodeConfig("digits", epochs=3, width_multiplier=0.5)
    train_policy(SimicConfig(episode, episodes=2, episodes_per_update=2), policy)
    out = tmp_path / "eval"
    cmd = [sys.executable, str(SCRIPT), "--task", "digits", "--policy", str(policy)]
    cmd += ["--seeds", "1000,1001", "--tune-budget", "4", "--out", str(out), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    payload = json.loads(first.stdout.strip().splitlines()[-1])
    assert set(payload["controllers"]) == {"static", "random", "heuristic", "tuned", "ppo"}
    assert payload["seeds"] == [1000, 1001] and payload["metric"] == "test acc (%)"
    for name, entry in payload["controllers"].items():
        assert 0 < entry["mean"] <= 100 and entry["params"] > 0
        assert ("ppo_minus_this" in entry) == (name != "ppo")
        if name != "ppo":
            ci = entry["ppo_minus_this"]
            assert ci["low"] <= ci["mean"] <= ci["high"]
    assert "| controller | test acc (%) mean ± std |" in first.stdout
    assert "3 epochs, host width x0.5" in first.stdout  # the runs the policy was trained on
    # Without ppo among the controllers, the policy still fixes the runs they train.
    only_static = [*cmd[: cmd.index("--seeds")], "--seeds", "1000", "--controllers", "static"]
    alone = subprocess.run(only_static, capture_output=True, text=True, timeout=120, env=env)
    assert alone.returncode == 0 and "3 epochs, host width x0.5" in alone.stdout, alone.stdout
    assert len((out / "results.jsonl").read_text().splitlines()) == 10
    assert (out / "tuning.json").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and "seed 1000:" not in again.stdout  # every run read back
    assert json.loads(again.stdout.strip().splitlines()[-1]) == payload
    # Two worker processes (the tuner's runs too) give the same runs and the same table.
    spread = [*cmd[: cmd.index("--out")], "--out", str(tmp_path / "two"), "--json"]
    two = subprocess.run(
        [*spread, "--workers", "2"], capture_output=True, text=True, timeout=300, env=env
    )
    assert two.returncode == 0, two.stderr[-2000:]
    parallel = json.loads(two.stdout.strip().splitlines()[-1])
    for name, entry in payload["controllers"].items():
        timeless = {k: v for k, v in entry.items() if k != "wall"}
        assert {k: v for k, v in parallel["controllers"][name].items() if k != "wall"} == timeless
    tuning = json.loads((tmp_path / "two" / "tuning.json").read_text())
    assert tuning == json.loads((out / "tuning.json").read_text())
    # Bad input: one line on stderr, exit 2, no traceback.
    for argv, message in (
        (["--task", "digits", "--controllers", "oracle"], "valid: static"),
        ([*cmd[2 : cmd.index("--out")], "--controllers", "bc"], "not warm-started"),
        (["--task", "digits", "--workers", "0"], "--workers must be >= 1, got 0"),
    ):
        refused = subprocess.run(
            [sys.executable, str(SCRIPT), *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert refused.returncode == 2 and message in refused.stderr, argv
        assert "Traceback" not in refused.stderr

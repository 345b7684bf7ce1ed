"""Training a growth policy: the policy file, its controller, parallel rollouts and resume."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from esper.leyline import Controller, SeedStage
from esper.simic.actions import ActionLayout
from esper.simic.env import EpisodeConfig, GrowthEnv
from esper.simic.policy import Policy, PolicyController, PolicyError
from esper.simic.training import SimicConfig, jobs_for_update, new_policy, train_policy
from esper.simic.workers import EpisodeJob, run_episode
from esper.testing import slot_report, training_signals

#: Tiny episodes: 4 epochs of a half-width digits host.
EPISODE = EpisodeConfig("digits", epochs=4, width_multiplier=0.5)


def _config(episodes: int, workers: int = 1) -> SimicConfig:
    return SimicConfig(EPISODE, episodes=episodes, episodes_per_update=2, workers=workers)


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["agent"]["network"]


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _history(path) -> list[dict]:
    rows = torch.load(path, weights_only=True)["training"]["history"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_a_policy_file_round_trips_and_refuses_what_it_was_not_trained_for(tmp_path):
    policy = new_policy(_config(2))
    path = tmp_path / "p.pt"
    policy.save(path)
    loaded = Policy.load(path)
    assert loaded.task == "digits" and loaded.layout == policy.layout
    loaded.check_fits("digits", "cnn", ("early", "mid", "late"), "p.pt")
    with pytest.raises(PolicyError, match="trained for task 'digits', not 'fashion'"):
        loaded.check_fits("fashion", "cnn", ("early", "mid", "late"), "p.pt")
    with pytest.raises(PolicyError, match="trained for slots early, mid, late, not late"):
        loaded.check_fits("digits", "cnn", ("late",), "p.pt")
    with pytest.raises(PolicyError, match="no such policy file"):
        Policy.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PolicyError, match="not a readable policy file"):
        Policy.load(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(PolicyError, match="not an Esper policy"):
        Policy.load(tmp_path / "other.pt")


def test_the_policy_controller_only_ever_takes_legal_actions():
    policy = new_policy(_config(2))
    controller = PolicyController(policy)
    assert isinstance(controller, Controller)
    layout: ActionLayout = policy.layout
    rng = np.random.default_rng(0)
    stages = [SeedStage.DORMANT, SeedStage.TRAINING, SeedStage.PROBATIONARY, SeedStage.FOSSILIZED]
    for _ in range(50):
        slots = [slot_report(s, stages[rng.integers(len(stages))]) for s in layout.slots]
        signals = training_signals(slots=slots, total_epochs=30, seeds_left=int(rng.integers(2)))
        decision = controller.decide(signals)
        assert layout.mask(signals)[layout.index(decision)], decision


def test_training_writes_a_checkpoint_each_update_and_resumes_to_the_same_policy(tmp_path):
    whole, part = tmp_path / "whole.pt", tmp_path / "part.pt"
    rows = []
    train_policy(_config(4), whole, on_update=rows.append)
    assert [r["update"] for r in rows] == [1, 2] and all(r["episodes"] == 2 for r in rows)
    assert all(r["first_minibatch_ratio_max_dev"] < 1e-5 for r in rows)
    # The static baselines of the seeds trained on are kept for later updates.
    assert any((tmp_path / "whole.pt.baselines").iterdir())
    train_policy(_config(2), part)  # killed after its first update...
    resumed = train_policy(_config(4), part, resume=True)  # ...and continued
    assert resumed.training["updates"] == 2 and resumed.training["episodes"] == 4
    assert _history(part) == _history(whole)
    assert _same_weights(part, whole)
    with pytest.raises(PolicyError, match="already exists"):
        train_policy(_config(4), whole)
    other = SimicConfig(EPISODE, episodes=4, episodes_per_update=2, seed=1)
    with pytest.raises(PolicyError, match="another configuration"):
        train_policy(other, whole, resume=True)


def test_episodes_depend_on_the_update_not_on_the_number_of_workers(tmp_path):
    assert jobs_for_update(_config(4), 1) == jobs_for_update(_config(4, workers=3), 1)
    assert jobs_for_update(_config(4), 0) != jobs_for_update(_config(4), 1)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    # Behaviour cloning's demonstrations are gathered by the workers too.
    train_policy(replace(_config(2, workers=1), bc_episodes=2), one)
    train_policy(replace(_config(2, workers=2), bc_episodes=2), two)
    assert _history(one) == _history(two)
    assert _same_weights(one, two)


def test_simic_config_checks_its_numbers():
    with pytest.raises(ValueError, match="episodes must be >= 1, got 0"):
        SimicConfig(EPISODE, episodes=0)
    with pytest.raises(ValueError, match="rent must be >= 0"):
        SimicConfig(EPISODE, episodes=1, rent=-0.5)


def test_each_episode_samples_with_its_own_seed():
    """Episodes of one update must explore differently: one sampler seed each, and the same
    seed plays the same episode again."""
    policy = new_policy(_config(2))
    env = GrowthEnv(EPISODE, policy.layout)
    runs = [run_episode(env, policy.agent, EpisodeJob(5, s)).buffer.actions for s in (1, 2, 1)]
    assert runs[0] == runs[2] and runs[0] != runs[1]


def test_a_training_from_before_growth_patience_resumes_at_patience_zero(tmp_path):
    path = tmp_path / "old.pt"
    legacy = replace(_config(2), episode=replace(EPISODE, growth_patience=0))
    train_policy(legacy, path)
    saved = torch.load(path, weights_only=True)
    # As a file of a development version, written before the setting and before formats.
    del saved["episode"]["growth_patience"], saved["episode"]["format"]
    episode = saved["training"]["config"]["episode"]
    del episode["growth_patience"], episode["format"]
    torch.save(saved, path)
    with pytest.raises(PolicyError, match="another configuration"):
        train_policy(_config(4), path, resume=True)  # today's default is another heuristic
    resumed = train_policy(replace(legacy, episodes=4), path, resume=True)
    assert resumed.training["updates"] == 2

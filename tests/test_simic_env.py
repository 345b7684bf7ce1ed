"""Simic's environment over the real trainer: actions and their mask, observations, rewards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from esper.leyline import Action, Decision, SeedStage
from esper.simic.actions import ActionLayout
from esper.simic.env import BaselineCache, EpisodeConfig, GrowthEnv
from esper.simic.observation import observation_names, observation_size, observe
from esper.simic.reward import CRITIC_FEATURES, RewardTracker, StaticBaseline, quality
from esper.testing import slot_report, training_signals

SLOTS = ("early", "mid", "late")
#: A digits run short enough for a unit test: 8 epochs (seeds can reach probation by epoch 8).
SHORT = EpisodeConfig("digits", epochs=8)


def test_every_index_round_trips_through_its_decision():
    layout = ActionLayout.for_topology("cnn", SLOTS)
    assert "noop" not in layout.blueprints
    assert layout.n == 1 + len(SLOTS) * (len(layout.blueprints) + 2)
    for i in range(layout.n):
        assert layout.index(layout.decision(i)) == i
    assert len(set(layout.names())) == layout.n
    assert layout.decision(0).action == Action.WAIT
    assert ActionLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(ValueError, match="outside"):
        layout.decision(layout.n)
    with pytest.raises(ValueError, match="not in this layout"):
        layout.index(Decision(Action.CULL, slot="nowhere"))


def _legal(layout, signals):
    return {layout.names()[i] for i in np.flatnonzero(layout.mask(signals))}


def test_the_mask_follows_the_lifecycle_and_the_seed_budget():
    layout = ActionLayout(SLOTS, ("conv_light", "norm"))
    slots = [
        slot_report("early", SeedStage.FOSSILIZED),
        slot_report("mid", SeedStage.PROBATIONARY),
        slot_report("late", SeedStage.EMBARGOED),
    ]
    legal = _legal(layout, training_signals(slots=slots))
    assert legal == {
        "wait",
        "germinate:early:conv_light",  # stacked after the fossil
        "germinate:early:norm",
        "fossilize:mid",
        "cull:mid",
    }
    spent = _legal(layout, training_signals(slots=slots, seeds_left=0))
    assert spent == {"wait", "fossilize:mid", "cull:mid"}
    training = _legal(
        layout, training_signals(slots=[slot_report(s, SeedStage.TRAINING) for s in SLOTS])
    )
    assert training == {"wait", "cull:early", "cull:mid", "cull:late"}
    with pytest.raises(ValueError, match="not this layout"):
        layout.mask(training_signals(slots=slots[:2]))


def test_observation_has_a_fixed_size_and_names_and_stays_finite():
    layout = ActionLayout.for_topology("cnn", SLOTS)
    slots = [
        slot_report("early", SeedStage.PROBATIONARY, counterfactual_contribution=1.5),
        slot_report("mid"),
        slot_report("late", SeedStage.TRAINING, incubation_gain=0.02),
    ]
    vector = observe(training_signals(slots=slots, total_epochs=40), layout)
    names = observation_names(layout)
    assert vector.shape == (observation_size(layout),) == (len(names),)
    values = dict(zip(names, vector.tolist(), strict=True))
    assert values["progress"] == pytest.approx(10 / 40)
    assert values["early.stage.PROBATIONARY"] == 1.0 and values["early.counterfactual"] == 1.5
    assert values["early.counterfactual_known"] == 1.0 and values["mid.counterfactual_known"] == 0
    assert values["late.incubation_gain"] == pytest.approx(0.02)
    assert values["early.blueprint.conv_light"] == 1.0 and values["mid.blueprint.conv_light"] == 0
    diverged = observe(
        training_signals(slots=slots, total_epochs=40, val_loss=float("inf")), layout
    )
    assert np.isfinite(diverged).all()


def test_rewards_telescope_to_the_return_the_user_wants():
    baseline = StaticBaseline(per_epoch=(50.0, 60.0, 70.0), final=71.0, host_params=1000)
    tracker = RewardTracker(baseline, rent=0.01)
    rewards = [
        tracker.epoch_reward(1, 50.0, 1000),  # before growth: the static run
        tracker.epoch_reward(2, 59.0, 1100),  # a seed costs rent and a point while it grows
        tracker.epoch_reward(3, 72.0, 1100),
        tracker.final_reward(73.5, 1100),
    ]
    assert rewards[0] == 0.0
    assert rewards[1] == pytest.approx(-1.0 - 1.0)
    # The return: final quality against the static host's, minus rent on what was added.
    assert sum(rewards) == pytest.approx((73.5 - 71.0) - 0.01 * 100)
    # A seed grown and culled again leaves no reward behind (no pay for churn).
    churn = RewardTracker(baseline, rent=0.01)
    total = churn.epoch_reward(1, 50.0, 1000) + churn.epoch_reward(2, 60.0, 5000)
    total += churn.epoch_reward(3, 70.0, 1000) + churn.final_reward(71.0, 1000)
    assert total == pytest.approx(0.0)
    with pytest.raises(ValueError, match="rent"):
        RewardTracker(baseline, rent=-1)


def test_quality_is_accuracy_for_classifiers_and_centinats_for_language_models():
    assert quality("cnn", 0.5, 91.0) == 91.0
    assert quality("transformer", 1.4, 60.0) == pytest.approx(-140.0)


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    return BaselineCache(tmp_path_factory.mktemp("baselines"))


def test_an_episode_that_only_waits_is_the_static_run_and_returns_zero(baselines):
    env = GrowthEnv(SHORT, baselines=baselines)
    obs, info = env.reset(seed=3)
    assert obs.shape == env.observation_space.shape and info["action_mask"][0]
    rewards, done = [], False
    while not done:
        obs, reward, done, truncated, info = env.step(0)
        rewards.append(reward)
        assert not truncated
    assert len(rewards) == 8 and rewards == [0.0] * 8
    episode = info["episode"]
    assert episode["final_quality"] == episode["static_quality"] and episode["return"] == 0.0
    assert info["epoch"] == 8 and env.trainer is None  # the run is over and let go
    # The baseline is on disk for other workers, under a name that says which run it is.
    saved = json.loads((baselines.directory / f"{SHORT.key(3)}.json").read_text())
    assert saved["final"] == episode["static_quality"] and len(saved["per_epoch"]) == 8


def test_growth_is_rewarded_by_what_it_changed_and_illegal_actions_are_refused(baselines):
    env = GrowthEnv(SHORT, baselines=baselines)
    _, info = env.reset(seed=3)
    # An action the mask forbids is refused like any illegal decision: the epoch goes on.
    illegal = env.layout.index(Decision(Action.FOSSILIZE, slot="early"))
    assert not info["action_mask"][illegal]
    _, reward, _, _, info = env.step(illegal)
    assert not info["legal"] and not info["outcome"]["applied"] and reward == 0.0
    assert "cannot fossilize" in info["outcome"]["reason"] and info["epoch"] == 2
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(env.layout.n)
    grow = env.layout.index(Decision(Action.GERMINATE, slot="early", blueprint="conv_light"))
    _, reward, _, _, info = env.step(grow)
    assert info["outcome"]["applied"] and env.trainer.model.seed_slots["early"].seed is not None
    total, done = reward, False
    while not done:
        _, reward, done, _, info = env.step(0)
        total += reward
    episode = info["episode"]
    expected = (episode["final_quality"] - episode["static_quality"]) - env.rent * episode[
        "added_params"
    ]
    assert episode["germinated"] == 1 and episode["return"] == pytest.approx(expected)
    assert total == pytest.approx(expected)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_critic_features_are_the_return_so_far_and_the_static_twins_run():
    baseline = StaticBaseline(per_epoch=(50.0, 60.0, 70.0), final=71.0, host_params=1000)
    tracker = RewardTracker(baseline, rent=0.01)
    tracker.epoch_reward(1, 50.0, 1000)
    tracker.epoch_reward(2, 59.0, 1100)
    features = dict(zip(CRITIC_FEATURES, tracker.critic_features(2), strict=True))
    assert features["potential"] == pytest.approx(-2.0)  # the rewards so far
    assert features["static_now"] == 60.0 and features["static_final"] == 71.0
    assert features["static_to_go"] == pytest.approx(11.0)
    assert features["static_luck"] == pytest.approx(71.0 - 60.0)  # the window covers all 3


def test_the_environment_reports_the_critics_inputs_every_step(baselines):
    env = GrowthEnv(SHORT, baselines=baselines)
    _, info = env.reset(seed=3)
    static = env._reward.baseline
    assert info["critic_obs"].shape == (env.critic_size,) == (len(CRITIC_FEATURES),)
    assert info["critic_obs"][1] == np.float32(static.per_epoch[0])
    grow = env.layout.index(Decision(Action.GERMINATE, slot="late", blueprint="conv_light"))
    total, done, action = 0.0, False, grow
    while not done:
        _, reward, done, _, info = env.step(action)
        total, action = total + reward, 0
        potential = dict(zip(CRITIC_FEATURES, info["critic_obs"], strict=True))["potential"]
        assert potential == pytest.approx(total, abs=1e-4)


def test_the_environment_passes_gymnasiums_checker(baselines):
    env = GrowthEnv(EpisodeConfig("digits", epochs=2), baselines=baselines)
    check_env(env, skip_render_check=True)


def test_episode_configuration_is_checked_before_anything_trains():
    with pytest.raises(ValueError, match="unknown task"):
        GrowthEnv(EpisodeConfig("nope"))
    with pytest.raises(ValueError, match="layout's slots"):
        GrowthEnv(SHORT, ActionLayout(("late",), ("norm",)))

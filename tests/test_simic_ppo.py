"""PPO (esper.simic.ppo) and the toy growth environment (esper.simic.toy)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from esper.simic.episodes import collect_episodes, train
from esper.simic.ppo import PPO, ActorCritic, PPOConfig, RunningMeanStd, masked_entropy
from esper.simic.rollout import RolloutBuffer, compute_gae
from esper.simic.toy import ToyAction, ToyGrowthConfig, ToyGrowthEnv, optimal_plan, plan_return

OBS_DIM, N_ACTIONS = 5, 4


def _agent(seed: int = 0, **config) -> PPO:
    return PPO(OBS_DIM, N_ACTIONS, PPOConfig(**config), seed=seed)


def _toy_agent(seed: int = 0, **config) -> tuple[ToyGrowthEnv, PPO]:
    env = ToyGrowthEnv()
    config = {"gamma": 1.0, **config}
    return env, PPO(env.observation_space.shape[0], env.action_space.n, PPOConfig(**config), seed)


# -- GAE and running statistics -------------------------------------------------------------------


def test_gae_by_hand_with_a_done_in_the_middle_and_a_bootstrap():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    values = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=torch.float64)
    dones = torch.tensor([False, True, False, False])
    # The last step is not done, so it bootstraps from last_value = 3.0:
    # t=3: delta = 4 + 0.9 * 3.0 - 2.0 = 4.7                      A = 4.7
    # t=2: delta = 3 + 0.9 * 2.0 - 1.5 = 3.3                      A = 3.3 + 0.72 * 4.7 = 6.684
    # t=1: done, nothing flows back: delta = 2 - 1.0 = 1.0         A = 1.0
    # t=0: delta = 1 + 0.9 * 1.0 - 0.5 = 1.4                      A = 1.4 + 0.72 * 1.0 = 2.12
    adv, ret = compute_gae(rewards, values, dones, 3.0, gamma, lam)
    torch.testing.assert_close(adv, torch.tensor([2.12, 1.0, 6.684, 4.7], dtype=torch.float64))
    torch.testing.assert_close(ret, adv + values)
    torch.testing.assert_close(ret, torch.tensor([2.62, 2.0, 8.184, 6.7], dtype=torch.float64))


def test_gae_ignores_last_value_after_a_final_done():
    rewards, values = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])
    dones = torch.tensor([False, True])
    # gamma = lam = 1: the advantages are the reward-to-go, and 1e6 never enters.
    adv, _ = compute_gae(rewards, values, dones, 1e6, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([2.0, 1.0]))


def test_gae_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="1-D of one length"):
        compute_gae(torch.zeros(3), torch.zeros(2), torch.zeros(3, dtype=torch.bool), 0.0, 1, 1)


def test_running_mean_std_merges_batches_exactly():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(100, 3))
    rms = RunningMeanStd((3,))
    for chunk in np.split(data, [1, 30, 31, 100]):
        if len(chunk):
            rms.update(chunk)
    assert rms.count == 100
    torch.testing.assert_close(rms.mean, torch.from_numpy(data.mean(axis=0)))
    torch.testing.assert_close(rms.var, torch.from_numpy(data.var(axis=0)))
    restored = RunningMeanStd((3,))
    restored.load_state_dict(rms.state_dict())
    x = torch.from_numpy(data[:4]).float()
    assert torch.equal(restored.normalize(x), rms.normalize(x))


# -- masks --------------------------------------------------------------------------------------


def test_masked_actions_are_never_sampled_even_when_the_policy_prefers_them():
    agent = _agent(seed=1)
    with torch.no_grad():  # make action 0 overwhelmingly preferred whenever it is legal
        agent.net.actor[-1].bias.copy_(torch.tensor([30.0, 0.0, 0.0, 0.0]))
    rng = np.random.default_rng(0)
    for _ in range(2000):
        mask = rng.random(N_ACTIONS) < 0.5
        if not mask.any():
            mask[rng.integers(N_ACTIONS)] = True
        obs = rng.normal(size=OBS_DIM).astype(np.float32)
        action, log_prob, _ = agent.act(obs, mask)
        assert mask[action]
        assert np.isfinite(log_prob) and log_prob <= 0.0
        greedy, _, _ = agent.act(obs, mask, greedy=True)
        assert mask[greedy]
        if mask[0]:
            assert greedy == 0


def test_masked_logits_are_finite_and_entropy_covers_legal_actions_only():
    net = ActorCritic(OBS_DIM, N_ACTIONS, (8,), torch.Generator().manual_seed(0))
    mask = torch.tensor([[True, False, False, False], [True, True, True, True]])
    logits, value = net(torch.zeros(2, OBS_DIM), mask)
    assert value.shape == (2,)
    assert torch.isfinite(logits).all()
    assert logits[0, 1] == torch.finfo(logits.dtype).min
    entropy = masked_entropy(logits)
    assert entropy[0].abs() < 1e-6  # one legal action: no uncertainty
    assert entropy[1] <= np.log(N_ACTIONS) + 1e-6


def test_a_mask_row_with_no_legal_action_is_an_error():
    agent = _agent()
    with pytest.raises(ValueError, match="allow no action"):
        agent.act(np.zeros(OBS_DIM), np.zeros(N_ACTIONS, dtype=bool))
    mask = torch.ones(3, N_ACTIONS, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        agent.net(torch.zeros(3, OBS_DIM), mask)
    with pytest.raises(TypeError, match="bool"):
        agent.act(np.zeros(OBS_DIM), np.ones(N_ACTIONS, dtype=np.int64))


# -- updates ------------------------------------------------------------------------------------


def test_first_minibatch_ratio_is_one_with_observation_normalisation():
    env, agent = _toy_agent(seed=3, normalize_observations=True, minibatch_size=32)
    for u in range(3):  # later updates use statistics refreshed by the earlier ones
        buffer, _ = collect_episodes(env, agent, 4, seed=10 * u)
        stats = agent.update(buffer)
        assert stats["first_minibatch_ratio_max_dev"] < 1e-6
    assert agent.obs_rms.count == 3 * 4 * env.config.epochs


def test_update_stats_are_finite_and_sane():
    env, agent = _toy_agent(seed=0, minibatch_size=32, update_epochs=3)
    buffer, _ = collect_episodes(env, agent, 8, seed=0)
    stats = agent.update(buffer)
    for key, value in stats.items():
        assert np.isfinite(value), key
    assert stats["epochs_run"] == 3
    assert stats["minibatches_run"] == 3 * 5  # 160 steps in minibatches of 32
    assert stats["early_stopped"] == 0.0
    assert 0.0 <= stats["clip_fraction"] <= 1.0
    assert stats["approx_kl"] >= 0.0
    assert 0.0 < stats["entropy"] <= np.log(env.action_space.n)
    assert stats["value_loss"] >= 0.0
    assert stats["explained_variance"] <= 1.0


def test_kl_early_stop_stops_the_update():
    env, agent = _toy_agent(seed=0, minibatch_size=16, update_epochs=8, target_kl=1e-9, lr=1e-2)
    buffer, _ = collect_episodes(env, agent, 8, seed=0)
    stats = agent.update(buffer)
    assert stats["early_stopped"] == 1.0
    assert stats["epochs_run"] < 8
    # The first minibatch is on-policy (KL 0) and always steps; the stop comes after it.
    assert 1 <= stats["minibatches_run"] < 8 * 10


def test_buffers_concatenate_and_refuse_to_join_an_unfinished_episode():
    env, agent = _toy_agent()
    a, _ = collect_episodes(env, agent, 1, seed=0)
    b, _ = collect_episodes(env, agent, 2, seed=1)
    joined = RolloutBuffer.concat([a, b])
    assert len(joined) == 3 * env.config.epochs
    assert joined.actions == a.actions + b.actions
    unfinished = RolloutBuffer()
    unfinished.add(np.zeros(2), np.ones(3, dtype=bool), 0, 0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError, match="unfinished"):
        unfinished.extend(a)


def _one_step_episodes(agent: PPO, rng: np.random.Generator, n: int) -> RolloutBuffer:
    """``n`` one-step episodes whose reward is the critic's first input: the observation says
    nothing about it."""
    buffer = RolloutBuffer()
    obs, mask = np.zeros(OBS_DIM, dtype=np.float32), np.ones(N_ACTIONS, dtype=bool)
    for _ in range(n):
        extra = rng.normal(size=agent.critic_dim or 1).astype(np.float32)
        action, log_prob, value = agent.act(obs, mask, critic_obs=extra)
        buffer.add(obs, mask, action, log_prob, value, float(extra[0]), True, extra)
    return buffer


def test_a_critic_with_inputs_of_its_own_leaves_the_policy_alone_and_explains_more():
    agent = PPO(OBS_DIM, N_ACTIONS, PPOConfig(lr=3e-3), seed=4, critic_dim=2)
    obs, mask = np.linspace(-1, 1, OBS_DIM), np.ones(N_ACTIONS, dtype=bool)
    agent.generator.manual_seed(9)
    with_extra = agent.act(obs, mask, critic_obs=np.array([1.0, 2.0]))
    agent.generator.manual_seed(9)
    without = agent.act(obs, mask)
    assert with_extra[:2] == without[:2]  # same action, same probability
    assert np.isfinite(with_extra[2]) and np.isnan(without[2])  # only the value needs them
    with pytest.raises(ValueError, match="critic_obs"):
        agent.value(obs)
    with pytest.raises(ValueError, match="critic_obs"):
        agent.act(obs, mask, critic_obs=np.zeros(3))
    # Returns only the critic's inputs predict: it learns them, a plain critic cannot.
    plain = PPO(OBS_DIM, N_ACTIONS, PPOConfig(lr=3e-3), seed=4)
    rng = np.random.default_rng(0)
    for _ in range(40):
        stats = agent.update(_one_step_episodes(agent, rng, 64))
        assert stats["first_minibatch_ratio_max_dev"] < 1e-6
        plain_stats = plain.update(_one_step_episodes(plain, rng, 64))
    assert stats["explained_variance"] > 0.8
    assert plain_stats["explained_variance"] < 0.2


# -- checkpoints --------------------------------------------------------------------------------


def test_saved_and_loaded_agent_acts_and_learns_identically(tmp_path):
    env, agent = _toy_agent(seed=5)
    buffer, _ = collect_episodes(env, agent, 4, seed=0)
    agent.update(buffer)  # non-trivial optimizer state and statistics
    path = tmp_path / "agent.pt"
    agent.save(path)
    loaded = PPO.load(path)
    assert loaded.config == agent.config
    obs, info = env.reset(seed=0)
    for _ in range(50):
        assert loaded.act(obs, info["action_mask"]) == agent.act(obs, info["action_mask"])
    # Same generator state, so the same episodes and the same minibatch shuffles.
    buffer, _ = collect_episodes(env, agent, 2, seed=7)
    loaded_buffer, _ = collect_episodes(env, loaded, 2, seed=7)
    for name, tensor in vars(buffer.to_batch()).items():
        assert torch.equal(getattr(loaded_buffer.to_batch(), name), tensor), name
    assert loaded.update(loaded_buffer) == agent.update(buffer)
    for p, q in zip(agent.net.parameters(), loaded.net.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="from_state_dict"):
        _agent().load_state_dict(agent.state_dict())


def test_checkpoints_keep_the_critics_inputs_and_format_1_is_refused(tmp_path):
    agent = PPO(OBS_DIM, N_ACTIONS, seed=1, critic_dim=2)
    agent.update(_one_step_episodes(agent, np.random.default_rng(0), 16))
    agent.save(tmp_path / "a.pt")
    loaded = PPO.load(tmp_path / "a.pt")
    assert loaded.critic_dim == 2
    torch.testing.assert_close(loaded.critic_rms.mean, agent.critic_rms.mean, rtol=0, atol=0)
    obs, extra = np.ones(OBS_DIM), np.array([0.5, -1.0])
    assert loaded.value(obs, extra) == agent.value(obs, extra)
    # A development version's checkpoint (format 1: the critic had no inputs of its own) is
    # refused with one line that names its format, before anything is built from it.
    old = PPO(OBS_DIM, N_ACTIONS, seed=1).state_dict()
    old["format"] = 1
    del old["critic_dim"], old["critic_rms"]
    with pytest.raises(ValueError, match=r"checkpoint format 1 is not one of \(2,\)"):
        PPO.from_state_dict(old)


def test_the_global_rng_is_never_used():
    before = torch.random.get_rng_state()
    env, agent = _toy_agent(seed=2)
    buffer, _ = collect_episodes(env, agent, 2, seed=0)
    agent.update(buffer)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_config_is_validated():
    with pytest.raises(ValueError, match="clip"):
        PPOConfig(clip=0.0)
    with pytest.raises(ValueError, match="hidden"):
        PPOConfig(hidden=())
    with pytest.raises(ValueError, match="target_kl"):
        PPOConfig(target_kl=0.0)


# -- the toy environment ------------------------------------------------------------------------


def test_toy_env_passes_the_gymnasium_checker():
    check_env(ToyGrowthEnv(), skip_render_check=True)


def test_toy_optimum_is_exact_and_non_trivial():
    env = ToyGrowthEnv()
    plan, best = optimal_plan(env.config)
    grows = [epoch for epoch, a in enumerate(plan) if a != ToyAction.WAIT]
    assert grows and min(grows) > 1  # neither "never grow" nor "grow at once"
    assert best > env.wait_return() + 0.1
    # Playing the plan through the environment earns exactly the brute-force return.
    env.reset(seed=0)
    total = 0.0
    for a in plan:
        _, reward, terminated, truncated, _ = env.step(a)
        total += reward
    assert terminated and not truncated
    assert total == pytest.approx(best, abs=1e-12)
    assert plan_return(env.config, plan) == best == env.optimal_return()


def test_toy_mask_forbids_growing_without_a_free_slot():
    env = ToyGrowthEnv(ToyGrowthConfig(n_slots=1))
    _, info = env.reset(seed=0)
    assert info["action_mask"].tolist() == [True, True, True]
    _, _, _, _, info = env.step(ToyAction.GROW_SMALL)
    assert info["action_mask"].tolist() == [True, False, False]
    with pytest.raises(ValueError, match="illegal"):
        env.step(ToyAction.GROW_LARGE)


@pytest.mark.slow
def test_ppo_solves_the_toy_growth_env():
    # 100 updates of 16 episodes: on seeds 0-5 the greedy policy was at >= 0.93 of the optimum's
    # margin over never growing by update 50 and >= 0.99 by update 60.
    torch.set_num_threads(1)
    env, agent = _toy_agent(seed=0)
    start = time.perf_counter()
    train(ToyGrowthEnv, agent, updates=100, episodes_per_update=16, seed=0)
    elapsed = time.perf_counter() - start
    _, returns = collect_episodes(env, agent, 3, seed=1000, greedy=True)
    wait, best = env.wait_return(), env.optimal_return()
    solved = (np.mean(returns) - wait) / (best - wait)
    print(f"toy growth: {solved:.3f} of the optimum's margin over WAIT in {elapsed:.1f} s")
    assert solved >= 0.9

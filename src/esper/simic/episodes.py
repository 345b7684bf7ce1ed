"""Collecting episodes with a PPO agent and alternating collection with updates, in one
process, for any Gymnasium-style environment that reports ``info["action_mask"]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from esper.simic.ppo import PPO
from esper.simic.rollout import RolloutBuffer


def _action_mask(info: dict, n_actions: int) -> np.ndarray:
    mask = info.get("action_mask")
    if mask is None:
        raise ValueError('the environment must report info["action_mask"] from reset and step')
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.shape != (n_actions,):
        raise ValueError(
            f'info["action_mask"] must be a bool array of shape ({n_actions},), got '
            f"{mask.dtype} {mask.shape}"
        )
    return mask


def collect_episodes(
    env: Any, agent: PPO, n_episodes: int, seed: int, greedy: bool = False
) -> tuple[RolloutBuffer, list[float]]:
    """Run whole episodes with the agent's current policy.

    The critic's extra inputs, when the agent has any, come from ``info["critic_obs"]``.

    Episode ``i`` starts from ``env.reset(seed=seed + i)``. A step cut by a time limit
    (truncated, not terminated) gets ``gamma * V(next obs)`` added to its stored reward, so
    ending the episode there does not pretend the future is worth nothing.

    Args:
        env: a Gymnasium-style environment reporting ``info["action_mask"]``.
        agent: the acting agent.
        n_episodes: episodes to run.
        seed: reset seed of the first episode.
        greedy: act greedily (for evaluation) instead of sampling.

    Returns:
        ``(buffer, episode_returns)``: the steps (every episode ends with ``done``) and each
        episode's undiscounted return, without the truncation bootstrap.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    buffer, episode_returns = RolloutBuffer(), []
    for i in range(n_episodes):
        obs, info = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            mask = _action_mask(info, agent.n_actions)
            critic_obs = info.get("critic_obs")
            action, log_prob, value = agent.act(obs, mask, greedy=greedy, critic_obs=critic_obs)
            next_obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            done = bool(terminated or truncated)
            stored = float(reward)
            if truncated and not terminated:
                stored += agent.config.gamma * agent.value(next_obs, info.get("critic_obs"))
            buffer.add(obs, mask, action, log_prob, value, stored, done, critic_obs)
            obs = next_obs
        episode_returns.append(total)
    return buffer, episode_returns


def train(
    env_fn: Callable[[], Any],
    agent: PPO,
    updates: int,
    episodes_per_update: int,
    seed: int,
    on_update: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Alternate collecting ``episodes_per_update`` episodes and one PPO update.

    Args:
        env_fn: builds the environment (closed at the end).
        agent: the agent to train, in place.
        updates: number of updates.
        episodes_per_update: whole episodes per update.
        seed: reset seed of the first episode; later episodes count up from it.
        on_update: called with each update's stats (for logging).

    Returns:
        Each update's stats from :meth:`PPO.update`, plus ``update`` (its index), ``steps``
        and ``episode_return_mean`` of the episodes it learned from.
    """
    if updates < 0:
        raise ValueError(f"updates must be >= 0, got {updates}")
    history: list[dict[str, float]] = []
    env = env_fn()
    try:
        for u in range(updates):
            buffer, returns = collect_episodes(
                env, agent, episodes_per_update, seed + u * episodes_per_update
            )
            stats = agent.update(buffer)
            stats.update(
                update=float(u),
                steps=float(len(buffer)),
                episode_return_mean=float(np.mean(returns)),
            )
            history.append(stats)
            if on_update is not None:
                on_update(stats)
    finally:
        env.close()
    return history

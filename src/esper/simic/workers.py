"""Parallel rollouts: W worker processes, one torch thread each, run whole episodes with the
current policy.

Each episode is a job ``(env_seed, sample_seed)``: the training run's seed and the seed of the
policy's action sampling. An episode's result depends only on the policy and its job, never on
which worker ran it or when, so a run with 1 worker and one with 8 learn exactly the same thing.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from esper.simic.actions import ActionLayout
from esper.simic.env import BaselineCache, EpisodeConfig, GrowthEnv
from esper.simic.imitation import Demonstrations, demonstrate
from esper.simic.ppo import PPO
from esper.simic.rollout import RolloutBuffer


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to run: the training run's seed and the action sampler's seed."""

    env_seed: int
    sample_seed: int


@dataclass
class EpisodeResult:
    """What one episode produced: its steps and its summary (``info["episode"]`` plus the
    number of each kind of action taken)."""

    buffer: RolloutBuffer
    info: dict


def run_episode(env: GrowthEnv, agent: PPO, job: EpisodeJob, greedy: bool = False) -> EpisodeResult:
    """Play one whole episode of ``env`` with ``agent`` (sampling, unless ``greedy``)."""
    agent.generator.manual_seed(job.sample_seed)
    buffer = RolloutBuffer()
    obs, info = env.reset(seed=job.env_seed)
    kinds: dict[str, int] = {}
    names = env.layout.names()
    done = False
    while not done:
        mask, critic_obs = info["action_mask"], info["critic_obs"]
        action, log_prob, value = agent.act(obs, mask, greedy=greedy, critic_obs=critic_obs)
        kind = names[action].split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = bool(terminated or truncated)
        buffer.add(obs, mask, action, log_prob, value, float(reward), done, critic_obs)
        obs = next_obs
    return EpisodeResult(buffer, {**info["episode"], "actions": kinds})


# -- the worker side: one environment per process, built once ----------------------------------

#: The worker process's environment (set once per worker process, never in the parent).
_ENV: GrowthEnv | None = None


def _make_env(config: EpisodeConfig, layout: dict, rent: float, baselines: str | None) -> GrowthEnv:
    return GrowthEnv(
        config, ActionLayout.from_dict(layout), rent=rent, baselines=BaselineCache(baselines)
    )


def _start_worker(*args) -> None:
    global _ENV
    _ENV = _make_env(*args)


def _work(args: tuple[dict, EpisodeJob, bool]) -> EpisodeResult:
    agent_state, job, greedy = args
    return run_episode(_ENV, PPO.from_state_dict(agent_state), job, greedy)


def _demonstrate(seed: int) -> Demonstrations:
    return demonstrate(_ENV.config, _ENV.layout, [seed])


class RolloutWorkers:
    """Runs episode jobs on ``workers`` processes (in this process when ``workers == 1``).

    Args:
        config: the run every episode trains.
        layout: the action space.
        rent: the reward's parameter rent.
        baselines: the folder shared by every worker for the static baselines (None: each
            worker keeps its own in memory).
        workers: processes; each runs one torch thread.
    """

    def __init__(
        self,
        config: EpisodeConfig,
        layout: ActionLayout,
        rent: float,
        baselines: str | Path | None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        args = (config, layout.to_dict(), rent, None if baselines is None else str(baselines))
        self._pool = None
        self._env = None
        if workers == 1:
            self._env = _make_env(*args)
        else:
            # spawn, not fork: a forked child would inherit this process's torch thread pool.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(workers, initializer=_start_worker, initargs=args)

    def run(self, agent: PPO, jobs: list[EpisodeJob], greedy: bool = False) -> list[EpisodeResult]:
        """Run ``jobs`` with ``agent``'s current policy; results come back in job order."""
        state = agent.state_dict()
        if self._pool is None:
            # A copy of the agent, so sampling never moves the learner's own generator.
            return [run_episode(self._env, PPO.from_state_dict(state), j, greedy) for j in jobs]
        return self._pool.map(_work, [(state, j, greedy) for j in jobs], chunksize=1)

    def demonstrate(self, seeds: list[int]) -> Demonstrations:
        """The default heuristic's decisions on ``seeds`` (for behaviour cloning), in order."""
        if self._pool is None:
            return demonstrate(self._env.config, self._env.layout, seeds)
        return Demonstrations.concat(self._pool.map(_demonstrate, seeds, chunksize=1))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        if self._env is not None:
            self._env.close()

    def __enter__(self) -> RolloutWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge(results: list[EpisodeResult]) -> RolloutBuffer:
    """One buffer of every result's steps, in job order."""
    return RolloutBuffer.concat([r.buffer for r in results])


def summarize(results: list[EpisodeResult]) -> dict:
    """Means over episodes: return, final quality against the static host, parameters added,
    germinations and fossilizations, and the share of each kind of action."""
    infos = [r.info for r in results]
    kinds: dict[str, int] = {}
    for info in infos:
        for kind, n in info["actions"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    steps = max(1, sum(kinds.values()))
    return {
        "episodes": len(infos),
        "return_mean": float(np.mean([i["return"] for i in infos])),
        "quality_gain_mean": float(
            np.mean([i["final_quality"] - i["static_quality"] for i in infos])
        ),
        "added_params_mean": float(np.mean([i["added_params"] for i in infos])),
        "germinated_mean": float(np.mean([i["germinated"] for i in infos])),
        "fossilized_mean": float(np.mean([i["fossilized"] for i in infos])),
        "action_share": {k: n / steps for k, n in sorted(kinds.items())},
    }

"""Training a growth policy: collect episodes in parallel, update with PPO, checkpoint, repeat.

The policy file is the checkpoint: after every update it holds the agent (network, optimizer,
normalisers, generator), the update count and every update's statistics, so a killed training
resumes from its last update and ends exactly as an uninterrupted one. The static baselines of
the training seeds are kept beside it (``<policy>.baselines/``) and reused across updates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from esper.leyline import DEFAULT_PARAMETER_RENT, DEFAULT_TRAIN_SEEDS
from esper.simic.env import EpisodeConfig
from esper.simic.imitation import behaviour_clone
from esper.simic.observation import observation_size
from esper.simic.policy import Policy, PolicyError
from esper.simic.ppo import PPO, PPOConfig
from esper.simic.reward import CRITIC_FEATURES
from esper.simic.workers import EpisodeJob, RolloutWorkers, merge, summarize
from esper.tolaria.tasks import get_task

#: PPO settings for growth episodes: whole-episode returns (gamma 1), a small batch of long
#: episodes per update (so several epochs of small minibatches per update), and a KL stop so
#: one update cannot move the policy far.
GROWTH_PPO = PPOConfig(
    gamma=1.0, gae_lambda=0.95, update_epochs=8, minibatch_size=64, lr=1e-3, target_kl=0.05
)


#: The least value each numeric setting of :class:`SimicConfig` may take.
LOWER_LIMITS = {
    "episodes": 1,
    "episodes_per_update": 1,
    "workers": 1,
    "train_seeds": 1,
    "bc_episodes": 0,
    "rent": 0.0,
    "growth_patience": 0,
    "shadow_every": 1,
}


def check_limits(values: dict, name: Callable[[str], str] = str) -> None:
    """Raise ValueError for the first setting in ``values`` below its :data:`LOWER_LIMITS`
    entry; ``name`` spells the setting in the message (a command line passes its flag)."""
    for key, least in LOWER_LIMITS.items():
        if values.get(key) is not None and values[key] < least:
            raise ValueError(f"{name(key)} must be >= {least:g}, got {values[key]}")


@dataclass(frozen=True)
class SimicConfig:
    """One policy training, as data (saved in the policy file).

    Attributes:
        episode: the run every episode trains.
        episodes: total episodes to train on.
        episodes_per_update: episodes collected before each PPO update.
        workers: rollout processes.
        seed: seeds the agent and the choice of training seeds.
        train_seeds: training runs use seeds 0..train_seeds-1.
        rent: the reward's charge per added parameter.
        bc_episodes: heuristic runs to clone before PPO starts (0: start from scratch).
        ppo: PPO hyperparameters.
    """

    episode: EpisodeConfig
    episodes: int
    episodes_per_update: int = 16
    workers: int = 1
    seed: int = 0
    train_seeds: int = DEFAULT_TRAIN_SEEDS
    rent: float = DEFAULT_PARAMETER_RENT
    bc_episodes: int = 0
    ppo: PPOConfig = field(default_factory=lambda: GROWTH_PPO)

    def __post_init__(self) -> None:
        check_limits(vars(self))

    @property
    def updates(self) -> int:
        """Updates needed for ``episodes`` (the last one may be short of a full batch)."""
        return -(-self.episodes // self.episodes_per_update)

    def to_dict(self) -> dict:
        """What decides the training's result (``workers`` does not: see workers.py)."""
        return {
            "episode": self.episode.to_dict(),
            "episodes_per_update": self.episodes_per_update,
            "seed": self.seed,
            "train_seeds": self.train_seeds,
            "rent": self.rent,
            "bc_episodes": self.bc_episodes,
            "ppo": {**asdict(self.ppo), "hidden": list(self.ppo.hidden)},
        }

    @classmethod
    def from_dict(cls, raw: dict, episodes: int, workers: int = 1) -> SimicConfig:
        """The configuration :meth:`to_dict` wrote (it leaves out ``episodes`` and
        ``workers``, which are given here)."""
        return cls(
            episode=EpisodeConfig.from_dict(raw["episode"]),
            episodes=episodes,
            episodes_per_update=raw["episodes_per_update"],
            workers=workers,
            seed=raw["seed"],
            train_seeds=raw["train_seeds"],
            rent=raw["rent"],
            bc_episodes=raw["bc_episodes"],
            ppo=PPOConfig(**{**raw["ppo"], "hidden": tuple(raw["ppo"]["hidden"])}),
        )


def jobs_for_update(config: SimicConfig, update: int) -> list[EpisodeJob]:
    """The episodes of update ``update``: training seeds drawn from the pool and sampler seeds,
    both a function of (seed, update) alone."""
    rng = np.random.default_rng([config.seed, update])
    start = update * config.episodes_per_update
    n = min(config.episodes_per_update, config.episodes - start)
    seeds = rng.integers(config.train_seeds, size=n)
    return [EpisodeJob(int(s), int(rng.integers(2**31))) for s in seeds]


def baseline_dir(policy_path: Path) -> Path:
    return policy_path.with_name(policy_path.name + ".baselines")


def new_policy(config: SimicConfig) -> Policy:
    spec = get_task(config.episode.task)
    layout = config.episode.default_layout()
    # The critic also reads what only training has (the static twin's run): see reward.py.
    agent = PPO(
        observation_size(layout),
        layout.n,
        config.ppo,
        seed=config.seed,
        critic_dim=len(CRITIC_FEATURES),
    )
    return Policy(
        agent,
        spec.name,
        spec.topology,
        layout,
        episode=config.episode.to_dict(),
        training={"config": config.to_dict(), "updates": 0, "episodes": 0, "history": []},
    )


def resume_policy(config: SimicConfig, path: Path) -> Policy:
    """The policy at ``path``, if it is this training's checkpoint.

    Raises:
        PolicyError: unreadable, or trained with another configuration.
    """
    policy = Policy.load(path)
    saved = policy.training.get("config")
    if isinstance(saved, dict) and isinstance(saved.get("episode"), dict):
        # An older file reads through the migration table (EpisodeConfig.from_dict), so the
        # same flags still resume it.
        saved = {**saved, "episode": EpisodeConfig.from_dict(saved["episode"]).to_dict()}
    if saved != config.to_dict():
        raise PolicyError(
            f"{path}: was trained with another configuration; resume it with the same task, "
            "episode and PPO settings, or choose a new --out"
        )
    return policy


def demonstration_seeds(config: SimicConfig) -> list[int]:
    """The training seeds the heuristic is cloned on."""
    return [s % config.train_seeds for s in range(config.bc_episodes)]


def behaviour_cloned(policy: Policy, workers: int = 1) -> Policy:
    """``policy`` as behaviour cloning left it, before any PPO update: rebuilt from the training
    configuration saved in it (the agent's initial weights, the heuristic's demonstrations and
    the cloning are all deterministic) and checked against the cloning statistics recorded then.

    Raises:
        PolicyError: the policy was not warm-started by cloning, or the clone cannot be
            reproduced (another version of the code, say).
    """
    raw, recorded = policy.training.get("config"), policy.training.get("bc")
    if not raw or not recorded or not raw.get("bc_episodes"):
        raise PolicyError(
            "the policy was not warm-started by behaviour cloning (--bc-episodes), so there is "
            "no cloned policy to evaluate"
        )
    config = SimicConfig.from_dict(raw, episodes=max(1, int(policy.training.get("episodes", 1))))
    clone = new_policy(config)
    with RolloutWorkers(config.episode, clone.layout, config.rent, None, workers) as pool:
        demos = pool.demonstrate(demonstration_seeds(config))
    stats = behaviour_clone(clone.agent, demos)
    # Thread counts may move the last bits of the network's float arithmetic.
    same = all(
        np.isclose(stats[k], recorded[k], rtol=1e-4, atol=1e-6)
        for k in ("steps", "loss", "accuracy", "entropy")
    )
    if not same:
        raise PolicyError(
            f"could not reproduce the behaviour-cloned policy: cloning gave {stats}, the "
            f"training recorded {recorded}"
        )
    clone.training = {"config": raw, "bc": stats, "updates": 0, "episodes": 0, "history": []}
    return clone


def check_output(out: Path, resume: bool) -> None:
    """Refuse to overwrite a policy file, or to resume one that is not there.

    Raises:
        PolicyError: ``out`` exists and ``resume`` is off, or is missing and ``resume`` is on.
    """
    if out.exists() and not resume:
        raise PolicyError(
            f"{out} already exists; pass --resume to continue it, or choose a new --out "
            "(nothing was overwritten)"
        )
    if resume and not out.is_file():
        raise PolicyError(f"{out} does not exist; there is nothing to resume")


def train_policy(
    config: SimicConfig,
    out: str | Path,
    *,
    resume: bool = False,
    on_update: Callable[[dict], None] | None = None,
) -> Policy:
    """Train (or, with ``resume``, continue training) the policy saved at ``out``.

    Args:
        config: the training.
        out: the policy file, rewritten after every update.
        resume: continue the checkpoint at ``out`` (it must exist and match ``config``).
        on_update: called with each update's statistics (for progress displays).

    Raises:
        PolicyError: ``out`` exists without ``resume``, or cannot be resumed.
    """
    out = Path(out)
    check_output(out, resume)
    policy = resume_policy(config, out) if resume else new_policy(config)
    training = policy.training
    with RolloutWorkers(
        config.episode, policy.layout, config.rent, baseline_dir(out), config.workers
    ) as workers:
        if config.bc_episodes and "bc" not in training:
            seeds = demonstration_seeds(config)
            training["bc"] = behaviour_clone(policy.agent, workers.demonstrate(seeds))
            policy.save(out)
            if on_update is not None:
                on_update({"update": 0, "bc": training["bc"]})
        for update in range(int(training["updates"]), config.updates):
            started = time.perf_counter()
            results = workers.run(policy.agent, jobs_for_update(config, update))
            stats = policy.agent.update(merge(results))
            row = {
                "update": update + 1,
                **summarize(results),
                **{k: float(v) for k, v in stats.items()},
                "seconds": round(time.perf_counter() - started, 3),
            }
            training["history"].append(row)
            training["updates"] = update + 1
            training["episodes"] = int(training["episodes"]) + len(results)
            policy.save(out)
            if on_update is not None:
                on_update(row)
    return policy

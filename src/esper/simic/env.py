"""The growth environment: one episode is one real training run, one step one epoch's decision.

It follows the Gymnasium API. ``reset(seed=S)`` starts the run ``esper train`` would start for
that task and seed, trains the first epoch and returns its observation; ``step(action)`` carries
out the decision for the epoch just observed (through the trainer's ``apply``), closes the epoch
and trains the next. ``info["action_mask"]`` holds the legal actions for the next step. The
static host's run on the same seed (the reward's baseline) is computed once per seed and kept
by a :class:`BaselineCache`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from esper._atomic import atomic_path
from esper.kasmina import MorphogeneticModel
from esper.leyline import DEFAULT_GROWTH_PATIENCE, DEFAULT_PARAMETER_RENT
from esper.leyline.formats import EPISODE, migrate, stamped
from esper.runs import RunSpec, build_run
from esper.simic.actions import ActionLayout
from esper.simic.observation import OBSERVATION_BOUND, observation_size, observe
from esper.simic.reward import CRITIC_FEATURES, RewardTracker, StaticBaseline, quality
from esper.tamiyo import HeuristicConfig
from esper.tolaria.tasks import get_task
from esper.tolaria.trainer import Trainer


@dataclass(frozen=True)
class EpisodeConfig:
    """What one episode trains: a task's run as ``esper train`` would make it.

    Attributes:
        task: a registered task name.
        epochs: the run's length; None means the task's default.
        width_multiplier: the host's width relative to the task's (a narrow host leaves room
            for growth on a task that saturates).
        slots: injection points; None means the task's default slots.
        max_seeds: the run's germination budget (None: unbounded).
        data_dir: where a task with local data finds it.
        threads: torch intra-op threads (results on a CPU depend on it).
        shadow_every: steps between incubating seeds' shadow passes; None means the task's.
        growth_patience: the growth patience (``HeuristicConfig.growth_patience``) of the heuristic
            a policy is cloned from and compared with (demonstrations, the default and tuned
            heuristic baselines); None means leyline's default.
    """

    task: str
    epochs: int | None = None
    width_multiplier: float = 1.0
    slots: tuple[str, ...] | None = None
    max_seeds: int | None = None
    data_dir: str | None = None
    threads: int = 1
    shadow_every: int | None = None
    growth_patience: int | None = None

    def run_spec(self, seed: int, mode: str = "heuristic") -> RunSpec:
        """The equivalent ``esper train`` run (validated there)."""
        return RunSpec(
            mode=mode,
            task=self.task,
            seed=seed,
            epochs=self.epochs,
            slots=self.slots,
            width_multiplier=self.width_multiplier,
            max_seeds=self.max_seeds,
            data_dir=self.data_dir,
            threads=self.threads,
            shadow_every=self.shadow_every,
        )

    def resolved_patience(self) -> int:
        patience = self.growth_patience
        return DEFAULT_GROWTH_PATIENCE if patience is None else patience

    def heuristic_config(self) -> HeuristicConfig:
        """The default heuristic at these episodes' patience: what a policy is cloned from and
        compared with."""
        return HeuristicConfig(growth_patience=self.resolved_patience())

    def resolved_slots(self) -> tuple[str, ...]:
        return tuple(self.slots) if self.slots else get_task(self.task).slots

    def resolved_epochs(self) -> int:
        return self.epochs or get_task(self.task).epochs

    def default_layout(self) -> ActionLayout:
        """The action space over this run's slots and every blueprint of its topology."""
        return ActionLayout.for_topology(get_task(self.task).topology, self.resolved_slots())

    def key(self, seed: int) -> str:
        """A file-name-safe name for this configuration's run on ``seed``."""
        slots = "+".join(self.resolved_slots())
        return (
            f"{self.task}-e{self.resolved_epochs()}-w{self.width_multiplier:g}-{slots}"
            f"-m{self.max_seeds}-s{seed}"
        )

    def to_dict(self) -> dict:
        return stamped(
            EPISODE,
            {
                "task": self.task,
                "epochs": self.resolved_epochs(),
                "width_multiplier": self.width_multiplier,
                "slots": list(self.resolved_slots()),
                "max_seeds": self.max_seeds,
                "shadow_every": self.shadow_every or get_task(self.task).shadow_every,
                "growth_patience": self.resolved_patience(),
            },
        )

    @classmethod
    def from_dict(cls, raw: dict) -> EpisodeConfig:
        """The configuration :meth:`to_dict` wrote, of any version (a policy file keeps one)."""
        raw = migrate(EPISODE, raw)
        return cls(
            task=raw["task"],
            epochs=raw.get("epochs"),
            width_multiplier=raw.get("width_multiplier", 1.0),
            slots=tuple(raw["slots"]) if raw.get("slots") else None,
            max_seeds=raw.get("max_seeds"),
            shadow_every=raw["shadow_every"],
            growth_patience=raw["growth_patience"],
        )


def episode_trainer(
    config: EpisodeConfig,
    seed: int,
    data_cache: dict | None = None,
    controller=None,
    prepare: Callable[[MorphogeneticModel], None] | None = None,
) -> Trainer:
    """A fresh trainer for ``seed``, built as ``esper train`` builds it (by
    :func:`esper.runs.build_run`), so a run with no growth is the static run bit for bit.
    Without ``controller`` decisions come through ``apply``. ``prepare`` changes the model (for
    example puts seeds in it) before the trainer and its optimizers are built."""
    built = build_run(
        config.run_spec(seed),
        controller=controller,
        prepare=prepare,
        data_cache=data_cache,
    )
    return built.trainer


@contextmanager
def whole_run(
    config: EpisodeConfig, seed: int, data_cache: dict | None = None, controller=None
) -> Iterator[Trainer]:
    """:func:`episode_trainer`, trained for every epoch under ``controller``; the trainer stops
    listening to its model when the block ends."""
    trainer = episode_trainer(config, seed, data_cache, controller=controller)
    try:
        for _ in range(config.resolved_epochs()):
            trainer.run_epoch()
        yield trainer
    finally:
        trainer.close()


def fossilized(trainer: Trainer) -> int:
    """How many of the run's seeds were fossilized."""
    return sum(1 for r in trainer.records.values() if r.final_stage == "FOSSILIZED")


class BaselineCache:
    """The static host's qualities per seed, computed on first use and kept in memory and,
    with ``directory``, as JSON files that parallel workers and later updates share."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, StaticBaseline] = {}
        self._data: dict = {}

    def get(self, config: EpisodeConfig, seed: int) -> StaticBaseline:
        key = config.key(seed)
        if key in self._memory:
            return self._memory[key]
        path = self.directory / f"{key}.json" if self.directory is not None else None
        if path is not None and path.is_file():
            baseline = StaticBaseline.from_dict(json.loads(path.read_text()))
        else:
            baseline = self._measure(config, seed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(path) as tmp:
                    tmp.write_text(json.dumps(baseline.to_dict()) + "\n")
        self._memory[key] = baseline
        return baseline

    def _measure(self, config: EpisodeConfig, seed: int) -> StaticBaseline:
        with whole_run(config, seed, self._data) as trainer:
            topology = trainer.model.topology
            per_epoch = tuple(
                quality(topology, r.val_loss, r.val_accuracy) for r in trainer.history
            )
            final = quality(topology, *trainer.evaluate())
            return StaticBaseline(per_epoch, final, trainer.model.count_parameters()["total"])


class GrowthEnv(gym.Env):
    """A training run as a Gymnasium environment.

    Args:
        config: the run each episode trains.
        layout: the action space; by default every slot of the run and every blueprint of the
            task's topology but ``noop``.
        rent: the reward's charge per added parameter (see :mod:`esper.simic.reward`).
        baselines: where static baselines are kept (a fresh in-memory cache when None).
        seeds: training seeds ``reset()`` draws from when it is given no seed (a fixed pool lets
            the baselines be reused across updates); by default 0..999.

    Observation: a float32 vector (:func:`esper.simic.observation.observe`). Action: a
    ``Discrete(layout.n)`` index (:class:`ActionLayout`); an action the mask forbids raises
    ``info``: ``action_mask``, ``epoch``, ``critic_obs`` (the critic-only inputs,
    :data:`~esper.simic.reward.CRITIC_FEATURES`; ``critic_size`` of them), and at the end
    ``episode`` (the final validation quality, the baseline's, parameters added, the return).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: EpisodeConfig,
        layout: ActionLayout | None = None,
        *,
        rent: float = DEFAULT_PARAMETER_RENT,
        baselines: BaselineCache | None = None,
        seeds: tuple[int, ...] | None = None,
    ) -> None:
        spec = get_task(config.task)
        config.run_spec(0)  # validates the configuration before anything is trained
        self.config = config
        self.topology = spec.topology
        self.layout = layout or config.default_layout()
        if self.layout.slots != config.resolved_slots():
            raise ValueError(
                f"the layout's slots ({', '.join(self.layout.slots)}) are not the run's "
                f"({', '.join(config.resolved_slots())})"
            )
        self.rent = rent
        self.baselines = baselines or BaselineCache()
        self.seeds = tuple(seeds) if seeds is not None else tuple(range(1000))
        if not self.seeds:
            raise ValueError("GrowthEnv needs at least one training seed")
        size = observation_size(self.layout)
        self.observation_space = spaces.Box(
            -OBSERVATION_BOUND, OBSERVATION_BOUND, (size,), np.float32
        )
        self.action_space = spaces.Discrete(self.layout.n)
        self.critic_size = len(CRITIC_FEATURES)
        self._trainer: Trainer | None = None
        self._data: dict = {}
        self._mask = np.zeros(self.layout.n, dtype=np.bool_)
        self._obs = np.zeros(size, dtype=np.float32)
        self.run_seed: int | None = None

    # ------------------------------------------------------------------ gymnasium API

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a run. ``seed`` is the training run's seed; without one, a seed from the pool
        is drawn with the environment's own generator."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.seeds[int(self.np_random.integers(len(self.seeds)))])
        self.close()
        self.run_seed = int(seed)
        baseline = self.baselines.get(self.config, self.run_seed)
        self._reward = RewardTracker(baseline, self.rent)
        self._trainer = episode_trainer(self.config, self.run_seed, self._data)
        signals = self._trainer.observe()
        # Epoch 1 is the static run's epoch 1: its reward is 0 by construction.
        self._reward.epoch_reward(1, self._quality(signals), signals.total_params)
        return self._observe(signals), self._info()

    def step(self, action):
        trainer = self._trainer
        if trainer is None:
            raise RuntimeError("step() before reset(), or after the episode ended")
        index = int(action)
        if not 0 <= index < self.layout.n:
            raise ValueError(f"action {index} is outside the action space 0..{self.layout.n - 1}")
        decision = self.layout.decision(index, reason="policy")
        # An action the mask forbids is refused by the trainer as any illegal decision is:
        # nothing changes, the outcome says why, and the epoch goes on as after a WAIT.
        outcome = trainer.apply(decision)
        trainer.end_epoch(decision, outcome)
        info_extra = {
            "decision": decision.to_dict(),
            "outcome": outcome.to_dict(),
            "legal": bool(self._mask[index]),
        }
        if trainer.epoch >= trainer.config.total_epochs:
            val_loss, val_accuracy = trainer.evaluate()
            final = quality(self.topology, val_loss, val_accuracy)
            total = trainer.model.count_parameters()["total"]
            reward = self._reward.final_reward(final, total)
            episode = {
                "seed": self.run_seed,
                "return": self._reward.phi,
                "final_quality": final,
                "static_quality": self._reward.baseline.final,
                "final_val_loss": val_loss,
                "final_val_accuracy": val_accuracy,
                "total_params": total,
                "added_params": total - self._reward.baseline.host_params,
                "germinated": trainer.seed_counter,
                "fossilized": fossilized(trainer),
            }
            self._mask = np.zeros(self.layout.n, dtype=np.bool_)
            self._mask[0] = True
            info = {**self._info(), **info_extra, "episode": episode}
            self.close()
            # The last observation again, as a new array: there is no next epoch to observe.
            return self._obs.copy(), reward, True, False, info
        signals = trainer.observe()
        reward = self._reward.epoch_reward(
            trainer.epoch, self._quality(signals), signals.total_params
        )
        return self._observe(signals), reward, False, False, {**self._info(), **info_extra}

    def close(self) -> None:
        if self._trainer is not None:
            self._trainer.close()
            self._trainer = None

    # ------------------------------------------------------------------ helpers

    @property
    def trainer(self) -> Trainer | None:
        """The running episode's trainer (None between episodes)."""
        return self._trainer

    def _quality(self, signals) -> float:
        return quality(self.topology, signals.val_loss, signals.val_quality)

    def _observe(self, signals) -> np.ndarray:
        self._mask = self.layout.mask(signals)
        self._obs = observe(signals, self.layout)
        return self._obs

    def _info(self) -> dict:
        """Called while the run is open (after each reward), so the critic's inputs are those
        of the epoch just observed."""
        epoch = self._trainer.epoch
        return {
            "action_mask": self._mask.copy(),
            "epoch": epoch,
            "critic_obs": self._reward.critic_features(epoch),
        }

"""A toy growth environment with analytic learning curves and an exactly known optimum.

One episode is one training run of ``epochs`` epochs; each step is the decision taken at the
start of an epoch. The host's quality climbs a saturating curve toward a capacity ceiling.
Growing a seed into a free slot raises that ceiling, but only as fast as the seed's new capacity
is learned, and every epoch a seed lives costs parameter rent. Growing early pays rent for
epochs in which the extra capacity is barely used; growing late leaves too few epochs to learn
it. The best policy therefore waits, then grows at specific epochs, and :meth:`ToyGrowthEnv.
optimal_return` finds it by brute force over every plan (the plan space is small).

The dynamics are deterministic, so a PPO implementation can be checked against the optimum
rather than against a curve from another run.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from enum import IntEnum

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class ToyAction(IntEnum):
    """The decision at the start of an epoch. Values are the Discrete action indices."""

    WAIT = 0
    GROW_SMALL = 1  # a cheap seed: few parameters, learned quickly, raises the ceiling a little
    GROW_LARGE = 2  # an expensive seed: more capacity but less per parameter, learned slowly


@dataclass(frozen=True)
class ToyGrowthConfig:
    """The learning curves and prices of the toy run (defaults give a non-trivial optimum)."""

    #: Epochs in the run, i.e. decisions per episode.
    epochs: int = 20
    #: Seeds the host can hold; GROW is masked once every slot is taken.
    n_slots: int = 2
    #: Quality the host alone saturates toward (quality lives in [0, 1]).
    host_ceiling: float = 0.6
    #: Fraction of the gap to the ceiling the quality closes each epoch.
    host_rate: float = 0.3
    #: Fraction of the host's remaining error (1 - ceiling) a fully learned seed removes; the
    #: product form gives diminishing returns, so a second seed buys less than the first.
    small_share: float = 0.2
    large_share: float = 0.55
    #: Fraction of a seed's not-yet-learned capacity learned per epoch (small seeds learn faster).
    small_rate: float = 0.5
    large_rate: float = 0.2
    #: Parameters a seed adds, in units of rent.
    small_params: int = 1
    large_params: int = 6
    #: Quality paid per parameter unit per epoch the seed is alive.
    rent: float = 0.0012

    def __post_init__(self) -> None:
        if self.epochs < 2:
            raise ValueError(f"epochs must be >= 2 (one decision per epoch), got {self.epochs}")
        if self.n_slots < 1:
            raise ValueError(f"n_slots must be >= 1, got {self.n_slots}")
        for name in ("host_ceiling", "small_share", "large_share"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("host_rate", "small_rate", "large_rate"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.small_params < 1 or self.large_params < 1:
            raise ValueError(
                f"seed parameters must be >= 1, got small={self.small_params} "
                f"large={self.large_params}"
            )
        if self.rent < 0.0:
            raise ValueError(f"rent must be >= 0, got {self.rent}")


@dataclass(frozen=True)
class _RunState:
    """What the dynamics need: the epoch, the quality, and the seeds as (kind, epoch grown)."""

    epoch: int
    quality: float
    seeds: tuple[tuple[ToyAction, int], ...]


def _seed_terms(cfg: ToyGrowthConfig, kind: ToyAction) -> tuple[float, float, int]:
    """(share, rate, params) of a seed kind."""
    if kind == ToyAction.GROW_SMALL:
        return cfg.small_share, cfg.small_rate, cfg.small_params
    return cfg.large_share, cfg.large_rate, cfg.large_params


def _learned(rate: float, age: int) -> float:
    """Fraction of a seed's capacity learned after ``age`` epochs of training."""
    return 1.0 - (1.0 - rate) ** age


def _ceiling(cfg: ToyGrowthConfig, seeds: tuple[tuple[ToyAction, int], ...], epoch: int) -> float:
    """Capacity ceiling at the start of ``epoch``: each seed removes a share of the host's error
    in proportion to how much of it has been learned."""
    error = 1.0 - cfg.host_ceiling
    for kind, grown in seeds:
        share, rate, _ = _seed_terms(cfg, kind)
        error *= 1.0 - share * _learned(rate, epoch - grown)
    return 1.0 - error


def _advance(cfg: ToyGrowthConfig, state: _RunState, action: ToyAction) -> tuple[_RunState, float]:
    """Apply ``action`` at the start of ``state.epoch`` and train one epoch.

    Returns:
        The state at the start of the next epoch, and the reward: the quality gained over the
        epoch minus the rent of every seed alive during it (so rewards telescope to the final
        quality minus the total rent, the initial quality being 0).
    """
    seeds = state.seeds
    if action != ToyAction.WAIT:
        seeds = (*seeds, (action, state.epoch))
    # The seed grown this epoch trains during it, so the ceiling that pulls the quality is the
    # one at the end of the epoch.
    ceiling = _ceiling(cfg, seeds, state.epoch + 1)
    quality = state.quality + cfg.host_rate * (ceiling - state.quality)
    rent = cfg.rent * sum(_seed_terms(cfg, kind)[2] for kind, _ in seeds)
    return _RunState(state.epoch + 1, quality, seeds), quality - state.quality - rent


def plan_return(config: ToyGrowthConfig, plan: list[int] | tuple[int, ...]) -> float:
    """Return of an open-loop plan: one action per epoch, applied from the start of the run.

    Args:
        config: the toy run.
        plan: ``config.epochs`` action indices; GROW actions beyond ``n_slots`` are illegal.

    Returns:
        The episode return (final quality minus rent).

    Raises:
        ValueError: wrong plan length, an unknown action, or more grows than slots.
    """
    if len(plan) != config.epochs:
        raise ValueError(f"a plan needs {config.epochs} actions, got {len(plan)}")
    state, total = _RunState(0, 0.0, ()), 0.0
    for a in plan:
        action = ToyAction(int(a))
        if action != ToyAction.WAIT and len(state.seeds) >= config.n_slots:
            raise ValueError(f"plan grows more than {config.n_slots} seeds: {list(plan)}")
        state, reward = _advance(config, state, action)
        total += reward
    return total


def optimal_plan(config: ToyGrowthConfig) -> tuple[tuple[int, ...], float]:
    """The best plan and its return, by brute force over every legal plan.

    The dynamics are deterministic and the observation is a function of the plan so far, so the
    best open-loop plan is also the best policy. Plans differ only in which epochs grow which
    kind, so enumerating up to ``n_slots`` grow epochs and a kind for each covers them all.

    Returns:
        (plan, return) with ties broken toward the first plan enumerated (fewest grows, earliest).
    """
    grows = (ToyAction.GROW_SMALL, ToyAction.GROW_LARGE)
    best_plan, best = (ToyAction.WAIT.value,) * config.epochs, -math.inf
    for n in range(config.n_slots + 1):
        for epochs in itertools.combinations(range(config.epochs), n):
            for kinds in itertools.product(grows, repeat=n):
                plan = [ToyAction.WAIT.value] * config.epochs
                for e, k in zip(epochs, kinds, strict=True):
                    plan[e] = k.value
                value = plan_return(config, plan)
                if value > best + 1e-12:
                    best_plan, best = tuple(plan), value
    return best_plan, best


class ToyGrowthEnv(gym.Env):
    """Gymnasium environment: decide WAIT / GROW_SMALL / GROW_LARGE at each epoch of a toy run.

    Observation (float32, each in [0, 1]): progress ``epoch / epochs``, quality, last epoch's
    quality gain, the current ceiling, the fraction of free slots, then per slot whether it holds
    a small seed, a large seed, and how much of that seed is learned. ``info["action_mask"]``
    (bool, one per action) marks the legal actions: GROW needs a free slot.

    Args:
        config: the toy run; defaults to :class:`ToyGrowthConfig`.
    """

    metadata = {"render_modes": []}

    def __init__(self, config: ToyGrowthConfig | None = None):
        super().__init__()
        self.config = config or ToyGrowthConfig()
        self.action_space = spaces.Discrete(len(ToyAction))
        obs_dim = 5 + 3 * self.config.n_slots
        self.observation_space = spaces.Box(0.0, 1.0, shape=(obs_dim,), dtype=np.float32)
        self._state = _RunState(0, 0.0, ())
        self._last_gain = 0.0
        self._done = True

    def optimal_return(self) -> float:
        """The best achievable episode return (exact, by brute force; see :func:`optimal_plan`)."""
        return optimal_plan(self.config)[1]

    def wait_return(self) -> float:
        """The return of never growing: the baseline a growth policy must beat."""
        return plan_return(self.config, [ToyAction.WAIT.value] * self.config.epochs)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start a new run. The dynamics are deterministic; ``seed`` only seeds ``np_random``."""
        super().reset(seed=seed)
        self._state = _RunState(0, 0.0, ())
        self._last_gain = 0.0
        self._done = False
        return self._observation(), self._info()

    def step(self, action):
        """Apply ``action`` at the start of the current epoch and train through it.

        Raises:
            RuntimeError: the episode has ended (call ``reset``).
            ValueError: an action outside the space or one the mask forbids.
        """
        if self._done:
            raise RuntimeError("the episode has ended; call reset() before step()")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in {self.action_space}")
        mask = self.action_mask()
        if not mask[int(action)]:
            legal = [ToyAction(i).name for i in np.flatnonzero(mask)]
            raise ValueError(
                f"action {ToyAction(int(action)).name} is illegal at epoch {self._state.epoch}; "
                f"legal: {legal}"
            )
        before = self._state.quality
        self._state, reward = _advance(self.config, self._state, ToyAction(int(action)))
        self._last_gain = self._state.quality - before
        # The run ends by itself after its last epoch: a true termination, not a time limit.
        self._done = self._state.epoch >= self.config.epochs
        return self._observation(), float(reward), self._done, False, self._info()

    def action_mask(self) -> np.ndarray:
        """Legal actions now: WAIT always; GROW while a slot is free."""
        free = len(self._state.seeds) < self.config.n_slots
        return np.array([True, free, free], dtype=np.bool_)

    def _observation(self) -> np.ndarray:
        cfg, state = self.config, self._state
        obs = [
            state.epoch / cfg.epochs,
            state.quality,
            max(self._last_gain, 0.0),  # the ceiling only rises, so the quality never falls
            _ceiling(cfg, state.seeds, state.epoch),
            1.0 - len(state.seeds) / cfg.n_slots,
        ]
        for i in range(cfg.n_slots):
            if i < len(state.seeds):
                kind, grown = state.seeds[i]
                rate = _seed_terms(cfg, kind)[1]
                obs += [
                    float(kind == ToyAction.GROW_SMALL),
                    float(kind == ToyAction.GROW_LARGE),
                    _learned(rate, state.epoch - grown),
                ]
            else:
                obs += [0.0, 0.0, 0.0]
        return np.clip(np.asarray(obs, dtype=np.float32), 0.0, 1.0)

    def _info(self) -> dict:
        return {
            "action_mask": self.action_mask(),
            "epoch": self._state.epoch,
            "quality": self._state.quality,
        }

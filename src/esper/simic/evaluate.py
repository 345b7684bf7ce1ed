"""Comparing growth controllers on held-out seeds: the runs, the baselines a learned policy must
beat (masked-random, the heuristic tuned by random search), and paired bootstrap intervals.

``benchmarks/controller_eval.py`` is the command line over these.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from esper.leyline import (
    DEFAULT_GROWTH_PATIENCE,
    DEFAULT_PARAMETER_RENT,
    Controller,
    Decision,
    TrainingSignals,
    get_topology,
)
from esper.simic.actions import ActionLayout
from esper.simic.env import BaselineCache, EpisodeConfig, fossilized, whole_run
from esper.simic.policy import Policy, PolicyController
from esper.simic.reward import quality
from esper.tamiyo import HeuristicConfig, HeuristicController
from esper.tamiyo.heuristic import SLOT_ORDERS, TIMINGS
from esper.tolaria.tasks import get_task


class MaskedRandomController(Controller):
    """Picks uniformly among the legal actions each epoch (seeded): the floor a learned policy
    must clear to show it learned anything."""

    def __init__(self, layout: ActionLayout, seed: int = 0) -> None:
        self.layout = layout
        self._rng = random.Random(seed)

    def decide(self, signals: TrainingSignals) -> Decision:
        legal = np.flatnonzero(self.layout.mask(signals)).tolist()
        return self.layout.decision(self._rng.choice(legal), reason="masked random")


@dataclass(frozen=True)
class RunResult:
    """One controller's run on one seed. ``metric`` is the test metric: accuracy (points) for
    a classifier, loss for a language model; ``quality`` is the validation quality the reward
    and the tuner see (:func:`esper.simic.reward.quality`)."""

    controller: str
    seed: int
    metric: float
    quality: float
    total_params: int
    germinated: int
    fossilized: int
    wall_seconds: float


def metric_name(task: str) -> tuple[str, bool]:
    """(the test metric's name, whether higher is better) for ``task``."""
    if get_topology(get_task(task).topology).output_key == "vocab_size":
        return "test loss", False
    return "test acc (%)", True


def run_controller(
    config: EpisodeConfig, seed: int, name: str, controller, data_cache: dict | None = None
) -> RunResult:
    """Train one run of ``config`` on ``seed`` under ``controller`` (None: the static host) and
    measure the final model once on validation and once on test."""
    started = time.perf_counter()
    with whole_run(config, seed, data_cache, controller=controller) as trainer:
        val_loss, val_acc = trainer.evaluate()
        has_test = trainer.test_x is not None
        test_loss, test_acc = trainer.evaluate("test") if has_test else (val_loss, val_acc)
        _, higher = metric_name(config.task)
        return RunResult(
            controller=name,
            seed=seed,
            metric=float(test_acc if higher else test_loss),
            quality=quality(trainer.model.topology, val_loss, val_acc),
            total_params=trainer.model.count_parameters()["total"],
            germinated=trainer.seed_counter,
            fossilized=fossilized(trainer),
            wall_seconds=round(time.perf_counter() - started, 3),
        )


# -- many runs, on one process or several ------------------------------------------------------

#: The controllers an evaluation can run, in the order tables list them. ``bc`` is the policy
#: as behaviour cloning left it, before PPO (for a policy warm-started that way).
CONTROLLERS = ("static", "random", "heuristic", "tuned", "bc", "ppo")
#: The controllers that run a policy file.
POLICY_CONTROLLERS = ("bc", "ppo")


@dataclass(frozen=True)
class ControllerJob:
    """One run to evaluate: the controller's name, the seed, and for ``tuned`` the heuristic's
    configuration (:func:`heuristic_config_to_dict`)."""

    name: str
    seed: int
    heuristic: dict | None = None


def make_controller(job: ControllerJob, config: EpisodeConfig, policies: dict[str, Policy]):
    """The controller ``job`` names, for a run of ``config`` (None for the static host).
    ``policies`` holds the policy each of :data:`POLICY_CONTROLLERS` runs; ``random`` samples
    ``ppo``'s action space when there is one.

    Raises:
        ValueError: an unknown name, a policy controller without its policy, or ``tuned``
            without a config.
    """
    topology = get_task(config.task).topology
    if job.name == "static":
        return None
    if job.name == "random":
        policy = policies.get("ppo")
        layout = policy.layout if policy is not None else config.default_layout()
        return MaskedRandomController(layout, job.seed)
    if job.name == "heuristic":
        return HeuristicController(topology, config.heuristic_config(), seed=job.seed)
    if job.name == "tuned":
        if job.heuristic is None:
            raise ValueError("a tuned run needs its heuristic configuration")
        return HeuristicController(topology, heuristic_config_from_dict(job.heuristic), job.seed)
    if job.name in POLICY_CONTROLLERS:
        if job.name not in policies:
            raise ValueError(f"a {job.name} run needs a policy")
        return PolicyController(policies[job.name])
    raise ValueError(f"unknown controller {job.name!r}; valid: {', '.join(CONTROLLERS)}")


#: The worker process's run configuration, policy and data (set once per worker process).
_WORKER: dict = {}


def _start_worker(config: EpisodeConfig, policy_paths: dict[str, str]) -> None:
    torch.set_num_threads(config.threads)
    policies = {name: Policy.load(path) for name, path in policy_paths.items()}
    _WORKER.update(config=config, policies=policies, data={})


def _run_in_worker(job: ControllerJob) -> RunResult:
    config, policies = _WORKER["config"], _WORKER["policies"]
    return run_controller(
        config, job.seed, job.name, make_controller(job, config, policies), _WORKER["data"]
    )


class EvaluationWorkers:
    """Runs :class:`ControllerJob` s on ``workers`` processes (in this process when 1). A run
    depends only on its job, never on the process that ran it, so the results are the same
    for any number of workers.

    Args:
        config: the run every job trains.
        policy_paths: the policy file each of :data:`POLICY_CONTROLLERS` runs (``ppo``'s also
            gives ``random`` its action space); leave out those no job needs.
        workers: processes; each runs ``config.threads`` torch threads.
    """

    def __init__(
        self,
        config: EpisodeConfig,
        policy_paths: dict[str, str | Path] | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        paths = {name: str(path) for name, path in (policy_paths or {}).items()}
        self.config = config
        self._pool = None
        if workers == 1:
            self._policies = {name: Policy.load(path) for name, path in paths.items()}
            self._data: dict = {}
        else:
            # spawn, not fork: a forked child would inherit this process's torch thread pool.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(workers, initializer=_start_worker, initargs=(config, paths))

    def run(self, jobs: Sequence[ControllerJob]) -> Iterator[RunResult]:
        """The jobs' results, in job order, each as soon as it and those before it are done."""
        if self._pool is not None:
            yield from self._pool.imap(_run_in_worker, list(jobs))
            return
        for job in jobs:
            controller = make_controller(job, self.config, self._policies)
            yield run_controller(self.config, job.seed, job.name, controller, self._data)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> EvaluationWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def paired_bootstrap(
    better: Sequence[float], other: Sequence[float], higher_is_better: bool, seed: int = 0
) -> tuple[float, float, float]:
    """Mean paired improvement of ``better`` over ``other`` (positive: ``better`` wins) and its
    95% bootstrap interval (10,000 resamples of the seeds)."""
    a, b = np.asarray(better, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired_bootstrap needs two equally long, non-empty lists")
    diff = a - b if higher_is_better else b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(diff.size, size=(10_000, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


# -- the heuristic tuned by random search ------------------------------------------------------


def sample_heuristic_config(
    rng: random.Random,
    blueprints: Sequence[str],
    *,
    growth_patience: int = DEFAULT_GROWTH_PATIENCE,
) -> HeuristicConfig:
    """One point of the tuner's search space: every timing, cull and blueprint setting of
    :class:`HeuristicConfig`, at ``growth_patience``."""
    chosen = tuple(b for b in blueprints if rng.random() < 0.6) or (rng.choice(blueprints),)
    return HeuristicConfig(
        growth_patience=growth_patience,
        min_epochs_before_germination=rng.randint(2, 12),
        plateau_epochs=rng.randint(2, 6),
        cull_after_epochs=rng.randint(3, 8),
        cull_if_accuracy_drops=rng.uniform(0.5, 5.0),
        cull_stalled_after_epochs=rng.randint(4, 12),
        blueprint_cull_penalty=rng.uniform(0.5, 3.0),
        blueprints=chosen,
        slot_order=rng.choice(SLOT_ORDERS),
        timing=rng.choice(TIMINGS),
        relative_share=rng.uniform(0.05, 0.4),
    )


def tune_heuristic(
    config: EpisodeConfig,
    budget: int,
    train_seeds: Sequence[int],
    *,
    seeds_per_config: int = 4,
    rent: float = DEFAULT_PARAMETER_RENT,
    seed: int = 0,
    baselines: BaselineCache | None = None,
    on_trial: Callable[[dict], None] | None = None,
    workers: EvaluationWorkers | None = None,
) -> tuple[HeuristicConfig, list[dict]]:
    """Random search over :class:`HeuristicConfig` with ``budget`` training runs in all, scored
    on training seeds by the learned policy's own objective (validation quality against the
    static host, minus rent per added parameter). The default config is the first trial. With
    ``workers``, a trial's runs go to them (the result is the same).

    Returns:
        The best config and every trial (config and score).
    """
    if budget < seeds_per_config:
        raise ValueError(f"a budget of {budget} runs cannot test one config on {seeds_per_config}")
    layout = config.default_layout()
    rng = random.Random(seed)
    baselines = baselines or BaselineCache()
    own = workers is None
    workers = EvaluationWorkers(config) if own else workers
    trials: list[dict] = []
    default = config.heuristic_config()
    best: tuple[float, HeuristicConfig] = (float("-inf"), default)
    for t in range(budget // seeds_per_config):
        candidate = (
            default
            if t == 0
            else sample_heuristic_config(
                rng, layout.blueprints, growth_patience=default.growth_patience
            )
        )
        seeds = [rng.choice(list(train_seeds)) for _ in range(seeds_per_config)]
        raw = heuristic_config_to_dict(candidate)
        scores = []
        for result in workers.run([ControllerJob("tuned", s, raw) for s in seeds]):
            static = baselines.get(config, result.seed)
            scores.append(
                result.quality - static.final - rent * (result.total_params - static.host_params)
            )
        score = float(np.mean(scores))
        trial = {
            "trial": t,
            "score": score,
            "seeds": seeds,
            "config": raw,
        }
        trials.append(trial)
        if on_trial is not None:
            on_trial(trial)
        if score > best[0]:
            best = (score, candidate)
    if own:
        workers.close()
    return best[1], trials


def heuristic_config_to_dict(config: HeuristicConfig) -> dict:
    """A config as JSON-ready data (for ``tuning.json``)."""
    raw = asdict(config)
    raw["blueprints"] = list(raw["blueprints"]) if raw["blueprints"] else None
    return raw


def heuristic_config_from_dict(raw: dict) -> HeuristicConfig:
    values = dict(raw)
    if values.get("blueprints") is not None:
        values["blueprints"] = tuple(values["blueprints"])
    return HeuristicConfig(**values)

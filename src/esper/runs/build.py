"""The one place a run is assembled: :func:`build_run`.

``esper train`` (new and resumed runs), Simic's episodes and the benchmarks all build their
runs here, so a run with no growth is the static run bit for bit wherever it was made. What a
mode adds (the heuristic, or a learned policy) is chosen here too; the policy's own code lives
in :mod:`esper.simic` and is imported by name only when a ``ppo`` run needs it, so the import
graph keeps one direction (runs below simic).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from esper.kasmina import MorphogeneticModel
from esper.runs.errors import UsageError
from esper.runs.spec import RunSpec
from esper.tamiyo import HeuristicConfig, HeuristicController
from esper.tolaria import distributed as ranks
from esper.tolaria.config import TrainerConfig
from esper.tolaria.data import TaskData
from esper.tolaria.tasks import TaskSpec, build_task_host, get_task, widen_task
from esper.tolaria.trainer import Trainer

#: Where a ``ppo`` run's policy code lives (imported when such a run is built).
POLICY_MODULE = "esper.simic.policy"
#: Offset between ranks' seeds after the model is built (each rank then draws its own dropout
#: and seed-initialisation numbers; a new seed is rank 0's anyway: DDP broadcasts it).
RANK_SEED_STRIDE = 7919


class _FromMode:
    def __repr__(self) -> str:
        return "the mode's controller"


#: ``build_run(controller=...)``'s default: the controller the spec's mode calls for.
FROM_MODE = _FromMode()


@dataclass
class BuiltRun:
    """A run as :func:`build_run` assembled it, ready to train.

    Attributes:
        spec: the resolved spec (every ``None`` that meant a default is filled in).
        task: the task it trains.
        data: the task's data for the spec's seed.
        model: the morphogenetic model over the task's host.
        trainer: the trainer over ``model`` (its controller is the mode's unless overridden).
        policy: a ``ppo`` run's policy (None otherwise).
    """

    spec: RunSpec
    task: TaskSpec
    data: TaskData
    model: MorphogeneticModel
    trainer: Trainer
    policy: object | None = None


def load_policy(spec: RunSpec, slots: tuple[str, ...]):
    """A ``ppo`` run's policy and where it came from: ``spec.policy``, or the one shipped for
    the task.

    Raises:
        UsageError: it is missing, damaged or made for another run (one line).
    """
    module = importlib.import_module(POLICY_MODULE)
    task = get_task(spec.task)
    where = Path(spec.policy) if spec.policy is not None else module.shipped_policy_path(task.name)
    if spec.policy is None and not where.is_file():
        raise UsageError(
            f"no policy is shipped for task {task.name!r}; train one with `esper simic train "
            f"--task {task.name} --episodes N --out POLICY` and pass --policy POLICY"
        )
    try:
        policy = module.Policy.load(where)
        policy.check_fits(task.name, task.topology, slots, str(where))
    except module.PolicyError as exc:
        raise UsageError(str(exc)) from None
    return policy, where


def resolve_spec(spec: RunSpec) -> RunSpec:
    """``spec`` with every default filled in: the task's, or in mode ``ppo`` the settings the
    policy was trained with (epochs, width, shadow stride) where the spec leaves them open.

    Raises:
        UsageError: a ``ppo`` run whose policy cannot drive it.
    """
    task = get_task(spec.task)
    slots = spec.slots or task.slots
    trained: dict = {}
    policy = spec.policy
    if spec.mode == "ppo":
        found, where = load_policy(spec, slots)
        trained, policy = found.episode, str(where)
    return replace(
        spec,
        slots=tuple(slots),
        epochs=spec.epochs or trained.get("epochs") or task.epochs,
        width_multiplier=float(spec.width_multiplier or trained.get("width_multiplier", 1.0)),
        shadow_every=spec.shadow_every or trained.get("shadow_every") or task.shadow_every,
        batch_size=spec.batch_size or task.batch_size,
        lr=spec.lr or task.lr,
        seed_init=spec.seed_init or task.seed_init,
        policy=policy,
    )


def seed_learning_rate(task: TaskSpec, lr: float) -> float:
    """The seeds' rate for a host trained at ``lr``: the task's seed rate, scaled by the same
    factor as the host's (a tuned host rate keeps the task's ratio between the two)."""
    if lr == task.lr:
        return task.seed_lr  # exactly the task's: no rounding through a ratio of 1
    return task.seed_lr * (lr / task.lr)


def trainer_config(spec: RunSpec, task: TaskSpec) -> TrainerConfig:
    """How the trainer trains a resolved spec: the task's settings, overridden by the spec's."""
    return TrainerConfig(
        optimizer=task.optimizer,
        lr=spec.lr,
        seed_lr=seed_learning_rate(task, spec.lr),
        batch_size=spec.batch_size,
        epoch_samples=task.epoch_samples,
        total_epochs=spec.epochs,
        telemetry_stride=spec.gradient_telemetry_stride,
        shadow_every=spec.shadow_every,
        seed=spec.seed,
        max_seeds=spec.max_seeds,
        compile=spec.compile,
    )


def mode_controller(spec: RunSpec, policy=None):
    """The controller a resolved spec's mode calls for (None in mode ``static``), and a
    ``ppo`` run's policy."""
    if spec.mode == "heuristic":
        config = HeuristicConfig(
            blueprints=spec.blueprints,
            blend_algorithm=spec.blend,
            timing=spec.timing,
            growth_patience=spec.growth_patience,
        )
        return HeuristicController(get_task(spec.task).topology, config, seed=spec.seed), None
    if spec.mode == "ppo":
        if policy is None:
            policy, _ = load_policy(spec, spec.slots)
        return importlib.import_module(POLICY_MODULE).PolicyController(policy), policy
    return None, None


def _load_data(task: TaskSpec, spec: RunSpec, cache: dict | None) -> TaskData:
    if cache is not None and spec.seed in cache:
        return cache[spec.seed]
    data = task.load(Path(spec.data_dir) if spec.data_dir else None, spec.seed)
    if cache is not None:
        cache.clear()  # one seed's tensors at a time
        cache[spec.seed] = data
    return data


def _build_host(spec: RunSpec, task: TaskSpec, data: TaskData):
    host = build_task_host(widen_task(task, spec.width_multiplier), data)
    bad = [s for s in spec.slots if s not in host.injection_points]
    if bad:
        raise UsageError(
            f"unknown slot {bad[0]!r} for task {spec.task!r}; "
            f"valid: {', '.join(host.injection_points)}"
        )
    return host


def build_run(
    spec: RunSpec,
    *,
    architecture: dict | None = None,
    controller=FROM_MODE,
    policy=None,
    hub=None,
    prepare: Callable[[MorphogeneticModel], None] | None = None,
    data_cache: dict | None = None,
) -> BuiltRun:
    """Assemble the run ``spec`` describes: threads, seeding, data, the (widened) host, the
    model, the mode's controller and the trainer. Nothing is written to disk.

    Args:
        spec: the run; its defaults are resolved here (:func:`resolve_spec`).
        architecture: a checkpoint's ``model.architecture()`` to rebuild (a resumed run, seeds
            included) instead of a fresh host.
        controller: who decides; by default the mode's. None: decisions come through
            ``trainer.apply`` (Simic's environment).
        policy: a ``ppo`` run's policy when the caller has loaded it already.
        hub: the telemetry hub the trainer emits to (None: no events).
        prepare: changes the model (for example puts seeds in it) before the trainer and its
            optimizers are built.
        data_cache: a dict that keeps one seed's data between builds (Simic's episodes).

    Raises:
        UsageError: an unknown slot, or a ``ppo`` run without a policy that fits.
        DataNotFoundError: the task's local data is missing.
    """
    spec = resolve_spec(spec)
    task = get_task(spec.task)
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    data = _load_data(task, spec, data_cache)
    host = None if architecture is not None else _build_host(spec, task, data)
    # The controller comes after the host: a policy's network draws from the same generator,
    # and the host's initial weights must not depend on the mode.
    if controller is FROM_MODE:
        controller, policy = mode_controller(spec, policy)
    if host is None:
        model = MorphogeneticModel.from_architecture(architecture, device=spec.device)
    else:
        model = MorphogeneticModel(host, device=spec.device, slots=spec.slots)
        context = ranks.DistContext.current()
        if context is not None and not context.is_main:
            # Every rank built the same model from the same seed; from here each draws its own.
            torch.manual_seed(spec.seed + RANK_SEED_STRIDE * context.rank)
    model.set_seed_init(spec.seed_init)
    if prepare is not None:
        prepare(model)
    trainer = Trainer(model, data, trainer_config(spec, task), controller=controller, hub=hub)
    return BuiltRun(spec, task, data, model, trainer, policy)

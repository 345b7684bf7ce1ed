"""The task registry: what to train (data, host, optimiser, schedule) under one name.

A :class:`TaskSpec` is plain data plus a loader; :func:`get_task` looks one up by name and
:func:`build_task_host` builds its host sized to the loaded data. New tasks are added with
:func:`register_task`, never with ``if name == ...`` chains.

Built-in tasks: ``digits`` (the default, scikit-learn's bundled 8x8 digits, CNN), ``pyref``
(character LM on CPython's bundled reference docs, transformer), ``cifar10`` and
``tinystories`` (local files; see :mod:`esper.tolaria.data`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from esper.kasmina.hosts import build_host
from esper.leyline import (
    DEFAULT_SEED_INIT,
    DEFAULT_SHADOW_EVERY,
    SEED_INITS,
    TOPOLOGIES,
    get_topology,
)
from esper.tolaria.data import (
    TaskData,
    load_cifar10_data,
    load_digits_data,
    load_pyref_data,
    load_tinystories_data,
)
from esper.tolaria.fashion import load_fashion_data
from esper.tolaria.optim import OPTIMIZERS
from esper.tolaria.pystd import load_pystd_data

DEFAULT_TASK = "digits"


@dataclass(frozen=True)
class TaskSpec:
    """Everything a training run needs to know about one task.

    Attributes:
        name: registry key (what ``--task`` takes).
        description: one line for help texts.
        topology: ``"cnn"`` or ``"transformer"``: which host class ``host_config`` is for.
        host_config: keyword arguments for ``CNNHost`` / ``TransformerHost``. The output size
            (``num_classes`` / ``vocab_size``) is filled in from the data by
            :func:`build_task_host`. Treat as read-only: it is copied, never mutated.
        epochs: default training epochs.
        batch_size: default batch size.
        optimizer: ``"sgd"`` or ``"adamw"``, for the host parameters.
        lr: host learning rate.
        seed_lr: learning rate for seed parameters.
        slots: default injection points (names in the host's ``injection_points``).
        needs_data_dir: the loader reads local files, so a data directory must be given.
        loader: ``(data_dir, seed) -> TaskData``; deterministic for a given seed.
        epoch_samples: training rows per epoch, drawn afresh from the pool each epoch; ``None``
            means a full pass. Language-model tasks use it so that an epoch (the unit of the
            seed lifecycle) is short while the data never repeats much.
        shadow_every: training steps between an incubating seed's shadow passes (see
            ``TrainerConfig.shadow_every``).
        seed_init: how a new seed's output layer starts (``SEED_INITS``: ``zero`` or
            ``computed``; see ``esper.kasmina.computed_init``).
    """

    name: str
    description: str
    topology: str
    host_config: dict
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    seed_lr: float
    slots: tuple[str, ...]
    needs_data_dir: bool
    loader: Callable[[Path | None, int], TaskData]
    epoch_samples: int | None = None
    shadow_every: int = DEFAULT_SHADOW_EVERY
    seed_init: str = DEFAULT_SEED_INIT

    def __post_init__(self) -> None:
        where = f"TaskSpec {self.name!r}"
        if not self.name:
            raise ValueError("TaskSpec: name must be a non-empty string")
        if self.topology not in TOPOLOGIES:
            raise ValueError(
                f"{where}: topology must be one of {TOPOLOGIES}, got {self.topology!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"{where}: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"
            )
        for field_name in ("epochs", "batch_size", "shadow_every"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {field_name} must be an integer >= 1, got {value!r}")
        if self.seed_init not in SEED_INITS:
            raise ValueError(
                f"{where}: seed_init must be one of {SEED_INITS}, got {self.seed_init!r}"
            )
        for field_name in ("lr", "seed_lr"):
            if not getattr(self, field_name) > 0:
                raise ValueError(
                    f"{where}: {field_name} must be > 0, got {getattr(self, field_name)}"
                )
        if not self.slots or not isinstance(self.slots, tuple):
            raise ValueError(f"{where}: slots must be a non-empty tuple, got {self.slots!r}")
        if self.epoch_samples is not None and (
            not isinstance(self.epoch_samples, int) or self.epoch_samples < 1
        ):
            raise ValueError(
                f"{where}: epoch_samples must be None or >= 1, got {self.epoch_samples!r}"
            )
        if not callable(self.loader):
            raise TypeError(f"{where}: loader must be callable (data_dir, seed) -> TaskData")

    def load(self, data_dir: Path | str | None = None, seed: int = 0) -> TaskData:
        """Load this task's data.

        Args:
            data_dir: local data location (ignored by tasks with bundled data).
            seed: fixes the split and sampling.

        Returns:
            The task's :class:`TaskData`.

        Raises:
            DataNotFoundError: the task needs local files that are not there.
        """
        return self.loader(None if data_dir is None else Path(data_dir), seed)


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task to the registry.

    Args:
        spec: the task.
        replace: allow overwriting a task of the same name.

    Returns:
        ``spec``, so this can be used inline.

    Raises:
        TypeError: ``spec`` is not a :class:`TaskSpec`.
        ValueError: the name is taken and ``replace`` is false.
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task expects a TaskSpec, got {type(spec).__name__}")
    if spec.name in _TASKS and not replace:
        raise ValueError(f"task {spec.name!r} is already registered; pass replace=True to override")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """Look a task up by name.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(list_tasks())}") from None


def list_tasks() -> list[str]:
    """Names of the registered tasks, sorted."""
    return sorted(_TASKS)


def widen_task(spec: TaskSpec, factor: float) -> TaskSpec:
    """The task with its host's width multiplied by ``factor`` (a static host of another size,
    for comparisons at equal parameters or compute); ``factor`` 1 is the task itself."""
    if factor == 1.0:
        return spec
    return replace(spec, host_config=get_topology(spec.topology).widen(spec.host_config, factor))


def build_task_host(spec: TaskSpec, data: TaskData) -> nn.Module:
    """Build the task's host with its output sized to the data.

    Args:
        spec: the task.
        data: its loaded data; ``num_classes`` sets the host's classes or vocabulary.

    Returns:
        A fresh ``CNNHost`` or ``TransformerHost`` (``host.config`` holds the full arguments).

    Raises:
        ValueError: the data does not fit the host (channels, sequence length) or a default
            slot is not one of the host's injection points.
    """
    config = dict(spec.host_config)
    topology = get_topology(spec.topology)
    config[topology.output_key] = data.num_classes
    if topology.layout == "BTC":
        seq_len = data.train_x.shape[1]
        if seq_len > config.get("block_size", seq_len):
            raise ValueError(
                f"task {spec.name!r}: windows of {seq_len} tokens exceed the host's "
                f"block_size {config['block_size']}"
            )
    else:
        channels = data.train_x.shape[1]
        if channels != config.get("in_channels", channels):
            raise ValueError(
                f"task {spec.name!r}: data has {channels} channels but the host expects "
                f"in_channels={config['in_channels']}"
            )
    host = build_host(spec.topology, config)
    missing = [s for s in spec.slots if s not in host.injection_points]
    if missing:
        raise ValueError(
            f"task {spec.name!r}: slots {missing} are not injection points of the host; "
            f"valid: {list(host.injection_points)}"
        )
    return host


_SLOTS = ("early", "mid", "late")

register_task(
    TaskSpec(
        name="digits",
        description="8x8 handwritten digits bundled with scikit-learn (1797 images), small CNN",
        topology="cnn",
        # Deliberately small (~1.7k parameters) so there is headroom for seeds to add capacity.
        host_config={"n_blocks": 3, "base_channels": 4, "pool_layers": 2, "in_channels": 1},
        epochs=45,
        batch_size=64,
        optimizer="sgd",
        lr=0.05,
        seed_lr=0.05,
        slots=_SLOTS,
        needs_data_dir=False,
        loader=load_digits_data,
        # The host is cheap and already fits the task, so a seed's shadow pass (most of a host
        # step for a seed at ``early``) was most of what growth cost. Every 4th step, seeds 0-2:
        # grown test accuracy 97.49 (97.21 on every step), training compute 4.3 GFLOP (5.2).
        shadow_every=4,
    )
)

register_task(
    TaskSpec(
        name="pyref",
        description="character LM on the Python reference docs bundled with CPython, transformer",
        topology="transformer",
        host_config={"n_embd": 48, "n_head": 4, "n_layer": 1, "block_size": 64, "dropout": 0.0},
        epochs=60,
        batch_size=64,
        optimizer="adamw",
        lr=3e-3,
        seed_lr=3e-3,
        # Only after the block: in a 1-layer host early and mid both sit right after the
        # embedding, where seeds cost parameters without lowering the loss (measured: three
        # seeds there and late, 68k params, val loss 1.429; one late seed, 55k params, 1.392).
        slots=("late",),
        needs_data_dir=False,
        loader=load_pyref_data,
        epoch_samples=2048,
    )
)

register_task(
    TaskSpec(
        name="fashion",
        description="Fashion-MNIST from Debian's dataset-fashion-mnist package (28x28), CNN",
        topology="cnn",
        # Measured on the 2-core machine, 1 thread: the static host reaches 87.0% test accuracy
        # in 30 epochs of 8,192 sampled images, about 40 s of training.
        host_config={"n_blocks": 3, "base_channels": 8, "pool_layers": 2, "in_channels": 1},
        epochs=30,
        batch_size=128,
        optimizer="sgd",
        lr=0.05,
        seed_lr=0.05,
        slots=_SLOTS,
        needs_data_dir=False,
        loader=load_fashion_data,
        epoch_samples=8192,
    )
)

register_task(
    TaskSpec(
        name="pystd",
        description="byte-level LM on the running Python's standard library source, transformer",
        topology="transformer",
        # About 2 s per epoch of 2,048 windows on one CPU thread: a run takes a minute or two.
        host_config={"n_embd": 64, "n_head": 4, "n_layer": 2, "block_size": 64, "dropout": 0.0},
        epochs=40,
        batch_size=64,
        optimizer="adamw",
        lr=3e-3,
        seed_lr=3e-3,
        # After the blocks only, as for pyref: seeds right after the embedding bought nothing.
        slots=("mid", "late"),
        needs_data_dir=False,
        loader=load_pystd_data,
        epoch_samples=2048,
    )
)

register_task(
    TaskSpec(
        name="cifar10",
        description="CIFAR-10 from a local cifar-10-batches-py folder, CNN",
        topology="cnn",
        host_config={"n_blocks": 3, "base_channels": 32, "pool_layers": 3, "in_channels": 3},
        epochs=30,
        batch_size=128,
        optimizer="sgd",
        lr=0.05,
        seed_lr=0.05,
        slots=_SLOTS,
        needs_data_dir=True,
        loader=load_cifar10_data,
    )
)

register_task(
    TaskSpec(
        name="tinystories",
        description="character LM on a local TinyStories text file (first ~5 MB), transformer",
        topology="transformer",
        host_config={"n_embd": 64, "n_head": 4, "n_layer": 2, "block_size": 128, "dropout": 0.0},
        epochs=25,
        batch_size=64,
        optimizer="adamw",
        lr=3e-3,
        seed_lr=3e-3,
        slots=_SLOTS,
        needs_data_dir=True,
        loader=load_tinystories_data,
    )
)

__all__ = [
    "DEFAULT_TASK",
    "TaskSpec",
    "build_task_host",
    "get_task",
    "list_tasks",
    "register_task",
]

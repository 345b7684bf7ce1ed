"""The trainer's configuration as data: every number the loop uses, with leyline defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from esper.leyline import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EVAL_BATCH_SIZE,
    DEFAULT_GOVERNOR_HISTORY,
    DEFAULT_GOVERNOR_MIN_HISTORY,
    DEFAULT_GOVERNOR_MIN_SPIKE_FACTOR,
    DEFAULT_GOVERNOR_SENSITIVITY,
    DEFAULT_GRADIENT_TELEMETRY_STRIDE,
    DEFAULT_LEARNING_RATE,
    DEFAULT_LR_FLOOR,
    DEFAULT_MOMENTUM,
    DEFAULT_SEED_LEARNING_RATE,
    DEFAULT_SHADOW_EVERY,
    LR_SCHEDULES,
)
from esper.tolaria.optim import OPTIMIZERS


def check_compile_backend(name: str, unknown: str) -> None:
    """Raise ValueError ("``unknown`` 'name'; valid: ...") unless ``name`` is a
    ``torch.compile`` backend this torch has."""
    import torch._dynamo  # imported here: most runs never compile

    backends = torch._dynamo.list_backends(exclude_tags=())
    if name not in backends:
        raise ValueError(f"{unknown} {name!r}; valid: {', '.join(backends)}")


@dataclass(frozen=True)
class TrainerConfig:
    """How a :class:`~esper.tolaria.trainer.Trainer` trains; saved in ``config.json``.

    Attributes:
        optimizer: ``"sgd"`` or ``"adamw"``, for host and seeds alike.
        lr: the host's base learning rate (fossilized seeds join the host at this rate).
        seed_lr: base learning rate of live seeds.
        momentum: SGD momentum.
        weight_decay: None for the optimizer's leyline default (SGD 5e-4, AdamW 0.01).
        batch_size: training batch size.
        eval_batch_size: batch size of validation and counterfactual passes.
        epoch_samples: training rows per epoch, a fresh random sample each epoch (None: all).
        total_epochs: the run's length; the cosine schedule spans it.
        lr_schedule: ``"cosine"`` (decay to ``lr_floor`` of the base over ``total_epochs``) or
            ``"constant"``.
        lr_floor: the cosine schedule's end, as a fraction of the base rate.
        telemetry_stride: capture seed gradient telemetry every this many steps (0: never).
        shadow_every: run the shadow pass of seeds in TRAINING every this many steps (1: every
            step). Between them the step trains the host alone and incubating seeds get no
            gradient; a telemetry capture step always runs it. A seed near the input pays
            most of a host step for its shadow pass, so on a host that is cheap to train this
            is where a grown run's extra compute goes.
        seed: fixes the batch order.
        governor_history, governor_sensitivity, governor_min_spike_factor,
        governor_min_history: the governor's loss-spike detector (see ``Governor``).
        max_seeds: the most seeds one run may germinate (None: no bound); a GERMINATE past it
            is refused.
        compile: a ``torch.compile`` backend (``"inductor"``, ``"aot_eager"``, ...) for the
            training and evaluation passes, or None to run eagerly. Each lifecycle change costs
            one recompilation; the recompile limit is raised for the trainer's passes only.
    """

    optimizer: str = "sgd"
    lr: float = DEFAULT_LEARNING_RATE
    seed_lr: float = DEFAULT_SEED_LEARNING_RATE
    momentum: float = DEFAULT_MOMENTUM
    weight_decay: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE
    epoch_samples: int | None = None
    total_epochs: int | None = None
    lr_schedule: str = "cosine"
    lr_floor: float = DEFAULT_LR_FLOOR
    telemetry_stride: int = DEFAULT_GRADIENT_TELEMETRY_STRIDE
    shadow_every: int = DEFAULT_SHADOW_EVERY
    seed: int = 0
    governor_history: int = DEFAULT_GOVERNOR_HISTORY
    governor_sensitivity: float = DEFAULT_GOVERNOR_SENSITIVITY
    governor_min_spike_factor: float = DEFAULT_GOVERNOR_MIN_SPIKE_FACTOR
    governor_min_history: int = DEFAULT_GOVERNOR_MIN_HISTORY
    max_seeds: int | None = None
    compile: str | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"TrainerConfig.optimizer: unknown {self.optimizer!r}; valid: "
                f"{', '.join(OPTIMIZERS)}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"TrainerConfig.lr_schedule: unknown {self.lr_schedule!r}; valid: "
                f"{', '.join(LR_SCHEDULES)}"
            )
        for name in ("lr", "seed_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainerConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("batch_size", "eval_batch_size", "governor_history", "shadow_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainerConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("telemetry_stride", "governor_min_history", "momentum"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainerConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ValueError(f"TrainerConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_seeds is not None and self.max_seeds < 0:
            raise ValueError(f"TrainerConfig.max_seeds must be None or >= 0, got {self.max_seeds}")
        for name in ("epoch_samples", "total_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainerConfig.{name} must be None or >= 1, got {value}")
        if self.compile is not None:
            check_compile_backend(self.compile, "TrainerConfig.compile: unknown backend")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise ValueError(f"TrainerConfig.lr_floor must be in [0, 1], got {self.lr_floor}")

    def lr_factor(self, epoch: int) -> float:
        """The learning-rate multiplier for (1-based) ``epoch``."""
        if self.lr_schedule == "constant" or not self.total_epochs:
            return 1.0
        progress = min(1.0, (epoch - 1) / self.total_epochs)
        return self.lr_floor + (1.0 - self.lr_floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainerConfig:
        """Rebuild from :meth:`to_dict` output. Raises ValueError naming an unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"TrainerConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**raw)

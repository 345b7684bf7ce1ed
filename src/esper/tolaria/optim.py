"""Optimizers for host and seeds: seeds come and go without touching the host's optimizer state."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from esper.leyline import DEFAULT_MOMENTUM, DEFAULT_WEIGHT_DECAY

OPTIMIZERS = ("sgd", "adamw")


def make_optimizer(kind: str, params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Build an optimizer by name. Raises ValueError naming the valid kinds."""
    params = list(params)
    if kind == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=DEFAULT_MOMENTUM, weight_decay=DEFAULT_WEIGHT_DECAY
        )
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    raise ValueError(f"unknown optimizer {kind!r}; valid: {', '.join(OPTIMIZERS)}")


class GrowthOptimizers:
    """The host optimizer plus one optimizer per live seed.

    Germinating adds a seed optimizer; culling drops it with its state; fossilizing moves the
    seed's parameters into a new parameter group of the host optimizer. None of these touches the
    state (momentum, Adam moments) the host optimizer already holds.
    """

    def __init__(self, kind: str, host_params: Iterable[nn.Parameter], lr: float, seed_lr: float):
        self.kind = kind
        self.lr = lr
        self.seed_lr = seed_lr
        self.host = make_optimizer(kind, host_params, lr)
        self.seeds: dict[str, torch.optim.Optimizer] = {}
        self.lr_factor = 1.0

    def add_seed(self, slot: str, params: Iterable[nn.Parameter]) -> None:
        params = list(params)
        self.seeds.pop(slot, None)
        if params:
            self.seeds[slot] = make_optimizer(self.kind, params, self.seed_lr)
            self._apply_factor(self.seeds[slot])

    def drop_seed(self, slot: str) -> None:
        self.seeds.pop(slot, None)

    def fossilize_seed(self, slot: str, params: Iterable[nn.Parameter]) -> None:
        """Hand a fossilized seed's parameters to the host optimizer (a new group, host lr)."""
        self.seeds.pop(slot, None)
        params = list(params)
        if params:
            self.host.add_param_group({"params": params, "lr": self.lr})
            self._apply_factor(self.host)

    def set_lr_factor(self, factor: float) -> None:
        """Scale every group's learning rate to ``factor`` times its base (for a schedule)."""
        self.lr_factor = float(factor)
        for opt in (self.host, *self.seeds.values()):
            self._apply_factor(opt)

    def _apply_factor(self, opt: torch.optim.Optimizer) -> None:
        for group in opt.param_groups:
            group["lr"] = group.setdefault("base_lr", group["lr"]) * self.lr_factor

    def zero_grad(self) -> None:
        self.host.zero_grad(set_to_none=True)
        for opt in self.seeds.values():
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.host.step()
        for opt in self.seeds.values():
            opt.step()

    def reset_host_state(self) -> None:
        """Forget the host optimizer's state (after a governor rollback restores old weights)."""
        self.host.state.clear()

"""Optimizers for host and seeds: seeds come and go without touching the host's optimizer state."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from esper.leyline import DEFAULT_ADAMW_WEIGHT_DECAY, DEFAULT_MOMENTUM, DEFAULT_WEIGHT_DECAY

OPTIMIZERS = ("sgd", "adamw")


def default_weight_decay(kind: str) -> float:
    """The leyline default weight decay for optimizer ``kind``."""
    return DEFAULT_ADAMW_WEIGHT_DECAY if kind == "adamw" else DEFAULT_WEIGHT_DECAY


def make_optimizer(
    kind: str,
    params: Iterable[nn.Parameter] | Iterable[dict],
    lr: float,
    *,
    weight_decay: float | None = None,
    momentum: float = DEFAULT_MOMENTUM,
) -> torch.optim.Optimizer:
    """Build an optimizer by name.

    Args:
        kind: ``"sgd"`` or ``"adamw"``.
        params: parameters, or parameter-group dicts.
        lr: learning rate.
        weight_decay: None for the leyline default of ``kind``.
        momentum: SGD momentum (ignored by AdamW).

    Raises:
        ValueError: unknown ``kind``; the message names the valid ones.
    """
    params = list(params)
    decay = default_weight_decay(kind) if weight_decay is None else weight_decay
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay)
    raise ValueError(f"unknown optimizer {kind!r}; valid: {', '.join(OPTIMIZERS)}")


def _named_state(opt: torch.optim.Optimizer, names: Mapping[nn.Parameter, str]) -> dict:
    """``opt.state_dict()`` with every parameter index replaced by the parameter's name."""
    raw = opt.state_dict()
    index_to_name = {}
    groups = []
    for group, raw_group in zip(opt.param_groups, raw["param_groups"], strict=True):
        for p, idx in zip(group["params"], raw_group["params"], strict=True):
            index_to_name[idx] = names[p]
        groups.append({**raw_group, "params": [index_to_name[i] for i in raw_group["params"]]})
    state = {index_to_name[i]: s for i, s in raw["state"].items()}
    return {"param_groups": groups, "state": state}


def _load_named_state(
    kind: str, saved: dict, params: Mapping[str, nn.Parameter], **options
) -> torch.optim.Optimizer:
    """Rebuild an optimizer whose groups hold the named parameters, then load its state."""
    missing = [n for g in saved["param_groups"] for n in g["params"] if n not in params]
    if missing:
        raise ValueError(f"optimizer state names parameters the model lacks: {missing[:3]}")
    groups = [{"params": [params[n] for n in g["params"]]} for g in saved["param_groups"]]
    opt = make_optimizer(kind, groups, saved["param_groups"][0]["lr"], **options)
    index, raw_groups = {}, []
    for g in saved["param_groups"]:
        ids = [index.setdefault(n, len(index)) for n in g["params"]]
        raw_groups.append({**g, "params": ids})
    opt.load_state_dict(
        {"param_groups": raw_groups, "state": {index[n]: s for n, s in saved["state"].items()}}
    )
    return opt


class GrowthOptimizers:
    """The host optimizer plus one optimizer per live seed.

    Germinating adds a seed optimizer; culling drops it with its state; fossilizing moves the
    seed's parameters into a new parameter group of the host optimizer. None of these touches the
    state (momentum, Adam moments) the host optimizer already holds.

    Args:
        kind: ``"sgd"`` or ``"adamw"``.
        host_params: the host's parameters.
        lr, seed_lr: base learning rates of host and seeds.
        weight_decay: None for the leyline default of ``kind``.
        momentum: SGD momentum.
    """

    def __init__(
        self,
        kind: str,
        host_params: Iterable[nn.Parameter],
        lr: float,
        seed_lr: float,
        *,
        weight_decay: float | None = None,
        momentum: float = DEFAULT_MOMENTUM,
    ):
        self.kind = kind
        self.lr = lr
        self.seed_lr = seed_lr
        self.options = {"weight_decay": weight_decay, "momentum": momentum}
        self.host = make_optimizer(kind, host_params, lr, **self.options)
        self.seeds: dict[str, torch.optim.Optimizer] = {}
        self.lr_factor = 1.0

    def add_seed(self, slot: str, params: Iterable[nn.Parameter]) -> None:
        params = list(params)
        self.seeds.pop(slot, None)
        if params:
            self.seeds[slot] = make_optimizer(self.kind, params, self.seed_lr, **self.options)
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

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self, model: nn.Module) -> dict:
        """Every optimizer's state and parameter groups, keyed by the parameters' names in
        ``model`` (indices would not survive a model rebuilt in another order)."""
        names = {p: n for n, p in model.named_parameters()}
        return {
            "lr_factor": self.lr_factor,
            "host": _named_state(self.host, names),
            "seeds": {slot: _named_state(opt, names) for slot, opt in self.seeds.items()},
        }

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        """Rebuild every optimizer from ``state`` over ``model``'s parameters (matched by name).

        Raises:
            ValueError: the state names a parameter ``model`` does not have.
        """
        params = dict(model.named_parameters())
        self.host = _load_named_state(self.kind, state["host"], params, **self.options)
        self.seeds = {
            slot: _load_named_state(self.kind, saved, params, **self.options)
            for slot, saved in state["seeds"].items()
        }
        self.lr_factor = float(state["lr_factor"])

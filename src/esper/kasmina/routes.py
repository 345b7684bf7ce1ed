"""Routes: how a model's forward reaches its slots, for every kind of model.

A route is a forward hook on the module whose output is an injection point: it sends that
output's first element through the slots installed there, in order. What a slot does depends on
the owner's ``_route_mode``:

* ``None``: the normal forward (each slot as its stage says);
* a :class:`RouteTap` (the real pass of ``forward_with_shadows``): incubating slots record the
  features they see, and slots keeping features for a computed initialisation keep theirs;
* a :class:`RouteShadow` (a shadow replay): the incubating slot outputs its seed's features;
* :data:`BYPASS` (``disable_slots()``): features pass through, the host runs alone.

Built-in hosts (``MorphogeneticModel``) and models given slots by ``inject_slots`` install the
same routes; they differ only in how the shadow pass runs what follows a slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from esper.kasmina.slot import SeedSlot


@dataclass
class RouteTap:
    """The real pass of ``forward_with_shadows``: incubating slots record their features."""

    taps: list = field(default_factory=list)


@dataclass
class RouteShadow:
    """A shadow replay for ``slot``: its output is replaced by ``features``, its seed's output on
    the real pass's features, computed outside the replay so the seed's parameters stay live."""

    slot: SeedSlot
    features: torch.Tensor


class RouteBypass:
    """Inside ``disable_slots()``: every slot passes its features through untouched."""


class RoutedAs:
    """``with RoutedAs(owner, mode):`` the owner's slot routes work in ``mode``, and the mode
    before comes back when the block exits. A class, not a ``contextlib`` generator, and the
    mode set past ``nn.Module.__setattr__`` (it is no parameter, buffer or module): the real
    pass of every training step enters one, and those two cost more than the rest of it."""

    __slots__ = ("owner", "mode", "saved")

    def __init__(self, owner: nn.Module, mode) -> None:
        self.owner = owner
        self.mode = mode

    def __enter__(self) -> None:
        self.saved = self.owner._route_mode
        object.__setattr__(self.owner, "_route_mode", self.mode)

    def __exit__(self, *exc) -> None:
        object.__setattr__(self.owner, "_route_mode", self.saved)


class _SlotRoute:
    """The forward hook on one target: its output's first element through the target's slots,
    in order. ``owner`` is held in a tuple, as ``SeedSlot._owner`` is, so copies map it."""

    def __init__(self, target: str, slots: tuple[SeedSlot, ...], owner: nn.Module) -> None:
        self.target = target
        self.slots = slots
        self._owner = (owner,)

    def __call__(self, module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (self._through(output[0]), *output[1:])
        return self._through(output)

    def _through(self, h: torch.Tensor) -> torch.Tensor:
        mode = self._owner[0]._route_mode
        if mode is BYPASS:
            return h
        for slot in self.slots:
            if mode is None:
                h = slot(h)
            elif isinstance(mode, RouteShadow):
                h = mode.features if slot is mode.slot else slot(h)
            else:
                h = slot.forward_fossils(h)
                if slot.incubating:
                    mode.taps.append((slot, h))
                h = slot.forward_seed(h)
                if slot.init_memory is not None:
                    slot.remember(h)
        return h


def install_routes(owner: nn.Module, root: nn.Module, targets: dict[str, str]) -> None:
    """Put ``owner``'s slots on the outputs of ``root``'s modules, ``{slot name: module name}``
    in forward order (slots on one module run in that order), and attach them to ``owner``.
    The one mechanism by which every model, built-in or injected, reaches its slots."""
    by_target: dict[str, list[SeedSlot]] = {}
    for name, target in targets.items():
        by_target.setdefault(target, []).append(owner.seed_slots[name])
        # In a tuple, as the owner is: the module is the host's, not a child of the slot.
        owner.seed_slots[name]._target = (root.get_submodule(target),)
    for target, slots in by_target.items():
        root.get_submodule(target).register_forward_hook(_SlotRoute(target, tuple(slots), owner))
    for slot in owner.seed_slots.values():
        slot.attach(owner)


BYPASS = RouteBypass()


def strip_routes(module: nn.Module) -> nn.Module:
    """Remove every slot route from ``module``'s tree, in place, and return it: for a copy of a
    model's host that must run as the bare host (``copy.deepcopy(model.host)`` copies the
    routes, and the slots with them)."""
    for sub in module.modules():
        for key, hook in list(sub._forward_hooks.items()):
            if isinstance(hook, _SlotRoute):
                del sub._forward_hooks[key]
    return module

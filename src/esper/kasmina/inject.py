"""Seed slots in any ``nn.Module``: :func:`inject_slots` puts a slot after each targeted module.

A slot sits on its target's output through a forward hook, so the user's modules, forward and
``state_dict`` keys stay as they were; the slots live under ``model.seed_slots`` and the model
gains the API of :class:`~esper.kasmina.api.MorphogeneticMixin` (its class becomes a subclass of
its own class, as ``torch.distributed.fsdp.fully_shard`` does).

The shadow pass cannot start in the middle of an arbitrary forward, so it replays the whole
forward under ``torch.func.functional_call`` with every host tensor detached (buffers on copies):
the modules before the incubating slot recompute what the real pass computed, the slot's output
is replaced by its seed's output on the real pass's features (computed outside the replay, with
live seed parameters), and what follows runs as it would with the seed blended in at alpha 1.
Gradient reaches the seed alone, as in the built-in hosts' shadow pass; the replayed prefix is
the price of not knowing the forward's structure.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from esper.kasmina.api import SLOTS_ATTRIBUTE, MorphogeneticMixin
from esper.kasmina.gates import GateConfig
from esper.kasmina.routes import RouteShadow
from esper.leyline import (
    DEFAULT_BLENDING_STEPS,
    DEFAULT_EMBARGO_EPOCHS,
    DEFAULT_PROBATION_EPOCHS,
    TOPOLOGIES,
    get_topology,
)

#: Feature rank -> the topology whose layout it is (channels-first images, sequences, flat).
_TOPOLOGY_BY_RANK = {4: "cnn", 3: "transformer", 2: "mlp"}
#: Layout names a user may give instead of a topology.
_TOPOLOGY_BY_LAYOUT = {get_topology(t).layout: t for t in TOPOLOGIES}
#: Names the injected model gains; a model that already has one of them is refused.
_ADDED_ATTRIBUTES = (SLOTS_ATTRIBUTE, "slot_targets", "slot_settings")


class InjectionError(ValueError):
    """A target cannot take a slot; the message names it. The model was left unchanged."""


# ---------------------------------------------------------------------- the model


class InjectedModel(MorphogeneticMixin):
    """What :func:`inject_slots` adds to a model's class: the shadow pass over its own forward.

    Attributes:
        slot_targets: ``{slot name: dotted name of the module it follows}``, in forward order.
        slot_settings: the slots' lifecycle settings, as given to :func:`inject_slots`.
        topology: the slots' topology when they all share one, else ``"mixed"`` (unless the
            model had a ``topology`` of its own).
    """

    def forward_with_shadows(self, *args, **kwargs) -> tuple[object, dict[str, object]]:
        """``(self(*args, **kwargs), shadows)``: for every seed in TRAINING, the model's output
        with that seed blended in at alpha 1 and every host tensor detached (see the module's
        docstring). Train on ``loss(output) + model.incubation_loss(loss_fn, output, shadows)``.
        ``shadows`` is empty when no seed is in TRAINING or gradients are disabled."""
        output, taps = self._tapped_forward(*args, **kwargs)
        if not taps or not torch.is_grad_enabled():
            return output, {}
        frozen = self._frozen_tensors()
        shadows = {}
        for slot, features in taps:
            with self._routed(RouteShadow(slot, slot.shadow_features(features))):
                shadows[slot.name] = functional_call(
                    self, frozen, args, kwargs, strict=False, tie_weights=False
                )
        return output, shadows


class InjectedSequential(InjectedModel):
    """An injected ``nn.Sequential``: its forward runs, and ``len``, iteration and indexing
    see, its own layers only. Its children include the slots' container, which is not a layer.
    Changing the layers in place (``insert``, ``pop``, ``del``, item assignment, ``*=``) is
    refused: the slots' routes sit on the layers as they were injected."""

    def _layers(self) -> list[tuple[str, nn.Module]]:
        return [(k, m) for k, m in self._modules.items() if k != SLOTS_ATTRIBUTE]

    def __iter__(self):
        return iter([m for _, m in self._layers()])

    def __len__(self) -> int:
        return len(self._modules) - (SLOTS_ATTRIBUTE in self._modules)

    def __getitem__(self, idx):
        layers = self._layers()
        if isinstance(idx, slice):
            return nn.Sequential(OrderedDict(layers[idx]))
        if not -len(layers) <= idx < len(layers):
            raise IndexError(f"index {idx} is out of range")
        return layers[idx][1]

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            f"{type(self).__name__} has seed slots on its layers: change its layers before "
            "inject_slots (append and extend still work)"
        )

    insert = pop = __setitem__ = __delitem__ = __imul__ = _refuse


_INJECTED_CLASSES: dict[type, type] = {}


def _injected_class(cls: type) -> type:
    """One subclass per user class, so two injected models of a class share their type."""
    if cls not in _INJECTED_CLASSES:
        mixin = InjectedSequential if issubclass(cls, nn.Sequential) else InjectedModel
        _INJECTED_CLASSES[cls] = type(f"Morphogenetic{cls.__name__}", (mixin, cls), {})
    return _INJECTED_CLASSES[cls]


# ---------------------------------------------------------------------- injection


def _resolve_targets(model: nn.Module, targets) -> dict[str, str]:
    """``{slot name: module name}`` from a regex, a list of names or a ``{slot: module}`` map."""
    modules = dict(model.named_modules())
    modules.pop("", None)
    kind = type(model).__name__
    listed = ", ".join(list(modules)[:20]) + (", ..." if len(modules) > 20 else "")
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as exc:
            raise InjectionError(
                f"inject_slots: targets {targets!r} is not a regex: {exc}"
            ) from None
        found = {name: name for name in modules if pattern.fullmatch(name)}
        if not found:
            raise InjectionError(
                f"inject_slots: target regex {targets!r} matches no module of {kind}; "
                f"modules: {listed}"
            )
        return found
    if isinstance(targets, Mapping):
        resolved = {str(slot): str(target) for slot, target in targets.items()}
    elif isinstance(targets, Iterable):
        resolved = {str(t): str(t) for t in targets}
        if len(resolved) != len(list(targets)):
            raise InjectionError(f"inject_slots: targets repeat a name: {list(targets)}")
    else:
        raise InjectionError(
            "inject_slots: targets must be a regex, a list of module names or a "
            f"{{slot name: module name}} dict, got {type(targets).__name__}"
        )
    if not resolved:
        raise InjectionError("inject_slots: targets is empty; name at least one module")
    for slot, target in resolved.items():
        if target not in modules:
            raise InjectionError(
                f"inject_slots: target {target!r} matches no module of {kind}; modules: {listed}"
            )
        if not slot or "/" in slot:
            raise InjectionError(f"inject_slots: slot name {slot!r} must be non-empty, no '/'")
    return resolved


def _first_tensor(output) -> torch.Tensor | None:
    first = output[0] if isinstance(output, tuple) and output else output
    return first if isinstance(first, torch.Tensor) else None


def _probe(model: nn.Module, targets: set[str], example_input) -> dict[str, list]:
    """Run two forwards on ``example_input`` in eval mode without gradient and return, per
    target module, the shapes of its outputs (``None`` for an output that is not a tensor), in
    call order; the dict's order is the order targets first ran. The model's modes, buffers and
    RNG are untouched (eval mode draws no dropout)."""
    calls: dict[str, list] = {}
    handles = []
    for name, module in model.named_modules():
        if name in targets:

            def record(_module, _args, output, _name=name):
                first = _first_tensor(output)
                shape = (
                    tuple(first.shape) if first is not None and first.is_floating_point() else None
                )
                calls.setdefault(_name, []).append(shape)

            handles.append(module.register_forward_hook(record))
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            # Twice: a module whose output shape changes from one call to the next shows it
            # even when each forward calls it once.
            for _ in range(2):
                if isinstance(example_input, Mapping):
                    model(**example_input)
                elif isinstance(example_input, (tuple, list)):
                    model(*example_input)
                else:
                    model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return calls


def _topology_from(target: str, shapes: list) -> tuple[int, str]:
    """Width and topology of ``target`` from its output shapes over the probe's two forwards,
    or why it cannot take a slot."""
    if len(set(shapes)) > 1:
        raise InjectionError(
            f"inject_slots: target {target!r}: its output changes shape across calls "
            f"({', '.join(map(str, shapes))}); a slot needs one feature shape"
        )
    if len(shapes) > 2:
        raise InjectionError(
            f"inject_slots: target {target!r} runs {len(shapes) // 2} times in one forward; a "
            "slot needs a module that runs once"
        )
    shape = shapes[0]
    if shape is None:
        raise InjectionError(
            f"inject_slots: target {target!r} does not output a floating-point tensor (or a "
            "tuple starting with one)"
        )
    if len(shape) not in _TOPOLOGY_BY_RANK:
        raise InjectionError(
            f"inject_slots: target {target!r} outputs shape {shape}; a slot takes (B, C, H, W), "
            "(B, T, C) or (B, C) features"
        )
    topology = _TOPOLOGY_BY_RANK[len(shape)]
    return shape[1] if len(shape) != 3 else shape[2], topology


def _explicit_topology(target: str, layout: str) -> str:
    if layout in TOPOLOGIES:
        return layout
    if layout in _TOPOLOGY_BY_LAYOUT:
        return _TOPOLOGY_BY_LAYOUT[layout]
    valid = ", ".join([*TOPOLOGIES, *_TOPOLOGY_BY_LAYOUT])
    raise InjectionError(
        f"inject_slots: layout {layout!r} for {target!r} is unknown; valid: {valid}"
    )


def inject_slots(
    model: nn.Module,
    targets: str | Iterable[str] | Mapping[str, str],
    example_input=None,
    *,
    widths: Mapping[str, int] | None = None,
    layouts: Mapping[str, str] | None = None,
    gate_config: GateConfig | None = None,
    blending_steps: int = DEFAULT_BLENDING_STEPS,
    probation_epochs: int = DEFAULT_PROBATION_EPOCHS,
    embargo_epochs: int = DEFAULT_EMBARGO_EPOCHS,
) -> nn.Module:
    """Add a seed slot after each targeted module of ``model``, in place, and return ``model``.

    The model keeps its forward, call signature, modules and ``state_dict`` keys, and gains
    Esper's model API (``seed_slots``, ``germinate_seed(..., slot=)``, ``advance_stage``,
    ``forward_with_shadows``, ``incubation_loss``, ``capture_gradient_telemetry``,
    ``step_epoch``, ``host_parameters`` ...). With no seeds its output is exactly what it was.
    To reload a checkpoint: rebuild the model, inject the same targets, ``load_state_dict``.

    Args:
        model: any ``nn.Module``.
        targets: a regex matched in full against module names (``r"layer\\d"``), a list of module
            names (``["layer2", "body.0"]``; each slot is named after its module), or a
            ``{slot name: module name}`` dict (several slots may follow one module, in order).
        example_input: one input for a probe (a tensor, a tuple of positional arguments or a
            dict of keyword arguments) that finds each target's feature width and layout (4-D
            channels-first, 3-D sequence ``(B, T, C)``, 2-D flat) and the slots' forward order.
            The probe runs two forwards in eval mode without gradient: nothing in the model
            changes.
        widths, layouts: per slot name, instead of probing (both needed for every slot when
            ``example_input`` is None); a layout is ``"BCHW"``, ``"BTC"``, ``"BC"`` or a topology
            name (``"cnn"``, ``"transformer"``, ``"mlp"``).
        gate_config, blending_steps, probation_epochs, embargo_epochs: as for
            :class:`~esper.kasmina.model.MorphogeneticModel`.

    Returns:
        ``model`` itself, now an instance of a subclass of its class.

    Raises:
        InjectionError: a target matches nothing, runs more than once per forward or changes
            shape across calls, does not output floating-point features of a known layout, or
            the model already has slots; one line naming the target. The model is unchanged.
    """
    _check_model(model)
    resolved = _resolve_targets(model, targets)
    widths, layouts = dict(widths or {}), dict(layouts or {})
    spec, order = _slot_specs(model, resolved, example_input, widths, layouts)
    # Everything is checked: from here on the model changes.
    settings = {
        "blending_steps": blending_steps,
        "probation_epochs": probation_epochs,
        "embargo_epochs": embargo_epochs,
    }
    _install(model, {name: (*spec[name], resolved[name]) for name in order}, gate_config, settings)
    return model


def _check_model(model) -> None:
    """Refuse what is not a module, or a module that has slots (or their names) already."""
    if not isinstance(model, nn.Module):
        raise InjectionError(
            f"inject_slots: model must be an nn.Module, got {type(model).__name__}"
        )
    taken = [name for name in _ADDED_ATTRIBUTES if hasattr(model, name)]
    if taken:
        raise InjectionError(
            f"inject_slots: {type(model).__name__} already has {', '.join(taken)} (slots were "
            "injected already, or the names are its own); inject every target in one call"
        )


def _slot_specs(
    model: nn.Module,
    resolved: dict[str, str],
    example_input,
    widths: dict[str, int],
    layouts: dict[str, str],
) -> tuple[dict[str, tuple[int, str]], list[str]]:
    """Each slot's ``(width, topology)``, from the probe or from ``widths``/``layouts``, and the
    slots in forward order (the order of ``resolved`` without a probe). Changes nothing."""
    spec: dict[str, tuple[int, str]] = {}
    order = list(resolved)
    if example_input is not None:
        calls = _probe(model, set(resolved.values()), example_input)
        for slot, target in resolved.items():
            if target not in calls:
                raise InjectionError(
                    f"inject_slots: target {target!r} did not run in the probe forward; a slot "
                    "needs a module the forward calls"
                )
            spec[slot] = _topology_from(target, calls[target])
        ran = list(calls)
        order = sorted(resolved, key=lambda s: ran.index(resolved[s]))  # stable: dict order ties
    for slot, target in resolved.items():
        if slot in widths or slot in layouts or slot not in spec:
            if slot not in widths or slot not in layouts:
                raise InjectionError(
                    f"inject_slots: slot {slot!r} needs example_input, or both widths[{slot!r}] "
                    "and layouts[{slot!r}]"
                )
            width = widths[slot]
            if not isinstance(width, int) or width < 1:
                raise InjectionError(f"inject_slots: width for {slot!r} must be an int >= 1")
            spec[slot] = (width, _explicit_topology(target, layouts[slot]))
    for extra in sorted((set(widths) | set(layouts)) - set(resolved)):
        raise InjectionError(f"inject_slots: widths/layouts name {extra!r}, which is not a slot")
    return spec, order


def _install(
    model: nn.Module,
    slots: dict[str, tuple[int, str, str]],
    gate_config: GateConfig | None,
    settings: dict[str, int],
) -> None:
    """Turn ``model`` into an injected model with ``{slot: (width, topology, target)}``, in
    forward order, on the device and in the train/eval mode of the model's own parameters."""
    model.__class__ = _injected_class(type(model))
    model._install_slots(model, slots, gate_config, settings)
    model.slot_targets = {name: target for name, (_, _, target) in slots.items()}
    if not hasattr(model, "topology"):  # a host that names its own (the built-in ones) keeps it
        topologies = {slot.topology for slot in model.seed_slots.values()}
        model.topology = topologies.pop() if len(topologies) == 1 else "mixed"
    reference = next(
        (p for n, p in model.named_parameters() if not n.startswith("seed_slots.")), None
    )
    if reference is not None:
        model.seed_slots.to(reference.device)
    model.seed_slots.train(model.training)

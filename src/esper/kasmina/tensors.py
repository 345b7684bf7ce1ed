"""Tensor helpers shared by the slot, its telemetry and the governor's snapshots."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite.

    Args:
        tensors: any tensors (parameters, buffers, gradients); they are read detached.

    Returns:
        True when all values are finite, or when there are no tensors. One host/device
        synchronisation for the whole set, not one per tensor.
    """
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def queue_grad_norms(
    groups: list[list[nn.Parameter]],
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """The device half of per-group gradient norms: one ``_foreach_norm`` over every group's
    gradients, no host sync.

    Returns:
        ``(norms, bounds)``: 0-dim norm tensors, one per gradient (parameters without one are
        skipped), and per group the ``(start, end)`` of its norms in that list. Read the norms
        back (with whatever else the caller reads in the same sync) and pass them to
        :func:`fold_grad_norms`.
    """
    grads: list[torch.Tensor] = []
    bounds = []
    for params in groups:
        start = len(grads)
        grads.extend(p.grad for p in params if p.grad is not None)
        bounds.append((start, len(grads)))
    return (list(torch._foreach_norm(grads)) if grads else []), bounds


def fold_grad_norms(norms: Sequence[float], bounds: list[tuple[int, int]]) -> list[float]:
    """The host half: per group, the L2 norm of its gradients from their per-tensor norms (0
    for a group without gradients).

    On the host in double precision, after the capture's one readback: per-group reductions
    on the device were four more kernels a capture, and a capture right after the backward pays
    each new kernel's cold start (a third of its time on a small model).
    """
    return [math.sqrt(math.fsum(n * n for n in norms[a:b])) for a, b in bounds]


def module_tensors(module: nn.Module) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
    """``(list(module.parameters()), list(module.buffers()))`` in the same order, read from the
    modules' own tables in one walk: the telemetry capture walks every live seed each time, and
    the generic walks were a third of a capture on a small model."""
    params: list[nn.Parameter] = []
    buffers: list[torch.Tensor] = []
    seen_modules: set[int] = set()
    seen: set[int] = set()
    stack = [module]
    while stack:
        current = stack.pop()
        if id(current) in seen_modules:
            continue
        seen_modules.add(id(current))
        for table, out in ((current._parameters, params), (current._buffers, buffers)):
            for tensor in table.values():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    out.append(tensor)
        # Pushed in reverse so they come off in order: the pre-order walk named_modules makes.
        stack.extend(reversed([c for c in current._modules.values() if c is not None]))
    return params, buffers

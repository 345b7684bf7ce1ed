"""Tensor helpers shared by the slot, its telemetry and the governor's snapshots."""

from __future__ import annotations

from collections.abc import Iterable

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


def _total_grad_norm(params: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    """L2 norm over the gradients of ``params`` as a 0-dim device tensor (no host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.to(device, torch.float32) for n in norms]))


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

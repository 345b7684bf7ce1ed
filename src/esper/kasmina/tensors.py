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

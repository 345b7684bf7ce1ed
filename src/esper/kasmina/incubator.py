"""The incubator: how a seed in TRAINING learns from the task loss without touching the host.

The slot returns ``_Incubate.apply(host, seed_out)``: the host's features, unchanged, with a
backward that hands the output's gradient to both the host (its direct path, as if no seed were
there) and the seed (its learning signal). The seed's values never enter the output, so a NaN
seed cannot reach the host.
"""

from __future__ import annotations

import torch


class _Incubate(torch.autograd.Function):
    """Straight-through incubator: forward is the identity on ``host``; backward gives the same
    gradient to ``host`` and to ``seed_out``."""

    @staticmethod
    def forward(ctx, host: torch.Tensor, seed_out: torch.Tensor) -> torch.Tensor:
        # A view, not ``host`` itself: autograd needs a new tensor to attach this node to.
        return host.view_as(host)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad


def _detached(x: torch.Tensor) -> torch.Tensor:
    """``x.detach()``, made contiguous when it is a channels-last CPU tensor: on CPU, group-norm
    backward segfaults (torch 2.13) for a channels-last input that needs no gradient."""
    x = x.detach()
    if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous():
        return x.contiguous()
    return x

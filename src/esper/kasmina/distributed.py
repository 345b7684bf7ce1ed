"""Agreement under torch.distributed: gates that every rank must pass, and sums over ranks.

Outside a process group every function here is the identity, so single-process code pays
nothing. Inside one, each is a collective: every rank must call it, in the same order.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed() -> bool:
    """Whether a process group is running (``torchrun``, or ``init_process_group`` by hand)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if distributed() else 1


def _collective_device(tensor: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_ranks_agree(passed: bool, device: torch.device | str = "cpu") -> bool:
    """Logical AND of ``passed`` over all ranks; returns ``passed`` unchanged outside DDP.

    Architectures must never diverge between ranks, so a gate passes only where it passes on
    every rank. The all-reduce is a collective: every rank must call it for the same gate.
    """
    if not distributed():
        return bool(passed)
    flag = torch.tensor([1 if passed else 0], dtype=torch.int32)
    flag = flag.to(_collective_device(flag))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank (a new tensor on ``tensor``'s device); ``tensor``
    itself outside a process group. Every rank gets the same bits."""
    if not distributed():
        return tensor
    work = tensor.detach().to(_collective_device(tensor), copy=True)
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(tensor.device)

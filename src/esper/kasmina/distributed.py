"""Gate consensus under torch.distributed: every rank must agree, or no rank moves."""

from __future__ import annotations

import torch
import torch.distributed as dist


def all_ranks_agree(passed: bool, device: torch.device | str = "cpu") -> bool:
    """Logical AND of ``passed`` over all ranks; returns ``passed`` unchanged outside DDP.

    Architectures must never diverge between ranks, so a gate passes only where it passes on
    every rank. The all-reduce is a collective: every rank must call it for the same gate.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return bool(passed)
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    flag = torch.tensor([1 if passed else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())

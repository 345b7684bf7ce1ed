"""One model trained on several processes with torch.distributed (``torchrun``).

What the ranks share and when:

* **data**: each rank takes every ``world_size``-th row of the epoch's shuffled order (the
  order is the same on every rank: one generator, one seed), in batches of
  ``batch_size // world_size`` rows, so a global batch is what one process would have used;
* **gradients**: all-reduced by ``DistributedDataParallel`` during backward. The wrapper is
  rebuilt whenever the parameter set changes (germination, cull, fossilization, rollback), and
  building it broadcasts rank 0's parameters, so a new seed starts the same everywhere;
* **buffers**: batch-norm running statistics are averaged over ranks at the end of every
  training epoch. A slot's rank-local accumulators (leaks, incubation gains, the gated alpha
  used) are never broadcast: each is reduced where it is read;
* **numbers**: losses, accuracies, counterfactuals, gradient telemetry and incubation gains are
  reduced before anything reads them, so gates, the governor and the controller see the same
  numbers on every rank; the controller's decision is rank 0's, broadcast.

Everything here is a collective where it says so: every rank calls it, in the same order.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from esper.kasmina.distributed import distributed, sum_over_ranks
from esper.leyline import SeedStage

#: The environment torchrun sets for every worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Slot buffers that hold one rank's own measurements until they are reduced where read.
RANK_LOCAL_BUFFERS = ("_leak_sq", "_gain_sum", "_alpha_used")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and whose decisions every rank follows."""
        return self.rank == 0

    @classmethod
    def current(cls) -> DistContext | None:
        """The running process group's context, or None when there is none (or one rank)."""
        if not distributed() or dist.get_world_size() == 1:
            return None
        rank = dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return cls(rank, dist.get_world_size(), local, dist.get_backend())


def is_main_process() -> bool:
    """Whether this process is rank 0 of its process group, or the only process."""
    context = DistContext.current()
    return context is None or context.is_main


def launched_by_torchrun() -> bool:
    """Whether this process is one of several workers started by ``torchrun``."""
    return all(k in os.environ for k in TORCHRUN_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: str, timeout_s: float) -> tuple[DistContext, str]:
    """Join the process group torchrun's environment describes: gloo on CPU, NCCL on CUDA with
    one device per rank (``cuda:LOCAL_RANK``). A collective that waits longer than
    ``timeout_s`` (a rank died or hangs) raises instead of hanging.

    Returns:
        The context and the device this rank trains on.
    """
    local = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        backend = "nccl"
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    context = DistContext.current()
    assert context is not None
    return context, device


def shutdown(*, together: bool) -> None:
    """Leave the process group. ``together``: after a barrier, so no rank tears its connections
    down while another still uses them (a rank that left first made a peer's gloo threads abort
    at exit, about one run in eight on two CPU processes). Without it (a rank failed), leave at
    once."""
    if not distributed():
        return
    # DDP reducers hold the group and gloo work with tensors; let them go first, while the
    # interpreter is whole (freed at exit, they aborted the process now and then).
    gc.collect()
    if together:
        try:
            dist.barrier()
        except RuntimeError:  # a peer is gone after all: nothing to wait for
            pass
    dist.destroy_process_group()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (pickled; for small objects such as a decision)."""
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, by rank, on every rank."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sums(values: list[float], device: torch.device) -> list[float]:
    """Each of ``values`` summed over ranks, in one collective (float64, so counts and FLOPs
    stay exact)."""
    return sum_over_ranks(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def average_norm_statistics(model: nn.Module) -> None:
    """Average every batch-norm running mean and variance over ranks, in place, in one
    collective: each rank normalised its own batches, and the model must be one model."""
    buffers = [
        buf
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats
        for buf in (module.running_mean, module.running_var)
        if buf is not None
    ]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    flat = sum_over_ranks(flat) / dist.get_world_size()
    offset = 0
    for buf in buffers:
        n = buf.numel()
        buf.copy_(flat[offset : offset + n].view_as(buf).to(buf.dtype))
        offset += n


def state_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and persistent buffer (names, dtypes, shapes and bytes) and of
    the slots' lifecycle state: equal digests on two ranks mean bit-identical models."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # a slot's extra state: plain data, in a canonical form (pickled bytes would
            # depend on which equal strings happen to be one object, which differs by rank)
            digest.update(json.dumps(value, sort_keys=True, default=repr).encode())
    return digest.hexdigest()


class _ShadowForward(nn.Module):
    """``model.forward_with_shadows`` as a module's forward, so DDP sees the pass that trains
    host and seeds alike (its reducer hooks every parameter the outputs reach)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, with_shadows: bool = True):
        if with_shadows:
            return self.model.forward_with_shadows(x)
        return self.model(x), {}


def parameter_key(model: nn.Module, *, sparse_shadows: bool = False) -> tuple:
    """Changes whenever the DDP wrapper goes stale: the set of trainable parameters changed, or
    whether a step can leave one of them without gradient (a fossilized seed's blend gate).
    ``sparse_shadows``: not every step runs the shadow pass (``TrainerConfig.shadow_every``)."""
    ids = tuple(id(p) for p in model.parameters() if p.requires_grad)
    return ids, _may_leave_parameters_unused(model, sparse_shadows)


def wrap(
    model: nn.Module, device: torch.device, *, sparse_shadows: bool = False
) -> DistributedDataParallel:
    """A DDP wrapper around ``model``'s shadow-pass forward, for the current parameter set.
    Its forward takes ``with_shadows=False`` for a step without the shadow pass
    (``sparse_shadows``: some steps are such steps).

    Building it broadcasts rank 0's parameters and persistent buffers (not the slots'
    rank-local accumulators).
    """
    module = _ShadowForward(model)
    ignore = [
        f"model.{name}"
        for name, _ in model.named_buffers()
        if name.rsplit(".", 1)[-1] in RANK_LOCAL_BUFFERS
    ]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
    with warnings.catch_warnings():
        # torch 2.13 deprecates broadcast_buffers; its advice for buffers that must never be
        # synchronised (ours: batch norm is averaged per epoch, slot accumulators are
        # rank-local) is to keep broadcast_buffers=False until init_sync_buffers exists.
        warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
        return DistributedDataParallel(
            module,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            find_unused_parameters=_may_leave_parameters_unused(model, sparse_shadows),
        )


def _may_leave_parameters_unused(model: nn.Module, sparse_shadows: bool = False) -> bool:
    """Whether a step can leave a parameter without gradient: a germinated seed runs nowhere,
    a seed in TRAINING runs only in shadow passes (not every step's, with ``sparse_shadows``),
    and a blend gate runs only while its seed blends. Searching for unused parameters costs a
    walk of the autograd graph per step, so it is on only then."""
    for slot in model.seed_slots.values():
        if slot.seed is not None and slot.stage == SeedStage.GERMINATED:
            return True
        if sparse_shadows and slot.incubating:
            return True
        gate = slot.blend is not None and any(True for _ in slot.blend.parameters())
        if gate and slot.stage not in (SeedStage.BLENDING, SeedStage.PROBATIONARY):
            return True
    return False

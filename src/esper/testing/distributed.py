"""Several ranks in one test: gloo process groups on the CPU, started with
``torch.multiprocessing`` and reporting back through one JSON file per rank."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: How long a rank waits in a collective: a mismatched collective fails the test, never hangs it.
TEST_TIMEOUT_S = 60


def init_gloo(rank: int, world: int, init_file: str) -> None:
    """Join this worker to the test's gloo group (one thread per rank: ranks share the CPU)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=TEST_TIMEOUT_S),
    )


def report(out_dir: str, rank: int, result: dict) -> None:
    """What rank ``rank`` found, for :func:`spawn_ranks` to read back."""
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def spawn_ranks(worker: Callable, world: int, folder: Path) -> list[dict]:
    """Run ``worker(rank, world, init_file, out_dir)`` on ``world`` processes and return each
    rank's :func:`report`, in rank order."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(worker, args=(world, str(folder / "init"), str(folder)), nprocs=world, join=True)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(world)]

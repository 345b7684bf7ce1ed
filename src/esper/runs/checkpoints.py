"""A run directory's full-state checkpoint (``checkpoint.pt``): written atomically every few
epochs, read back to resume a killed run exactly where its last checkpoint left it."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from esper._atomic import atomic_path, stale_temporaries
from esper.runs.errors import ResumeError

CHECKPOINT_NAME = "checkpoint.pt"
#: 2 in 0.4.0, the first release; the development versions' checkpoints were 1.
RUN_CHECKPOINT_FORMAT = 2


def write_run_checkpoint(
    run_dir: Path, trainer, *, wall_seconds: float, state: dict | None = None
) -> Path:
    """Write ``trainer``'s whole state to ``run_dir/checkpoint.pt`` (write, fsync, rename).

    A kill at any moment leaves either the previous checkpoint or this one, never half a file.
    ``state`` is ``trainer.state_dict()`` when the caller took it already (under torchrun every
    rank takes it, one writes it).
    """
    payload = {
        "format": RUN_CHECKPOINT_FORMAT,
        "architecture": trainer.model.architecture(),
        "epoch": trainer.epoch,
        "wall_seconds": float(wall_seconds),
        "trainer": trainer.state_dict() if state is None else state,
    }
    path = run_dir / CHECKPOINT_NAME
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_run_checkpoint(run_dir: Path) -> dict:
    """Load ``run_dir/checkpoint.pt`` safely (``weights_only=True``).

    Raises:
        ResumeError: no checkpoint, or a truncated, corrupt or foreign one.
    """
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        if (run_dir / "config.json").is_file():
            # A run directory whose run was stopped before its first epoch ended.
            raise ResumeError(
                f"{path}: the run stopped before its first checkpoint (written after each "
                "epoch), so there is nothing to resume; start it again with the settings in "
                f"{run_dir / 'config.json'} and a new --run-dir"
            )
        raise ResumeError(f"{path}: no checkpoint to resume from (is this a run directory?)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as exc:
        reason = " ".join(str(exc).split())[:160]
        raise ResumeError(f"{path}: truncated or corrupt checkpoint ({reason})") from None
    if not isinstance(payload, dict) or payload.get("format") != RUN_CHECKPOINT_FORMAT:
        raise ResumeError(
            f"{path}: not a run checkpoint of format {RUN_CHECKPOINT_FORMAT} "
            "(written by another version of esper?)"
        )
    missing = [k for k in ("architecture", "epoch", "trainer") if k not in payload]
    if missing:
        raise ResumeError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return payload


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete what a write killed mid-way left behind (the finished files are untouched)."""
    for name in (CHECKPOINT_NAME, "model.pt", "summary.json"):
        for tmp in stale_temporaries(run_dir / name):
            tmp.unlink(missing_ok=True)

"""Atomic file writes: whatever a run writes is either the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def _fsync(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open a directory; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path``.

    The new file is flushed to disk (fsync) before the rename, and the rename itself after it,
    so a crash or power loss leaves either the old file or the complete new one. On an error the
    temporary file is removed and ``path`` is left as it was. A process killed mid-write leaves
    a ``.NAME.PID.tmp`` file behind; :func:`stale_temporaries` finds them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Named by process id rather than mkstemp, so the file gets the usual (umask) permissions.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        tmp.unlink(missing_ok=True)


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files that an interrupted :func:`atomic_path` write of ``path`` left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))

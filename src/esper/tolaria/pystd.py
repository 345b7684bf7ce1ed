"""pystd: a byte-level language model over the standard library source of the running Python.

About 12 MB of real code (26x pyref's text) that ships with every Python, so nothing is
downloaded. The split is by file, so no validation or test window shares a file with training;
which file goes where depends only on its path, so every seed sees the same split. The sorted
file list and a SHA-256 of the corpus are kept with the data and written to ``config.json``:
another Python version has another library, and the hash says so.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch

from esper.tolaria.data import DataNotFoundError, TaskData, random_windows, spread_windows

#: Training windows in the pool each epoch samples from (about 0.7x the training text).
PYSTD_TRAIN_WINDOWS = 131072
#: Cap on validation and test windows (non-overlapping, evenly spread).
PYSTD_EVAL_WINDOWS = 1024
PYSTD_BLOCK_SIZE = 64
#: Percent of files for validation and for test, picked by a hash of the path.
PYSTD_VAL_PERCENT = 5
PYSTD_TEST_PERCENT = 5
# Folders that are not library code: tests, and third-party packages.
_SKIP_DIRS = ("site-packages", "__pycache__", "idle_test")


def stdlib_root() -> Path:
    """The running Python's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def library_sources(root: Path) -> list[str]:
    """The ``.py`` files under ``root`` that are library code (no tests, no site-packages), as
    sorted POSIX paths relative to ``root``."""
    found = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if any(p in _SKIP_DIRS or p.startswith("test") for p in parts):
            continue
        found.append(path.relative_to(root).as_posix())
    return sorted(found)


def split_of(relpath: str) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for a file, from a hash of its path alone."""
    bucket = int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 100
    if bucket < PYSTD_VAL_PERCENT:
        return "val"
    if bucket < PYSTD_VAL_PERCENT + PYSTD_TEST_PERCENT:
        return "test"
    return "train"


def load_pystd_data(data_dir: Path | str | None, seed: int) -> TaskData:
    """Byte-level next-token windows over the standard library's source, split by file.

    Args:
        data_dir: a folder of ``.py`` files to use instead of the running Python's library.
        seed: fixes which training windows are drawn (the split does not depend on it).

    Returns:
        ``TaskData`` of int64 ``(N, 64)`` windows over bytes (``num_classes`` 256), with a test
        split and ``provenance``: the root, the sorted file list, bytes per split and the
        corpus's SHA-256.

    Raises:
        DataNotFoundError: no library files under the folder, or a split came out empty.
    """
    root = stdlib_root() if data_dir is None else Path(data_dir).expanduser()
    files = library_sources(root) if root.is_dir() else []
    if not files:
        raise DataNotFoundError(
            f"pystd: no Python source files found under {root}; pass --data-dir to a folder "
            "of .py files, or leave it out to use the running Python's standard library"
        )
    digest = hashlib.sha256()
    blobs: dict[str, list[bytes]] = {"train": [], "val": [], "test": []}
    for relpath in files:
        content = (root / relpath).read_bytes()
        digest.update(relpath.encode() + b"\0" + content + b"\0")
        blobs[split_of(relpath)].append(content)
    tokens = {
        split: torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8).long()
        for split, parts in blobs.items()
    }
    need = PYSTD_BLOCK_SIZE + 1
    short = [split for split, t in tokens.items() if len(t) < need]
    if short:
        raise DataNotFoundError(
            f"pystd: the {', '.join(short)} split of {root} holds fewer than {need} bytes "
            f"({len(files)} files); it needs more source files"
        )
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y = random_windows(tokens["train"], PYSTD_BLOCK_SIZE, PYSTD_TRAIN_WINDOWS, gen)
    val_x, val_y = spread_windows(tokens["val"], PYSTD_BLOCK_SIZE, PYSTD_EVAL_WINDOWS)
    test_x, test_y = spread_windows(tokens["test"], PYSTD_BLOCK_SIZE, PYSTD_EVAL_WINDOWS)
    return TaskData(
        train_x,
        train_y,
        val_x,
        val_y,
        num_classes=256,
        test_x=test_x,
        test_y=test_y,
        provenance={
            "root": str(root),
            "files": files,
            "sha256": digest.hexdigest(),
            "bytes": {split: len(t) for split, t in tokens.items()},
        },
    )

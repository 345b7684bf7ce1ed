"""Fashion-MNIST: real 28x28 greyscale images of clothing, 60k training and 10k test, read from
the IDX files that Debian's ``dataset-fashion-mnist`` package installs (nothing is downloaded).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from esper.tolaria.data import (
    DataNotFoundError,
    TaskData,
    standardized_images,
    stratified_split,
)

#: Where ``apt-get install dataset-fashion-mnist`` puts the files.
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
#: Training images held out for validation (gates and controllers see these, never the test set).
FASHION_VAL_IMAGES = 5000
_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one these files use


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) of unsigned bytes into an array of its shape.

    Raises:
        ValueError: not an IDX file of unsigned bytes, or its length does not match its header.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    n_dims = raw[3]
    header = 4 + 4 * n_dims
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims)]
    if len(raw) - header != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims} but the file holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_fashion_data(data_dir: Path | str | None, seed: int) -> TaskData:
    """Fashion-MNIST with a validation split carved from the training set and the official test
    set as the test split.

    Args:
        data_dir: the folder holding the four IDX files (``.gz`` or not); None for
            :data:`FASHION_DIR`.
        seed: fixes which 5,000 training images (stratified by class) are the validation split.

    Returns:
        ``TaskData`` with float32 ``x`` ``(N, 1, 28, 28)`` standardised with the training mean
        and std, int64 ``y`` in 0..9; 55,000 / 5,000 / 10,000 rows.

    Raises:
        DataNotFoundError: a file is missing; the message names the folder and the package.
    """
    folder = FASHION_DIR if data_dir is None else Path(data_dir).expanduser()
    paths = {key: _find(folder, stem) for key, stem in FASHION_FILES.items()}
    missing = [FASHION_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise DataNotFoundError(
            f"fashion: {', '.join(missing)} not found in {folder}; install Debian's "
            "dataset-fashion-mnist package (apt-get install dataset-fashion-mnist, files in "
            f"{FASHION_DIR}) or pass --data-dir to a folder holding the IDX files"
        )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"fashion: {split} images {images.shape} do not match labels {labels.shape}"
            )
    x = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(arrays["train_labels"].astype(np.int64))
    test_x = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255.0).unsqueeze(1)
    test_y = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    # At most a fifth of a (small, test-made) file goes to validation.
    val_fraction = min(FASHION_VAL_IMAGES / len(y), 0.2)
    train_idx, val_idx = stratified_split(y, val_fraction=val_fraction, seed=seed)
    return standardized_images(x, y, train_idx, val_idx, test_x, test_y)

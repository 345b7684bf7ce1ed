"""Fixtures over the tiny-host matrix of :mod:`esper.testing`.

The hosts, batches and lifecycle helpers live in ``esper.testing`` (the benchmarks use them
too); they are re-exported here so test files can keep writing ``from conftest import drive_to``.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from esper.kasmina.host import CNNHost, TransformerHost
from esper.testing import (
    CNN_HOSTS,
    CNN_INPUT_SHAPE,
    DEFAULT_BLUEPRINT,
    NUM_CLASSES,
    TF_HOSTS,
    TF_INPUT_SHAPE,
    TINY_HOSTS,
    VOCAB_SIZE,
    TinyHost,
    drive_to,
    pass_g2_metrics,
    perturb_seed,
)
from esper.tolaria.fashion import FASHION_FILES

__all__ = [
    "CNN_HOSTS",
    "CNN_INPUT_SHAPE",
    "DEFAULT_BLUEPRINT",
    "NUM_CLASSES",
    "TF_HOSTS",
    "TF_INPUT_SHAPE",
    "TINY_HOSTS",
    "VOCAB_SIZE",
    "TinyHost",
    "drive_to",
    "pass_g2_metrics",
    "perturb_seed",
]


def pytest_configure(config) -> None:
    # The tensors here are tiny: intra-op threads only add overhead, and on a shared machine
    # they contend badly (a 4x3x16x16 conv measured 20x slower with 2 threads than with 1).
    torch.set_num_threads(1)


@pytest.fixture(params=list(TINY_HOSTS))
def tiny(request) -> TinyHost:
    """Every tiny host (2- and 3-block CNN, 1- and 2-layer transformer)."""
    torch.manual_seed(0)
    return TINY_HOSTS[request.param]


@pytest.fixture(params=CNN_HOSTS)
def tiny_cnn(request) -> TinyHost:
    torch.manual_seed(0)
    return TINY_HOSTS[request.param]


@pytest.fixture(params=TF_HOSTS)
def tiny_tf(request) -> TinyHost:
    torch.manual_seed(0)
    return TINY_HOSTS[request.param]


@pytest.fixture
def cnn_host() -> CNNHost:
    """CNNHost(num_classes=10, n_blocks=3, base_channels=4, in_channels=3)."""
    return TINY_HOSTS["cnn3"].build()


@pytest.fixture
def cnn2_host() -> CNNHost:
    return TINY_HOSTS["cnn2"].build()


@pytest.fixture
def tf1_host() -> TransformerHost:
    return TINY_HOSTS["tf1"].build()


@pytest.fixture
def tf2_host() -> TransformerHost:
    return TINY_HOSTS["tf2"].build()


@pytest.fixture
def cnn_input() -> torch.Tensor:
    """A (4, 3, 16, 16) image batch."""
    return TINY_HOSTS["cnn3"].inputs()


@pytest.fixture
def tf_input() -> torch.Tensor:
    """A (4, 8) batch of token ids below 17."""
    return TINY_HOSTS["tf1"].inputs()


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_fashion(tmp_path):
    """200 training and 40 test images of 28x28, written as the package ships them (gzip)."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (200, 28, 28)),
        "train_labels": np.arange(200) % 10,
        "test_images": rng.integers(0, 256, (40, 28, 28)),
        "test_labels": np.arange(40) % 10,
    }
    for key, stem in FASHION_FILES.items():
        raw = idx_bytes(arrays[key])
        if key == "test_labels":  # one file uncompressed: both forms are read
            (tmp_path / stem).write_bytes(raw)
        else:
            (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(raw))
    return tmp_path, arrays

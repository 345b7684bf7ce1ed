"""A matrix of tiny hosts, CNN and transformer, small enough that a whole lifecycle runs in
milliseconds on a CPU.

Every host is built right after ``torch.manual_seed``, so building the same recipe twice gives
bit-identical weights (a "fresh process" stand-in for checkpoint tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from esper.kasmina import CNNHost, MorphogeneticModel, TransformerHost
from esper.testing.batches import random_ids, random_images
from esper.testing.steps import cross_entropy

VOCAB_SIZE = 17
NUM_CLASSES = 10
CNN_INPUT_SHAPE = (4, 3, 16, 16)  # (B, C, H, W)
TF_INPUT_SHAPE = (4, 8)  # (B, T)


@dataclass(frozen=True)
class TinyHost:
    """A recipe for one tiny host: how to build it, feed it and score it.

    Attributes:
        name: the key in :data:`TINY_HOSTS`.
        topology: ``"cnn"`` or ``"transformer"``.
        factory: the host class (or any callable returning a host module).
        kwargs: the factory's keyword arguments.
    """

    name: str
    topology: str
    factory: Callable[..., nn.Module]
    kwargs: dict = field(default_factory=dict)

    def build(self, seed: int = 0) -> nn.Module:
        """A fresh host.

        Args:
            seed: the global RNG seed set just before construction.

        Returns:
            The host; the same ``seed`` always gives the same weights.
        """
        torch.manual_seed(seed)
        return self.factory(**self.kwargs)

    def model(self, slots: Iterable[str] = ("mid",), seed: int = 0, **kwargs) -> MorphogeneticModel:
        """A fresh ``MorphogeneticModel`` around ``build(seed)``.

        Args:
            slots: the injection points that get a slot.
            seed: passed to :meth:`build`.
            **kwargs: passed to ``MorphogeneticModel`` (``gate_config``, ``blending_steps``...).

        Returns:
            The model, every slot DORMANT.
        """
        return MorphogeneticModel(self.build(seed), slots=list(slots), **kwargs)

    def inputs(self, seed: int = 1) -> torch.Tensor:
        """A ``(4, 3, 16, 16)`` image batch or a ``(4, 8)`` batch of token ids below 17."""
        if self.topology == "cnn":
            batch, channels, size, _ = CNN_INPUT_SHAPE
            return random_images(batch, size, channels=channels, seed=seed)
        return random_ids(TF_INPUT_SHAPE, VOCAB_SIZE, seed=seed)

    def targets(self, seed: int = 2) -> torch.Tensor:
        """``(4,)`` class labels or ``(4, 8)`` next-token ids matching :meth:`inputs`."""
        if self.topology == "cnn":
            return random_ids(CNN_INPUT_SHAPE[:1], NUM_CLASSES, seed=seed)
        return random_ids(TF_INPUT_SHAPE, VOCAB_SIZE, seed=seed)

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The model's output shape for :meth:`inputs`."""
        if self.topology == "cnn":
            return (CNN_INPUT_SHAPE[0], NUM_CLASSES)
        return (*TF_INPUT_SHAPE, VOCAB_SIZE)

    @staticmethod
    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for either topology's output (see :func:`cross_entropy`)."""
        return cross_entropy(out, target)


def _tf_kwargs(n_layer: int) -> dict:
    return {
        "vocab_size": VOCAB_SIZE,
        "n_embd": 16,
        "n_head": 2,
        "n_layer": n_layer,
        "block_size": TF_INPUT_SHAPE[1],
        "dropout": 0.0,  # dropout would make two forwards of the same model differ
    }


def _cnn_kwargs(n_blocks: int) -> dict:
    return {
        "num_classes": NUM_CLASSES,
        "n_blocks": n_blocks,
        "base_channels": 4,
        "in_channels": CNN_INPUT_SHAPE[1],
    }


TINY_HOSTS: dict[str, TinyHost] = {
    "cnn3": TinyHost("cnn3", "cnn", CNNHost, _cnn_kwargs(3)),
    "cnn2": TinyHost("cnn2", "cnn", CNNHost, _cnn_kwargs(2)),
    "tf1": TinyHost("tf1", "transformer", TransformerHost, _tf_kwargs(1)),
    "tf2": TinyHost("tf2", "transformer", TransformerHost, _tf_kwargs(2)),
}
CNN_HOSTS = [k for k, v in TINY_HOSTS.items() if v.topology == "cnn"]
TF_HOSTS = [k for k, v in TINY_HOSTS.items() if v.topology == "transformer"]

"""Synthetic batches: random images, class labels and token ids from seeded generators.

Each tensor is drawn from its own ``torch.Generator``, never from the global RNG, so building a
batch does not disturb the weights a test or benchmark draws next, and inputs do not change when
only the target's shape or class count does.
"""

from __future__ import annotations

import torch

from esper.tolaria.data import TaskData


def random_images(
    batch: int,
    size: int,
    *,
    channels: int = 3,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """A batch of standard-normal square images.

    Args:
        batch: images in the batch.
        size: height and width.
        channels: channels per image.
        seed: generator seed; the same arguments always give the same tensor.
        device: where the tensor goes (drawn on the CPU first, so it is the same everywhere).

    Returns:
        A float tensor of shape ``(batch, channels, size, size)``.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=gen).to(device)


def random_ids(
    shape: tuple[int, ...],
    high: int,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Uniform integers in ``[0, high)``: class labels, token ids or next-token targets.

    Args:
        shape: the tensor's shape, e.g. ``(batch,)`` for labels or ``(batch, length)`` for tokens.
        high: one past the largest id (the class count or the vocabulary size).
        seed: generator seed; the same arguments always give the same tensor.
        device: where the tensor goes (drawn on the CPU first).

    Returns:
        An int64 tensor of ``shape``.
    """
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, tuple(shape), generator=gen).to(device)


def image_batch(
    batch: int,
    size: int,
    *,
    channels: int = 3,
    num_classes: int = 10,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and class labels for a classification step.

    Args:
        batch: examples in the batch.
        size: image height and width.
        channels: channels per image.
        num_classes: labels are drawn from ``[0, num_classes)``.
        seed: the images use generator ``seed``, the labels ``seed + 1``.
        device: where both tensors go.

    Returns:
        ``(x, y)``: x of shape ``(batch, channels, size, size)``, y of shape ``(batch,)``.
    """
    x = random_images(batch, size, channels=channels, seed=seed, device=device)
    y = random_ids((batch,), num_classes, seed=seed + 1, device=device)
    return x, y


def toy_image_task(n: int = 96, *, seed: int = 0, size: int = 8) -> TaskData:
    """A learnable 4-class task on ``(n, 1, size, size)`` noise images, split 3:1 into train and
    validation: the class says whether the image's mean and its first pixel are positive. Big
    enough for a few real epochs of a tiny CNN, small enough for a unit test.

    Args:
        n: images in all.
        seed: fixes the images.
        size: image side.

    Returns:
        A :class:`~esper.tolaria.data.TaskData` with 4 classes.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=gen)  # (n, 1, size, size)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()  # (n,)
    cut = n * 3 // 4
    return TaskData(x[:cut], y[:cut], x[cut:], y[cut:], num_classes=4)

"""One training step, as the benchmarks time it and the tests take it."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the last dimension, for class or token logits.

    Args:
        logits: ``(B, C)`` class logits or ``(B, T, V)`` token logits.
        targets: ``(B,)`` labels or ``(B, T)`` token ids.

    Returns:
        The mean loss, a scalar tensor.
    """
    if logits.dim() > 2:  # (B, T, V) -> (B * T, V); a (B, C) batch is left as it is
        logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    return F.cross_entropy(logits, targets)


def host_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the model's host computes on ``x`` with every slot passed through (no seed, no
    fossil): the reference a seed that must not change the output is compared with."""
    with model.disable_slots():
        return model(x)


def training_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss a training step backpropagates: cross-entropy on the output, plus the incubation
    loss of the seeds in TRAINING for a model with a shadow pass (``forward_with_shadows``, as a
    ``MorphogeneticModel`` has); plain cross-entropy for any other module.

    Args:
        model: the network (a compiled module passes through to its original's methods).
        x: the inputs.
        y: the targets.

    Returns:
        A scalar loss tensor.
    """
    shadow_pass = getattr(model, "forward_with_shadows", None)
    if shadow_pass is None:
        return cross_entropy(model(x), y)
    out, shadows = shadow_pass(x)
    loss = cross_entropy(out, y)
    if not shadows:
        return loss
    return loss + model.incubation_loss(lambda o: cross_entropy(o, y), out, shadows, baseline=loss)


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    telemetry_stride: int = 0,
    shadow_every: int = 1,
) -> Callable[[], None]:
    """A closure running one full step: zero_grad, forward, loss (:func:`training_loss`),
    backward, capture, update.

    Args:
        model: the network (a ``MorphogeneticModel`` or a compiled one when capturing).
        optimizer: the optimizer over ``model``'s parameters.
        x: the inputs, reused every step so only the step itself is measured.
        y: the targets.
        telemetry_stride: k > 0 calls ``model.capture_gradient_telemetry(wait=False)``, as
            the trainer does, after the backward of every k-th step, the first one included
            (each capture folds the one before; ``model.flush_telemetry()`` folds the last);
            0 never captures.
        shadow_every: as the trainer's ``shadow_every``: the shadow pass runs on every k-th
            step (the first one included) and on capture steps; the others are plain steps.

    Returns:
        A function of no arguments that takes one step.

    Raises:
        ValueError: ``telemetry_stride`` is negative or ``shadow_every`` < 1.
    """
    if telemetry_stride < 0:
        raise ValueError(f"telemetry_stride must be >= 0, got {telemetry_stride}")
    if shadow_every < 1:
        raise ValueError(f"shadow_every must be >= 1, got {shadow_every}")
    steps_taken = 0

    def step() -> None:
        nonlocal steps_taken
        optimizer.zero_grad(set_to_none=True)
        capture = telemetry_stride and steps_taken % telemetry_stride == 0
        if capture or steps_taken % shadow_every == 0:
            training_loss(model, x, y).backward()
        else:
            cross_entropy(model(x), y).backward()
        if capture:
            model.capture_gradient_telemetry(wait=False)
        steps_taken += 1
        optimizer.step()

    return step

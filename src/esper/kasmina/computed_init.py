"""Computed initialisation: a new seed that starts ahead instead of at zero.

A blueprint's seed is ``x + out(hidden(x))`` with its output layer ``out`` at zero, so it begins
as the identity and must learn its way up. A computed seed keeps that form but solves ``out``
before its first step: over the slot's most recent training batches, the linear map from the
seed's hidden features to its output that best matches the *negative loss gradient* at the
slot's output (the direction in which the slot's features should move; the desired update of
TINY, the gradient direction GradMax maximises). It is a ridge least-squares fit,

    W = -(ZᵀZ + λI)⁻¹ ZᵀG,

with ``Z`` the rows the output layer reads (unfolded patches for a convolution, a column of
ones for a bias) and ``G`` the gradient at the matching output positions. To first order the
seed then changes the loss on those batches by ``⟨G, ZW⟩ = -tr(GᵀZ(ZᵀZ + λI)⁻¹ZᵀG) < 0``: it
lowers it. ``W`` is scaled so that the seed's output has ``scale`` times the RMS of the slot's
features, the step length that first-order argument leaves open.

The statistics come from normal training steps: while a slot is open for a new seed, the real
pass of ``forward_with_shadows`` hands it its output features, and a gradient hook on them
keeps the gradient (:class:`InitMemory`, the last few batches, a few rows each). Under
``torch.distributed`` the sums are added over ranks before the solve, so every rank computes
the same seed.
"""

from __future__ import annotations

import collections

import torch
import torch.nn.functional as F
from torch import nn

from esper.kasmina.distributed import sum_over_ranks
from esper.leyline import (
    DEFAULT_INIT_MEMORY_BATCHES,
    DEFAULT_INIT_MEMORY_EVERY,
    DEFAULT_INIT_MEMORY_ROWS,
)

#: The ridge term, relative to the mean diagonal of ZᵀZ: keeps the solve well posed when the
#: hidden features are collinear (a ReLU layer's dead units, a norm's constant channel).
RIDGE = 1e-3


class InitMemory:
    """The most recent training batches' features at a slot's output and the loss gradient
    there: what a computed initialisation is solved from.

    Args:
        batches: how many batches to keep (the oldest go first).
        rows: the rows (samples) of each batch kept, the first ones.
        every: keep every Nth batch offered (the first one offered included).
    """

    def __init__(
        self,
        batches: int = DEFAULT_INIT_MEMORY_BATCHES,
        rows: int = DEFAULT_INIT_MEMORY_ROWS,
        every: int = DEFAULT_INIT_MEMORY_EVERY,
    ) -> None:
        if min(batches, rows, every) < 1:
            raise ValueError(
                f"InitMemory: batches, rows and every must be >= 1, got {batches}, {rows}, {every}"
            )
        self.rows, self.every = int(rows), int(every)
        self._offered = 0
        self._entries: collections.deque[list] = collections.deque(maxlen=int(batches))

    def record(self, features: torch.Tensor) -> None:
        """Keep the first rows of ``features`` and, once backward reaches them, their gradient
        (on every ``every``-th call). A copy of a few rows and a hook: no device
        synchronisation."""
        offered, self._offered = self._offered, self._offered + 1
        if offered % self.every:
            return
        entry = [features[: self.rows].detach().clone(), None]
        self._entries.append(entry)
        features.register_hook(lambda grad, entry=entry: self._keep_gradient(entry, grad))

    def _keep_gradient(self, entry: list, grad: torch.Tensor) -> None:
        entry[1] = grad[: self.rows].detach().clone()

    def samples(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(features, gradient)`` pairs, oldest first; a batch whose backward never ran (an
        evaluation pass with gradients on, a step that raised) is left out."""
        return [(x, g) for x, g in self._entries if g is not None]

    def clear(self) -> None:
        """Forget every batch, and count the next one offered as the first."""
        self._entries.clear()
        self._offered = 0

    def __len__(self) -> int:
        return len(self.samples())


def output_layer(seed: nn.Module) -> nn.Module | None:
    """The seed's output layer, when its blueprint has the ``x + out(hidden(x))`` form with a
    linear or convolutional ``out`` a computed initialisation can solve; else None."""
    layer = getattr(seed, "output_layer", None)
    if isinstance(layer, nn.Linear):
        return layer
    if isinstance(layer, nn.Conv2d) and layer.groups == 1:
        return layer
    return None


def _rows(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The inputs of ``layer``, one row per output position (and a 1 for its bias)."""
    if isinstance(layer, nn.Conv2d):
        patches = F.unfold(
            hidden,
            layer.kernel_size,
            dilation=layer.dilation,
            padding=layer.padding,
            stride=layer.stride,
        )  # (B, C_in * kh * kw, positions), columns in the weight's own order
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = hidden.reshape(-1, hidden.shape[-1])
    rows = rows.double()
    if layer.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def _outputs(layer: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """``grad`` at ``layer``'s output positions, one row per position."""
    if isinstance(layer, nn.Conv2d):
        grad = grad.movedim(1, -1)  # (B, H, W, C): positions in unfold's order
    return grad.reshape(-1, grad.shape[-1]).double()


@torch.no_grad()
def fit_output_layer(
    seed: nn.Module, samples: list[tuple[torch.Tensor, torch.Tensor]], scale: float
) -> bool:
    """Solve ``seed``'s output layer from ``samples`` (see the module's docstring), in place.

    Args:
        seed: a freshly built seed with an :func:`output_layer`.
        samples: ``(features, loss gradient)`` pairs at the slot's output (``InitMemory``).
        scale: the seed's output RMS, as a fraction of the features' RMS.

    Returns:
        True when the layer was set; False when there was nothing to solve from (no layer, no
        samples, shapes the layer does not map, or a zero gradient), the seed left as built.
        Under ``torch.distributed`` every rank must call this for the same seed (the sums are
        added over ranks), and every rank returns the same answer.
    """
    layer = output_layer(seed)
    if layer is None or not samples:
        return False  # every rank kept the same number of batches: all return here, or none
    gram = cross = None
    energy = torch.zeros(2, dtype=torch.float64)  # sum of squared features, their count
    for features, grad in samples:
        rows, targets = _rows(layer, seed.hidden(features)), _outputs(layer, grad)
        if rows.shape[0] != targets.shape[0] or targets.shape[1] != layer.weight.shape[0]:
            return False  # a stride or padding that changes the positions: not this layer
        gram = rows.T @ rows if gram is None else gram + rows.T @ rows
        cross = rows.T @ targets if cross is None else cross + rows.T @ targets
        energy += torch.stack(
            [features.double().pow(2).sum().cpu(), torch.tensor(float(features.numel()))]
        )
    n_in, n_out = cross.shape
    stats = sum_over_ranks(torch.cat([gram.flatten().cpu(), cross.flatten().cpu(), energy]))
    gram = stats[: n_in * n_in].view(n_in, n_in)
    cross = stats[n_in * n_in : n_in * (n_in + n_out)].view(n_in, n_out)
    feature_sq, elements = stats[-2], stats[-1]
    ridge = RIDGE * gram.diagonal().mean().clamp_min(1e-12)
    weight = -torch.linalg.solve(gram + ridge * torch.eye(n_in, dtype=gram.dtype), cross)
    # The seed's output is Z @ weight, as many elements as the features: its mean square.
    output_sq = (weight * (gram @ weight)).sum() / elements
    if not output_sq > 0:
        return False  # the gradient was zero: no direction to start in
    weight *= scale * torch.sqrt(feature_sq / elements / output_sq)
    device, dtype = layer.weight.device, layer.weight.dtype
    if layer.bias is not None:
        layer.bias.copy_(weight[-1].to(device, dtype))
        weight = weight[:-1]
    layer.weight.copy_(weight.T.reshape(layer.weight.shape).to(device, dtype))
    return True

"""The incubator's helpers.

A seed in TRAINING does not run in the model's forward: it learns in the shadow pass of
``MorphogeneticModel.forward_with_shadows`` (the rest of the network run at the features the
seed would produce blended in at alpha 1, with every other parameter detached). An earlier
straight-through incubator handed the seed the host features' gradient as its own; its objective
was linear in the seed's output, which then grew without bound (see ``docs/growth.md``).
"""

from __future__ import annotations

import torch


def _detached(x: torch.Tensor) -> torch.Tensor:
    """``x.detach()``, made contiguous when it is a channels-last CPU tensor: on CPU, group-norm
    backward segfaults (torch 2.13) for a channels-last input that needs no gradient."""
    x = x.detach()
    # The cheap test first: a contiguous tensor needs nothing whatever its device.
    if not x.is_contiguous() and x.dim() == 4 and x.device.type == "cpu":
        return x.contiguous()
    return x

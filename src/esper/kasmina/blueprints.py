"""Blueprints: the seed modules a slot can grow, in a registry keyed by topology and name.

Every blueprint is shape-preserving and residual-style, and starts as (or near) the identity so a
new seed does not jolt the stream it joins. CNN seeds see (B, C, H, W); transformer seeds see
(B, T, C); MLP seeds see flat (B, C).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from esper.kasmina.hosts import TransformerBlock

BlueprintFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class Blueprint:
    """A registered seed kind.

    Attributes:
        copies_target: the seed starts as a copy of the module its slot sits on (the block
            before the slot): germination calls the fresh seed's ``copy_from(module)``, and
            refuses a slot whose module the seed cannot copy.
    """

    topology: str
    name: str
    factory: BlueprintFactory
    description: str
    copies_target: bool = False

    def build(self, width: int) -> nn.Module:
        return self.factory(width)

    def param_count(self, width: int) -> int:
        """Parameters a seed of this blueprint costs at feature width ``width``."""
        return sum(p.numel() for p in self.factory(width).parameters())


_REGISTRY: dict[str, dict[str, Blueprint]] = {}


def register_blueprint(topology: str, name: str, description: str, *, copies_target=False):
    """Decorator adding a ``width -> nn.Module`` factory to the registry."""

    def wrap(factory: BlueprintFactory) -> BlueprintFactory:
        _REGISTRY.setdefault(topology, {})[name] = Blueprint(
            topology, name, factory, description, copies_target
        )
        return factory

    return wrap


def topologies() -> list[str]:
    return sorted(_REGISTRY)


def list_blueprints(topology: str) -> list[str]:
    """Names of the blueprints valid for ``topology``, in registration order."""
    if topology not in _REGISTRY:
        raise ValueError(f"unknown topology {topology!r}; valid: {topologies()}")
    return list(_REGISTRY[topology])


def get_blueprint(topology: str, name: str) -> Blueprint:
    """Look up a blueprint. Raises ValueError naming the valid choices for ``topology``."""
    valid = list_blueprints(topology)
    if name not in _REGISTRY[topology]:
        raise ValueError(
            f"unknown blueprint {name!r} for topology {topology!r}; valid: {', '.join(valid)}"
        )
    return _REGISTRY[topology][name]


def blueprint_costs(topology: str, width: int) -> dict[str, int]:
    """``{name: parameter count}`` for every blueprint of ``topology`` at ``width``."""
    return {
        name: get_blueprint(topology, name).param_count(width) for name in list_blueprints(topology)
    }


def _heads(width: int) -> int:
    """Attention heads of a seed at ``width``: 4, 2 or 1, the most that divide it."""
    return next(h for h in (4, 2, 1) if width % h == 0)


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


# --- shared building blocks -----------------------------------------------------------------


class Identity(nn.Module):
    """The ``noop`` seed: costs nothing, changes nothing. A control for experiments."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ScaledNormResidual(nn.Module):
    """x + scale * norm(x), scale starting at 0."""

    def __init__(self, norm: nn.Module, width: int, channel_dim: int) -> None:
        super().__init__()
        self.norm = norm
        shape = (1, width, 1, 1) if channel_dim == 1 else (width,)
        self.scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.norm(x)


class ZeroInitResidual(nn.Module):
    """x + body(x), where the body's last layer starts at zero so the seed begins as identity."""

    def __init__(self, body: nn.Sequential) -> None:
        super().__init__()
        self.body = body
        last = body[-1]
        nn.init.zeros_(last.weight)
        if getattr(last, "bias", None) is not None:
            nn.init.zeros_(last.bias)

    @property
    def output_layer(self) -> nn.Module:
        """The zero-initialised last layer (what a computed initialisation solves)."""
        return self.body[-1]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """What the output layer reads."""
        return self.body[:-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# --- CNN --------------------------------------------------------------------------------------


@register_blueprint("cnn", "noop", "identity; no parameters")
def _cnn_noop(width: int) -> nn.Module:
    return Identity()


@register_blueprint("cnn", "norm", "x + scale * GroupNorm(x)")
def _cnn_norm(width: int) -> nn.Module:
    return ScaledNormResidual(nn.GroupNorm(_groups(width), width), width, channel_dim=1)


class SqueezeExcite(nn.Module):
    """Channel attention: x * 2 * sigmoid(fc(pool(x))), identity at start (fc2 zero)."""

    def __init__(self, width: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, width // reduction)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))  # (B, C)
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))  # (B, C)
        return x * (2.0 * g)[:, :, None, None]


@register_blueprint("cnn", "attention", "squeeze-and-excitation channel attention")
def _cnn_attention(width: int) -> nn.Module:
    return SqueezeExcite(width)


@register_blueprint("cnn", "depthwise", "x + pointwise(relu(norm(depthwise3x3(x))))")
def _cnn_depthwise(width: int) -> nn.Module:
    return ZeroInitResidual(
        nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(),
            nn.Conv2d(width, width, 1),
        )
    )


@register_blueprint("cnn", "conv_light", "x + conv3x3(relu(norm(x)))")
def _cnn_conv_light(width: int) -> nn.Module:
    return ZeroInitResidual(
        nn.Sequential(
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )
    )


@register_blueprint("cnn", "conv_heavy", "x + two pre-activation conv3x3 layers")
def _cnn_conv_heavy(width: int) -> nn.Module:
    return ZeroInitResidual(
        nn.Sequential(
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(width), width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
        )
    )


@register_blueprint(
    "cnn", "wide", "x + conv1x1(relu(norm(conv3x3(x)))), a branch twice the slot's width"
)
def _cnn_wide(width: int) -> nn.Module:
    # Width where the host lacks it: the hidden layer has 2 * width channels, so a seed at a
    # narrow slot adds capacity, not just depth (20 * width**2 weights against conv_light's 9).
    hidden = 2 * width
    return ZeroInitResidual(
        nn.Sequential(
            nn.Conv2d(width, hidden, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(hidden), hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, width, 1),
        )
    )


# --- Transformer ------------------------------------------------------------------------------


@register_blueprint("transformer", "noop", "identity; no parameters")
def _tf_noop(width: int) -> nn.Module:
    return Identity()


@register_blueprint("transformer", "norm", "x + scale * LayerNorm(x)")
def _tf_norm(width: int) -> nn.Module:
    return ScaledNormResidual(nn.LayerNorm(width), width, channel_dim=-1)


class LowRankResidual(nn.Module):
    """x + up(down(x)) with rank ``rank``; ``up`` starts at zero (LoRA-style)."""

    def __init__(self, width: int, rank: int = 8) -> None:
        super().__init__()
        rank = max(1, min(rank, width))
        self.down = nn.Linear(width, rank, bias=False)
        self.up = nn.Linear(rank, width, bias=False)
        nn.init.zeros_(self.up.weight)

    @property
    def output_layer(self) -> nn.Module:
        return self.up

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


@register_blueprint("transformer", "lora", "x + up(down(x)), rank 8, up zero-initialized")
def _tf_lora(width: int) -> nn.Module:
    return LowRankResidual(width)


class CausalAttentionResidual(nn.Module):
    """x + proj(causal_attention(ln(x))), output projection zero-initialized."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.n_head = _heads(width)
        self.ln = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    @property
    def output_layer(self) -> nn.Module:
        return self.proj

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The heads' attention output, concatenated: what the projection reads."""
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln(x)).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).contiguous().view(B, T, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(self.hidden(x))


@register_blueprint("transformer", "attention", "extra causal self-attention, zero-init output")
def _tf_attention(width: int) -> nn.Module:
    return CausalAttentionResidual(width)


@register_blueprint("transformer", "mlp", "x + fc2(gelu(fc1(ln(x)))), 4x hidden, fc2 zero-init")
def _tf_mlp(width: int) -> nn.Module:
    return ZeroInitResidual(
        nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 4 * width),
            nn.GELU(),
            nn.Linear(4 * width, width),
        )
    )


class SeedBlock(TransformerBlock):
    """The host's own pre-norm block as a seed, so that a host block's weights load into it as
    they are. Its head count and dropout are part of its state (a copy takes the copied
    block's), so a checkpoint rebuilds the same function."""

    def get_extra_state(self) -> dict:
        return {"n_head": self.attn.n_head, "dropout": self.attn.dropout}

    def set_extra_state(self, state: dict) -> None:
        self.attn.n_head = int(state["n_head"])
        self._set_dropout(float(state.get("dropout", 0.0)))

    def _set_dropout(self, p: float) -> None:
        self.attn.dropout = p
        self.attn.resid_drop.p = p
        self.mlp[3].p = p

    def copy_from(self, block: TransformerBlock) -> None:
        """Become a copy of ``block``: its weights (in this seed's own tensors), heads and
        dropout.

        Raises:
            ValueError: ``block`` has other parameter shapes (another width).
        """
        source = block.state_dict()
        own = {k: v for k, v in self.state_dict().items() if k != "_extra_state"}
        if source.keys() != own.keys() or any(source[k].shape != own[k].shape for k in own):
            raise ValueError("the block has another structure or width")
        extra = {"n_head": block.attn.n_head, "dropout": block.attn.dropout}
        self.load_state_dict({**source, "_extra_state": extra})


def _fresh_block(width: int) -> nn.Module:
    block = SeedBlock(width, _heads(width), dropout=0.0)
    for layer in (block.attn.qkv, block.mlp[0]):
        nn.init.normal_(layer.weight, mean=0.0, std=0.02)  # the host's own initialisation
        nn.init.zeros_(layer.bias)
    for layer in (block.attn.proj, block.mlp[2]):  # both residual branches start at zero
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return block


@register_blueprint(
    "transformer", "block", "a whole pre-norm block (attention and MLP), both outputs zero-init"
)
def _tf_block(width: int) -> nn.Module:
    # Depth: a new block after the slot's, the identity until it learns.
    return _fresh_block(width)


@register_blueprint(
    "transformer",
    "block_stack",
    "a copy of the block before the slot (depth by stacking, as G_stack)",
    copies_target=True,
)
def _tf_block_stack(width: int) -> nn.Module:
    # Built like ``block``; germination then loads the weights of the block the slot sits on.
    return _fresh_block(width)


# --- MLP (flat features) ----------------------------------------------------------------------

# The transformer blueprints that act on the last dimension alone serve flat (B, C) features as
# they are: the same factories, registered again (attention needs a sequence, so it is not).
for _name in ("noop", "norm", "lora", "mlp"):
    _blueprint = _REGISTRY["transformer"][_name]
    register_blueprint("mlp", _name, _blueprint.description)(_blueprint.factory)

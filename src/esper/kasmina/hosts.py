"""Host networks that can run their forward in segments, with named injection points between them.

A host exposes:

* ``topology``: ``"cnn"`` or ``"transformer"``;
* ``injection_points``: ordered ``{name: feature width}``, in forward order;
* ``injection_positions``: ``{name: k}``, the point sits after the first ``k`` blocks;
* ``injection_targets``: ``{name: module name}``, the module whose output is point ``name``
  (the slot is installed there as a forward hook, as ``inject_slots`` does in any model);
* ``stem(x)``, ``run_blocks(h, start, end)`` and ``head(h)``: the segments, so that
  ``head(run_blocks(stem(x), 0, n_blocks)) == forward(x)``;
* ``config``: its construction arguments as plain data, so a checkpoint can rebuild it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_POINT_FRACTIONS = (("early", 1 / 3), ("mid", 2 / 3), ("late", 1.0))


def _named_positions(n_blocks: int, lowest: int, *, floor: bool) -> dict[str, int]:
    """Spread early/mid/late over positions ``lowest..n_blocks`` (after k blocks), in order."""
    positions = {}
    for name, frac in _POINT_FRACTIONS:
        k = math.floor(n_blocks * frac) if floor else math.ceil(n_blocks * frac)
        positions[name] = max(lowest, min(n_blocks, k))
    return positions


class CNNHost(nn.Module):
    """A stack of 3x3 conv blocks (conv, batch norm, ReLU), channels doubling per block.

    Args:
        num_classes: output classes.
        n_blocks: conv blocks (>= 1).
        base_channels: channels of the first block; block ``i`` has ``base_channels * 2**i``.
        pool_layers: blocks (from the first) followed by 2x2 max-pooling; ``None`` pools after
            every block.
        in_channels: input image channels.

    Injection points sit after blocks: ``early``/``mid``/``late`` spread over the depth (a 2-block
    host puts ``mid`` and ``late`` both after block 2), plus ``block{k}`` after every block ``k``.
    """

    topology = "cnn"

    def __init__(
        self,
        num_classes: int = 10,
        n_blocks: int = 3,
        base_channels: int = 32,
        pool_layers: int | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("num_classes", num_classes, 1),
            ("n_blocks", n_blocks, 1),
            ("base_channels", base_channels, 1),
            ("in_channels", in_channels, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"CNNHost: {name} must be an integer >= {low}, got {value!r}")
        if pool_layers is None:
            pool_layers = n_blocks
        if not 0 <= pool_layers <= n_blocks:
            raise ValueError(
                f"CNNHost: pool_layers must be between 0 and n_blocks={n_blocks}, got {pool_layers}"
            )
        self.config = {
            "num_classes": num_classes,
            "n_blocks": n_blocks,
            "base_channels": base_channels,
            "pool_layers": pool_layers,
            "in_channels": in_channels,
        }
        self.n_blocks = n_blocks
        widths = [base_channels * 2**i for i in range(n_blocks)]
        blocks = []
        prev = in_channels
        for i, width in enumerate(widths):
            layers = [
                nn.Conv2d(prev, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
            if i < pool_layers:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            blocks.append(nn.Sequential(*layers))
            prev = width
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(prev, num_classes)

        self.injection_positions = _named_positions(n_blocks, 1, floor=False)
        for k in range(1, n_blocks + 1):
            self.injection_positions[f"block{k}"] = k
        self.injection_points = {
            name: widths[pos - 1]
            for name, pos in sorted(self.injection_positions.items(), key=lambda kv: kv[1])
        }
        self.injection_targets = {
            name: f"blocks.{pos - 1}" for name, pos in self.injection_positions.items()
        }

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def run_blocks(self, h: torch.Tensor, start: int, end: int) -> torch.Tensor:
        for block in self.blocks[start:end]:
            h = block(h)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(h.mean(dim=(2, 3)))  # global average pool: (B, C, H, W) -> (B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.run_blocks(self.stem(x), 0, self.n_blocks))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention over (B, T, C)."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        self.n_head = n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x)) with a 4x MLP."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerHost(nn.Module):
    """A GPT-style decoder whose head is tied to the token embedding.

    Args:
        vocab_size: tokens in the vocabulary.
        n_embd: model width.
        n_head: attention heads (must divide ``n_embd``).
        n_layer: decoder blocks (>= 1).
        block_size: longest sequence.
        dropout: dropout probability.

    Injection points: position 0 is after the embedding, position ``k`` after block ``k``;
    ``early``/``mid``/``late`` spread over ``0..n_layer`` (late is after the last block), plus
    ``layer{k}`` after every block.
    """

    topology = "transformer"

    def __init__(
        self,
        vocab_size: int,
        n_embd: int = 384,
        n_head: int = 6,
        n_layer: int = 6,
        block_size: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("n_embd", n_embd),
            ("n_head", n_head),
            ("n_layer", n_layer),
            ("block_size", block_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerHost: {name} must be an integer >= 1, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"TransformerHost: dropout must be in [0, 1), got {dropout}")
        self.config = {
            "vocab_size": vocab_size,
            "n_embd": n_embd,
            "n_head": n_head,
            "n_layer": n_layer,
            "block_size": block_size,
            "dropout": dropout,
        }
        self.n_blocks = n_layer
        self.block_size = block_size
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(n_embd, n_head, dropout) for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying
        self.apply(self._init_weights)

        self.injection_positions = _named_positions(n_layer, 0, floor=True)
        for k in range(1, n_layer + 1):
            self.injection_positions[f"layer{k}"] = k
        self.injection_points = {
            name: n_embd
            for name, _ in sorted(self.injection_positions.items(), key=lambda kv: kv[1])
        }
        # Position 0 is the stem's output, which its dropout module produces.
        self.injection_targets = {
            name: f"blocks.{pos - 1}" if pos else "drop"
            for name, pos in self.injection_positions.items()
        }

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def stem(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        if T > self.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.block_size}")
        pos = torch.arange(T, device=idx.device)
        return self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)

    def run_blocks(self, h: torch.Tensor, start: int, end: int) -> torch.Tensor:
        for block in self.blocks[start:end]:
            h = block(h)
        return h

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(h))  # (B, T, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.run_blocks(self.stem(idx), 0, self.n_blocks))


HOSTS: dict[str, type[nn.Module]] = {"cnn": CNNHost, "transformer": TransformerHost}


def build_host(kind: str, config: dict) -> nn.Module:
    """Rebuild a host from its ``topology`` and ``config`` (as stored in a checkpoint)."""
    if kind not in HOSTS:
        raise ValueError(f"unknown host kind {kind!r}; valid: {sorted(HOSTS)}")
    return HOSTS[kind](**config)

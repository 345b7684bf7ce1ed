"""The topology registry: every question whose answer depends on the kind of host, answered once.

A topology describes how features look at an injection point and how growth treats them. Code
asks ``get_topology(name).<question>`` instead of branching on ``topology == "cnn"``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """How one kind of host lays out its features, and the growth policies that follow from it.

    Attributes:
        name: registry key (``"cnn"``, ``"transformer"``).
        layout: feature layout at an injection point: ``"BCHW"`` (channels-first images),
            ``"BTC"`` (sequences, features last) or ``"BC"`` (flat features).
        keeps_isolation_while_blending: whether a seed's input stays detached in
            BLENDING/PROBATIONARY. CNN seeds keep it; transformer seeds co-adapt with the host.
        growth_order: which dormant slot a controller grows first: ``"shallowest_first"``
            (CNN: early seeds are cheap, measured on digits) or ``"deepest_first"``
            (transformer: a seed after the last block paid on pyref, one after the embedding
            did not).
        width_key: the host-config key that sets its width.
        width_multiple_of: the host-config key the width must stay a multiple of (heads), or
            None.
        output_key: the host-config key sized from the data (classes or vocabulary).
    """

    name: str
    layout: str
    keeps_isolation_while_blending: bool
    growth_order: str
    width_key: str
    width_multiple_of: str | None
    output_key: str

    def probe_shape(self, width: int) -> tuple[int, ...]:
        """A small feature shape with ``width`` features, for shape probes of new seeds."""
        return {"BCHW": (2, width, 4, 4), "BTC": (2, 4, width), "BC": (2, width)}[self.layout]

    def widen(self, host_config: dict, factor: float) -> dict:
        """A copy of ``host_config`` with its width scaled by ``factor`` (rounded; kept a
        multiple of ``width_multiple_of`` where the host needs it).

        Raises:
            ValueError: ``host_config`` does not set the width (``width_key``).
        """
        config = dict(host_config)
        if factor == 1.0:
            return config
        if self.width_key not in config:
            raise ValueError(
                f"cannot widen a {self.name} host whose config has no {self.width_key}"
            )
        width = config[self.width_key]
        step = config.get(self.width_multiple_of, 1) if self.width_multiple_of else 1
        config[self.width_key] = max(step, round(width * factor / step) * step)
        return config


_TOPOLOGY_LIST = (
    Topology(
        name="cnn",
        layout="BCHW",
        keeps_isolation_while_blending=True,
        growth_order="shallowest_first",
        width_key="base_channels",
        width_multiple_of=None,
        output_key="num_classes",
    ),
    Topology(
        name="transformer",
        layout="BTC",
        keeps_isolation_while_blending=False,
        growth_order="deepest_first",
        width_key="n_embd",
        width_multiple_of="n_head",
        output_key="vocab_size",
    ),
    # Flat features (B, C): an MLP's hidden layer, a pooled embedding. No built-in host has
    # this layout; it exists for slots injected into a user's model. Isolation is kept while
    # blending, as for images: no measurement yet says co-adaptation pays here.
    Topology(
        name="mlp",
        layout="BC",
        keeps_isolation_while_blending=True,
        growth_order="shallowest_first",
        width_key="width",
        width_multiple_of=None,
        output_key="num_classes",
    ),
)
_TOPOLOGY_REGISTRY = {t.name: t for t in _TOPOLOGY_LIST}

#: Names of the known topologies.
TOPOLOGIES = tuple(_TOPOLOGY_REGISTRY)


def get_topology(name: str) -> Topology:
    """Look a topology up by name.

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    try:
        return _TOPOLOGY_REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown topology {name!r}; valid: {', '.join(TOPOLOGIES)}") from None

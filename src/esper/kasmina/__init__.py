"""Kasmina: hosts, injection points, seed slots, lifecycle, gates, blueprints and isolation."""

from esper.kasmina.blending import BLEND_ALGORITHMS, build_blend
from esper.kasmina.blueprints import blueprint_costs, get_blueprint, list_blueprints
from esper.kasmina.errors import GateFailedError, IllegalTransitionError, SlotOccupiedError
from esper.kasmina.gates import GateConfig, QualityGates
from esper.kasmina.hosts import CNNHost, TransformerHost, build_host
from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.slot import SeedSlot, SeedState, SlotStepReport

__all__ = [
    "BLEND_ALGORITHMS",
    "CNNHost",
    "GateConfig",
    "GateFailedError",
    "IllegalTransitionError",
    "MorphogeneticModel",
    "QualityGates",
    "SeedSlot",
    "SeedState",
    "SlotOccupiedError",
    "SlotStepReport",
    "TransformerHost",
    "blueprint_costs",
    "build_blend",
    "build_host",
    "get_blueprint",
    "list_blueprints",
]

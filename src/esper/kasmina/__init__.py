"""Kasmina: hosts, injection points, seed slots, lifecycle, gates, blueprints and isolation."""

from esper.kasmina.blending import BLEND_ALGORITHMS, build_blend
from esper.kasmina.blueprints import blueprint_costs, get_blueprint, list_blueprints
from esper.kasmina.errors import GateFailedError, IllegalTransitionError, SlotOccupiedError
from esper.kasmina.gates import GateConfig, QualityGates
from esper.kasmina.hosts import CNNHost, TransformerHost, build_host
from esper.kasmina.inject import InjectionError, inject_slots
from esper.kasmina.lifecycle import SlotStepReport
from esper.kasmina.model import MorphogeneticModel
from esper.kasmina.slot import SeedSlot
from esper.kasmina.state import SeedState
from esper.kasmina.telemetry import capture_telemetry
from esper.kasmina.tensors import all_finite

__all__ = [
    "BLEND_ALGORITHMS",
    "CNNHost",
    "GateConfig",
    "GateFailedError",
    "IllegalTransitionError",
    "InjectionError",
    "MorphogeneticModel",
    "QualityGates",
    "SeedSlot",
    "SeedState",
    "SlotOccupiedError",
    "SlotStepReport",
    "TransformerHost",
    "all_finite",
    "blueprint_costs",
    "build_blend",
    "build_host",
    "capture_telemetry",
    "get_blueprint",
    "inject_slots",
    "list_blueprints",
]

"""Leyline: the shared contracts of Esper. Imports nothing else of esper."""

from esper.leyline.defaults import *  # noqa: F403 - every DEFAULT_* is part of the contract
from esper.leyline.defaults import TELEMETRY_SCHEMA_VERSION, TOPOLOGIES
from esper.leyline.gates import GateLevel, GateResult
from esper.leyline.reports import SeedMetrics, SeedStateReport
from esper.leyline.stages import (
    VALID_TRANSITIONS,
    SeedStage,
    affects_output,
    is_active_stage,
    is_failure_stage,
    is_terminal_stage,
    is_valid_transition,
)
from esper.leyline.telemetry import TelemetryEvent, TelemetryEventType

__all__ = [
    "TELEMETRY_SCHEMA_VERSION",
    "TOPOLOGIES",
    "VALID_TRANSITIONS",
    "GateLevel",
    "GateResult",
    "SeedMetrics",
    "SeedStage",
    "SeedStateReport",
    "TelemetryEvent",
    "TelemetryEventType",
    "affects_output",
    "is_active_stage",
    "is_failure_stage",
    "is_terminal_stage",
    "is_valid_transition",
]

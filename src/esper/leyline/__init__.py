"""Leyline: the shared contracts of Esper. Imports nothing else of esper."""

from esper.leyline.controller import (
    Action,
    Controller,
    Decision,
    Outcome,
    TrainingSignals,
    as_controller,
    controller_state,
)
from esper.leyline.defaults import *  # noqa: F403 - every DEFAULT_* is part of the contract
from esper.leyline.defaults import TELEMETRY_SCHEMA_VERSION
from esper.leyline.gates import GateLevel, GateResult
from esper.leyline.lifecycle import (
    GateEvaluated,
    IsolationViolated,
    LifecycleEvent,
    LifecycleListener,
    StageChanged,
)
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
from esper.leyline.telemetry import TelemetryEvent, TelemetryEventType, TelemetrySink, as_sink
from esper.leyline.topology import TOPOLOGIES, Topology, get_topology

__all__ = [
    "Action",
    "Controller",
    "Decision",
    "GateEvaluated",
    "IsolationViolated",
    "LifecycleEvent",
    "LifecycleListener",
    "Outcome",
    "StageChanged",
    "Topology",
    "TrainingSignals",
    "as_controller",
    "as_sink",
    "controller_state",
    "get_topology",
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
    "TelemetrySink",
    "affects_output",
    "is_active_stage",
    "is_failure_stage",
    "is_terminal_stage",
    "is_valid_transition",
]

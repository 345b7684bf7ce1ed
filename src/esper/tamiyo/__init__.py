"""Tamiyo: the heuristic controller (it reads the signals tolaria's tracker builds)."""

from esper.tamiyo.decisions import Action, Controller, Decision, TrainingSignals
from esper.tamiyo.heuristic import HeuristicConfig, HeuristicController

__all__ = [
    "Action",
    "Controller",
    "Decision",
    "HeuristicConfig",
    "HeuristicController",
    "TrainingSignals",
]

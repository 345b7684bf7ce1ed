"""Tamiyo: the signal tracker and the heuristic controller."""

from esper.tamiyo.decisions import Action, Controller, Decision, TrainingSignals
from esper.tamiyo.heuristic import HeuristicConfig, HeuristicController
from esper.tamiyo.tracker import SignalTracker

__all__ = [
    "Action",
    "Controller",
    "Decision",
    "HeuristicConfig",
    "HeuristicController",
    "SignalTracker",
    "TrainingSignals",
]

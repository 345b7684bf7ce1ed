"""The controller contracts, re-exported from :mod:`esper.leyline.controller` (their home) so
``from esper.tamiyo import Decision`` keeps working."""

from esper.leyline.controller import Action, Controller, Decision, Outcome, TrainingSignals

__all__ = ["Action", "Controller", "Decision", "Outcome", "TrainingSignals"]

"""Tolaria: the training side: tasks and data, the epoch loop as steps, optimizers, the governor."""

from esper.tolaria.config import TrainerConfig
from esper.tolaria.data import LoaderData, TaskData
from esper.tolaria.governor import Governor
from esper.tolaria.optim import GrowthOptimizers
from esper.tolaria.records import LifecycleRecorder, SeedRecord
from esper.tolaria.signals import SignalTracker
from esper.tolaria.trainer import EpochResult, Trainer

__all__ = [
    "EpochResult",
    "Governor",
    "GrowthOptimizers",
    "LifecycleRecorder",
    "LoaderData",
    "SeedRecord",
    "SignalTracker",
    "TaskData",
    "Trainer",
    "TrainerConfig",
]

"""Helpers shared by the tests and the benchmarks: tiny hosts, synthetic batches, a training
step, permissive gates and a lifecycle driver that takes a slot to any stage.

One module for what each of them used to define on its own; benchmarks import from here, never
from one another. Depends on torch and esper only (no pytest), so scripts can use it too.
"""

from esper.testing.batches import image_batch, random_ids, random_images, toy_image_task
from esper.testing.hosts import (
    CNN_HOSTS,
    CNN_INPUT_SHAPE,
    NUM_CLASSES,
    TF_HOSTS,
    TF_INPUT_SHAPE,
    TINY_HOSTS,
    VOCAB_SIZE,
    TinyHost,
)
from esper.testing.lifecycle import (
    DEFAULT_BLUEPRINT,
    drive_to,
    model_at_stage,
    pass_g2_metrics,
    permissive_gates,
    perturb_seed,
    set_contribution,
)
from esper.testing.signals import slot_report, training_signals
from esper.testing.steps import cross_entropy, host_output, make_train_step, training_loss

__all__ = [
    "CNN_HOSTS",
    "CNN_INPUT_SHAPE",
    "DEFAULT_BLUEPRINT",
    "NUM_CLASSES",
    "TF_HOSTS",
    "TF_INPUT_SHAPE",
    "TINY_HOSTS",
    "VOCAB_SIZE",
    "TinyHost",
    "cross_entropy",
    "slot_report",
    "training_signals",
    "drive_to",
    "host_output",
    "image_batch",
    "make_train_step",
    "training_loss",
    "model_at_stage",
    "pass_g2_metrics",
    "permissive_gates",
    "perturb_seed",
    "random_ids",
    "random_images",
    "set_contribution",
    "toy_image_task",
]

"""Esper: morphogenetic neural networks in PyTorch.

A host network trains as usual while seeds grow into named slots, incubate without touching the
host, blend in on a schedule and are kept only if they measurably help.
"""

__version__ = "0.4.0"


def __getattr__(name: str):
    # The model API, importable as ``esper.inject_slots`` without ``import esper`` loading torch
    # for the command line's sake.
    if name == "inject_slots":
        from esper.kasmina.inject import inject_slots

        return inject_slots
    if name == "MorphogeneticModel":
        from esper.kasmina.model import MorphogeneticModel

        return MorphogeneticModel
    raise AttributeError(f"module 'esper' has no attribute {name!r}")

"""Esper: morphogenetic neural networks in PyTorch.

A host network trains as usual while seeds grow into named slots, incubate without touching the
host, blend in on a schedule and are kept only if they measurably help.
"""

__version__ = "0.1.0"

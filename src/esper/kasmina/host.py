"""Public home of the hosts and the model (the import path used since the original bug report)."""

from esper.kasmina.hosts import CNNHost, TransformerHost, build_host
from esper.kasmina.model import MorphogeneticModel

__all__ = ["CNNHost", "MorphogeneticModel", "TransformerHost", "build_host"]

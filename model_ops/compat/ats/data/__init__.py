"""``ats.data``: multi-resolution inputs."""

from model_ops.data import FromTensors, InMemoryImage, MultiResolutionImage

__all__ = ["FromTensors", "InMemoryImage", "MultiResolutionImage"]

"""``ats.ops.extract_patches``: cut patches at integer offsets (compiled op)."""
from model_ops.python.ops.extract_patches import extract_patches

__all__ = ["extract_patches"]

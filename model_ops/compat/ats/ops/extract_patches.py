"""``ats.ops.extract_patches``: cut patches at integer offsets (compiled op)."""

from model_ops.patch_ops import extract_patches

__all__ = ["extract_patches"]

"""The compiled patch op: ``extract_patches`` and the library loader."""
from model_ops.python.ops.extract_patches import extract_patches
from model_ops.python.ops.loader import build_info, load_op_library, op_library_version

__all__ = ["build_info", "extract_patches", "load_op_library", "op_library_version"]

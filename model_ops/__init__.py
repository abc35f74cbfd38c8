"""Attention sampling for Keras 3 / TensorFlow (Katharopoulos & Fleuret, 2019).

Everything a user needs is importable from here::

    from model_ops import attention_sampling, extract_patches, load_model, load_op_library

Names resolve lazily (PEP 562), so ``import model_ops`` loads no TensorFlow:
build scripts and the server's configuration import this package cheaply,
and a name pulls in only its own module on first use.

Modules, one job each: ``lowres`` (the low-resolution view), ``sampling``
(drawing cells), ``geometry`` (cells to pixel offsets), ``expectation``
(unbiased estimators), ``layers`` and ``regularizers`` (Keras pieces),
``core`` (``attention_sampling``), ``data`` (multi-resolution inputs),
``patch_ops`` and ``op_library`` (the compiled patch op and its loader),
``export`` (served model versions), ``tissue`` (background masks for slides).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "attention_sampling": "core",
    "extract_patches": "patch_ops",
    "load_op_library": "op_library",
    "build_info": "op_library",
    "op_library_version": "op_library",
    "sample_positions": "sampling",
    "aggregate": "expectation",
    "cells_to_offsets": "geometry",
    "cell_grid": "geometry",
    "low_resolution_view": "lowres",
    "SampleSoftmax": "layers",
    "SamplePatches": "layers",
    "Expectation": "layers",
    "multinomial_entropy": "regularizers",
    "MultiResolutionImage": "data",
    "FromTensors": "data",
    "ModelMetadata": "export",
    "IncompatibleModelError": "export",
    "export_model": "export",
    "load_model": "export",
    "load_metadata": "export",
    "latest_version": "export",
    "tissue_mask": "tissue",
    "cell_mask": "tissue",
    "masked_attention": "tissue",
}

# the names of _EXPORTS, spelled out so that linters and type checkers see the re-exports
__all__ = [
    "Expectation",
    "FromTensors",
    "IncompatibleModelError",
    "ModelMetadata",
    "MultiResolutionImage",
    "SamplePatches",
    "SampleSoftmax",
    "aggregate",
    "attention_sampling",
    "build_info",
    "cell_grid",
    "cell_mask",
    "cells_to_offsets",
    "export_model",
    "extract_patches",
    "latest_version",
    "load_metadata",
    "load_model",
    "load_op_library",
    "low_resolution_view",
    "masked_attention",
    "multinomial_entropy",
    "op_library_version",
    "sample_positions",
    "tissue_mask",
]

if TYPE_CHECKING:
    from model_ops.core import attention_sampling
    from model_ops.data import FromTensors, MultiResolutionImage
    from model_ops.expectation import aggregate
    from model_ops.export import (
        IncompatibleModelError,
        ModelMetadata,
        export_model,
        latest_version,
        load_metadata,
        load_model,
    )
    from model_ops.geometry import cell_grid, cells_to_offsets
    from model_ops.layers import Expectation, SamplePatches, SampleSoftmax
    from model_ops.lowres import low_resolution_view
    from model_ops.op_library import build_info, load_op_library, op_library_version
    from model_ops.patch_ops import extract_patches
    from model_ops.regularizers import multinomial_entropy
    from model_ops.sampling import sample_positions
    from model_ops.tissue import cell_mask, masked_attention, tissue_mask


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model_ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"model_ops.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

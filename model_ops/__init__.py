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
Two-level attention sampling for gigapixel images: ``two_level`` (regions,
then patches in each; the estimator), ``two_level_layers`` (Keras pieces,
``attention_sampling_two_level``), ``two_level_pipeline`` (stage by stage over
an image never loaded whole) and ``two_level_export``.
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
    "TwoLevelSpec": "export",
    "region_offsets": "geometry",
    "patch_offsets": "geometry",
    "sample_patches_in_regions": "two_level",
    "aggregate_two_level": "two_level",
    "SampleRegions": "two_level_layers",
    "SamplePatchesInRegions": "two_level_layers",
    "TwoLevelExpectation": "two_level_layers",
    "attention_sampling_two_level": "two_level_layers",
    "TwoLevelNetworks": "two_level_pipeline",
    "SavedModelStages": "two_level_pipeline",
    "TwoLevelResult": "two_level_pipeline",
    "run_two_level": "two_level_pipeline",
    "export_two_level_model": "two_level_export",
}

# the names of _EXPORTS, spelled out so that linters and type checkers see the re-exports
__all__ = [
    "Expectation",
    "FromTensors",
    "IncompatibleModelError",
    "ModelMetadata",
    "MultiResolutionImage",
    "SamplePatches",
    "SamplePatchesInRegions",
    "SampleRegions",
    "SampleSoftmax",
    "SavedModelStages",
    "TwoLevelExpectation",
    "TwoLevelNetworks",
    "TwoLevelResult",
    "TwoLevelSpec",
    "aggregate",
    "aggregate_two_level",
    "attention_sampling",
    "attention_sampling_two_level",
    "build_info",
    "cell_grid",
    "cell_mask",
    "cells_to_offsets",
    "export_model",
    "export_two_level_model",
    "extract_patches",
    "latest_version",
    "load_metadata",
    "load_model",
    "load_op_library",
    "low_resolution_view",
    "masked_attention",
    "multinomial_entropy",
    "op_library_version",
    "patch_offsets",
    "region_offsets",
    "run_two_level",
    "sample_patches_in_regions",
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
        TwoLevelSpec,
        export_model,
        latest_version,
        load_metadata,
        load_model,
    )
    from model_ops.geometry import cell_grid, cells_to_offsets, patch_offsets, region_offsets
    from model_ops.layers import Expectation, SamplePatches, SampleSoftmax
    from model_ops.lowres import low_resolution_view
    from model_ops.op_library import build_info, load_op_library, op_library_version
    from model_ops.patch_ops import extract_patches
    from model_ops.regularizers import multinomial_entropy
    from model_ops.sampling import sample_positions
    from model_ops.tissue import cell_mask, masked_attention, tissue_mask
    from model_ops.two_level import aggregate_two_level, sample_patches_in_regions
    from model_ops.two_level_export import export_two_level_model
    from model_ops.two_level_layers import (
        SamplePatchesInRegions,
        SampleRegions,
        TwoLevelExpectation,
        attention_sampling_two_level,
    )
    from model_ops.two_level_pipeline import SavedModelStages, TwoLevelNetworks, TwoLevelResult, run_two_level


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model_ops' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"model_ops.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

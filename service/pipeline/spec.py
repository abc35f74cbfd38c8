"""What the server requires of a model version beyond its ``ats_model.json``
format (read and version-checked by model_ops.export): the pipeline runs on
that ``ModelMetadata`` record itself."""

from __future__ import annotations

from model_ops.export import ModelMetadata


def check_servable(metadata: ModelMetadata) -> None:
    """Raise ValueError if the server cannot feed or bound this model."""
    if metadata.input_dtype != "uint8" or metadata.channels not in (1, 3):
        raise ValueError(
            f"model {metadata.name!r}: the server takes uint8 images of 1 or 3 channels, "
            f"not {metadata.input_dtype} x {metadata.channels}"
        )
    if len(metadata.patch_size) != 2 or not 1 <= metadata.n_patches <= metadata.max_patches:
        raise ValueError(f"model {metadata.name!r}: inconsistent patch_size/n_patches/max_patches")

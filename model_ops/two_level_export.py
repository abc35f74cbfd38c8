"""Export a two-level model: four staged signatures plus ``ats_model.json`` format 2.

The server runs the stages itself (it reads the coarse view, the region
views and the patches between them), so there is no all-in-one signature.
Every signature takes uint8 pixels:

- ``coarse_attention``: ``x_coarse`` ``(B, h, w, C)`` -> ``attention`` ``(B, Sh, Sw)``;
- ``fine_attention``: ``region_views`` ``(M, vh, vw, C)`` -> ``attention`` ``(M, Fh, Fw)``;
- ``features``: ``patches`` ``(M, ph, pw, C)`` -> ``features`` ``(M, D)``;
- ``head``: ``features`` float32 ``(B, D)`` -> ``probabilities`` ``(B, classes)``.

Load with :func:`model_ops.load_model` and run with
:func:`model_ops.two_level_pipeline.run_two_level` over
:class:`~model_ops.two_level_pipeline.SavedModelStages`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import keras
import tensorflow as tf

from model_ops.export import METADATA_FILE, TWO_LEVEL_FORMAT, ModelMetadata, TwoLevelSpec, tiny_networks
from model_ops.two_level_pipeline import TwoLevelNetworks, two_level_spec


def export_two_level_model(
    coarse_attention: keras.Model,
    fine_attention: keras.Model,
    feature: keras.Model,
    head: keras.Model,
    metadata: ModelMetadata,
    path: str | os.PathLike,
) -> pathlib.Path:
    """Write the SavedModel and ``ats_model.json`` of a two-level model to the version directory ``path``.

    ``metadata`` must have its ``two_level`` section; the attention networks
    take float pixels (times ``pixel_scale``) and end in one softmax per
    image or region. Returns the directory.
    """
    two_level_spec(metadata)
    path = pathlib.Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty: model versions are immutable, export a new version")
    metadata = dataclasses.replace(metadata, format=TWO_LEVEL_FORMAT).with_current_versions()
    stages = TwoLevelNetworks(coarse_attention, fine_attention, feature, head, metadata.pixel_scale)
    c, (ph, pw) = metadata.channels, metadata.patch_size
    archive = keras.export.ExportArchive()
    for net in stages.networks:
        archive.track(net)
    images = tf.TensorSpec([None, None, None, c], tf.uint8)
    endpoints = {
        "coarse_attention": (lambda x_coarse: {"attention": stages.coarse_attention(x_coarse)}, "x_coarse"),
        "fine_attention": (
            lambda region_views: {"attention": stages.fine_attention(region_views)},
            "region_views",
        ),
        "features": (lambda patches: {"features": stages.features(patches)}, "patches"),
        "head": (lambda features: {"probabilities": stages.head(features)}, "features"),
    }
    specs = {
        "x_coarse": images,
        "region_views": images,
        "patches": tf.TensorSpec([None, ph, pw, c], tf.uint8),
        "features": tf.TensorSpec([None, metadata.feature_dim], tf.float32),
    }
    for name, (fn, arg) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=[tf.TensorSpec.from_spec(specs[arg], name=arg)])
    archive.write_out(str(path), verbose=False)
    (path / METADATA_FILE).write_text(metadata.to_json())
    return path


def tiny_two_level_metadata(
    name: str = "tiny-two-level",
    channels: int = 1,
    n_classes: int = 10,
    low_scale: float = 1 / 64,
    region_size: Sequence[int] = (64, 64),
    fine_scale: float = 0.25,
    patch_size: Sequence[int] = (8, 8),
    n_regions: int = 3,
    n_patches: int = 2,
    replace_regions: bool = False,
    replace_patches: bool = False,
) -> ModelMetadata:
    """Metadata of a small two-level model (feature length 4), for tests."""
    return ModelMetadata(
        name=name,
        classes=[str(i) for i in range(n_classes)],
        low_scale=low_scale,
        patch_size=list(patch_size),
        n_patches=n_patches,
        max_patches=16,
        replace=replace_patches,
        receptive_field=0,
        channels=channels,
        feature_dim=4,
        format=TWO_LEVEL_FORMAT,
        two_level=TwoLevelSpec(
            region_size=list(region_size),
            fine_scale=fine_scale,
            n_regions=n_regions,
            max_regions=8,
            replace_regions=replace_regions,
        ),
    )


def tiny_two_level_networks(metadata: ModelMetadata, seed: int = 0) -> TwoLevelNetworks:
    """Random-weight networks of the right interfaces for ``metadata`` (see ``export.tiny_networks``)."""
    coarse, feature, head = tiny_networks(
        metadata.channels, len(metadata.classes), metadata.feature_dim, metadata.patch_size, seed
    )
    fine = tiny_networks(metadata.channels, 1, 1, metadata.patch_size, seed + 1)[0]
    return TwoLevelNetworks(coarse, fine, feature, head, metadata.pixel_scale)


def export_tiny_two_level_model(path: str | os.PathLike, seed: int = 0, **metadata) -> pathlib.Path:
    """Export a random-weight two-level model (for service tests); ``metadata`` as
    :func:`tiny_two_level_metadata` takes it. Takes a few seconds."""
    spec = tiny_two_level_metadata(**metadata)
    return export_two_level_model(*tiny_two_level_networks(spec, seed).networks, spec, path)

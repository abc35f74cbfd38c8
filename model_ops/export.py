"""Export an attention-sampling model as a served version: SavedModel signatures plus ``ats_model.json``.

The layout and the signatures are the contract in ``models/README.md``. Every
signature takes uint8 pixels: ``predict_image`` cuts its patches with the
compiled op, converting to float inside the op, so no float copy of a whole
megapixel image is ever made. Because the op is inside the graph, a process
must call :func:`model_ops.load_op_library` before
``tf.saved_model.load``; :func:`load_model` does that and first checks, with
:func:`check_compatible`, that the TensorFlow and op interface the model
was exported with can run here.

A two-level model (:mod:`model_ops.two_level_export`) writes metadata format
2: the same keys plus a ``two_level`` section (:class:`TwoLevelSpec`). A
reader of format 1 only refuses it, as it should: it cannot run the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from model_ops import expectation, geometry, lowres, sampling
from model_ops.op_library import load_op_library, op_library_version, release
from model_ops.patch_ops import extract_patches

METADATA_FILE = "ats_model.json"
METADATA_FORMAT = 1
TWO_LEVEL_FORMAT = 2
MODE_SAMPLE, MODE_TOP_K = 0, 1


@dataclasses.dataclass(frozen=True)
class TwoLevelSpec:
    """The region level of a two-level model (``two_level`` in ``ats_model.json``).

    The top-level keys keep their meaning: ``low_scale``/``low_size`` and
    ``receptive_field`` are the coarse view of the whole image and its
    attention network, ``patch_size``, ``n_patches``, ``max_patches`` and
    ``replace`` the patches drawn *in each region*. This adds the regions:
    their size in level-0 pixels, the scale of their view, how many are drawn.
    """

    region_size: list[int]
    fine_scale: float
    n_regions: int
    max_regions: int
    replace_regions: bool
    fine_receptive_field: int = 0

    def fine_view_shape(self) -> tuple[int, int]:
        """Size of a region's view: ``region_size * fine_scale``, rounded as ``low_scale`` is."""
        return lowres.low_resolution_size(self.region_size, self.fine_scale)


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What a server must know to run a version (``ats_model.json``, see models/README.md)."""

    name: str
    classes: list[str]
    low_scale: float
    patch_size: list[int]
    n_patches: int
    max_patches: int
    replace: bool
    receptive_field: int
    channels: int
    feature_dim: int
    low_size: list[int] | None = None
    pixel_scale: float = 1.0 / 255
    input_dtype: str = "uint8"
    format: int = METADATA_FORMAT
    tensorflow_version: str = ""
    op_library_version: str = ""
    two_level: TwoLevelSpec | None = None

    def low_shape(self, height: int, width: int) -> tuple[int, int]:
        """Size of the low-resolution view of a ``height`` x ``width`` image."""
        if self.low_size is not None:
            low_height, low_width = self.low_size
            return low_height, low_width
        return lowres.low_resolution_size((height, width), self.low_scale)

    def with_current_versions(self) -> ModelMetadata:
        return dataclasses.replace(
            self, tensorflow_version=tf.__version__, op_library_version=op_library_version()
        )

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        if self.two_level is None:
            del raw["two_level"]  # one-level files stay exactly as format 1 wrote them
        return json.dumps(raw, indent=2) + "\n"


class IncompatibleModelError(RuntimeError):
    """A version needs a TensorFlow or op interface that is not running (see :func:`check_compatible`)."""


def load_metadata(version_dir: str | os.PathLike) -> ModelMetadata:
    """Read and validate ``ats_model.json`` of a version directory."""
    path = pathlib.Path(version_dir) / METADATA_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: not a model version exported by export_model") from None
    if raw.get("format") not in (METADATA_FORMAT, TWO_LEVEL_FORMAT):
        raise ValueError(
            f"{path}: unsupported metadata format {raw.get('format')!r} "
            f"(this code reads formats {METADATA_FORMAT} and {TWO_LEVEL_FORMAT})"
        )
    optional = {"low_size", "pixel_scale", "input_dtype", "two_level", "fine_receptive_field"}
    values = _known_keys(ModelMetadata, raw, optional, path)
    two_level = raw.get("two_level")
    if (two_level is not None) != (raw["format"] == TWO_LEVEL_FORMAT):
        raise ValueError(
            f"{path}: a 'two_level' section goes with format {TWO_LEVEL_FORMAT}, and only with it"
        )
    if two_level is not None:
        values["two_level"] = TwoLevelSpec(**_known_keys(TwoLevelSpec, two_level, optional, path))
    return ModelMetadata(**values)


def _known_keys(cls: type, raw: dict, optional: set[str], path: pathlib.Path) -> dict:
    """The keys of ``raw`` that are fields of ``cls``, after checking that none it needs is missing."""
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(fields - set(raw) - optional)
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    return {k: v for k, v in raw.items() if k in fields}


def check_compatible(metadata: ModelMetadata) -> None:
    """Raise :class:`IncompatibleModelError` naming the mismatch if this process cannot run the model.

    Two rules, from what each version promises. The op interface
    (``model_ops/cc/VERSION``, semantic versioning) must have the model's
    major and at least its minor: a minor adds, a major breaks. TensorFlow
    reads SavedModels of its own or an older release of the same major, so a
    patch release (or a newer minor) never refuses a model; a newer minor
    than the running one, or another major, does.
    """
    problems = []
    exported, running = release(metadata.tensorflow_version), release(tf.__version__)
    if exported[0] != running[0] or exported > running:
        problems.append(
            f"it was exported with TensorFlow {metadata.tensorflow_version} "
            f"but TensorFlow {tf.__version__} is running (it reads models of TensorFlow "
            f"{running[0]}.0 to {running[0]}.{running[1]})"
        )
    needed, installed = release(metadata.op_library_version), release(op_library_version())
    if needed[0] != installed[0] or needed > installed:
        problems.append(
            f"it needs op library {metadata.op_library_version} "
            f"but op library {op_library_version()} is installed (compatible: {needed[0]}.x from "
            f"{needed[0]}.{needed[1]})"
        )
    if problems:
        raise IncompatibleModelError(
            f"cannot load model {metadata.name!r}: "
            + "; ".join(problems)
            + ". Re-export it with the installed versions."
        )


def version_dirs(model_dir: str | os.PathLike) -> dict[int, pathlib.Path]:
    """A model's integer-named version directories by version, in numeric order (none: empty)."""
    path = pathlib.Path(model_dir)
    if not path.is_dir():
        return {}
    return dict(sorted((int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit()))


def latest_version(model_dir: str | os.PathLike) -> pathlib.Path:
    """The highest integer version directory of a model (the one a repository serves by default)."""
    versions = version_dirs(model_dir)
    if not versions:
        raise FileNotFoundError(f"{model_dir} holds no integer version directory")
    return versions[max(versions)]


def load_model(version_dir: str | os.PathLike) -> tuple[Any, ModelMetadata]:
    """Check versions, load the op library, then load the SavedModel; returns ``(model, metadata)``."""
    metadata = load_metadata(version_dir)
    check_compatible(metadata)
    load_op_library()
    return tf.saved_model.load(str(version_dir)), metadata


def _squeeze_channel(attention: tf.Tensor) -> tf.Tensor:
    """Accept maps ``(B, Sh, Sw)`` or ``(B, Sh, Sw, 1)``."""
    return attention[..., 0] if attention.shape.rank == 4 else attention


def _low_size(image_shape: tf.Tensor, metadata: ModelMetadata) -> tf.Tensor:
    """The low view size for a full image ``(H, W)`` in the graph (see ``ModelMetadata.low_shape``)."""
    if metadata.low_size is not None:
        return tf.constant(metadata.low_size, tf.int32)
    return lowres.low_resolution_size_tensor(image_shape, metadata.low_scale)


class ServingFunctions:
    """The four exported functions over the three networks (also usable in-process, unexported)."""

    def __init__(
        self, attention_net: keras.Model, feature_net: keras.Model, head: keras.Model, metadata: ModelMetadata
    ) -> None:
        self.attention_net, self.feature_net, self.head = attention_net, feature_net, head
        self.metadata = metadata

    def _to_float(self, pixels: tf.Tensor) -> tf.Tensor:
        return tf.cast(pixels, tf.float32) * self.metadata.pixel_scale

    def attention(self, x_low: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"attention": _squeeze_channel(self.attention_net(self._to_float(x_low), training=False))}

    def features(self, patches: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"features": self.feature_net(self._to_float(patches), training=False)}

    def head_fn(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"probabilities": self.head(features, training=False)}

    def predict_image(
        self, image: tf.Tensor, n_patches: tf.Tensor, seed: tf.Tensor, mode: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        meta = self.metadata
        tf.debugging.assert_less_equal(
            n_patches, meta.max_patches, message=f"n_patches exceeds max_patches={meta.max_patches}"
        )
        tf.debugging.assert_greater(n_patches, 0, message="n_patches must be positive")
        batch = image[None]
        high_shape = tf.shape(image)[:2]
        low_shape = _low_size(high_shape, meta)
        x_low = lowres.low_resolution_view(batch, low_shape)
        attention = self.attention(x_low)["attention"]
        cells, probs = tf.cond(
            tf.equal(mode, MODE_TOP_K),
            lambda: sampling.sample_positions(attention, n_patches, meta.replace, mode="top_k"),
            lambda: sampling.sample_positions(attention, n_patches, meta.replace, mode="sample", seed=seed),
        )
        offsets = geometry.cells_to_offsets(
            cells, low_shape, high_shape, tf.shape(attention)[1:3], meta.patch_size, meta.receptive_field
        )
        patches = extract_patches(
            batch, offsets, meta.patch_size, output_dtype=tf.float32, scale=meta.pixel_scale
        )
        features = self.feature_net(
            tf.reshape(patches, [-1, *meta.patch_size, meta.channels]), training=False
        )
        features = tf.reshape(features, [1, -1, meta.feature_dim])
        estimate = expectation.aggregate(features, probs, meta.replace)
        return {
            "probabilities": self.head(estimate, training=False)[0],
            "attention": attention[0],
            "offsets": offsets[0],
            "cells": cells[0],
            "patch_attention": probs[0],
        }


def export_model(
    attention_net: keras.Model,
    feature_net: keras.Model,
    head: keras.Model,
    metadata: ModelMetadata,
    path: str | os.PathLike,
) -> pathlib.Path:
    """Write the SavedModel and ``ats_model.json`` to the version directory ``path``.

    ``attention_net`` maps float pixels ``(B, h, w, C)`` in ``[0, 1]`` (times
    ``pixel_scale``) to a map that sums to 1 per image; ``feature_net`` maps
    float patches ``(M, ph, pw, C)`` to ``(M, D)``; ``head`` maps the
    aggregated ``(B, D)`` to class probabilities. Returns the directory.
    """
    path = pathlib.Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty: model versions are immutable, export a new version")
    metadata = metadata.with_current_versions()
    fns = ServingFunctions(attention_net, feature_net, head, metadata)
    c, (ph, pw) = metadata.channels, metadata.patch_size
    archive = keras.export.ExportArchive()
    for net in (attention_net, feature_net, head):
        archive.track(net)
    endpoints = {
        "attention": (fns.attention, [tf.TensorSpec([None, None, None, c], tf.uint8, name="x_low")]),
        "features": (fns.features, [tf.TensorSpec([None, ph, pw, c], tf.uint8, name="patches")]),
        "head": (fns.head_fn, [tf.TensorSpec([None, metadata.feature_dim], tf.float32, name="features")]),
        "predict_image": (
            fns.predict_image,
            [
                tf.TensorSpec([None, None, c], tf.uint8, name="image"),
                tf.TensorSpec([], tf.int32, name="n_patches"),
                tf.TensorSpec([], tf.int64, name="seed"),
                tf.TensorSpec([], tf.int32, name="mode"),
            ],
        ),
    }
    for name, (fn, spec) in endpoints.items():
        archive.add_endpoint(name, fn, input_signature=spec)
    archive.write_out(str(path), verbose=False)
    (path / METADATA_FILE).write_text(metadata.to_json())
    return path


def tiny_networks(
    channels: int = 1,
    n_classes: int = 10,
    feature_dim: int = 4,
    patch_size: Sequence[int] = (8, 8),
    seed: int = 0,
) -> tuple[keras.Model, keras.Model, keras.Model]:
    """Three random-weight networks of the right interfaces, small enough to export in seconds."""
    keras.utils.set_random_seed(seed)
    x_low = keras.Input((None, None, channels))
    logits = keras.layers.Conv2D(1, 3, padding="same")(x_low)
    attention = keras.Model(x_low, keras.layers.Softmax(axis=(1, 2, 3))(logits))  # one softmax over all cells
    patch = keras.Input((*patch_size, channels))
    pooled = keras.layers.GlobalMaxPooling2D()(keras.layers.Conv2D(feature_dim, 3, activation="relu")(patch))
    features = keras.Model(patch, pooled)
    aggregated = keras.Input((feature_dim,))
    head = keras.Model(aggregated, keras.layers.Dense(n_classes, activation="softmax")(aggregated))
    return attention, features, head


def export_tiny_model(
    path: str | os.PathLike,
    name: str = "tiny",
    channels: int = 1,
    n_classes: int = 10,
    low_scale: float = 0.125,
    patch_size: Sequence[int] = (8, 8),
    n_patches: int = 4,
    max_patches: int = 64,
    replace: bool = False,
    seed: int = 0,
) -> pathlib.Path:
    """Export a random-weight model with the real signatures (for service tests); takes a few seconds."""
    feature_dim = 4
    attention, features, head = tiny_networks(channels, n_classes, feature_dim, patch_size, seed)
    metadata = ModelMetadata(
        name=name,
        classes=[str(i) for i in range(n_classes)],
        low_scale=low_scale,
        patch_size=list(patch_size),
        n_patches=n_patches,
        max_patches=max_patches,
        replace=replace,
        receptive_field=0,
        channels=channels,
        feature_dim=feature_dim,
    )
    return export_model(attention, features, head, metadata, path)

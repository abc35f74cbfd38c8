"""Two-level Keras layers: pixels against NumPy, the builder against the staged pipeline, training."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from model_ops.data import InMemoryImage
from model_ops.geometry import patch_offsets, region_offsets
from model_ops.layers import L2Normalize, SampleSoftmax
from model_ops.lowres import low_resolution_view
from model_ops.regularizers import multinomial_entropy
from model_ops.sampling import sample_positions
from model_ops.two_level import sample_patches_in_regions
from model_ops.two_level_export import tiny_two_level_metadata, tiny_two_level_networks
from model_ops.two_level_layers import (
    SamplePatchesInRegions,
    SampleRegions,
    TwoLevelExpectation,
    attention_sampling_two_level,
)
from model_ops.two_level_pipeline import run_two_level
from tests.model_ops.test_layers import numpy_patch


def maps(shape, seed):
    return SampleSoftmax()(np.random.default_rng(seed).normal(size=shape) * 2).numpy()


def test_sample_regions_cuts_area_resampled_views_of_the_regions():
    rng = np.random.default_rng(0)
    x_high = rng.integers(0, 256, (2, 120, 90, 1), dtype=np.uint8)
    x_coarse = np.zeros((2, 12, 9, 1), np.uint8)
    coarse = maps((2, 6, 3), 1)
    layer = SampleRegions(3, (40, 30), (10, 15), replace=True, seed=4)
    views, probs, offsets = layer([x_coarse, x_high, coarse])
    cells, want_probs = sample_positions(coarse, 3, True, seed=4)
    want_offsets = region_offsets(cells, (12, 9), (120, 90), (6, 3), (40, 30)).numpy()
    np.testing.assert_array_equal(offsets, want_offsets)
    np.testing.assert_array_equal(probs, want_probs)
    assert views.shape == (2, 3, 10, 15, 1) and views.dtype == tf.uint8
    for b in range(2):
        for k in range(3):
            region = numpy_patch(x_high[b], want_offsets[b, k], (40, 30))
            np.testing.assert_array_equal(views[b, k], low_resolution_view(region, (10, 15)))
    floats = SampleRegions(3, (40, 30), (10, 15), replace=True, seed=4, view_dtype="float32", view_scale=0.5)
    np.testing.assert_allclose(floats([x_coarse, x_high, coarse])[0], views.numpy() * 0.5)


@pytest.mark.parametrize("replace", [True, False])
def test_sample_patches_in_regions_cuts_the_patches_at_the_fine_cells(replace):
    rng = np.random.default_rng(2)
    x_high = rng.normal(size=(2, 80, 70, 3)).astype(np.float32)
    regions = tf.constant([[[0, 0], [50, 40]], [[-10, 5], [30, 30]]])
    views = np.zeros((2, 2, 8, 6, 3), np.float32)
    fine = maps((2, 2, 4, 3, 1), 3)
    layer = SamplePatchesInRegions(3, (7, 5), (32, 24), receptive_field=2, replace=replace, seed=9)
    patches, probs, offsets = layer([x_high, views, regions, fine])
    cells, want_probs = sample_patches_in_regions(fine[..., 0], 3, replace, seed=9)
    want = patch_offsets(regions, cells, (8, 6), (32, 24), (4, 3), (7, 5), 2).numpy()
    np.testing.assert_array_equal(offsets, want)
    np.testing.assert_array_equal(probs, want_probs)
    assert patches.shape == (2, 2, 3, 7, 5, 3)
    for index in np.ndindex(2, 2, 3):
        np.testing.assert_array_equal(patches[index], numpy_patch(x_high[index[0]], want[index], (7, 5)))


def test_layers_round_trip_their_config():
    for layer in (
        SampleRegions(2, (8, 8), (4, 4), 1, True, "top_k", 3, "float32", 0.5),
        SamplePatchesInRegions(2, (4, 4), (8, 8), 1, True, "top_k", 3, "float32", 0.5),
        TwoLevelExpectation(True, False),
    ):
        assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
    with pytest.raises(ValueError, match="mode"):
        SampleRegions(2, (8, 8), (4, 4), mode="greedy")


@pytest.mark.parametrize("mode", ["sample", "top_k"])
def test_the_keras_path_equals_the_staged_pipeline(mode):
    """In memory through the layers or read stage by stage: the same pixels, draws and estimate."""
    meta = dataclasses.replace(tiny_two_level_metadata(), replace=True)
    nets = tiny_two_level_networks(meta, seed=3)
    image = np.random.default_rng(5).integers(0, 256, (384, 320, 1), dtype=np.uint8)
    staged = run_two_level(nets, InMemoryImage(image), meta, mode=mode, seed=21)
    coarse_net, fine_net, feature_net, _ = nets.networks
    spec = meta.two_level
    x_coarse = low_resolution_view(image[None], meta.low_shape(*image.shape[:2]))
    features, coarse_map, fine_maps, _ = attention_sampling_two_level(
        coarse_net,
        fine_net,
        feature_net,
        spec.region_size,
        spec.fine_view_shape(),
        n_regions=spec.n_regions,
        n_patches=meta.n_patches,
        replace_regions=spec.replace_regions,
        replace_patches=meta.replace,
        seed=21,
        mode=mode,
        patch_dtype="float32",
        patch_scale=meta.pixel_scale,
    )([tf.cast(x_coarse, tf.float32) * meta.pixel_scale, image[None]])
    np.testing.assert_allclose(coarse_map[..., 0], staged.coarse_attention, rtol=1e-6)
    np.testing.assert_allclose(fine_maps[..., 0], staged.fine_attention, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(features, staged.estimate, rtol=1e-5, atol=1e-6)


SIZE, MARK = 64, 4


def synthetic(n: int, seed: int):
    """Noise plus one 4x4 mark: a vertical bar (class 0) or a horizontal one (class 1)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.1, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = rng.integers(0, 2, n)
    for image, label, (r, c) in zip(x, y, rng.integers(0, SIZE - MARK, (n, 2)), strict=True):
        if label == 0:
            image[r : r + MARK, c + 1 : c + 3] = 1.0
        else:
            image[r + 1 : r + 3, c : c + MARK] = 1.0
    return tf.image.resize(x, (8, 8), method="area").numpy(), x, y


def attention_net(size: int) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((size, size, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="tanh"),
            keras.layers.Conv2D(1, 3, padding="same"),
            SampleSoftmax(squeeze_channels=True, smooth=1e-4),
        ]
    )


@pytest.mark.parametrize("replace_regions,replace_patches", [(False, False), (True, True)])
def test_a_tiny_two_level_model_trains(replace_regions, replace_patches):
    """Both attention networks receive finite, nonzero gradients, and a few steps lower the loss."""
    keras.utils.set_random_seed(0)
    x_coarse, x_high, y = synthetic(64, seed=0)
    coarse, fine = attention_net(8), attention_net(8)
    feature = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalMaxPooling2D(),
            L2Normalize(),
        ]
    )
    inputs = [keras.Input((8, 8, 1)), keras.Input((SIZE, SIZE, 1))]
    features, *_ = attention_sampling_two_level(
        coarse,
        fine,
        feature,
        region_size=(16, 16),
        view_size=(8, 8),
        n_regions=2,
        n_patches=2,
        replace_regions=replace_regions,
        replace_patches=replace_patches,
        coarse_regularizer=multinomial_entropy(1e-4),
        fine_regularizer=multinomial_entropy(1e-4),
    )(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(features))
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model([x_coarse, x_high], training=True))
    nets = (coarse, fine, feature)
    for net, net_grads in zip(nets, tape.gradient(loss, [n.trainable_weights for n in nets]), strict=True):
        # (the last bias of an attention network shifts every logit alike: its gradient is 0)
        grads = np.concatenate([np.ravel(g) for g in net_grads])
        assert np.all(np.isfinite(grads)) and np.mean(grads != 0) > 0.5, net.name
    model.compile(keras.optimizers.Adam(1e-2), loss_fn)
    history = model.fit([x_coarse, x_high], y, batch_size=16, epochs=6, verbose=0, shuffle=False)
    assert history.history["loss"][-1] < history.history["loss"][0], history.history["loss"]

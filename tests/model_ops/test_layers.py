"""Keras layers: sampling layers against NumPy, utility layers, serialisation."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model_ops.core import attention_sampling, infer_patch_size
from model_ops.expectation import aggregate
from model_ops.geometry import cells_to_offsets
from model_ops.layers import (
    ActivityRegularizer,
    Expectation,
    ImageLinearTransform,
    ImagePan,
    L2Normalize,
    ResizeImages,
    SamplePatches,
    SampleSoftmax,
    TotalReshape,
)
from model_ops.regularizers import multinomial_entropy
from model_ops.sampling import sample_positions


def numpy_patch(image: np.ndarray, start, size) -> np.ndarray:
    """``image[start:start+size]`` with zeros outside, for 2-D images ``(H, W, C)``."""
    out = np.zeros((*size, image.shape[-1]), image.dtype)
    for i in range(size[0]):
        for j in range(size[1]):
            y, x = start[0] + i, start[1] + j
            if 0 <= y < image.shape[0] and 0 <= x < image.shape[1]:
                out[i, j] = image[y, x]
    return out


def test_sample_softmax_normalises_the_whole_sample():
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 2)).astype(np.float32)
    a = SampleSoftmax()(x).numpy()
    flat = np.exp(x.reshape(2, -1))
    np.testing.assert_allclose(a, (flat / flat.sum(1, keepdims=True)).reshape(x.shape), rtol=1e-5)
    smooth = SampleSoftmax(smooth=0.1)(x).numpy()
    np.testing.assert_allclose(smooth, a * 0.9 + 0.1 / 24, rtol=1e-5)
    squeezed = SampleSoftmax(squeeze_channels=True)(x[..., :1])
    assert squeezed.shape == (2, 3, 4)
    np.testing.assert_allclose(tf.reduce_sum(squeezed, [1, 2]), [1, 1], rtol=1e-6)
    assert SampleSoftmax(squeeze_channels=True)(keras.Input((5, 6, 1))).shape == (None, 5, 6)


@pytest.mark.parametrize("replace", [True, False])
def test_sample_patches_cuts_the_patches_at_the_sampled_cells(replace):
    rng = np.random.default_rng(1)
    x_high = rng.normal(size=(2, 60, 80, 3)).astype(np.float32)
    x_low = x_high[:, ::4, ::4]
    attention = SampleSoftmax(squeeze_channels=True)(rng.normal(size=(2, 13, 18, 1)) * 3)
    layer = SamplePatches(6, (9, 11), receptive_field=2, replace=replace, seed=5)
    patches, probs = layer([x_low, x_high, attention])
    cells, want_probs = sample_positions(attention, 6, replace, seed=5)
    offsets = cells_to_offsets(cells, (15, 20), (60, 80), (13, 18), (9, 11), 2).numpy()
    np.testing.assert_array_equal(probs, want_probs)
    assert patches.shape == (2, 6, 9, 11, 3)
    for b in range(2):
        for n in range(6):
            np.testing.assert_array_equal(patches[b, n], numpy_patch(x_high[b], offsets[b, n], (9, 11)))


def test_top_k_patch_is_centred_on_the_peak_cell_and_converts_uint8():
    x_high = np.arange(100 * 100, dtype=np.int64).reshape(1, 100, 100, 1) % 251
    x_high = x_high.astype(np.uint8)
    attention = np.full((1, 10, 10), 0.5 / 99, np.float32)
    attention[0, 0, 7] = 0.5
    layer = SamplePatches(1, (20, 20), mode="top_k", patch_dtype="float32", patch_scale=1 / 255)
    patches, probs = layer([np.zeros((1, 10, 10, 1), np.uint8), x_high, attention])
    # cell (0, 7) of a 10x10 map over 100x100 pixels: centre (5, 75), start (-5, 65)
    want = numpy_patch(x_high[0], (-5, 65), (20, 20)).astype(np.float32) / 255
    assert patches.dtype == tf.float32
    np.testing.assert_allclose(patches[0, 0], want, rtol=1e-6)
    np.testing.assert_allclose(probs, [[0.5]])


def test_expectation_layer_is_the_estimator():
    rng = np.random.default_rng(2)
    features, probs = rng.normal(size=(3, 4, 5)), rng.uniform(0.05, 0.2, size=(3, 4))
    for replace in (True, False):
        np.testing.assert_allclose(
            Expectation(replace)([features, probs]), aggregate(features, probs, replace), rtol=1e-6
        )
    assert Expectation()([keras.Input((4, 5)), keras.Input((4,))]).shape == (None, 5)


def small_model(mode="sample", seed=None, regularizer=None, n_patches=4):
    attention = keras.Sequential(
        [
            keras.Input((16, 16, 1)),
            keras.layers.Conv2D(4, 3, padding="same", activation="tanh"),
            keras.layers.Conv2D(1, 3, padding="same"),
            SampleSoftmax(squeeze_channels=True, smooth=1e-4),
        ]
    )
    feature = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(6, 3), keras.layers.GlobalMaxPooling2D(), L2Normalize()]
    )
    x_high = keras.Input((64, 64, 1))
    x_low = ResizeImages((16, 16), mode="area")(x_high)
    features, attention_map, patches = attention_sampling(
        attention, feature, n_patches=n_patches, attention_regularizer=regularizer, seed=seed, mode=mode
    )([x_low, x_high])
    y = keras.layers.Dense(3, activation="softmax")(features)
    return keras.Model(x_high, [y, attention_map, patches]), attention, feature


def test_attention_sampling_shapes_weights_and_patch_size_inference():
    model, attention, feature = small_model()
    y, attention_map, patches = model.outputs
    assert (y.shape, attention_map.shape, patches.shape) == ((None, 3), (None, 16, 16), (None, 4, 8, 8, 1))
    (sampler,) = [layer for layer in model.layers if isinstance(layer, SamplePatches)]
    assert sampler.supports_jit is False  # the patch op has no XLA kernel
    own = {id(w) for w in attention.weights + feature.weights + model.layers[-1].weights}
    assert {id(w) for w in model.weights} == own  # sampling layers add no weights
    for layer in model.layers:
        if isinstance(layer, (SamplePatches, Expectation, SampleSoftmax, TotalReshape)):
            assert not layer.weights
    assert infer_patch_size(feature) == (8, 8)
    with pytest.raises(ValueError, match="patch_size"):
        attention_sampling(attention, keras.Sequential([keras.layers.Dense(2)]))
    with pytest.raises(NotImplementedError):
        attention_sampling(attention, feature, receptive_field=None)


def test_seeded_and_top_k_models_are_reproducible():
    x = np.random.default_rng(3).uniform(size=(2, 64, 64, 1)).astype(np.float32)
    seeded = small_model(seed=11)[0]
    first, second = seeded(x), seeded(x)
    np.testing.assert_array_equal(first[2], second[2])
    top = small_model(mode="top_k")[0]
    np.testing.assert_array_equal(top(x)[2], top(x)[2])


def test_activity_regularizer_adds_the_regularizer_value_as_is():
    a = SampleSoftmax()(np.random.default_rng(8).normal(size=(4, 5)))
    layer = ActivityRegularizer(multinomial_entropy(2.0))
    np.testing.assert_array_equal(layer(a), a)
    np.testing.assert_allclose(layer.losses[0], 2.0 * np.sum(a * np.log(a + 1e-6)) / 4, rtol=1e-6)
    clone = ActivityRegularizer.from_config(layer.get_config())
    assert clone.regularizer.get_config() == {"strength": 2.0, "eps": 1e-6}


def test_activity_regularizer_adds_the_entropy_term():
    model = small_model(regularizer=multinomial_entropy(0.5))[0]
    x = np.random.default_rng(4).uniform(size=(2, 64, 64, 1)).astype(np.float32)
    _, a, _ = model(x)
    a = a.numpy()
    assert len(model.losses) == 1
    np.testing.assert_allclose(model.losses[0], 0.5 * np.sum(a * np.log(a + 1e-6)) / 2, rtol=1e-5)


def test_entropy_regularizer_descent_spreads_the_map():
    logits = tf.Variable(np.random.default_rng(5).normal(size=(2, 10)) * 3)
    reg = multinomial_entropy(1.0)

    def entropy():
        a = tf.nn.softmax(logits)
        return -tf.reduce_sum(a * tf.math.log(a)).numpy()

    before = entropy()
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = reg(tf.nn.softmax(logits))
        logits.assign_sub(0.5 * tape.gradient(loss, logits))
    assert entropy() > before + 0.5


def test_model_round_trips_through_keras_saving(tmp_path):
    model = small_model(mode="top_k", regularizer=multinomial_entropy(0.1))[0]
    x = np.random.default_rng(6).uniform(size=(2, 64, 64, 1)).astype(np.float32)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for got, want in zip(loaded(x), model(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_utility_layers():
    x = np.random.default_rng(7).normal(size=(2, 6, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(tf.norm(L2Normalize()(x), axis=-1), np.ones((2, 6, 8)), rtol=1e-5)
    assert ResizeImages((3, 4))(x).shape == (2, 3, 4, 3)
    with pytest.raises(ValueError, match="mode"):
        ResizeImages((3, 4), mode="lanczos7")
    assert TotalReshape((-1, 8, 3))(x).shape == (12, 8, 3)
    for layer in (ImageLinearTransform(), ImagePan(pixels=2)):
        np.testing.assert_array_equal(layer(x, training=False), x)


def test_image_linear_transform_draws_a_and_b_in_range():
    x = np.zeros((100, 4, 4, 1), np.float32)
    x[:, 0, 1] = 1  # pixel (0, 0) shows b, pixel (0, 1) shows a + b
    out = ImageLinearTransform(a=(2.0, 3.0), b=(0.5, 0.75), p=1.0)(x, training=True).numpy()
    b = out[:, 0, 0, 0]
    a = out[:, 0, 1, 0] - b
    assert np.all((b >= 0.5) & (b <= 0.75)) and np.all((a >= 2.0 - 1e-6) & (a <= 3.0 + 1e-6))
    assert np.all(out[:, 1:] == out[:, :1, :1])  # one (a, b) per image
    assert len(np.unique(b)) > 50


def test_image_pan_shifts_whole_pixels_horizontally_with_zero_fill():
    image = np.arange(1, 8 * 12 + 1, dtype=np.float32).reshape(1, 8, 12, 1)
    out = ImagePan(pixels=3, p=1.0)(np.concatenate([image] * 20), training=True).numpy()
    shifted = {
        s: np.roll(image[0], s, axis=1)
        * (np.arange(12) - s >= 0)[None, :, None]
        * (np.arange(12) - s < 12)[None, :, None]
        for s in range(-3, 4)
    }
    for o in out:
        assert any(np.array_equal(o, want) for want in shifted.values())

"""The original ``ats`` import paths and its README usage example."""

from __future__ import annotations

import numpy as np

import model_ops.core
import model_ops.data
import model_ops.layers
import model_ops.regularizers
from model_ops.patch_ops import extract_patches as op_extract_patches


def test_original_import_paths_re_export_model_ops():
    from ats.core import Expectation, SamplePatches, attention_sampling
    from ats.data import FromTensors
    from ats.ops.extract_patches import extract_patches
    from ats.utils import layers as ats_layers
    from ats.utils.regularizers import multinomial_entropy

    assert attention_sampling is model_ops.core.attention_sampling
    assert (SamplePatches, Expectation) == (model_ops.layers.SamplePatches, model_ops.layers.Expectation)
    assert FromTensors is model_ops.data.FromTensors
    assert extract_patches is op_extract_patches
    assert multinomial_entropy is model_ops.regularizers.multinomial_entropy
    for name in (
        "ActivityRegularizer",
        "ImageLinearTransform",
        "ImagePan",
        "L2Normalize",
        "ResizeImages",
        "SampleSoftmax",
        "TotalReshape",
    ):
        layer = getattr(ats_layers, name)
        assert layer is getattr(model_ops.layers, layer.__name__), name


def test_original_readme_example_runs():
    """The README outline, elided parts filled in, compiled and fitted.

    Two of its lines never ran on any Keras (``AveragePooling2D`` takes a pair,
    ``Conv2D`` needs a kernel size): they get ``(10, 10)`` and ``kernel_size=3``.
    Everything else is the README's text.
    """
    # Keras imports
    from keras.layers import AveragePooling2D, Conv2D, Dense, GlobalAveragePooling2D, Input
    from keras.models import Model, Sequential

    from ats.utils.layers import L2Normalize

    H, W, C, output_size = 160, 160, 1, 3

    from ats.core import attention_sampling
    from ats.utils.layers import SampleSoftmax
    from ats.utils.regularizers import multinomial_entropy

    # Create our two inputs.
    # Note that x_low could also be an input if we have access to a precomputed
    # downsampled image.
    x_high = Input(shape=(H, W, C))
    x_low = AveragePooling2D(pool_size=(10, 10))(x_high)

    # Create our attention model
    attention = Sequential(
        [
            Conv2D(8, kernel_size=3, padding="same", activation="tanh"),
            Conv2D(1, kernel_size=3, padding="same"),
            SampleSoftmax(squeeze_channels=True),
        ]
    )

    # Create our feature extractor per patch, we assume that it returns a
    # vector per patch.
    feature = Sequential(
        [Conv2D(16, kernel_size=3, activation="relu"), GlobalAveragePooling2D(), L2Normalize()]
    )

    features, attention, patches = attention_sampling(
        attention, feature, patch_size=(32, 32), n_patches=10, attention_regularizer=multinomial_entropy(0.01)
    )([x_low, x_high])

    y = Dense(output_size, activation="softmax")(features)

    model = Model(inputs=x_high, outputs=y)

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(12, H, W, C)).astype(np.float32)
    history = model.fit(x, rng.integers(0, output_size, 12), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.predict(x[:2], verbose=0).shape == (2, output_size)
    assert patches.shape[1:] == (10, 32, 32, C)

"""A SavedModel using the op (and its gradient) runs in a fresh process that
only calls load_op_library() first, and fails clearly without it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from model_ops import extract_patches
from tests.model_ops.test_extract_patches_reference import reference_patches, reference_scatter

SIZE = (5, 4)
IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32)
OFFSETS = tf.TensorSpec([None, None, 2], tf.int32)

RELOAD = """
import sys
import numpy as np
from model_ops.op_library import load_op_library
load_op_library()
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
data = np.load(sys.argv[2])
x = tf.constant(data["images"])
with tf.GradientTape() as tape:
    tape.watch(x)
    patches = model.patches(x, data["offsets"])
    loss = tf.reduce_sum(patches * data["upstream"])
np.savez(sys.argv[3], patches=patches.numpy(), tape_gradient=tape.gradient(loss, x).numpy(),
         saved_gradient=model.gradient(x, data["offsets"], data["upstream"]).numpy(),
         scaled=model.scaled(data["pixels"], data["offsets"]).numpy())
"""

WITHOUT_LIBRARY = """
import sys
import tensorflow as tf
tf.saved_model.load(sys.argv[1])
"""


class PatchModule(tf.Module):
    @tf.function(input_signature=[IMAGES, OFFSETS])
    def patches(self, images, offsets):
        return extract_patches(images, offsets, SIZE, fill_value=-1)

    @tf.function(input_signature=[IMAGES, OFFSETS, tf.TensorSpec(None, tf.float32)])
    def gradient(self, images, offsets, upstream):
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = tf.reduce_sum(extract_patches(images, offsets, SIZE) * upstream)
        return tape.gradient(loss, images)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8), OFFSETS])
    def scaled(self, pixels, offsets):
        return extract_patches(pixels, offsets, SIZE, output_dtype=tf.float32, scale=1 / 255)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved")
    tf.saved_model.save(PatchModule(), str(path / "model"))
    rng = np.random.default_rng(0)
    data = {
        "images": rng.normal(size=(2, 12, 10, 3)).astype(np.float32),
        "pixels": rng.integers(0, 256, size=(2, 12, 10, 3)).astype(np.uint8),
        "offsets": rng.integers(-4, 12, size=(2, 6, 2)).astype(np.int32),
        "upstream": rng.normal(size=(2, 6, *SIZE, 3)).astype(np.float32),
    }
    np.savez(path / "inputs.npz", **data)
    return path, data


def test_saved_model_runs_and_differentiates_in_a_fresh_process(saved):
    path, data = saved
    subprocess.run(
        [sys.executable, "-c", RELOAD, str(path / "model"), str(path / "inputs.npz"), str(path / "out.npz")],
        check=True,
        capture_output=True,
    )
    out = np.load(path / "out.npz")
    np.testing.assert_array_equal(
        out["patches"], reference_patches(data["images"], data["offsets"], SIZE, -1)
    )
    np.testing.assert_array_equal(
        out["scaled"], reference_patches(data["pixels"], data["offsets"], SIZE, 0, np.float32, 1 / 255)
    )
    want = reference_scatter(data["upstream"], data["offsets"], data["images"].shape)
    np.testing.assert_allclose(out["tape_gradient"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["saved_gradient"], want, rtol=1e-5, atol=1e-5)


def test_loading_without_the_library_fails_with_not_registered(saved):
    path, _ = saved
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT_LIBRARY, str(path / "model")], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "AtsExtractPatches" in proc.stderr and "not registered" in proc.stderr

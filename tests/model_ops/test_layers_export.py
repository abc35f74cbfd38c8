"""SavedModel export: seeded sampling and the estimators' gradients survive a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf

from model_ops.core import attention_sampling
from model_ops.expectation import aggregate
from model_ops.layers import L2Normalize, SampleSoftmax


def run_fresh(code: str) -> dict:
    """Run ``code`` in a new interpreter; it prints one JSON line."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_estimator_gradients_survive_savedmodel(tmp_path):
    class Estimators(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, 3], tf.float64),
                tf.TensorSpec([None, None], tf.float64),
            ]
        )
        def gradients(self, features, probs):
            out = {}
            for name, replace in (("with", True), ("without", False)):
                with tf.GradientTape() as tape:
                    tape.watch(probs)
                    total = tf.reduce_sum(aggregate(features, probs, replace))
                out[name] = tape.gradient(total, probs)
            return out

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, None, 3], tf.float64),
                tf.TensorSpec([None, None], tf.float64),
            ]
        )
        def without(self, features, probs):
            return aggregate(features, probs, False)

    tf.saved_model.save(Estimators(), str(tmp_path))
    rng = np.random.default_rng(0)
    features, probs = rng.normal(size=(2, 4, 3)), rng.uniform(0.05, 0.2, (2, 4))
    got = run_fresh(f"""
        import json, numpy as np, tensorflow as tf
        m = tf.saved_model.load({str(tmp_path)!r})
        f = tf.constant(np.array({features.tolist()}))
        p = tf.constant(np.array({probs.tolist()}))
        grads = {{k: v.numpy().tolist() for k, v in m.gradients(f, p).items()}}
        with tf.GradientTape() as tape:  # through the loaded function itself
            tape.watch(p)
            total = tf.reduce_sum(m.without(f, p))
        grads["loaded"] = tape.gradient(total, p).numpy().tolist()
        print(json.dumps(grads))
    """)
    for name, replace in (("with", True), ("without", False), ("loaded", False)):
        p = tf.constant(probs)
        with tf.GradientTape() as tape:
            tape.watch(p)
            total = tf.reduce_sum(aggregate(tf.constant(features), p, replace))
        np.testing.assert_allclose(got[name], tape.gradient(total, p), rtol=1e-12)


def test_exported_model_reproduces_seeded_and_top_k_outputs_in_a_fresh_process(tmp_path):
    attention = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(1, 3, padding="same"),
            SampleSoftmax(squeeze_channels=True),
        ]
    )
    feature = keras.Sequential(
        [keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(4), L2Normalize()]
    )
    x_low, x_high = keras.Input((12, 12, 1)), keras.Input((48, 48, 1))
    outputs = {}
    for mode in ("sample", "top_k"):
        features, _, _ = attention_sampling(attention, feature, n_patches=3, seed=7, mode=mode)(
            [x_low, x_high]
        )
        outputs[mode] = keras.layers.Dense(2, name=f"head_{mode}")(features)
    model = keras.Model([x_low, x_high], outputs)
    rng = np.random.default_rng(1)
    inputs = [
        rng.uniform(size=(2, 12, 12, 1)).astype(np.float32),
        rng.uniform(size=(2, 48, 48, 1)).astype(np.float32),
    ]
    want = {k: v.numpy() for k, v in model(inputs).items()}
    model.export(str(tmp_path), verbose=False)
    got = run_fresh(f"""
        import json, numpy as np, tensorflow as tf
        from model_ops.op_library import load_op_library
        load_op_library()
        m = tf.saved_model.load({str(tmp_path)!r})
        out = m.serve([tf.constant(np.array(x), tf.float32) for x in {[x.tolist() for x in inputs]}])
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}))
    """)
    for mode in want:
        np.testing.assert_allclose(got[mode], want[mode], rtol=1e-5)

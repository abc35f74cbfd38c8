"""Attention sampling for Keras 3 / TensorFlow (Katharopoulos & Fleuret, 2019).

Modules, one job each: ``lowres`` (the low-resolution view), ``sampling``
(drawing cells), ``geometry`` (cells to pixel offsets), ``expectation``
(unbiased estimators), ``layers`` and ``regularizers`` (Keras pieces),
``core`` (``attention_sampling``), ``data`` (multi-resolution inputs). The
compiled patch op lives in ``model_ops.python.ops``. Importing this package
imports nothing heavy, so build scripts and the server can use sub-modules
selectively.
"""

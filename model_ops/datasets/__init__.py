"""Synthetic data sets, generated deterministically and on the fly.

``megapixel_digits`` is the Megapixel-MNIST protocol of the attention-sampling
paper, built on scikit-learn's handwritten digits (no download needed).
"""

"""``ats.core``: the attention-sampling builder and its layers."""

from model_ops.core import attention_sampling
from model_ops.layers import Expectation, SamplePatches

__all__ = ["Expectation", "SamplePatches", "attention_sampling"]

"""``ats.utils.layers``: the original's Keras layers."""

from model_ops.layers import (
    ActivityRegularizer,
    ImageLinearTransform,
    ImagePan,
    L2Normalize,
    ResizeImages,
    SampleSoftmax,
    TotalReshape,
)

__all__ = [
    "ActivityRegularizer",
    "ImageLinearTransform",
    "ImagePan",
    "L2Normalize",
    "ResizeImages",
    "SampleSoftmax",
    "TotalReshape",
]

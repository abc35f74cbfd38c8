"""``attention_sampling``: the original library's one-call model builder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from model_ops.layers import ActivityRegularizer, Expectation, SamplePatches, TotalReshape
from model_ops.sampling import Mode


def infer_patch_size(feature) -> tuple[int, ...]:
    """The spatial input size of a built feature network (its patch size)."""
    try:
        shape = tuple(feature.inputs[0].shape)
    except (AttributeError, IndexError, TypeError, ValueError):
        shape = ()
    size = shape[1:-1]
    if not size or any(s is None for s in size):
        raise ValueError(
            "patch_size=None needs a feature network with a known input shape "
            f"(a built Keras model such as keras.Sequential([keras.Input((h, w, c)), ...])); "
            f"got {shape or 'none'}: pass patch_size explicitly"
        )
    return tuple(int(s) for s in size)


def attention_sampling(
    attention: Callable,
    feature: Callable,
    patch_size: Sequence[int] | None = None,
    n_patches: int = 10,
    replace: bool = False,
    attention_regularizer: Callable | None = None,
    receptive_field: int = 0,
    *,
    seed: int | None = None,
    mode: Mode = "sample",
    patch_dtype: str | None = None,
    patch_scale: float = 1.0,
) -> Callable:
    """Build attention sampling around an attention and a feature network.

    Returns a callable ``[x_low, x_high] -> [features (B, D), attention_map,
    patches (B, N, *patch_size, C)]``: ``attention(x_low)`` gives the map
    (one distribution per image, e.g. ending in
    ``SampleSoftmax(squeeze_channels=True)``), ``n_patches`` cells are drawn
    from it, the patches at those cells are cut from ``x_high`` and
    ``feature`` turns each into a vector; the features are combined by the
    unbiased estimator of ``Σ a_i f_i``. ``patch_size=None`` reads the size
    from ``feature``'s input shape. ``receptive_field`` (low-res pixels) maps
    cells to pixels (see :mod:`model_ops.geometry`). Beyond the original:
    ``seed`` for reproducible draws, ``mode="top_k"`` for deterministic
    inference, and ``patch_dtype``/``patch_scale`` to feed the feature
    network floats from uint8 images. Calling it again with the same
    networks shares their weights (e.g. a top-k model for inference).
    """
    if receptive_field is None:
        raise NotImplementedError("receptive_field=None (inference) is not supported")
    patch_size = tuple(patch_size) if patch_size is not None else infer_patch_size(feature)

    def apply(x):
        if not isinstance(x, (list, tuple)) or len(x) != 2:
            raise ValueError("attention_sampling expects [x_low, x_high]")
        x_low, x_high = x
        attention_map = attention(x_low)
        if attention_regularizer is not None:
            attention_map = ActivityRegularizer(attention_regularizer)(attention_map)
        patches, sampled_attention = SamplePatches(
            n_patches,
            patch_size,
            receptive_field,
            replace,
            mode=mode,
            seed=seed,
            patch_dtype=patch_dtype,
            patch_scale=patch_scale,
        )([x_low, x_high, attention_map])
        channels = patches.shape[-1]
        patch_features = feature(TotalReshape((-1, *patch_size, channels))(patches))
        patch_features = TotalReshape((-1, n_patches, *patch_features.shape[1:]))(patch_features)
        features = Expectation(replace)([patch_features, sampled_attention])
        return [features, attention_map, patches]

    return apply

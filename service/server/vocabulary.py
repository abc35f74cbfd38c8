"""Each protocol's names for what the data plane's errors name.

Below the front ends (image sources, tile references, decoding, the model
registry), an error names the request field at fault in ``ats.v1`` terms
(``tile.path``, ``tensor.shape``, ``model_name``, ...), in its ``field`` and
often in its text. A client of another protocol never sent such a field: its
front end hands every error through its :class:`Vocabulary` on the way out,
which renames the field, and those words of the text, into the names that
client used (``tile_path``, ``pixels``, ``model_spec.name``, ...).

Only errors whose field the vocabulary knows are touched, and only the words
listed for that field, so a front end's own errors (already in its terms)
and client text echoed in a message pass unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping

from service.errors import ServiceError


@dataclasses.dataclass(frozen=True)
class Term:
    """What one data-plane field is called in a protocol: its field path, and
    the words of messages about it (whole words: data-plane word -> protocol's)."""

    field: str
    words: tuple[tuple[str, str], ...] = ()


def _word(text: str) -> re.Pattern[str]:
    """``text`` as a whole word of the message, not part of a path or of quoted client text."""
    return re.compile(rf"(?<![\w./\\'\"-]){re.escape(text)}(?![\w/\\'\"-]|\.\w)")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A protocol's :class:`Term` for each data-plane field it can meet."""

    terms: Mapping[str, Term]

    def translate(self, error: ServiceError) -> ServiceError:
        """``error`` in the protocol's names (a copy; ``error`` itself when there is nothing to rename)."""
        term = self.terms.get(error.field or "")
        if term is None:
            return error
        message = error.message
        for old, new in term.words:
            message = _word(old).sub(new.replace("\\", "\\\\"), message)
        renamed = copy.copy(error)
        renamed.message, renamed.field, renamed.args = message, term.field, (message,)
        return renamed


# The Open Inference Protocol: one input tensor (image, pixels or tile_path)
# and parameters; the model and version are the request's own fields.
_TILE_PATH = (("tile.path", "tile_path"),)
_PIXELS = (("tensor shape", "pixels shape"), ("tensor dtype", "pixels datatype"), ("tensor", "pixels"))
_SOURCES = (
    ("'tile' sources", "'tile_path' inputs"),
    ("'tensor' sources", "'pixels' inputs"),
    ("'image' sources", "'image' inputs"),
    ("send the pixels as", "send the image as"),
    ("tensor", "pixels"),
    ("tile", "tile_path"),
)
OIP = Vocabulary(
    {
        "image": Term("inputs[0]"),
        "tensor.shape": Term("inputs[0].shape", _PIXELS),
        "tensor.dtype": Term("inputs[0].datatype", _PIXELS),
        "tensor.data": Term("inputs[0]", _PIXELS),
        "tile.path": Term("inputs[0]", _TILE_PATH),
        "tile": Term("inputs[0].name", _SOURCES),
        "tensor": Term("inputs[0].name", _SOURCES),
        "n_patches": Term("parameters.n_patches"),
        "n_regions": Term("parameters.n_regions"),
    }
)
# Over HTTP the body is received as a stream is: its chunks are the body's.
OIP_HTTP = Vocabulary({**OIP.terms, "chunk": Term("body")})

# TensorFlow Serving: named input tensors (image, n_patches, ...) and a model_spec.
_TF_IMAGE = (("tensor shape", "image tensor_shape"), ("tensor dtype", "image dtype"), ("tensor", "image"))
_TF_MODEL = (("model_name", "model_spec.name"), ("model_version", "model_spec.version"))
TFSERVING = Vocabulary(
    {
        "image": Term("inputs.image"),
        "tensor.shape": Term("inputs.image.tensor_shape", _TF_IMAGE),
        "tensor.dtype": Term("inputs.image.dtype", _TF_IMAGE),
        "tensor.data": Term("inputs.image.tensor_content", _TF_IMAGE),
        "tensor": Term("inputs.image.dtype", _TF_IMAGE),
        "n_patches": Term("inputs.n_patches"),
        "n_regions": Term("inputs.n_regions"),
        "model_name": Term("model_spec.name", _TF_MODEL),
        "model_version": Term("model_spec.version", _TF_MODEL),
    }
)

"""Import compatibility for code written against the original ``attention-sampling`` package.

``ats`` re-exports :mod:`model_ops` under the original's module paths
(``ats.core``, ``ats.utils.layers``, ``ats.utils.regularizers``,
``ats.ops.extract_patches``, ``ats.data``); nothing is implemented here.
"""

"""Compiled pieces of model_ops: the patch op and its loader (see ``ops``)."""

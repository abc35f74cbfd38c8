"""``ats.ops``: the compiled patch op."""

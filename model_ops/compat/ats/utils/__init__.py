"""``ats.utils``: layers and regularizers."""

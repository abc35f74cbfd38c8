"""Stubs of other protocols' APIs that ats-serve also speaks, generated from protos/ at build time."""

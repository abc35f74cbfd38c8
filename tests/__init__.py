"""The test suite, laid out like the packages (model_ops/, service/, clients/,
deploy/); shared helpers in tests/support.py, fixtures in tests/conftest.py."""

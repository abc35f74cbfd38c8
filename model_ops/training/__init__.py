"""Training, evaluation and the recipes behind the shipped models (``ats-train``, ``ats-eval``)."""

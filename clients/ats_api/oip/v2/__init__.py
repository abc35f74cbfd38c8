"""Open Inference Protocol (KServe v2) gRPC stubs (package ``inference``), generated at build time."""

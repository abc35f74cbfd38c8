"""gRPC protocol layer: servicer, model registry, health, metrics and process lifecycle."""

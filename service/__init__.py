"""The attention-sampling inference service: configuration, prediction pipeline, gRPC server."""

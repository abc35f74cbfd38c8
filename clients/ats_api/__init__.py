"""The ats.v1 gRPC API: stubs generated at build time from protos/ats_api/v1/*.proto."""

"""ats.v1 messages and service stubs (``attention_sampling_pb2``, ``attention_sampling_pb2_grpc``)."""

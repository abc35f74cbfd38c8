"""Python client of the attention-sampling gRPC service (``ats.v1.AttentionSampling``)."""

from ats_client.client import AtsClient, AtsError

__all__ = ["AtsClient", "AtsError"]

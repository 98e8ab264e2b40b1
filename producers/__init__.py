"""Publishing SDK for platform services: validate, then publish consent events."""

from producers.publisher import ConsentPublisher, DeliveryReceipt

__all__ = ["ConsentPublisher", "DeliveryReceipt"]

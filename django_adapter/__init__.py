"""Django side of twistedpush: publish updates, render pages that catch up live."""

from django_adapter.client import (
    PushServerUnavailable,
    asend_update,
    asend_updates,
    current_timestamp,
    send_update,
    send_updates,
)

__all__ = [
    "PushServerUnavailable",
    "asend_update",
    "asend_updates",
    "current_timestamp",
    "send_update",
    "send_updates",
]

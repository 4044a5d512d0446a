"""Publishing from Django: one blocking AMP connection per thread, sent on commit."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction

from django_adapter.conf import settings
from twistedpush.client import PushClient, PushServerUnavailable

__all__ = ["PushServerUnavailable", "asend_update", "asend_updates", "current_timestamp",
           "send_update", "send_updates"]  # fmt: skip

_local = threading.local()


def get_client() -> PushClient:
    """This thread's connection to the notifier (made on first use, remade if it broke)."""
    client: PushClient | None = getattr(_local, "client", None)
    target = (
        settings.NOTIFIER_HOST,
        int(settings.NOTIFIER_PORT),
        float(settings.TIMEOUT),
        float(settings.SPIN),
        settings.publisher_key,
    )
    if client is not None:
        if (client.host, client.port, client.timeout, client.spin, client.key) == target:
            return client
        client.close()
    client = _local.client = PushClient(*target)
    return client


def _in_atomic_block(using: str | None) -> bool:
    return transaction.get_connection(using).in_atomic_block


def send_update(
    channel: str, data: Any, name: str | None = None, using: str | None = None
) -> int | None:
    """Publish ``data`` to ``channel``; return its ``ts``.

    Inside ``transaction.atomic`` the update is sent when the transaction
    commits (and never if it rolls back), and None is returned; call
    ``send_update`` from your own ``transaction.on_commit`` callback to get
    the ts. Raises PushServerUnavailable when the push server cannot be
    reached (outside a transaction; on commit the error is raised from the
    commit hook).
    """
    if _in_atomic_block(using):
        transaction.on_commit(lambda: get_client().send_update(channel, data, name), using)
        return None
    return get_client().send_update(channel, data, name)


def send_updates(updates: Iterable[Sequence[Any]], using: str | None = None) -> list[int] | None:
    """Publish ``(channel, data[, name])`` items in order; same transaction rules."""
    items = list(updates)
    if _in_atomic_block(using):
        transaction.on_commit(lambda: get_client().send_updates(items), using)
        return None
    return get_client().send_updates(items)


def current_timestamp() -> int:
    """The push server's current position (a page's ``since``), from its clock."""
    return get_client().current_timestamp()


asend_update = sync_to_async(send_update, thread_sensitive=True)
asend_updates = sync_to_async(send_updates, thread_sensitive=True)

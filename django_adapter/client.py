"""Publishing from Django: one blocking AMP connection per thread, sent on commit.

Updates are checked and encoded (with Django's JSON encoder) when
``send_update`` is called, so a mistake raises where it was made, even inside a
transaction. While the push server is unavailable, calls skip it for
SERVERPUSH_BACKOFF seconds at a time instead of each waiting for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from django_adapter.conf import settings
from twistedpush.client import PushClient, PushServerUnavailable, encode_update
from twistedpush.errors import PushError

__all__ = ["PushServerUnavailable", "asend_update", "asend_updates", "current_timestamp",
           "send_update", "send_updates"]  # fmt: skip

log = logging.getLogger("django_adapter")

_local = threading.local()
_ENCODER = DjangoJSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""datetime, Decimal, UUID and lazy strings as Django writes them; NaN refused."""

T = TypeVar("T")


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


class Outage:
    """The push server as this process last found it, shared by every thread.

    After a failure, calls fail at once for SERVERPUSH_BACKOFF seconds; then one
    call tries again while the others keep failing at once. Logged once when the
    server is found down and once when it answers again, not once per request.
    ``unsent`` counts the updates dropped after commit because it was down.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until = 0.0
        self._target: tuple[str, int] | None = None
        self._error = ""
        self.unsent = 0

    def check(self, target: tuple[str, int]) -> None:
        """Raise PushServerUnavailable while backing off from ``target``."""
        if self._target != target:
            return
        with self._lock:
            now = time.monotonic()
            if now < self._until:
                raise PushServerUnavailable(
                    f"{self._error} (not tried again for {self._until - now:.1f} s)"
                )
            self._until = now + float(settings.BACKOFF)  # this call tries; others wait

    def failed(self, target: tuple[str, int], error: PushServerUnavailable) -> None:
        with self._lock:
            if self._target != target:
                log.warning(
                    "push server unavailable: %s; calls skip it for %s s at a time until it "
                    "answers (pages render without live updates, updates are dropped)",
                    error,
                    settings.BACKOFF,
                )
            self._target, self._error = target, str(error)
            self._until = time.monotonic() + float(settings.BACKOFF)

    def answered(self, target: tuple[str, int]) -> None:
        if self._target != target:
            return
        with self._lock:
            if self._target == target:
                log.warning(
                    "push server at %s:%s answers again (%d updates were dropped meanwhile)",
                    *target,
                    self.unsent,
                )
                self._target = None

    def count_unsent(self, n: int) -> None:
        with self._lock:
            self.unsent += n


outage = Outage()


def _call(method: Callable[[PushClient], T]) -> T:
    """``method`` on this thread's client, unless the push server is known to be down."""
    client = get_client()
    target = (client.host, client.port)
    try:
        outage.check(target)
        try:
            result = method(client)
        except PushServerUnavailable as e:
            outage.failed(target, e)
            raise
    except PushServerUnavailable as e:
        raise PushServerUnavailable(
            f"{e}; is `manage.py runserverpush` running, with its notifier on "
            f"{client.host}:{client.port} (SERVERPUSH_NOTIFIER_HOST, SERVERPUSH_NOTIFIER_PORT)?"
        ) from None
    outage.answered(target)
    return result


def encode(channel: str, data: Any, name: str | None = None) -> bytes:
    """One update, checked and encoded now (BadChannel, BadData if it cannot be)."""
    return encode_update(channel, data, name, _ENCODER)


def deliver(boxes: list[bytes]) -> None:
    """Send encoded updates after a commit: the request that committed must not
    fail for it, so an unavailable push server is logged (once per outage) and
    counted in ``outage.unsent``, and a refusal is logged."""
    try:
        _call(lambda client: client.send_encoded(boxes))
    except PushServerUnavailable:
        outage.count_unsent(len(boxes))
    except PushError:
        outage.count_unsent(len(boxes))
        log.exception("push server refused %d updates sent after commit", len(boxes))


def _in_atomic_block(using: str | None) -> bool:
    return transaction.get_connection(using).in_atomic_block


def _send(boxes: list[bytes], using: str | None) -> list[int] | None:
    if _in_atomic_block(using):
        transaction.on_commit(partial(deliver, boxes), using, robust=True)
        return None
    return _call(lambda client: client.send_encoded(boxes))


def send_update(
    channel: str, data: Any, name: str | None = None, using: str | None = None
) -> int | None:
    """Publish ``data`` to ``channel``; return its ``ts``.

    The update is checked and encoded at once (BadChannel, BadData). Outside a
    transaction it is sent now: PushServerUnavailable when the push server
    cannot be reached. Inside ``transaction.atomic`` it is sent when the
    transaction commits (never if it rolls back) and None is returned; a push
    server unavailable then is logged and counted, not raised. For the ts, call
    ``send_update`` from your own ``transaction.on_commit`` callback.
    """
    stamps = _send([encode(channel, data, name)], using)
    return None if stamps is None else stamps[0]


def send_updates(updates: Iterable[Sequence[Any]], using: str | None = None) -> list[int] | None:
    """Publish ``(channel, data[, name])`` items in order; same rules as send_update."""
    return _send([encode(*update) for update in updates], using)


def current_timestamp() -> int:
    """The push server's current position (a page's ``since``), from its clock."""
    return _call(lambda client: client.current_timestamp())


asend_update = sync_to_async(send_update, thread_sensitive=True)
asend_updates = sync_to_async(send_updates, thread_sensitive=True)

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
from twistedpush.access import check_channel
from twistedpush.client import PushClient, PushServerUnavailable, encode_update
from twistedpush.errors import PushError
from twistedpush.history import HISTORY_LIMIT, check_history_query

__all__ = ["PushServerUnavailable", "asend_update", "asend_updates", "current_timestamp",
           "history", "presence", "send_update", "send_updates"]  # fmt: skip

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

Recorder = Callable[[list[bytes], Sequence[Any]], None]
recorders: list[Recorder] = []
"""The active ``django_adapter.testing.capture_updates()`` blocks, process-wide:
while there is one, every publication is handed to each of them (with the user
each update was serialized for) instead of going to the push server."""

_positions = threading.Lock()
_last_position = 0


def local_position() -> int:
    """A position from this process's clock, strictly increasing, in the push
    server's unit (microseconds): what pages and publications get while the push
    server is not asked (SERVERPUSH_ENABLED = False, capture_updates())."""
    global _last_position
    with _positions:
        _last_position = max(time.time_ns() // 1000, _last_position + 1)
        return _last_position


def _local_only() -> bool:
    """Whether queries answer here without the push server: SERVERPUSH_ENABLED = False,
    or a capture_updates() block records (a test then renders pages as under it)."""
    return not settings.ENABLED or bool(recorders)


def _diverted(boxes: list[bytes], users: Sequence[Any] = ()) -> list[int] | None:
    """Positions for ``boxes`` if they do not go to the push server: recorded by
    capture_updates(), or dropped under SERVERPUSH_ENABLED = False; else None."""
    if not _local_only():
        return None
    for record in tuple(recorders):
        record(boxes, users)
    return [local_position() for _ in boxes]


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


def deliver(boxes: list[bytes], users: Sequence[Any] = ()) -> None:
    """Send encoded updates after a commit: the request that committed must not
    fail for it, so an unavailable push server is logged (once per outage) and
    counted in ``outage.unsent``, and a refusal is logged. ``users``: whom each
    update was serialized for (``<view>_update``), for capture_updates()."""
    try:
        _send_now(boxes, users)
    except PushServerUnavailable:
        outage.count_unsent(len(boxes))
    except PushError:
        outage.count_unsent(len(boxes))
        log.exception("push server refused %d updates sent after commit", len(boxes))


def _test_commit(using: str | None) -> bool:
    """Whether capture_updates() records and the only transactions open are a test
    case's own (TestCase, pytest-django's ``db``): they never commit, and stand for
    committed ones there, as ``captureOnCommitCallbacks(execute=True)`` has them."""
    if not recorders:
        return False
    # Django's private markers of a test case's atomic blocks: present from Django 4.1
    # (ticket #33161) and checked up to 5.2. A Django without them gets False here,
    # so publications wait for on_commit (run at the end of capture_updates()).
    blocks = getattr(transaction.get_connection(using), "atomic_blocks", None)
    if blocks is None:
        return False
    return all(getattr(block, "_from_testcase", False) for block in blocks)


def on_commit(callback: Callable[[], None], using: str | None) -> None:
    """``transaction.on_commit(callback, using, robust=True)``, but run now under
    ``_test_commit`` (an exception in it logged as Django would)."""
    if not _test_commit(using):
        transaction.on_commit(callback, using, robust=True)
        return
    try:
        callback()
    except Exception:
        log.exception("publishing after commit failed")


def _send(boxes: list[bytes], using: str | None) -> list[int] | None:
    if transaction.get_connection(using).in_atomic_block and not _test_commit(using):
        transaction.on_commit(partial(deliver, boxes), using, robust=True)
        return None
    return _send_now(boxes)


def _send_now(boxes: list[bytes], users: Sequence[Any] = ()) -> list[int]:
    """To the push server, unless captured or dropped (SERVERPUSH_ENABLED = False)."""
    stamps = _diverted(boxes, users)
    return stamps if stamps is not None else _call(lambda client: client.send_encoded(boxes))


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
    """The push server's current position (a page's ``since``), from its clock;
    with SERVERPUSH_ENABLED = False or while capture_updates() records,
    :func:`local_position`, without asking it."""
    if _local_only():
        return local_position()
    return _call(lambda client: client.current_timestamp())


def presence(channel: str) -> int:
    """How many subscribers ``channel`` has now, on every transport and push server
    node (PushClient.presence); BadChannel for a bad name, PushServerUnavailable when
    the push server cannot be reached. 0 with SERVERPUSH_ENABLED = False or while
    capture_updates() records, without asking it."""
    if _local_only():
        check_channel(channel)  # a mistake raises here too, as send_update's do
        return 0
    return _call(lambda client: client.presence(channel))


def history(
    channel: str, since: int | None = None, limit: int | None = HISTORY_LIMIT
) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` updates of ``channel`` after ``since`` (None: all the push
    server holds), in order, as ``{"ts", "name", "data"}`` dicts (``data`` decoded),
    and the channel's horizon: ``since`` below it means updates were missed
    (PushClient.history; ``limit`` None: HISTORY_LIMIT). Errors as for
    :func:`presence`; BadData for a bad ``since`` or ``limit``. ``([], 0)`` with
    SERVERPUSH_ENABLED = False or while capture_updates() records, arguments checked."""
    if _local_only():
        check_channel(channel)
        check_history_query(since, HISTORY_LIMIT if limit is None else limit)
        return [], 0
    return _call(lambda client: client.history(channel, since, limit))


asend_update = sync_to_async(send_update, thread_sensitive=True)
asend_updates = sync_to_async(send_updates, thread_sensitive=True)

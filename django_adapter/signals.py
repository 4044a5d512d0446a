"""Presence signals, sent in the push server process when run by ``runserverpush``.

``channel_subscribe`` and ``channel_unsubscribe`` are sent with ``user`` (the
browser's Django user, from its session cookie, or AnonymousUser) and
``channel`` when a WebSocket joins or leaves a channel. Long-poll requests are
one answer long and send neither.

Only connections from the site's own pages count (an Origin allowed by
SERVERPUSH_ALLOWED_ORIGINS, else by ALLOWED_HOSTS): another site's page could
otherwise open a WebSocket with the browser's cookie and speak for its user.

Changes are sent in batches, at most one every PRESENCE_INTERVAL seconds and
one at a time, from a thread: a join and a leave of the same channel by the
same connection in between cancel out, so a connection that re-subscribes in a
loop sends nothing, and what waits is at most one change per channel a
connection is in or was told in (bounded by --max-subscriptions).

Cost: nothing while no receiver is connected. With receivers, one thread hop
per batch, one session and user lookup per connection in it, and your
receivers' own work, all off the push server's event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from functools import partial
from http.cookies import CookieError, SimpleCookie
from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.dispatch import Signal
from django.http.request import split_domain_port, validate_host
from django.utils.functional import SimpleLazyObject
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

channel_subscribe = Signal()
channel_unsubscribe = Signal()

PRESENCE_INTERVAL = 0.5
"""Seconds between two batches of presence signals."""


def user_from_cookie(cookie: str | None) -> Any:
    """The Django user whose session cookie this is, else AnonymousUser."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
    from django.contrib.auth.models import AnonymousUser

    if not cookie:
        return AnonymousUser()
    try:
        morsel = SimpleCookie(cookie).get(django_settings.SESSION_COOKIE_NAME)
    except CookieError:
        return AnonymousUser()
    if morsel is None:
        return AnonymousUser()
    engine = import_module(django_settings.SESSION_ENGINE)
    session = engine.SessionStore(morsel.value)
    try:
        user_id = session[SESSION_KEY]
        backend = load_backend(session[BACKEND_SESSION_KEY])
    except KeyError:
        return AnonymousUser()
    user = backend.get_user(user_id)
    if user is None:
        return AnonymousUser()
    # As django.contrib.auth.get_user does: a changed password ends the session.
    verify = getattr(user, "get_session_auth_hash", None)
    if verify is not None and session.get(HASH_SESSION_KEY) != verify():
        return AnonymousUser()
    return user


def origin_allowed(origin: str | None, allowed_origins: Sequence[str]) -> bool:
    """Whether a page of ``origin`` may speak for its user: one of ``allowed_origins``
    (globs) if any, else one whose host is in ALLOWED_HOSTS. No Origin: not a
    browser page, so the cookie is its holder's own."""
    if origin is None:
        return True
    if allowed_origins:
        return any(fnmatchcase(origin, glob) for glob in allowed_origins)
    domain, _port = split_domain_port(urlsplit(origin).netloc)
    hosts = django_settings.ALLOWED_HOSTS
    if django_settings.DEBUG and not hosts:
        hosts = [".localhost", "127.0.0.1", "[::1]"]  # as HttpRequest.get_host does
    return bool(domain) and validate_host(domain, hosts)


class DjangoPresence:
    """A hub presence listener that sends the signals, coalesced, from a thread."""

    def __init__(
        self, clock: IReactorTime, defer_to_thread: Any, allowed_origins: Sequence[str] = ()
    ) -> None:
        self.clock = clock
        self.defer_to_thread = defer_to_thread
        self.allowed_origins = tuple(allowed_origins)
        self._told: dict[Any, set[str]] = {}
        self._changes: dict[Any, dict[str, bool]] = {}
        self._next = 0.0
        self._pending = False

    def joined(self, subscriber: Any, channel: str) -> None:
        self._change(subscriber, channel, True)

    def left(self, subscriber: Any, channel: str) -> None:
        self._change(subscriber, channel, False)

    def _change(self, subscriber: Any, channel: str, present: bool) -> None:
        if not (channel_subscribe.has_listeners() or channel_unsubscribe.has_listeners()):
            return
        origin = getattr(subscriber, "http_headers", {}).get("origin")
        if not origin_allowed(origin, self.allowed_origins):
            return
        changes = self._changes.setdefault(subscriber, {})
        if present == (channel in self._told.get(subscriber, ())):
            changes.pop(channel, None)  # back to what the receivers were told
        else:
            changes[channel] = present
        if not changes:
            del self._changes[subscriber]
        elif not self._pending:
            self._pending = True
            self.clock.callLater(max(0.0, self._next - self.clock.seconds()), self._flush)

    def _flush(self) -> None:
        batch = []
        for subscriber, changes in self._changes.items():
            told = self._told.setdefault(subscriber, set())
            for channel, present in changes.items():
                if present:
                    told.add(channel)
                    batch.append((channel_subscribe, subscriber.cookie, channel))
                else:
                    told.discard(channel)
                    batch.append((channel_unsubscribe, subscriber.cookie, channel))
            if not told:
                del self._told[subscriber]
        self._changes.clear()
        d = self.defer_to_thread(_send_in_thread, batch)
        d.addErrback(lambda failure: log.failure("presence signals failed", failure))
        d.addBoth(self._sent)

    def _sent(self, _: object) -> None:
        self._next = self.clock.seconds() + PRESENCE_INTERVAL
        self._pending = False
        if self._changes:
            self._pending = True
            self.clock.callLater(PRESENCE_INTERVAL, self._flush)


def _send_in_thread(batch: list[tuple[Signal, str | None, str]]) -> None:
    from django.db import close_old_connections

    close_old_connections()
    users: dict[str | None, Any] = {}
    try:
        for signal, cookie, channel in batch:
            if cookie not in users:
                # Looked up only if a receiver reads it (as request.user is): the
                # session and user queries are not made for receivers that do not.
                users[cookie] = SimpleLazyObject(partial(user_from_cookie, cookie))
            for receiver, error in signal.send_robust(
                sender=DjangoPresence, user=users[cookie], channel=channel
            ):
                if isinstance(error, Exception):
                    failure = Failure(error, type(error), error.__traceback__)
                    log.failure("presence receiver {receiver} failed", failure, receiver=receiver)
    finally:
        close_old_connections()

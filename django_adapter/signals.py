"""Presence signals, sent in the push server process when run by ``runserverpush``.

``channel_subscribe`` and ``channel_unsubscribe`` are sent with ``user`` (the
browser's Django user, from its session cookie, or AnonymousUser) and
``channel`` each time a WebSocket joins or leaves a channel. Long-poll requests
are one answer long and send neither.

Cost: nothing while no receiver is connected. With receivers, each join and
leave is one hop to a thread, one session and one user query, and your
receivers' own work, all off the push server's event loop.
"""

from __future__ import annotations

from http.cookies import CookieError, SimpleCookie
from typing import Any

from django.conf import settings as django_settings
from django.dispatch import Signal
from twisted.logger import Logger

log = Logger()

channel_subscribe = Signal()
channel_unsubscribe = Signal()


def user_from_cookie(cookie: str | None) -> Any:
    """The Django user whose session cookie this is, else AnonymousUser."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend
    from django.contrib.auth.models import AnonymousUser
    from django.utils.module_loading import import_string

    if not cookie:
        return AnonymousUser()
    try:
        morsel = SimpleCookie(cookie).get(django_settings.SESSION_COOKIE_NAME)
    except CookieError:
        return AnonymousUser()
    if morsel is None:
        return AnonymousUser()
    engine = import_string(django_settings.SESSION_ENGINE)
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


class DjangoPresence:
    """A hub presence listener that sends the signals from a thread."""

    def __init__(self, defer_to_thread: Any) -> None:
        self.defer_to_thread = defer_to_thread

    def joined(self, subscriber: Any, channel: str) -> None:
        self._send(channel_subscribe, subscriber, channel)

    def left(self, subscriber: Any, channel: str) -> None:
        self._send(channel_unsubscribe, subscriber, channel)

    def _send(self, signal: Signal, subscriber: Any, channel: str) -> None:
        if signal.has_listeners():
            d = self.defer_to_thread(_send_in_thread, signal, subscriber.cookie, channel)
            d.addErrback(lambda failure: log.failure("presence signal failed", failure))


def _send_in_thread(signal: Signal, cookie: str | None, channel: str) -> None:
    from django.db import close_old_connections

    close_old_connections()
    try:
        signal.send_robust(sender=DjangoPresence, user=user_from_cookie(cookie), channel=channel)
    finally:
        close_old_connections()

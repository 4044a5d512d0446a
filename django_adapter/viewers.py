"""A live "N people are viewing this page": the copies of a page open now.

Each page subscribes to a channel named after its path (:func:`viewers_channel`);
its subscribers are the page's open copies. Whenever a copy opens or closes that
channel, the push server process (``runserverpush``, after :func:`connect`) asks
:func:`~django_adapter.client.presence` for the channel's count and publishes it
there as ``{"count": n}``, event ``viewers``: every open copy shows the new number,
the page that just opened included. ``{% viewers_count %}`` renders the number a
page starts with.

Changes are merged per channel (:class:`ViewerCounts`): at most one publication
every MERGE_INTERVAL seconds, so a storm of reloads costs a few messages per
copy, not one per reload; and one more SETTLE seconds after the last, once every
node's count has reached Redis, so that the number settles right with several
push server nodes (each counts the others as they last reported).

It rides on the presence signals (``django_adapter.signals``), so it counts what
they see: WebSocket, WAMP and SSE connections from the site's own pages. A page
on long-poll is counted when another copy changes the number, but its own
arrival and departure publish nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.python.failure import Failure

from django_adapter.client import PushServerUnavailable, presence, send_update
from django_adapter.signals import channel_subscribe, channel_unsubscribe
from twistedpush.access import CHANNEL_RE
from twistedpush.errors import PushError

log = logging.getLogger("django_adapter")

PREFIX = "viewers:"
"""Channels of this prefix are page-viewer counts: only these publish their count."""


def viewers_channel(path: str) -> str:
    """The viewer channel of the page at ``path`` (``request.path``): ``viewers:<path>``,
    or, for a path with characters a channel cannot hold, ``viewers:`` and a digest
    of it (a digest never begins with ``/``, so it is no other path's channel)."""
    channel = PREFIX + path
    if len(channel) <= 200 and CHANNEL_RE.fullmatch(channel):
        return channel
    return PREFIX + hashlib.blake2b(path.encode(), digest_size=16).hexdigest()


def page_viewers(path: str) -> int | None:
    """The viewers a page of ``path`` will have once it is open (itself included),
    or None when the push server cannot be asked or refuses (its Redis is down, the
    publisher key is wrong): the page renders all the same, and its position says why."""
    try:
        return presence(viewers_channel(path)) + 1
    except (PushServerUnavailable, PushError):
        return None


MERGE_INTERVAL = 0.5
"""Seconds between two publications of one channel's count, at least."""

SETTLE = 1.25
"""Seconds after a publication that the count is published once more: a node
reports its counts to Redis every second (RedisHistory's ``presence_interval``),
so by then every node's change that came before is counted."""


def publish_count(channel: str) -> None:
    """Publish ``channel``'s count now (blocking: from a thread). A push server that
    cannot be reached or refuses is logged: the next change publishes again."""
    try:
        send_update(channel, {"count": presence(channel)}, name="viewers")
    except (PushServerUnavailable, PushError) as e:
        log.warning("viewer count of %s not published: %s", channel, e)


@dataclass
class _Channel:
    """What one channel's count waits for."""

    last: float = -math.inf
    """When its last publication began."""
    changed: bool = False
    """A change not published yet."""
    again: bool = False
    """The publication SETTLE seconds after the last one is due."""
    busy: bool = False
    """A publication is on its way (the next waits for it, to keep their order)."""
    call: IDelayedCall | None = None


class ViewerCounts:
    """Publishes viewer counts as they change, merged per channel: a change is
    published at once, or MERGE_INTERVAL after the channel's last publication
    (changes meanwhile make one publication); each is followed by one more
    SETTLE seconds later, which a change before then replaces (and is followed
    in turn). Runs in the reactor's thread; ``publish(channel)`` does the blocking
    part (a Deferred, from a thread, in runserverpush)."""

    def __init__(self, clock: IReactorTime, publish: Callable[[str], object]) -> None:
        self.clock = clock
        self.publish = publish
        self._channels: dict[str, _Channel] = {}

    def changed(self, channel: str) -> None:
        """A copy of the page of ``channel`` opened or closed."""
        state = self._channels.setdefault(channel, _Channel())
        state.changed = True
        self._schedule(channel, state)

    def _schedule(self, channel: str, state: _Channel) -> None:
        """Set the channel's next step: a publication, or forgetting it once a
        change may be published at once."""
        if state.busy:
            return  # _done schedules
        if state.call is not None:
            state.call.cancel()
        if state.changed:
            when = state.last + MERGE_INTERVAL
        elif state.again:
            when = state.last + SETTLE
        else:
            when = state.last + MERGE_INTERVAL  # then forgotten
        delay = max(0.0, when - self.clock.seconds())
        state.call = self.clock.callLater(delay, self._due, channel)

    def _due(self, channel: str) -> None:
        state = self._channels[channel]
        state.call = None
        if not (state.changed or state.again):
            del self._channels[channel]
            return
        state.again, state.changed = state.changed, False  # the SETTLE one is not repeated
        state.busy = True
        state.last = self.clock.seconds()
        d = maybeDeferred(self.publish, channel)
        d.addErrback(self._failed, channel)
        d.addBoth(self._done, channel)

    def _failed(self, failure: Failure, channel: str) -> None:
        log.error("viewer count of %s not published:\n%s", channel, failure.getTraceback())

    def _done(self, _: object, channel: str) -> None:
        state = self._channels[channel]
        state.busy = False
        self._schedule(channel, state)


_counts: ViewerCounts | None = None


def _changed(channel: str) -> None:
    """In the reactor's thread: the process's ViewerCounts, made on first use."""
    global _counts
    if _counts is None:
        from twisted.internet import reactor, threads

        _counts = ViewerCounts(reactor, lambda c: threads.deferToThread(publish_count, c))
    _counts.changed(channel)


def count_changed(sender: Any, user: Any, channel: str, **kwargs: Any) -> None:
    """Receiver of both presence signals (in a thread of runserverpush): a viewer
    channel's change, handed to the reactor's thread to be merged."""
    if channel.startswith(PREFIX):
        from twisted.internet import reactor

        cast(IReactorFromThreads, reactor).callFromThread(_changed, channel)


def connect() -> None:
    """Publish viewer counts from this process: call it from an ``AppConfig.ready``
    (only ``runserverpush`` sends presence signals, so elsewhere it costs nothing)."""
    for signal in (channel_subscribe, channel_unsubscribe):
        signal.connect(count_changed, dispatch_uid="django_adapter.viewers")

"""The push-relay long-poll: ``GET /updates/<channel>``, one update per answer, for the
clients of django-pushserver, the nginx HTTP push module and Nchan (the subscriber
side of the Basic HTTP Push Relay Protocol).

A client's position travels in HTTP caching headers: ``Last-Modified`` is the
second of the update's ``ts`` and ``Etag`` the microseconds within it, and the
client sends them back as ``If-Modified-Since`` and ``If-None-Match`` to ask
for the update after that one. Each request is one hub subscription from that
position, answered with the first update it gets (replayed or live).
"""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from functools import lru_cache
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twistedpush.access import check_channel
from twistedpush.errors import BadRequest, Forbidden, PushError
from twistedpush.history import Replay, Update
from twistedpush.httputil import channel_of, finish, query_text, refuse
from twistedpush.hub import Hub
from twistedpush.limits import Admission
from twistedpush.longpoll import Cors, Held, allow_cross_origin, count_until_sent, preflight
from twistedpush.wire import history_failed, reset_message
from twistedpush.writes import encoded_once

if TYPE_CHECKING:
    from twistedpush.web import PushRequest

RELAY_CORS = Cors(
    methods=b"GET, OPTIONS",
    headers=b"If-Modified-Since, If-None-Match, Cache-Control",
    expose=b"Last-Modified, Etag",
    credentials=True,
)
"""django-pushserver's client sends its cookies (withCredentials) and reads the Etag."""

HOLD = 60.0
"""Seconds a request waits for an update before it is answered 408."""

SECOND = 10**6


@lru_cache(maxsize=1)
def position_headers(ts: int) -> tuple[bytes, bytes]:
    """``Last-Modified`` and ``Etag`` of position ``ts`` (kept for the last one: every
    request waiting on a channel is answered with the same update)."""
    return datetimeToString(ts // SECOND), b"%d" % (ts % SECOND)


def parse_position(if_modified_since: bytes | None, if_none_match: bytes | None) -> int | None:
    """The position a client sends back, or None for "from the oldest update in
    history": no ``If-Modified-Since``, or one in the first second of 1970 (where
    django-pushserver's client starts). A missing ``If-None-Match`` counts as 0."""
    if if_modified_since is None:
        return None
    try:
        seconds = int(parsedate_to_datetime(if_modified_since.decode("latin-1")).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        raise BadRequest(
            f"If-Modified-Since is not an HTTP date: {if_modified_since[:60]!r}"
        ) from None
    tag = (if_none_match or b"0").strip().removeprefix(b"W/").strip(b'"')
    if not tag.isdigit() or len(tag) > 6:
        raise BadRequest(f"If-None-Match is not a position's Etag: {if_none_match!r:.60}")
    if seconds <= 0:
        return None
    return seconds * SECOND + int(tag)


class _Wait(Held):
    """One request: subscribed from its position until the first update (or reset)
    arrives, then answered with it and forgotten.

    The answer goes out at the end of the reactor turn, never from inside the
    hub's catch-up or fan-out (finishing the request drops the subscription).
    """

    lasting = False

    def __init__(self, resource: RelayResource, request: PushRequest, channel: str) -> None:
        self.resource = resource
        self.hub = resource.hub
        self.request = request
        self.channel = channel
        self.answer: tuple[int, bytes] | None = None
        self.done = False
        self.call: IDelayedCall | None = None

    def start(self, since: int | None, token: str | None) -> None:
        self.request.notifyFinish().addBoth(self._finished)
        if since is not None:
            self._subscribe(since, token)
        else:  # from the oldest update in history: from the channel's horizon
            self.hub.store.replay(self.channel, 0).addCallbacks(
                self._from_horizon, self._failed, callbackArgs=(token,)
            )

    def _from_horizon(self, replay: Replay, token: str | None) -> None:
        """The oldest update held is the answer, read once; with none held, wait for
        the next from the channel's horizon."""
        if self.done:
            return
        if replay.updates:
            self.send_update(replay.updates[0])
        else:
            self._subscribe(replay.horizon if replay.reset else 0, token)

    def _subscribe(self, since: int, token: str | None) -> None:
        try:
            d = self.hub.subscribe(self, self.channel, since, token)
        except PushError as e:
            self._refuse(e)
            return
        d.addCallbacks(self._caught_up, self._failed)

    def _caught_up(self, _: object) -> None:
        if self.answer is None and not self.done:
            self.call = self.resource.clock.callLater(HOLD, self._timed_out)

    def _failed(self, failure: Failure) -> None:
        if self.done:
            return
        if failure.check(BadRequest):
            # A position ahead of this server (its clock went back across a restart):
            # these clients would send it again and again, so start them over from now.
            self.hub.now().addCallbacks(
                lambda now: self._take(now, reset_message(self.channel, now)),
                self._failed,
            )
            return
        self._refuse(history_failed(failure, "a push-relay subscription"))

    # Subscriber: the first update, replayed or live, or a reset is the answer

    def send_replay(self, updates: Sequence[Update]) -> None:
        if updates:
            self.send_update(updates[0])

    def send_update(self, update: Update) -> None:
        if self.answer is None and not self.done:
            self._take(update.ts, self.resource.body(update))

    def send_reset(self, channel: str, now: int) -> None:
        self._take(now, reset_message(channel, now))

    def send_subscribed(self, channel: str, now: int) -> None:
        """Nothing to say: a client waiting without an update keeps its position."""

    def discard(self, channel: str) -> None:
        """The one answer holds all there is to send."""

    def going_away(self) -> None:
        """The server is stopping: ask again (the client does, at another node)."""
        if not self.done and self.answer is None:
            self._timed_out()

    # Answers

    def _take(self, ts: int, body: bytes) -> None:
        if self.answer is not None or self.done:
            return
        self.answer = (ts, body)
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = self.resource.clock.callLater(0, self._send)

    def _send(self) -> None:
        self.call = None
        if self.done or self.answer is None:
            return
        ts, body = self.answer
        last_modified, etag = position_headers(ts)
        request = self.request
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Last-Modified", last_modified)
        request.setHeader(b"Etag", etag)
        request.setHeader(b"Cache-Control", b"etag=" + etag)
        self._finish(body)

    def _timed_out(self) -> None:
        self.call = None
        self.request.setResponseCode(408)
        self.request.setHeader(b"Cache-Control", b"no-store")
        self._finish(b"")

    def _refuse(self, error: PushError) -> None:
        if not self.done:
            self._finish(refuse(self.request, error))

    def _finish(self, body: bytes) -> None:
        self.done = True
        finish(self.request, body)


class RelayResource(Resource):
    isLeaf = True

    def __init__(self, hub: Hub, clock: IReactorTime, admission: Admission) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.admission = admission
        self.body = encoded_once(lambda update: update.data.encode())
        """The answer's body for an update, for every request waiting on its channel."""

    def render_OPTIONS(self, request: Request) -> bytes:
        return preflight(request, self.admission, RELAY_CORS)

    def render_GET(self, request: PushRequest) -> int | bytes:
        if not allow_cross_origin(request, self.admission, RELAY_CORS):
            origin = request.getHeader(b"origin")
            return refuse(request, Forbidden(f"origin {origin!r} is not allowed"))
        token = query_text(request, b"token")
        try:
            channel = check_channel(channel_of(request))
            since = parse_position(
                request.getHeader(b"if-modified-since"), request.getHeader(b"if-none-match")
            )
            if since is None:  # refused now, before history is read for it
                self.hub.access.check(channel, token, self.clock.seconds())
            self.admission.use(request.ticket, "longpoll", request)
        except PushError as e:
            return refuse(request, e)
        count_until_sent(request, self.admission)  # as POST /poll is
        wait = _Wait(self, request, channel)
        wait.start(since, token)
        return NOT_DONE_YET

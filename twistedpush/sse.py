"""Server-Sent Events: ``GET /sse/<channel>`` translated into one hub subscription.

The stream's answer starts only once the hub has read the channel's history, so
that a refusal found then (a ``since`` ahead of the server, history away) is
still a plain 400 or 503 rather than a stream that ends at once. After that,
everything goes through an outbox written once per reactor turn while the
client reads, as for WebSockets: a client that does not read is dropped past
``--max-pending-bytes`` or after STALL_TIMEOUT paused, and a replay is turned
into events only as the client takes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twistedpush.errors import Forbidden, PushError
from twistedpush.history import Update
from twistedpush.httputil import channel_of, finish, query, query_text, refuse
from twistedpush.hub import Hub
from twistedpush.limits import Admission, address_key
from twistedpush.longpoll import Cors, allow_cross_origin, preflight
from twistedpush.wire import (
    SSE_KEEPALIVE,
    SSE_PREAMBLE,
    history_failed,
    parse_position,
    reset_message,
    sse_event,
    subscribed_message,
)
from twistedpush.writes import Outbox, Outboxes, encoded_once, write_now

if TYPE_CHECKING:
    from twistedpush.web import PushRequest

log = Logger()

SSE_CORS = Cors(methods=b"GET, OPTIONS", headers=b"Last-Event-ID, Cache-Control")

KEEPALIVE_INTERVAL = 20.0
"""Seconds between keep-alive comments on every stream (the contract: at most 25)."""


def update_event(update: Update) -> bytes:
    """The event of an update; a replay's are made as its stream reads them, apart
    from the live update's, which every stream shares (SSEResource.event)."""
    return sse_event(update.name, update.ts, update.message)


class _Stream:
    """One event stream: the hub's subscriber, and the sink of its outbox (the
    request's push producer)."""

    lasting = True
    started = False
    done = False

    def __init__(self, resource: SSEResource, request: PushRequest) -> None:
        self.resource = resource
        self.request = request
        self.ticket = request.ticket
        self.outbox = Outbox(self, resource.outboxes)
        origin = request.getHeader(b"origin")
        self.http_headers = {} if origin is None else {"origin": origin.decode("latin-1")}
        """What presence listeners read of the browser, as of a WebSocket's handshake."""

    @property
    def cookie(self) -> str | None:
        """The request's cookies: with them, presence knows the browser's user."""
        cookie = self.request.getHeader(b"cookie")
        return cookie.decode("latin-1") if cookie is not None else None

    def refused(self, failure: Failure) -> Failure | None:
        """The subscription failed before the stream began: answer with the error.
        (Once it began, a failure is a fault of ours: left to be logged.)"""
        if self.started:
            return failure
        if self.done:
            return None
        self.done = True  # finishing the answer forgets the stream (finished)
        body = refuse(self.request, history_failed(failure, "an event stream's subscription"))
        finish(self.request, body)
        return None

    def _start(self) -> None:
        self.started = True
        request = self.request
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.write(b"")  # the headers; events go out through the outbox
        request.registerProducer(self.outbox, True)
        self.outbox.send(SSE_PREAMBLE)

    # Subscriber: the hub sends the replay first, and with it the stream starts

    def send_replay(self, updates: Sequence[Update]) -> None:
        if not self.started:
            self._start()
        self.outbox.replay(updates, update_event)

    def send_update(self, update: Update) -> None:
        self.outbox.send(self.resource.event(update))

    def send_reset(self, channel: str, now: int) -> None:
        self.outbox.send(sse_event("reset", now, reset_message(channel, now)))

    def send_subscribed(self, channel: str, now: int) -> None:
        self.outbox.send(sse_event("subscribed", now, subscribed_message(channel, now)))

    def discard(self, channel: str) -> None:
        self.outbox.discard(channel)

    def going_away(self) -> None:
        """The server is stopping: send what waits, end the stream; the browser's
        EventSource reconnects (to another node) with its Last-Event-ID."""
        if self.started and not self.done:
            self.outbox.flush()
            self.close()

    def keep_alive(self) -> None:
        """A comment, once the stream has begun (before, no answer has started)."""
        if self.started:
            self.outbox.send(SSE_KEEPALIVE)

    # Output: the outbox's sink

    def writable(self) -> bool:
        return not self.done

    def write_out(self, data: bytes) -> None:
        """Straight to the socket when it takes it (writes.write_now), as its own
        HTTP chunk when the answer is chunked (HTTP/1.1)."""
        request = self.request
        request.sentLength += len(data)
        if request.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        write_now(request.connection.transport, data)

    def drop_slow(self, queued: int) -> None:
        """Not hub.drop() here: this may run inside the hub's fan-out loop. Aborting
        the connection ends the request, and its end forgets the subscription."""
        self.resource.slow_drops += 1
        log.info(
            "dropping slow event-stream client {address}: {queued} bytes it has not read",
            address=address_key(self.request.getClientAddress()),
            queued=queued,
        )
        self.done = True
        self.request.connection.transport.abortConnection()

    def close(self) -> None:
        """End the answer (the connection stays usable for another request)."""
        if self.done:
            return
        self.done = True
        self.outbox.close()
        self.request.unregisterProducer()
        self.request.finish()

    def finished(self, _: object) -> None:
        """The answer ended or the client went away: forget everything at once."""
        self.done = True
        self.outbox.close()
        self.resource.forget(self)


class SSEResource(Resource):
    """``/sse/<channel>``; one event per update (made once for every stream) and one
    keep-alive timer for all streams."""

    isLeaf = True

    def __init__(self, hub: Hub, clock: IReactorTime, admission: Admission) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.admission = admission
        self.outboxes = Outboxes(clock, admission.limits.max_pending_bytes)
        self.streams: set[_Stream] = set()
        self.slow_drops = 0
        self.event = encoded_once(update_event)
        """The event of a live update, for every stream."""
        self._keepalive = LoopingCall(self._keep_alive)
        self._keepalive.clock = clock

    def render_OPTIONS(self, request: Request) -> bytes:
        return preflight(request, self.admission, SSE_CORS)

    def render_HEAD(self, request: Request) -> bytes:
        """A stream's headers and no stream: events are written past twisted.web's
        own writes, which are the ones that know a HEAD answer has no body."""
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return b""

    def render_GET(self, request: PushRequest) -> int | bytes:
        if not allow_cross_origin(request, self.admission, SSE_CORS):
            origin = request.getHeader(b"origin")
            return refuse(request, Forbidden(f"origin {origin!r} is not allowed"))
        resume = request.getHeader(b"last-event-id")
        stream = _Stream(self, request)
        try:
            if resume is not None:  # an EventSource reconnecting: it knows better
                since = parse_position(resume, "Last-Event-ID")
            else:
                since = parse_position(query(request, b"since"), "since")
            self.admission.use(stream.ticket, "sse", stream)
            d = self.hub.subscribe(
                stream,
                channel_of(request),
                since,
                query_text(request, b"token"),
            )
        except PushError as e:
            self.admission.done(stream.ticket, stream)
            return refuse(request, e)
        request.notifyFinish().addBoth(stream.finished)
        self.streams.add(stream)
        if not self._keepalive.running:
            self._keepalive.start(KEEPALIVE_INTERVAL, now=False)
        d.addErrback(stream.refused)
        return NOT_DONE_YET

    def forget(self, stream: _Stream) -> None:
        self.hub.drop(stream)
        self.admission.done(stream.ticket, stream)
        self.streams.discard(stream)
        if not self.streams and self._keepalive.running:
            self._keepalive.stop()

    def _keep_alive(self) -> None:
        for stream in self.streams:
            stream.keep_alive()

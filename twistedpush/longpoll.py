"""Long-poll transport: ``POST /poll`` translated into hub calls, CORS included."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twisted.internet.defer import DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twistedpush.errors import Forbidden, Limit, PushError
from twistedpush.history import Update
from twistedpush.hub import Hub, Subscriber
from twistedpush.limits import Admission

if TYPE_CHECKING:
    from twistedpush.web import PushRequest

from twistedpush.wire import (
    Subscription,
    encode,
    error_message,
    failed_subscription,
    parse_poll_body,
    reset_message,
)


def _origin(request: Request) -> str | None:
    origin = request.getHeader(b"origin")
    return origin.decode("latin-1") if origin is not None else None


@dataclass(frozen=True, slots=True)
class Cors:
    """What an endpoint allows cross-origin pages: methods, request headers, the
    response headers their scripts may read, and whether cookies may come along."""

    methods: bytes = b"POST, OPTIONS"
    headers: bytes = b"Content-Type"
    expose: bytes | None = None
    credentials: bool = False


POLL_CORS = Cors()


def allow_cross_origin(request: Request, admission: Admission, cors: Cors = POLL_CORS) -> bool:
    """CORS headers for an allowed page origin (any, unless --allowed-origin is given).

    Long-poll tokens travel in the body, never in cookies, so by default no
    credentials are allowed and any origin gets ``*``; with credentials (the
    push-relay clients send them) the origin is echoed, as CORS requires.
    Returns False for a refused origin, which gets no CORS headers at all.
    """
    origin = _origin(request)
    try:
        admission.check_origin(origin)
    except PushError:
        return False
    if cors.credentials or admission.limits.allowed_origins:
        if origin is not None:
            request.setHeader(b"Access-Control-Allow-Origin", origin.encode("latin-1"))
        request.setHeader(b"Vary", b"Origin")
    else:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
    if cors.credentials:
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")
    if cors.expose is not None:
        request.setHeader(b"Access-Control-Expose-Headers", cors.expose)
    request.setHeader(b"Access-Control-Allow-Methods", cors.methods)
    request.setHeader(b"Access-Control-Allow-Headers", cors.headers)
    request.setHeader(b"Access-Control-Max-Age", b"86400")
    return True


def preflight(request: Request, admission: Admission, cors: Cors = POLL_CORS) -> bytes:
    """The answer to a CORS preflight (OPTIONS): 204 with the headers, or 403."""
    request.setResponseCode(204 if allow_cross_origin(request, admission, cors) else 403)
    return b""


def poll_error(error: PushError) -> bytes:
    """A refused poll's answer: the error in the answer's own shape, no cursor."""
    return b'{"messages":[%s],"ts":null}' % encode(error_message(error))


def error_body(request: Request, status: int, error: PushError) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return poll_error(error)


def count_until_sent(request: PushRequest, admission: Admission) -> None:
    """Count ``request`` as a poll until its answer has left this process (a client
    that does not read holds it in the send buffer), or the connection is gone."""
    ticket = request.ticket
    request.notifyFinish().addBoth(
        lambda _: request.when_sent(lambda: admission.done(ticket, request))
    )


class Held(Subscriber):
    """A request held open until its one answer (a poll, a push-relay wait)."""

    hub: Hub
    call: IDelayedCall | None
    done: bool

    def _finished(self, _: object) -> None:
        """The answer went out, or the client went away: forget everything at once."""
        self.done = True
        self.hub.drop(self)
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


class _Poll(Held):
    """One held request, subscribed to its channels until it answers."""

    lasting = False

    def __init__(self, hub: Hub, clock: IReactorTime, request: Request, timeout: float) -> None:
        self.hub = hub
        self.clock = clock
        self.request = request
        self.timeout = timeout
        self.messages: list[bytes] = []
        self.cursor: int | None = None
        self.caught_up = False
        self.done = False
        self.call: IDelayedCall | None = None

    def start(self, subscriptions: list[Subscription]) -> None:
        self.request.notifyFinish().addBoth(self._finished)
        pending = []
        for item in subscriptions:
            try:
                d = self.hub.subscribe(self, item.channel, item.since, item.token)
            except PushError as e:
                self.messages.append(encode(error_message(e, item.channel)))
            else:
                pending.append(d.addErrback(self._failed, item.channel))
        DeferredList(pending).addCallback(self._caught_up)

    def _failed(self, failure: Failure, channel: str) -> None:
        self.messages.append(encode(failed_subscription(failure, channel)))

    def _caught_up(self, _: object) -> None:
        self.caught_up = True
        if self.done:
            return
        delay = 0 if self.messages or self.cursor is None else self.timeout
        self.call = self.clock.callLater(delay, self._answer)

    def going_away(self) -> None:
        """The server is stopping: answer now with what there is."""
        if not self.done and self.caught_up:
            if self.call is not None and self.call.active():
                self.call.cancel()
            self._answer()

    def send_update(self, update: Update) -> None:
        self.messages.append(update.message)
        if self.caught_up and self.call is not None and self.call.getTime() > self.clock.seconds():
            # Answer at the end of this reactor turn, with whatever else arrives in it.
            self.call.reset(0)

    def send_replay(self, updates: Sequence[Update]) -> None:
        self.messages.extend(update.message for update in updates)

    def discard(self, channel: str) -> None:
        """A poll's messages are all sent in its one answer."""

    def send_reset(self, channel: str, now: int) -> None:
        self.messages.append(reset_message(channel, now))

    def send_subscribed(self, channel: str, now: int) -> None:
        self.cursor = now if self.cursor is None else min(self.cursor, now)

    def _answer(self) -> None:
        self.call = None
        if self.done:
            return
        self.hub.drop(self)
        if self.cursor is None:
            self.hub.now().addCallbacks(self._write, lambda _: self._write(None))
        else:
            self._write(self.cursor)

    def _write(self, cursor: int | None) -> None:
        if self.done:
            return
        self.done = True
        body = b'{"messages":[%s],"ts":%s}' % (
            b",".join(self.messages),
            b"null" if cursor is None else b"%d" % cursor,
        )
        self.request.setHeader(b"Content-Type", b"application/json")
        self.request.write(body)
        self.request.finish()


class PollResource(Resource):
    isLeaf = True

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        admission: Admission,
        max_body: int = 65536,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.admission = admission
        self.max_body = max_body

    def render_OPTIONS(self, request: Request) -> bytes:
        return preflight(request, self.admission)

    def render_POST(self, request: PushRequest) -> int | bytes:
        if not allow_cross_origin(request, self.admission):
            return error_body(
                request, 403, Forbidden(f"origin {_origin(request)!r} is not allowed")
            )
        assert request.content is not None
        body = request.content.read(self.max_body + 1)
        try:
            subscriptions, timeout = parse_poll_body(
                body, self.max_body, self.hub.max_subscriptions
            )
        except PushError as e:
            return error_body(request, 413 if e.code == "too_large" else 400, e)
        try:
            self.admission.use(request.ticket, "longpoll", request)
        except Limit as e:
            return error_body(request, 503, e)
        count_until_sent(request, self.admission)
        _Poll(self.hub, self.clock, request, timeout).start(subscriptions)
        return NOT_DONE_YET

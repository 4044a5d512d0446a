"""Long-poll transport: ``POST /poll`` translated into hub calls, CORS included."""

from __future__ import annotations

from twisted.internet.defer import DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twistedpush.errors import PushError
from twistedpush.history import Update
from twistedpush.hub import Hub
from twistedpush.wire import (
    Subscription,
    encode,
    error_message,
    failed_subscription,
    parse_poll_body,
    reset_message,
)


def allow_cross_origin(request: Request) -> None:
    """Let pages on any origin poll: tokens travel in the body, never in cookies."""
    request.setHeader(b"Access-Control-Allow-Origin", b"*")
    request.setHeader(b"Access-Control-Allow-Methods", b"POST, OPTIONS")
    request.setHeader(b"Access-Control-Allow-Headers", b"Content-Type")
    request.setHeader(b"Access-Control-Max-Age", b"86400")


class _Poll:
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

    @property
    def cookie(self) -> str | None:
        value = self.request.getHeader(b"cookie")
        return value.decode("latin-1") if value else None

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

    def send_update(self, update: Update) -> None:
        self.messages.append(update.message)
        if self.caught_up and self.call is not None and self.call.getTime() > self.clock.seconds():
            # Answer at the end of this reactor turn, with whatever else arrives in it.
            self.call.reset(0)

    def send_reset(self, channel: str, now: int) -> None:
        self.messages.append(encode(reset_message(channel, now)))

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

    def _finished(self, _: object) -> None:
        """The answer went out, or the client went away: forget everything at once."""
        self.done = True
        self.hub.drop(self)
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None


class PollResource(Resource):
    isLeaf = True

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        max_body: int = 65536,
        max_subscriptions: int = 100,
    ) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.max_body = max_body
        self.max_subscriptions = max_subscriptions
        self.active = 0

    def render_OPTIONS(self, request: Request) -> bytes:
        allow_cross_origin(request)
        request.setResponseCode(204)
        return b""

    def render_POST(self, request: Request) -> int | bytes:
        allow_cross_origin(request)
        body = request.content.read(self.max_body + 1)
        try:
            subscriptions, timeout = parse_poll_body(body, self.max_body, self.max_subscriptions)
        except PushError as e:
            request.setResponseCode(413 if e.code == "too_large" else 400)
            request.setHeader(b"Content-Type", b"application/json")
            return b'{"messages":[%s],"ts":null}' % encode(error_message(e))
        poll = _Poll(self.hub, self.clock, request, timeout)
        self.active += 1
        request.notifyFinish().addBoth(self._ended)
        poll.start(subscriptions)
        return NOT_DONE_YET

    def _ended(self, _: object) -> None:
        self.active -= 1

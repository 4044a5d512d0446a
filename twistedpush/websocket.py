"""WebSocket transport on /ws: JSON frames translated into hub calls."""

from __future__ import annotations

import pprint
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedpush.errors import Forbidden, Limit, PushError
from twistedpush.history import Update
from twistedpush.hub import Hub
from twistedpush.limits import Admission, address_key
from twistedpush.wire import (
    encode,
    error_message,
    failed_subscription,
    parse_client_message,
    reset_message,
    subscribed_message,
)
from twistedpush.writes import write_now

log = Logger()


class LazyPformat:
    """``pprint.pformat(value)``, made only when a log observer formats it."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame, as a server sends it (RFC 6455, 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big") + payload
    return b"\x81\x7f" + size.to_bytes(8, "big") + payload


SLOW_CLIENT = 4000
"""Close code for a client dropped for not reading: reconnect and catch up."""


class PushWebSocketProtocol(WebSocketServerProtocol):
    """One browser connection; also the push producer of its TCP transport.

    The transport pauses it when its send buffer is full; updates written while
    paused count as backlog, and a client whose backlog passes
    ``--max-pending-bytes`` is dropped, so memory per connection stays bounded.
    """

    factory: PushWebSocketFactory
    _ip: str | None = None
    _paused = False
    _backlog = 0
    lasting = True

    def _connectionMade(self) -> None:
        """Autobahn's, but its debug line of this connection's settings is
        pretty-printed only if logged: Autobahn formats it whether or not debug
        logging is on, a quarter of the server's time when a thousand browsers
        (re)connect at once."""
        autobahn_protocol.pformat = LazyPformat
        try:
            super()._connectionMade()
        finally:
            autobahn_protocol.pformat = pprint.pformat

    def connectionMade(self) -> None:
        super().connectionMade()
        # twisted.web's HTTPChannel registered itself before the upgrade; the
        # transport is ours now, and so are its pause and resume calls.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        self._paused = True

    def onConnect(self, request: ConnectionRequest) -> None:
        admission = self.factory.admission
        ip = address_key(self.transport.getPeer())
        try:
            admission.check_origin(request.headers.get("origin"))
            admission.admit("websocket", ip)
        except Forbidden as e:
            raise ConnectionDeny(403, e.message) from None
        except Limit as e:
            raise ConnectionDeny(503, e.message) from None
        self._ip = ip

    @property
    def cookie(self) -> str | None:
        """The handshake's Cookie header (the browser sends the site's cookies on any port)."""
        return self.http_headers.get("cookie")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            # 1003 (unsupported data) is a protocol-level code sendClose() refuses.
            self.sendCloseFrame(1003, b"binary frames are not accepted; send JSON text")
            return
        channel: Any = None
        try:
            kind, request = parse_client_message(payload, self.factory.max_message_size)
            channel = request.channel
            if kind == "subscribe":
                self.factory.hub.subscribe(
                    self, request.channel, request.since, request.token
                ).addErrback(self._failed, channel)
            else:
                self.factory.hub.unsubscribe(self, request.channel)
        except PushError as e:
            self._send(error_message(e, channel))

    def _failed(self, failure: Failure, channel: str) -> None:
        self._send(failed_subscription(failure, channel))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.hub.drop(self)
        if self._ip is not None:
            self.factory.admission.release("websocket", self._ip)
            self._ip = None

    # Output: every message of this connection goes through one outbox, written
    # once per reactor turn (see PushWebSocketFactory.flush), so they stay in order.

    _outbox: list[bytes] | None = None

    def _queue(self, frame: bytes) -> None:
        if self.state != self.STATE_OPEN:
            return
        if self._paused:
            self._backlog += len(frame)
            if self._backlog > self.factory.max_pending_bytes:
                self._drop_slow()
                return
        if self._outbox is None:
            self._outbox = [frame]
            self.factory.mark_dirty(self)
        else:
            self._outbox.append(frame)

    def flush(self) -> None:
        """Write the turn's frames in one piece (after any frame Autobahn queued)."""
        frames, self._outbox = self._outbox, None
        if not frames or self.state != self.STATE_OPEN:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self.send_queue:
            self.transport.write(data)
        else:
            write_now(self.transport, data)

    def _drop_slow(self) -> None:
        self.factory.slow_drops += 1
        log.info(
            "dropping slow client {peer}: {backlog} bytes it has not read",
            peer=self.peer,
            backlog=self._backlog,
        )
        # Not hub.drop() here: this runs inside the hub's fan-out loop. The
        # close below stops further writes; onClose forgets the subscriptions.
        self.sendCloseFrame(SLOW_CLIENT, b"too slow: reconnect and catch up")
        self.dropConnection(abort=True)

    def _send(self, message: dict) -> None:
        self._queue(text_frame(encode(message)))

    def send_update(self, update: Update) -> None:
        self._queue(self.factory.frame(update))

    def going_away(self) -> None:
        """The server is stopping: tell the browser to reconnect (to another node)."""
        if self.state == self.STATE_OPEN:
            self.flush()
            self.sendCloseFrame(1001, b"server going away: reconnect")

    def send_reset(self, channel: str, now: int) -> None:
        self._send(reset_message(channel, now))

    def send_subscribed(self, channel: str, now: int) -> None:
        self._send(subscribed_message(channel, now))


class PushWebSocketFactory(WebSocketServerFactory):
    """Frames each update once and hands the same bytes to every subscriber."""

    protocol = PushWebSocketProtocol

    def __init__(
        self,
        hub: Hub,
        admission: Admission,
        max_message_size: int = 4096,
        reactor: Any = None,
    ) -> None:
        super().__init__(reactor=reactor)
        self.hub = hub
        self.admission = admission
        self.max_message_size = max_message_size
        self.max_pending_bytes = admission.limits.max_pending_bytes
        self.slow_drops = 0
        self.dirty: list[PushWebSocketProtocol] = []
        self._flush_call: Any = None
        self._last: tuple[Update | None, bytes] = (None, b"")
        # Larger frames are cut off outright; up to this bound they get a too_large error.
        hard_limit = max(65536, 4 * max_message_size)
        self.setProtocolOptions(
            maxFramePayloadSize=hard_limit,
            maxMessagePayloadSize=hard_limit,
            autoPingInterval=30,
            autoPingTimeout=30,
            # Frames are written as plain text frames (see flush): no compression.
            perMessageCompressionAccept=lambda offers: None,
        )
        # Autobahn copies each of these options from the factory into every
        # connection's __dict__ unless its class has them: a class of this
        # factory's own holds them once, about 2 KiB less per connection.
        # (Functions among them stay plain functions, not methods.)
        options = {name: getattr(self, name) for name in PushWebSocketProtocol.CONFIG_ATTRS}
        for name, value in options.items():
            if callable(value):
                options[name] = staticmethod(value)
        self.protocol = type("PushWebSocketProtocol", (PushWebSocketProtocol,), options)

    def frame(self, update: Update) -> bytes:
        """The WebSocket frame of ``update``; fan-out asks for the same update in a row."""
        last, frame = self._last
        if last is not update:
            frame = text_frame(update.message)
            self._last = (update, frame)
        return frame

    def mark_dirty(self, protocol: PushWebSocketProtocol) -> None:
        """``protocol`` has frames to write: flush them all at the end of this turn."""
        self.dirty.append(protocol)
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self._flush_call = None
        dirty, self.dirty = self.dirty, []
        for protocol in dirty:
            protocol.flush()

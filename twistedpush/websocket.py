"""WebSocket transport on /ws: JSON frames translated into hub calls."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from twisted.python.failure import Failure

from twistedpush.errors import PushError
from twistedpush.history import Update
from twistedpush.hub import Hub
from twistedpush.wire import (
    encode,
    error_message,
    failed_subscription,
    parse_client_message,
    reset_message,
    subscribed_message,
)


class PushWebSocketProtocol(WebSocketServerProtocol):
    factory: PushWebSocketFactory
    _open = False
    lasting = True

    @property
    def cookie(self) -> str | None:
        """The handshake's Cookie header (the browser sends the site's cookies on any port)."""
        return self.http_headers.get("cookie")

    def onOpen(self) -> None:
        self._open = True
        self.factory.connections += 1

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
        if self._open:
            self._open = False
            self.factory.connections -= 1

    def _send(self, message: dict) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(encode(message))

    def send_update(self, update: Update) -> None:
        if self.state == self.STATE_OPEN:
            self.sendPreparedMessage(self.factory.prepared(update))

    def send_reset(self, channel: str, now: int) -> None:
        self._send(reset_message(channel, now))

    def send_subscribed(self, channel: str, now: int) -> None:
        self._send(subscribed_message(channel, now))


class PushWebSocketFactory(WebSocketServerFactory):
    """Frames each update once and hands the same bytes to every subscriber."""

    protocol = PushWebSocketProtocol

    def __init__(self, hub: Hub, max_message_size: int = 4096, reactor: Any = None) -> None:
        super().__init__(reactor=reactor)
        self.hub = hub
        self.max_message_size = max_message_size
        self.connections = 0
        self._last: tuple[Update | None, PreparedMessage | None] = (None, None)
        # Larger frames are cut off outright; up to this bound they get a too_large error.
        hard_limit = max(65536, 4 * max_message_size)
        self.setProtocolOptions(
            maxFramePayloadSize=hard_limit,
            maxMessagePayloadSize=hard_limit,
            autoPingInterval=30,
            autoPingTimeout=30,
        )

    def prepared(self, update: Update) -> PreparedMessage:
        """The framed message for ``update``; fan-out asks for the same update in a row."""
        last, message = self._last
        if last is not update or message is None:
            message = self.prepareMessage(update.message)
            self._last = (update, message)
        return message

"""WebSocket transport on /ws: JSON frames translated into hub calls."""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
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

log = Logger()

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

    def _writable(self, size: int) -> bool:
        if self.state != self.STATE_OPEN:
            return False
        if self._paused:
            self._backlog += size
            if self._backlog > self.factory.max_pending_bytes:
                self._drop_slow()
                return False
        return True

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
        payload = encode(message)
        if self._writable(len(payload)):
            self.sendMessage(payload)

    def send_update(self, update: Update) -> None:
        if self._writable(len(update.message)):
            self.sendPreparedMessage(self.factory.prepared(update))

    def going_away(self) -> None:
        """The server is stopping: tell the browser to reconnect (to another node)."""
        if self.state == self.STATE_OPEN:
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

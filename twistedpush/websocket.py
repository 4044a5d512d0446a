"""WebSocket transport on /ws: JSON frames translated into hub calls, or with the
``wamp.2.json`` subprotocol a WAMP session (twistedpush.wamp) over the same outbox."""

from __future__ import annotations

import pprint
from abc import abstractmethod
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedpush.errors import Forbidden, Limit, PushError
from twistedpush.history import Update
from twistedpush.hub import Hub
from twistedpush.limits import Admission, Ticket
from twistedpush.wamp import SUBPROTOCOL, Broker, WampSession
from twistedpush.wire import (
    encode,
    error_message,
    failed_subscription,
    parse_client_message,
    reset_message,
    subscribed_message,
)
from twistedpush.writes import Outbox, Outboxes, encoded_once, write_now

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


def update_frame(update: Update) -> bytes:
    """The v1 frame of an update (a replay's; fan-out shares PushWebSocketFactory.frame)."""
    return text_frame(update.message)


_HANDSHAKE_ONLY = (
    "http_request_data",
    "http_response_data",
    "http_status_line",
    "http_request_params",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "websocket_protocols",
    "websocket_extensions",
    "websocket_origin",
    "_wskey",
)
"""What Autobahn's server side reads only while it answers the handshake."""

_KEPT_HEADERS = ("cookie", "origin")
"""Handshake headers read later: presence signals carry the browser's cookie and origin."""

SLOW_CLIENT = 4000
"""Close code for a client dropped for not reading: reconnect and catch up."""


class Flow(Protocol):
    """What a transport's pauses go to (an :class:`~twistedpush.writes.Outbox`)."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


class AdmittedWebSocket(WebSocketServerProtocol):
    """What this server's WebSockets (/ws, /stats/ws) share: the handshake admitted
    or refused with the upgraded connection's admission ticket (its factory's
    ``handover``), and the transport's pauses, which are the connection's once
    upgraded and go to its ``flow``."""

    transport: Any  # a TCP (or TLS) connection: this protocol is its producer
    ticket: Ticket | None = None

    @property
    @abstractmethod
    def flow(self) -> Flow:
        """What the transport's pauses go to."""

    def check_origin(self, admission: Admission, request: ConnectionRequest) -> None:
        """Raise Forbidden for a page origin outside ``--allowed-origin``."""
        admission.check_origin(request.headers.get("origin"))

    def admit(self, admission: Admission, request: ConnectionRequest) -> None:
        """Count the connection as a WebSocket, or refuse the handshake: 403 for a
        page origin :meth:`check_origin` refuses, 503 over the limits."""
        try:
            self.check_origin(admission, request)
            if self.ticket is not None:
                admission.use(self.ticket, "websocket", self)
        except Forbidden as e:
            raise ConnectionDeny(403, e.message) from None
        except Limit as e:
            raise ConnectionDeny(503, e.message) from None

    def connectionMade(self) -> None:
        super().connectionMade()
        # twisted.web's HTTPChannel registered itself before the upgrade; the
        # transport is ours now, and so are its pause and resume calls.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.flow.pauseProducing()

    def resumeProducing(self) -> None:
        self.flow.resumeProducing()

    def stopProducing(self) -> None:
        self.flow.stopProducing()


class PushWebSocketProtocol(AdmittedWebSocket):
    """One browser connection; also the push producer of its TCP transport.

    Everything this connection sends goes through its :class:`~twistedpush.writes.Outbox`
    (written once per reactor turn, slow and stalled readers dropped, replays
    framed as the client reads); this class frames and writes.

    A client that offers the ``wamp.2.json`` subprotocol gets a WAMP session
    (``wamp``), which is the hub's subscriber instead and sends through the
    same outbox.
    """

    factory: PushWebSocketFactory
    outbox: Outbox
    lasting = True
    wamp: WampSession | None = None
    answered = True
    """Whether the client sent anything (a pong, a message) since the last ping."""

    def _connectionMade(self) -> None:
        """Autobahn's, but its debug line of this connection's settings is
        pretty-printed only if logged: Autobahn formats it whether or not debug
        logging is on, a quarter of the server's time when a thousand browsers
        (re)connect at once."""
        autobahn_protocol.pformat = LazyPformat  # type: ignore[assignment]
        try:
            super()._connectionMade()
        finally:
            autobahn_protocol.pformat = pprint.pformat

    def connectionMade(self) -> None:
        self.outbox = Outbox(self, self.factory.outboxes)
        super().connectionMade()

    @property
    def flow(self) -> Outbox:
        """The transport's pauses go to the outbox: it decides what waits."""
        return self.outbox

    @property
    def client_address(self) -> str:
        """The browser's address (behind a trusted proxy, the one it forwards for)."""
        ticket = self.ticket
        return (ticket.address or ticket.peer) if ticket is not None else str(self.peer)

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """Admit the connection; choose WAMP if the client offers it."""
        self.admit(self.factory.admission, request)
        if SUBPROTOCOL in request.protocols:
            self.wamp = WampSession(self.factory.broker, self)
            return SUBPROTOCOL
        return None

    def onOpen(self) -> None:
        """The handshake is done: let go of what Autobahn keeps of it for the life of
        the connection (the raw request and response, every header, an empty send
        queue of 760 bytes), keeping the two headers presence reads. About 2 KiB
        less per idle connection."""
        self.factory.pinger.add(self)
        attributes = self.__dict__
        for name in _HANDSHAKE_ONLY:
            attributes.pop(name, None)
        headers = self.http_headers
        self.http_headers = {name: headers[name] for name in _KEPT_HEADERS if name in headers}
        # Autobahn queues only writes sent with sync or chopsize (sendData makes the
        # queue when one is); it reads the queue's length before every write.
        attributes["send_queue"] = ()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        if (sync or chopsize) and isinstance(self.send_queue, tuple):
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    @property
    def cookie(self) -> str | None:
        """The handshake's Cookie header (the browser sends the site's cookies on any port)."""
        return self.http_headers.get("cookie")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.answered = True
        if self.wamp is not None:
            self.wamp.received(payload, isBinary)
            return
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
            self._send_message(error_message(e, channel))

    def _failed(self, failure: Failure, channel: str) -> None:
        self._send_message(failed_subscription(failure, channel))

    def onPong(self, payload: bytes) -> None:
        self.answered = True

    def ping(self, judge: bool = True) -> None:
        """The pinger's turn (every PING_INTERVAL): a client that answered nothing
        since the last ping is gone (a dead peer, a lost NAT mapping): drop it.
        Not when ``judge`` is false: the reactor was late, and an answer may be
        waiting, unread, in the socket."""
        if judge and not self.answered:
            self.wasClean = False
            self.wasNotCleanReason = "WebSocket ping timeout (no pong in time)"
            self.dropConnection(abort=True)
            return
        self.answered = False
        self.sendPing()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.pinger.remove(self)
        self.outbox.close()
        self.factory.hub.drop(self.wamp or self)
        if self.ticket is not None:
            self.factory.admission.close(self.ticket)

    # Output: the outbox's sink

    def writable(self) -> bool:
        return self.state == self.STATE_OPEN

    def write_out(self, data: bytes) -> None:
        write_now(self.transport, data)

    def drop_slow(self, queued: int) -> None:
        self.factory.slow_drops += 1
        log.info(
            "dropping slow client {address}: {queued} bytes it has not read",
            address=self.client_address,
            queued=queued,
        )
        # Not hub.drop() here: this runs inside the hub's fan-out loop. The
        # close below stops further writes; onClose forgets the subscriptions.
        self.sendCloseFrame(SLOW_CLIENT, b"too slow: reconnect and catch up")
        self.dropConnection(abort=True)

    # Output: the hub's subscriber (v1)

    def _send_message(self, message: dict) -> None:
        self.outbox.send(text_frame(encode(message)))

    def send_update(self, update: Update) -> None:
        self.outbox.send(self.factory.frame(update))

    def send_replay(self, updates: Sequence[Update]) -> None:
        self.outbox.replay(updates, update_frame)

    def discard(self, channel: str) -> None:
        self.outbox.discard(channel)

    def going_away(self) -> None:
        """The server is stopping: tell the browser to reconnect (to another node)."""
        self.close(1001, "server going away: reconnect")

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then close with ``code``."""
        if self.state == self.STATE_OPEN:
            self.outbox.flush()
            self.outbox.close()
            # A close reason is at most 123 bytes of UTF-8.
            self.sendCloseFrame(code, reason.encode()[:123].decode(errors="ignore").encode())

    def send_reset(self, channel: str, now: int) -> None:
        self.outbox.send(text_frame(reset_message(channel, now)))

    def send_subscribed(self, channel: str, now: int) -> None:
        self.outbox.send(text_frame(subscribed_message(channel, now)))


PING_INTERVAL = 30.0
"""Seconds between two pings of a connection, and the time it has to answer one."""

_PING_GROUPS = 120
"""A quarter-second tick: at 19,000 connections about 160 pings a turn, not thousands."""


class Pinger:
    """Pings every open connection every PING_INTERVAL seconds from one timer: the
    connections are spread over groups, one group pinged per tick, so the pings
    (and the pongs coming back) are spread over the interval."""

    def __init__(self, clock: IReactorTime) -> None:
        self.groups: list[set[PushWebSocketProtocol]] = [set() for _ in range(_PING_GROUPS)]
        self.count = 0
        self._next = 0
        self._turn = 0
        self._loop = LoopingCall.withCount(self._tick)
        self._loop.clock = clock

    def add(self, connection: PushWebSocketProtocol) -> None:
        self.groups[self._next].add(connection)
        self._next = (self._next + 1) % _PING_GROUPS
        self.count += 1
        if not self._loop.running:
            self._loop.start(PING_INTERVAL / _PING_GROUPS, now=False)

    def remove(self, connection: PushWebSocketProtocol) -> None:
        for group in self.groups:
            if connection in group:
                group.discard(connection)
                self.count -= 1
                break
        if not self.count and self._loop.running:
            self._loop.stop()

    def _tick(self, ticks: int) -> None:
        """``ticks``: the intervals gone by since the last call (more than one when
        the reactor was busy): every group whose turn came is pinged."""
        judge = ticks == 1
        for _ in range(min(ticks, _PING_GROUPS)):
            group = self.groups[self._turn]
            self._turn = (self._turn + 1) % _PING_GROUPS
            for connection in list(group):
                connection.ping(judge)


class ReactorTimer:
    """Autobahn's per-connection timers as plain reactor calls.

    txaio's batched timer, Autobahn's default, files every call of one second in
    one list and cancels by searching it: with 10,000 browsers connecting, the
    search of the opening handshake's timer was about a sixth of the node's time
    (py-spy), and stopping the node searched once per open connection. A
    reactor call is cancelled at once.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock

    def call_later(self, delay: float, func: Any, *args: Any, **kwargs: Any) -> IDelayedCall:
        return self.clock.callLater(delay, func, *args, **kwargs)


class AdmittingFactory(WebSocketServerFactory):
    """A factory whose connections take over the admission ticket of the HTTP
    connection they are upgraded from, with Autobahn's timers on the reactor.

    Autobahn's status page is off: it answered a plain GET of ``/ws?redirect=URL``
    with a redirect to any URL (an open redirect on the site's own origin).
    """

    admission: Admission
    handover: Ticket | None = None
    """The admission ticket of the connection being upgraded (set around it by the resource)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batched_timer = ReactorTimer(self.reactor)
        self.setProtocolOptions(webStatus=False)

    def buildProtocol(self, addr: IAddress | None) -> AdmittedWebSocket:
        protocol = cast(AdmittedWebSocket, super().buildProtocol(addr))
        protocol.ticket = self.handover
        return protocol


class PushWebSocketFactory(AdmittingFactory):
    """Frames each update once and hands the same bytes to every subscriber."""

    protocol: type[PushWebSocketProtocol] = PushWebSocketProtocol  # type: ignore[assignment]

    def __init__(
        self,
        hub: Hub,
        admission: Admission,
        max_message_size: int = 4096,
        reactor: Any = None,
        wamp_realm: str = "serverpush",
    ) -> None:
        super().__init__(reactor=reactor)
        self.hub = hub
        self.admission = admission
        self.max_message_size = max_message_size
        self.broker = Broker(hub, wamp_realm, max_message_size, text_frame)
        self.outboxes = Outboxes(self.reactor, admission.limits.max_pending_bytes)
        self.slow_drops = 0
        self.pinger = Pinger(self.reactor)
        self.frame = encoded_once(update_frame)
        """The frame of a live update, for every connection."""
        # Larger frames are cut off outright; up to this bound they get a too_large error.
        hard_limit = max(65536, 4 * max_message_size)
        self.setProtocolOptions(
            maxFramePayloadSize=hard_limit,
            maxMessagePayloadSize=hard_limit,
            # No autoPing: Autobahn keeps two timers per connection for it, a fifth
            # of an idle node's time at 19,000 connections (py-spy); see Pinger.
            # Frames are written as plain text frames (see text_frame): no compression.
            perMessageCompressionAccept=lambda offers: None,
            # A protocol error (a frame over the limit, invalid UTF-8) gets a close
            # frame with its code (1009, 1007), not a bare TCP drop (1006).
            failByDrop=False,
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

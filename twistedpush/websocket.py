"""WebSocket transport on /ws: JSON frames translated into hub calls, or with the
``wamp.2.json`` subprotocol a WAMP session (twistedpush.wamp) over the same outbox."""

from __future__ import annotations

import pprint
from collections.abc import Callable, Sequence
from typing import Any, cast

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket import protocol as autobahn_protocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IAddress, IDelayedCall
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


def update_frame(update: Update) -> bytes:
    """The v1 frame of an update (a replay's; fan-out shares PushWebSocketFactory.frame)."""
    return text_frame(update.message)


SLOW_CLIENT = 4000
"""Close code for a client dropped for not reading: reconnect and catch up."""

REPLAY_CHUNK = 65536
"""Bytes of replayed frames written per turn while the client keeps up."""

STALL_TIMEOUT = 15.0
"""Seconds a client may leave its transport paused (its buffers full, not reading)
while something waits for it, before it is dropped as stalled."""


class _Replay:
    """A channel's replay, framed only as the client reads: its updates are history's
    own objects, so a replay waiting on a slow reader costs no copy of them.
    ``frame`` makes an update's frame (v1 message or WAMP EVENT)."""

    __slots__ = ("channel", "frame", "position", "updates")

    def __init__(self, updates: Sequence[Update], frame: Callable[[Update], bytes]) -> None:
        self.updates = updates
        self.frame = frame
        self.channel = updates[0].channel
        self.position = 0

    def frames(self, budget: int) -> tuple[list[bytes], int, bool]:
        """Frames worth about ``budget`` bytes, their size, and whether the replay is done."""
        frames = []
        size = 0
        updates, position, make = self.updates, self.position, self.frame
        while position < len(updates) and size < budget:
            frame = make(updates[position])
            frames.append(frame)
            size += len(frame)
            position += 1
        self.position = position
        return frames, size, position == len(updates)


class PushWebSocketProtocol(WebSocketServerProtocol):
    """One browser connection; also the push producer of its TCP transport.

    Everything this connection sends goes through one outbox, written once per
    reactor turn while the transport takes it. While the transport is paused
    (the client does not read fast enough) frames wait in the outbox, and a
    client whose outbox passes ``--max-pending-bytes`` is dropped. Replays wait
    there as :class:`_Replay` and are framed only as the client reads, so a
    stalled reader holds no copy of the history it asked for.

    A client that offers the ``wamp.2.json`` subprotocol gets a WAMP session
    (``wamp``), which is the hub's subscriber instead and sends through the
    same outbox (``send_frame``, ``send_replay``, ``discard``, ``close``).
    """

    factory: PushWebSocketFactory
    transport: Any  # a TCP (or TLS) connection: this protocol is its producer
    ticket: Ticket | None = None
    _paused = False
    _stall: IDelayedCall | None = None
    _dirty = False
    _outbox: list[bytes | _Replay] | None = None
    _queued = 0
    """Bytes of frames in the outbox (replays not yet framed are history's, not ours)."""
    _replays = 0
    lasting = True
    wamp: WampSession | None = None

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
        super().connectionMade()
        # twisted.web's HTTPChannel registered itself before the upgrade; the
        # transport is ours now, and so are its pause and resume calls.
        self.transport.unregisterProducer()
        self.transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        """The client is not reading as fast as we write: hold the outbox, and drop
        the client if it stays so for STALL_TIMEOUT with something waiting."""
        self._paused = True
        if self._stall is None:
            self._stall = self.factory.reactor.callLater(STALL_TIMEOUT, self._stalled)

    def resumeProducing(self) -> None:
        """The transport's buffer drained: write what waited, now."""
        self._paused = False
        self._cancel_stall()
        if self._outbox:
            self.flush()

    def stopProducing(self) -> None:
        self._paused = True
        self._cancel_stall()

    def _cancel_stall(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if self._paused and self._outbox and self.state == self.STATE_OPEN:
            self._drop_slow()

    @property
    def client_address(self) -> str:
        """The browser's address (behind a trusted proxy, the one it forwards for)."""
        ticket = self.ticket
        return (ticket.address or ticket.peer) if ticket is not None else str(self.peer)

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """Admit the connection; choose WAMP if the client offers it."""
        admission = self.factory.admission
        try:
            admission.check_origin(request.headers.get("origin"))
            if self.ticket is not None:
                admission.use(self.ticket, "websocket", self)
        except Forbidden as e:
            raise ConnectionDeny(403, e.message) from None
        except Limit as e:
            raise ConnectionDeny(503, e.message) from None
        if SUBPROTOCOL in request.protocols:
            self.wamp = WampSession(self.factory.broker, self)
            return SUBPROTOCOL
        return None

    @property
    def cookie(self) -> str | None:
        """The handshake's Cookie header (the browser sends the site's cookies on any port)."""
        return self.http_headers.get("cookie")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
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

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self._cancel_stall()
        self.factory.hub.drop(self.wamp or self)
        self._outbox = None
        if self.ticket is not None:
            self.factory.admission.close(self.ticket)

    # Output

    def send_frame(self, item: bytes) -> None:
        """Queue a frame, to be written at the end of this turn."""
        if self.state != self.STATE_OPEN:
            return
        if self._queued + len(item) > self.factory.max_pending_bytes:
            if self._paused:
                self._drop_slow()  # not reading, and this much waits for it
                return
            self.flush()  # a big turn for a client that reads: hand it over now
        self._queued += len(item)
        if self._outbox is None:
            self._outbox = [item]
            if not self._paused:
                self._mark_dirty()
        else:
            self._outbox.append(item)

    def _mark_dirty(self) -> None:
        if not self._dirty:
            self._dirty = True
            self.factory.mark_dirty(self)

    def flush(self) -> None:
        """Write the outbox in one piece, unless the transport is paused (then
        :meth:`resumeProducing` asks again)."""
        self._dirty = False
        outbox = self._outbox
        if not outbox or self._paused or self.state != self.STATE_OPEN:
            return
        if self._replays:
            self._flush_replaying(outbox)
            return
        self._outbox = None
        self._queued = 0
        frames = cast(list[bytes], outbox)  # no replay among them
        write_now(self.transport, frames[0] if len(frames) == 1 else b"".join(frames))

    def _flush_replaying(self, outbox: list[bytes | _Replay]) -> None:
        """Write about REPLAY_CHUNK bytes, framing replays as they come; the rest
        waits for the next turn, or for the transport to take more."""
        out: list[bytes] = []
        size = 0
        index = 0
        while index < len(outbox) and size < REPLAY_CHUNK:
            item = outbox[index]
            if isinstance(item, _Replay):
                frames, framed, done = item.frames(REPLAY_CHUNK - size)
                out += frames
                size += framed
                if not done:
                    break
                self._replays -= 1
            else:
                out.append(item)
                size += len(item)
                self._queued -= len(item)
            index += 1
        rest = outbox[index:]
        self._outbox = rest or None
        write_now(self.transport, b"".join(out))
        if rest and not self._paused:
            self._mark_dirty()  # more next turn (if the write filled the transport: on resume)

    def _drop_slow(self) -> None:
        self.factory.slow_drops += 1
        log.info(
            "dropping slow client {address}: {queued} bytes it has not read",
            address=self.client_address,
            queued=self._queued,
        )
        self._outbox = None
        # Not hub.drop() here: this runs inside the hub's fan-out loop. The
        # close below stops further writes; onClose forgets the subscriptions.
        self.sendCloseFrame(SLOW_CLIENT, b"too slow: reconnect and catch up")
        self.dropConnection(abort=True)

    def _send_message(self, message: dict) -> None:
        self.send_frame(text_frame(encode(message)))

    def send_update(self, update: Update) -> None:
        self.send_frame(self.factory.frame(update))

    def send_replay(
        self, updates: Sequence[Update], frame: Callable[[Update], bytes] = update_frame
    ) -> None:
        if not updates or self.state != self.STATE_OPEN:
            return
        replay = _Replay(updates, frame)
        self._replays += 1
        if self._outbox is None:
            self._outbox = [replay]
            if not self._paused:
                self._mark_dirty()
        else:
            self._outbox.append(replay)

    def discard(self, channel: str) -> None:
        """The subscription to ``channel`` ended (or was replaced): its replay's
        unsent part goes, rather than wait in the outbox for a client that
        re-subscribes again and again."""
        outbox = self._outbox
        if not self._replays or not outbox:
            return
        kept = [i for i in outbox if not (isinstance(i, _Replay) and i.channel == channel)]
        self._replays -= len(outbox) - len(kept)
        self._outbox = kept or None

    def going_away(self) -> None:
        """The server is stopping: tell the browser to reconnect (to another node)."""
        self.close(1001, "server going away: reconnect")

    def close(self, code: int, reason: str) -> None:
        """Write what is queued, then close with ``code``."""
        if self.state == self.STATE_OPEN:
            self.flush()
            # A close reason is at most 123 bytes of UTF-8.
            self.sendCloseFrame(code, reason.encode()[:123].decode(errors="ignore").encode())

    def send_reset(self, channel: str, now: int) -> None:
        self._send_message(reset_message(channel, now))

    def send_subscribed(self, channel: str, now: int) -> None:
        self._send_message(subscribed_message(channel, now))


class PushWebSocketFactory(WebSocketServerFactory):
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
        self.max_pending_bytes = admission.limits.max_pending_bytes
        self.slow_drops = 0
        self.handover: Ticket | None = None
        """The admission ticket of the connection being upgraded (set around it by the resource)."""
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

    def buildProtocol(self, addr: IAddress | None) -> PushWebSocketProtocol:  # type: ignore[override]
        protocol = cast(PushWebSocketProtocol, super().buildProtocol(addr))
        protocol.ticket = self.handover
        return protocol

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

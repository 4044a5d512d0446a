"""Writing to clients: each connection's outbox, written once per reactor turn, and
straight to the TCP socket without waiting for the reactor's next turn."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twistedpush.history import Update


def write_now(transport: Any, data: bytes) -> None:
    """Send ``data`` on the socket at once when Twisted holds nothing unsent for it.

    Twisted buffers every write until the poller reports the socket writable,
    which costs a poller change and a reactor turn per connection. When nothing
    is buffered, sending straight away keeps the order and saves both; what the
    kernel does not take, and anything on another kind of transport, goes through
    ``transport.write`` as usual. (Only a plain TCP connection: a TLS wrapper
    forwards ``socket`` to the TCP transport below it, which must never see
    plaintext.)
    """
    if (
        isinstance(transport, tcp.Connection)
        and not transport.dataBuffer
        and not transport._tempDataBuffer
    ):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # would block, or broken: Twisted finds out and reports it
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


REPLAY_CHUNK = 65536
"""Bytes of a replay written per turn while the client keeps up."""

STALL_TIMEOUT = 15.0
"""Seconds a client may leave its transport paused (its buffers full, not reading)
while something waits for it, before it is dropped as stalled."""


class PendingReplay:
    """A channel's replay, encoded only as the client reads: its updates are history's
    own objects, so a replay waiting on a slow reader costs no copy of them.
    ``encode`` is the transport's (a v1 frame, a WAMP EVENT, an SSE event)."""

    __slots__ = ("channel", "encode", "position", "updates")

    def __init__(self, updates: Sequence[Update], encode: Callable[[Update], bytes]) -> None:
        self.updates = updates
        self.encode = encode
        self.channel = updates[0].channel
        self.position = 0

    def take(self, budget: int) -> tuple[list[bytes], int, bool]:
        """Encoded updates worth about ``budget`` bytes, their size, and whether the
        replay is done."""
        out = []
        size = 0
        updates, position, encode = self.updates, self.position, self.encode
        while position < len(updates) and size < budget:
            data = encode(updates[position])
            out.append(data)
            size += len(data)
            position += 1
        self.position = position
        return out, size, position == len(updates)


def encoded_once(encode: Callable[[Update], bytes]) -> Callable[[Update], bytes]:
    """``encode``, remembering its last answer: fan-out asks every subscriber of one
    transport for the same update in a row. (A closure, not an object with
    ``__call__``: it is called once per subscriber per update, and calling a plain
    function costs Python less.)"""
    last: Update | None = None
    data = b""

    def encoded(update: Update) -> bytes:
        nonlocal last, data
        if update is not last:
            data = encode(update)
            last = update
        return data

    return encoded


class Sink(Protocol):
    """The transport an outbox writes to, in its own way."""

    def writable(self) -> bool:
        """Whether the connection still takes writes. Asked before each write or drop,
        not per update: a connection may begin to close without telling the outbox
        (a WebSocket whose client closes it), and what was queued since then goes."""

    def write_out(self, data: bytes) -> None:
        """Write ``data`` (encoded updates, joined) to the client."""

    def drop_slow(self, queued: int) -> None:
        """Close the connection of a client that does not read ``queued`` bytes."""


class Outboxes:
    """The outboxes of one transport: their clock and bound, and those with
    something to write, written together at the end of the reactor turn."""

    def __init__(self, clock: IReactorTime, max_pending_bytes: int) -> None:
        self.clock = clock
        self.max_pending_bytes = max_pending_bytes
        self._dirty: list[Outbox] = []
        self._flush_call: IDelayedCall | None = None

    def mark_dirty(self, outbox: Outbox) -> None:
        self._dirty.append(outbox)
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        dirty, self._dirty = self._dirty, []
        for outbox in dirty:
            outbox.flush()


class Outbox:
    """Everything one client is sent goes here, and is written once per reactor turn
    while its transport takes it: one write (one system call) per connection per
    turn, however many updates the turn carried.

    It does the work of its transport's push producer, paused while the client
    does not read: what is sent then waits, counted, and the client is dropped
    once more than ``max_pending_bytes`` waits, or after STALL_TIMEOUT paused with
    anything waiting. A client that reads is never dropped for one big turn:
    past the bound the outbox is handed to the transport at once. Replays wait
    as :class:`PendingReplay` and are encoded about REPLAY_CHUNK bytes a turn while the
    client takes them, so a client may catch up on more than the bound.
    """

    __slots__ = (
        "closed",
        "dirty",
        "group",
        "items",
        "paused",
        "queued",
        "replays",
        "sink",
        "stall",
    )

    def __init__(self, sink: Sink, group: Outboxes) -> None:
        self.sink = sink
        self.group = group
        self.items: bytes | list[bytes | PendingReplay] | None = None
        """What waits: one chunk on its own, or a list. A list per subscriber per update
        would be the only container fan-out makes; alive in their thousands whenever
        the collector runs, they got promoted to the oldest generation and set off a
        full collection (tens of ms with many connections) every few seconds."""
        self.queued = 0
        """Bytes waiting (a replay not yet encoded is history's, not ours)."""
        self.replays = 0
        self.paused = False
        self.dirty = False
        self.closed = False
        self.stall: IDelayedCall | None = None

    def send(self, data: bytes) -> None:
        """Queue ``data``, to be written at the end of this turn."""
        if self.closed:
            return
        if self.queued + len(data) > self.group.max_pending_bytes:
            if self.paused:
                self._drop_slow()  # not reading, and this much waits for it
                return
            self.flush()  # a big turn for a client that reads: hand it over now
        self.queued += len(data)
        items = self.items
        if items is None:
            self.items = data
            if not self.paused and not self.dirty:  # _mark_dirty, inline: once per update
                self.dirty = True
                self.group.mark_dirty(self)
        elif isinstance(items, bytes):
            self.items = [items, data]
        else:
            items.append(data)

    def replay(self, updates: Sequence[Update], encode: Callable[[Update], bytes]) -> None:
        """Queue a channel's replay, to be encoded with ``encode`` as the client reads."""
        if not updates or self.closed:
            return
        replay = PendingReplay(updates, encode)
        self.replays += 1
        items = self.items
        if items is None:
            self.items = [replay]
            if not self.paused:
                self._mark_dirty()
        elif isinstance(items, bytes):
            self.items = [items, replay]
        else:
            items.append(replay)

    def discard(self, channel: str) -> None:
        """The subscription to ``channel`` ended (or was replaced): its replay's unsent
        part goes, rather than wait for a client that re-subscribes again and again."""
        items = self.items
        if not self.replays or not isinstance(items, list):
            return  # (a replay waiting makes what waits a list)
        kept = [i for i in items if not (isinstance(i, PendingReplay) and i.channel == channel)]
        self.replays -= len(items) - len(kept)
        self.items = kept or None

    def _mark_dirty(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.group.mark_dirty(self)

    def flush(self) -> None:
        """Write what waits, in one piece (about REPLAY_CHUNK bytes while replaying),
        unless the transport is paused (then :meth:`resumeProducing` asks again)."""
        self.dirty = False
        items = self.items
        if items is None or self.paused:
            return
        if not self.sink.writable():
            self.close()
            return
        if self.replays:
            self._flush_replaying(cast(list, items))
            return
        self.items = None
        self.queued = 0
        if isinstance(items, bytes):
            self.sink.write_out(items)
        else:
            self.sink.write_out(b"".join(cast(list[bytes], items)))  # no replay among them

    def _flush_replaying(self, items: list[bytes | PendingReplay]) -> None:
        """Write about REPLAY_CHUNK bytes, encoding replays as they come; the rest
        waits for the next turn, or for the transport to take more."""
        out: list[bytes] = []
        size = 0
        index = 0
        while index < len(items) and size < REPLAY_CHUNK:
            item = items[index]
            if isinstance(item, PendingReplay):
                encoded, taken, done = item.take(REPLAY_CHUNK - size)
                out += encoded
                size += taken
                if not done:
                    break
                self.replays -= 1
            else:
                out.append(item)
                size += len(item)
                self.queued -= len(item)
            index += 1
        rest = items[index:]
        self.items = rest or None
        self.sink.write_out(b"".join(out))
        if rest and not self.paused:
            self._mark_dirty()  # more next turn (if the write filled the transport: on resume)

    def close(self) -> None:
        """The connection ends: forget what waits, take nothing more."""
        self.closed = True
        self.items = None
        self._cancel_stall()

    def _drop_slow(self) -> None:
        """Close first: the sink's close may call back into this outbox (and this may
        run inside the hub's fan-out loop, so the hub hears of it later)."""
        queued, writable = self.queued, self.sink.writable()
        self.close()
        if writable:
            self.sink.drop_slow(queued)

    # The push producer of the transport

    def pauseProducing(self) -> None:
        """The client is not reading as fast as we write: hold what waits, and drop
        the client if it stays so for STALL_TIMEOUT with something waiting."""
        self.paused = True
        if self.stall is None:
            self.stall = self.group.clock.callLater(STALL_TIMEOUT, self._stalled)

    def resumeProducing(self) -> None:
        """The transport's buffer drained: write what waited, now."""
        self.paused = False
        self._cancel_stall()
        if self.items is not None:
            self.flush()

    def stopProducing(self) -> None:
        self.paused = True
        self._cancel_stall()

    def _cancel_stall(self) -> None:
        if self.stall is not None and self.stall.active():
            self.stall.cancel()
        self.stall = None

    def _stalled(self) -> None:
        self.stall = None
        if self.paused and self.items:
            self._drop_slow()

"""write_now: straight to the socket only for a plain TCP connection with nothing buffered;
the outbox every transport writes through, with a sink of bytes on a Clock."""

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol

from tests.helpers import make_clock
from twistedpush.history import Update
from twistedpush.writes import REPLAY_CHUNK, STALL_TIMEOUT, Outbox, Outboxes, write_now


class FakeConnection(tcp.Connection):
    """A tcp.Connection over a socketpair, without a reactor."""

    def __init__(self, sock):
        self.socket = sock
        self.dataBuffer = b""
        self._tempDataBuffer = []
        self.written = []

    def write(self, data):
        self.written.append(data)


def test_plain_tcp_with_nothing_buffered_sends_at_once():
    ours, theirs = socket.socketpair()
    connection = FakeConnection(ours)
    write_now(connection, b"frame")
    assert theirs.recv(10) == b"frame"
    assert connection.written == []
    connection._tempDataBuffer.append(b"earlier")
    write_now(connection, b"later")  # Twisted holds data: keep the order
    assert connection.written == [b"later"]


def test_other_transports_use_write():
    transport = StringTransport()
    write_now(transport, b"frame")
    assert transport.value() == b"frame"


def test_a_tls_wrapper_is_never_bypassed():
    ours, theirs = socket.socketpair()
    below = FakeConnection(ours)
    wrapper = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)
    wrapper.transport = below  # ProtocolWrapper forwards attribute lookups below
    assert wrapper.socket is ours
    sent = []
    wrapper.write = sent.append
    write_now(wrapper, b"secret")
    assert sent == [b"secret"]
    theirs.setblocking(False)
    try:
        assert theirs.recv(10) == b""
    except BlockingIOError:
        pass  # nothing reached the raw socket


def test_twisted_still_has_the_buffers_write_now_reads():
    """writes.py reads tcp.Connection's private write buffers: this fails first if a
    Twisted release renames them (the dependency is bounded below the next major)."""
    ours, theirs = socket.socketpair()
    connection = tcp.Connection(ours, Protocol())
    assert connection.dataBuffer == b"" and connection._tempDataBuffer == []
    assert connection.socket is ours
    write_now(connection, b"frame")
    assert theirs.recv(10) == b"frame"


class Sink:
    """What a transport does with an outbox's writes and drops, recorded."""

    def __init__(self):
        self.open = True
        self.written = []
        self.dropped = []

    def writable(self):
        return self.open

    def write_out(self, data):
        self.written.append(data)

    def drop_slow(self, queued):
        self.open = False
        self.dropped.append(queued)


def outbox(max_pending_bytes=1000):
    clock = make_clock()
    sink = Sink()
    return Outbox(sink, Outboxes(clock, max_pending_bytes)), sink, clock


def updates(channel, count):
    return [Update.create(channel, n + 1, None, "0") for n in range(count)]


def test_a_turn_is_one_write_and_a_replay_goes_out_a_chunk_a_write():
    box, sink, clock = outbox()
    box.send(b"a")
    box.replay(updates("room", 3), lambda update: b"r" * (REPLAY_CHUNK // 2))
    box.send(b"b")
    assert sink.written == []
    clock.advance(0)  # the next turns' writes too: a Clock runs what is due now
    assert sink.written == [b"a" + b"r" * REPLAY_CHUNK, b"r" * (REPLAY_CHUNK // 2) + b"b"]
    assert box.replays == 0 and box.queued == 0
    box.send(b"c")
    box.send(b"d")
    clock.advance(0)
    assert sink.written[2:] == [b"cd"]


def test_discard_drops_only_that_channels_replay():
    box, sink, clock = outbox()
    box.pauseProducing()
    box.replay(updates("a", 2), lambda update: b"A")
    box.replay(updates("b", 2), lambda update: b"B")
    box.discard("a")
    box.resumeProducing()
    assert sink.written == [b"BB"]


def test_a_paused_client_past_the_bound_or_the_stall_timeout_is_dropped():
    box, sink, clock = outbox(max_pending_bytes=10)
    box.pauseProducing()
    box.send(b"x" * 6)
    box.send(b"x" * 6)
    assert sink.dropped == [6] and sink.written == []
    box.send(b"more")  # closed: nothing more is taken
    assert box.queued == 6 and box.items is None
    box, sink, clock = outbox()
    box.pauseProducing()
    clock.advance(STALL_TIMEOUT)
    assert sink.dropped == []  # nothing waited for it
    box.pauseProducing()
    box.send(b"x")
    clock.advance(STALL_TIMEOUT)
    assert sink.dropped == [1]


def test_once_the_sink_stops_taking_writes_nothing_is_written_nor_dropped():
    """A WebSocket that the client began to close: what was queued meanwhile goes."""
    box, sink, clock = outbox(max_pending_bytes=10)
    box.send(b"x")
    sink.open = False
    clock.advance(0)
    box.pauseProducing()
    box.send(b"x" * 20)
    clock.advance(STALL_TIMEOUT)
    assert sink.written == [] and sink.dropped == [] and box.closed


def test_fan_out_makes_no_container_per_subscriber():
    """One update to many idle outboxes queues bytes, not a list each: such lists,
    alive when the collector runs, were promoted to the oldest generation and set
    off a full collection (tens of ms with many connections) every few seconds."""
    import gc

    group = Outboxes(make_clock(), 1 << 20)
    boxes = [Outbox(Sink(), group) for _ in range(1000)]
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for box in boxes:
            box.send(b"update")
        made = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert made < 100
    group._flush()
    assert all(box.sink.written == [b"update"] for box in boxes)


def test_an_empty_write_does_not_hold_back_what_follows():
    clock = make_clock()
    group = Outboxes(clock, 1 << 20)
    box = Outbox(Sink(), group)
    box.send(b"")
    group._flush()
    box.send(b"update")
    group._flush()
    assert b"".join(box.sink.written) == b"update"
    box.pauseProducing()
    box.send(b"")
    box.resumeProducing()
    box.send(b"next")
    group._flush()
    assert b"".join(box.sink.written) == b"updatenext"

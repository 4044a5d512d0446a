"""write_now: straight to the socket only for a plain TCP connection with nothing buffered."""

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol

from twistedpush.writes import write_now


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

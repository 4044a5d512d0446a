"""Writing to a TCP transport without waiting for the reactor's next turn."""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


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

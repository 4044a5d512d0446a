"""A blocking AMP client for publishers that run no reactor (Django views, scripts, workers).

It speaks the same commands as the server, imported from :mod:`twistedpush.commands`.
"""

from __future__ import annotations

import json
import select
import socket
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.protocols import amp

from twistedpush.access import check_channel, check_name
from twistedpush.commands import CHUNK, CurrentTimestamp, SendUpdate, SendUpdates
from twistedpush.errors import BadChannel, BadData, PushError, TooLarge, Unavailable

ERRORS: dict[bytes, type[PushError]] = {
    b"BAD_CHANNEL": BadChannel,
    b"BAD_DATA": BadData,
    b"TOO_LARGE": TooLarge,
    b"UNAVAILABLE": Unavailable,
}


class PushServerUnavailable(ConnectionError):
    """The push server could not be reached, or the connection broke mid-call."""


class RemoteError(PushError):
    """The push server answered with an error code this client does not know."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def encode_data(data: Any) -> bytes:
    """Python value to compact UTF-8 JSON, as the notifier expects."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


class PushClient:
    """One connection to the AMP notifier; not thread-safe, keep one per thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8014, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._tag = 0

    def send_update(self, channel: str, data: Any, name: str | None = None) -> int:
        """Publish ``data`` (any JSON-serializable value); return its ``ts``."""
        check_channel(channel)
        check_name(name)
        return self._call(SendUpdate, channel=channel, data=encode_data(data), name=name)["ts"]

    def send_updates(self, updates: Iterable[Sequence[Any]]) -> list[int]:
        """Publish ``(channel, data[, name])`` items in order; return their ``ts``.

        Items go in as few ``SendUpdates`` commands as AMP's 64 KiB value limit
        allows; each command is stored all or nothing.
        """
        items = [
            {
                "channel": check_channel(u[0]),
                "data": encode_data(u[1]),
                "name": check_name(u[2] if len(u) > 2 else None),
            }
            for u in updates
        ]
        stamps: list[int] = []
        for batch in _batches(items):
            if len(batch) == 1 and _encoded_size(batch[0]) > CHUNK:
                stamps.append(self._call(SendUpdate, **batch[0])["ts"])
            else:
                stamps.extend(self._call(SendUpdates, updates=batch)["ts"])
        return stamps

    def current_timestamp(self) -> int:
        """The push server's current position: the ``since`` for a page rendered now."""
        return self._call(CurrentTimestamp)["ts"]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None

    def __enter__(self) -> PushClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> socket.socket:
        if self._sock is not None and _closed_by_peer(self._sock):
            self.close()
        if self._sock is None:
            try:
                self._sock = socket.create_connection((self.host, self.port), self.timeout)
            except OSError as e:
                raise PushServerUnavailable(
                    f"push server notifier at {self.host}:{self.port} is unreachable: {e}"
                ) from None
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._reader = self._sock.makefile("rb")
        return self._sock

    def _call(self, command: type[amp.Command], **arguments: Any) -> dict[str, Any]:
        sock = self._connect()
        self._tag += 1
        tag = b"%x" % self._tag
        box = command.makeArguments(arguments, None)
        box[b"_command"] = command.commandName
        box[b"_ask"] = tag
        try:
            sock.sendall(box.serialize())
            answer = self._read_box()
        except (OSError, EOFError) as e:
            self.close()
            raise PushServerUnavailable(f"push server connection broke: {e}") from None
        if answer.get(b"_answer") == tag:
            return command.parseResponse(answer, None)
        if answer.get(b"_error") == tag:
            code = answer.get(b"_error_code", b"UNKNOWN")
            message = answer.get(b"_error_description", b"").decode("utf-8", "replace")
            error = ERRORS.get(code)
            raise error(message) if error else RemoteError(code.decode(), message)
        self.close()
        raise PushServerUnavailable(f"unexpected answer from the push server: {answer!r}")

    def _read_box(self) -> dict[bytes, bytes]:
        box: dict[bytes, bytes] = {}
        while True:
            key = self._read(self._read_length())
            if not key:
                return box
            box[key] = self._read(self._read_length())

    def _read_length(self) -> int:
        return struct.unpack("!H", self._read(2))[0]

    def _read(self, size: int) -> bytes:
        data = self._reader.read(size)
        if len(data) != size:
            raise EOFError("connection closed by the push server")
        return data


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when an idle connection was closed by the server (EOF waiting to be read).

    poll(), not select(): select() fails for descriptors past 1023, which a busy
    Django process easily has. (A peek alone would wait: a socket with a timeout
    waits for data before it reads, whatever the flags.)
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _encoded_size(item: dict[str, Any]) -> int:
    """Bytes of ``item`` as one AMP box (key and value lengths, keys, values, end mark)."""
    size = 2
    for key, value in item.items():
        if value is not None:
            size += 4 + len(key) + len(value if isinstance(value, bytes) else value.encode())
    return size


def _batches(items: list[dict[str, Any]]) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for item in items:
        item_size = _encoded_size(item)
        if batch and size + item_size > CHUNK:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch

"""A blocking AMP client for publishers that run no reactor (Django views, scripts, workers).

It speaks the same commands as the server, imported from :mod:`twistedpush.commands`.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Any

from twisted.protocols import amp

from twistedpush.access import check_channel, check_name
from twistedpush.commands import (
    CHUNK,
    PUBLISH_ERRORS,
    Authenticate,
    BoxReader,
    CurrentTimestamp,
    SendUpdate,
    SendUpdates,
    pack_box,
    pack_pairs,
    update_box,
)
from twistedpush.errors import BadData, PushError, Unauthorized

ERRORS: dict[bytes, type[Exception]] = {code: error for error, code in PUBLISH_ERRORS.items()}


MAX_ANSWER = 1024 * 1024
"""Answers are small (positions, error texts); anything bigger is not the push server."""


_SLACK = 0.01
"""How far past a call's deadline a blocking read or write may end (seconds)."""
_TICK = 1e-6
"""The shortest kernel timeout: a zero timeval would mean none."""

_DONTWAIT = int(socket.MSG_DONTWAIT)
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


class PushServerUnavailable(ConnectionError):
    """The push server could not be reached, or the connection broke mid-call."""


class RemoteError(PushError):
    """The push server answered with an error code this client does not know."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""One encoder for every update: ``json.dumps`` with options builds one per call."""


def encode_data(data: Any, encoder: json.JSONEncoder = _JSON) -> bytes:
    """Python value to compact UTF-8 JSON, as the notifier expects (no NaN or Infinity)."""
    try:
        return encoder.encode(data).encode()
    except (TypeError, ValueError) as e:
        raise BadData(f"data is not JSON: {e}") from None


def encode_update(
    channel: str, data: Any, name: str | None = None, encoder: json.JSONEncoder = _JSON
) -> bytes:
    """One update checked and encoded for :meth:`PushClient.send_encoded`: bad input
    raises here, before anything is sent (or queued to be sent later)."""
    return update_box(check_channel(channel), encode_data(data, encoder), check_name(name))


class PushClient:
    """One connection to the AMP notifier; not thread-safe, keep one per thread.

    A call is one send and one receive, within one deadline of ``timeout``
    seconds from its start (connecting and authenticating included), however the
    server trickles its answer. The socket is blocking with kernel timeouts
    (SO_SNDTIMEO, SO_RCVTIMEO), shortened to the time left only when a call needs
    more than one read or write: a Python socket timeout would cost a poll()
    before each. The answer is polled for during ``spin`` seconds before
    the thread sleeps on it: on a virtual machine, waking a sleeping thread on
    another CPU can take longer than the push server takes to answer (measured:
    3,200 calls/s without, 4,600 with 0.2 ms; docs/benchmarks.md). 0 turns it off.

    With ``key`` (the server's ``--publisher-key``), every new connection, a
    reconnection too, begins with ``Authenticate``; a wrong key raises
    :class:`~twistedpush.errors.Unauthorized`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8014,
        timeout: float = 5.0,
        spin: float = 0.0002,
        key: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.spin = spin
        self.key = key
        self._sock: socket.socket | None = None
        self._reader = BoxReader(MAX_ANSWER)
        self._tag = 0
        self._armed: dict[int, float] = {}

    def send_update(self, channel: str, data: Any, name: str | None = None) -> int:
        """Publish ``data`` (any JSON-serializable value); return its ``ts``."""
        return self.send_encoded([encode_update(channel, data, name)])[0]

    def send_updates(self, updates: Iterable[Sequence[Any]]) -> list[int]:
        """Publish ``(channel, data[, name])`` items in order; return their ``ts``.

        Items go in as few ``SendUpdates`` commands as AMP's 64 KiB value limit
        allows (one item alone: ``SendUpdate``); each is stored all or nothing.
        """
        return self.send_encoded([encode_update(*u) for u in updates])

    def send_encoded(self, boxes: list[bytes]) -> list[int]:
        """Publish updates made by :func:`encode_update`, in order; return their ``ts``."""
        stamps: list[int] = []
        for batch in _batches(boxes):
            if len(batch) == 1:
                stamps.append(self._call(SendUpdate, batch[0])["ts"])
            else:
                arguments = pack_box([(b"updates", b"".join(batch))])
                stamps.extend(self._call(SendUpdates, arguments)["ts"])
        return stamps

    def current_timestamp(self) -> int:
        """The push server's current position: the ``since`` for a page rendered now."""
        return self._call(CurrentTimestamp, pack_box(()))["ts"]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = BoxReader(MAX_ANSWER)

    def __enter__(self) -> PushClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self, deadline: float) -> None:
        if self._sock is not None and _closed_by_peer(self._sock):
            self.close()
        if self._sock is None:
            try:
                sock = socket.create_connection(
                    (self.host, self.port), max(deadline - time.monotonic(), _TICK)
                )
            except OSError as e:
                raise PushServerUnavailable(
                    f"push server notifier at {self.host}:{self.port} is unreachable: {e}"
                ) from None
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
            self._armed = {}
            if self.key is not None:
                self._authenticate(self.key, deadline)

    def _arm(self, option: int, deadline: float) -> None:
        """Bound the next blocking read or write by the call's deadline: a kernel
        timeout set only when the one set differs from the time left by more than
        _SLACK (so a call that needs one read and one write sets none)."""
        assert self._sock is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise BlockingIOError("deadline passed")
        if abs(self._armed.get(option, 0.0) - left) > _SLACK:
            seconds, fraction = divmod(max(left, _TICK), 1)
            timeval = struct.pack("ll", int(seconds), max(int(fraction * 1_000_000), 1))
            self._sock.setsockopt(socket.SOL_SOCKET, option, timeval)
            self._armed[option] = left

    def _authenticate(self, key: str, deadline: float) -> None:
        try:
            self._ask(Authenticate, pack_box([(b"key", key.encode())]), deadline)
        except Unauthorized:
            self.close()
            raise Unauthorized(
                f"push server notifier at {self.host}:{self.port} refused the publisher key"
            ) from None

    def _call(self, command: type[amp.Command], arguments: bytes) -> dict[str, Any]:
        """Send ``command`` with its ``arguments`` box (from :func:`pack_box`); its answer."""
        deadline = time.monotonic() + self.timeout
        self._connect(deadline)
        try:
            return self._ask(command, arguments, deadline)
        except Unauthorized as e:
            if self.key is not None:
                raise
            raise Unauthorized(
                f"push server notifier at {self.host}:{self.port} needs a publisher key "
                f"(PushClient(key=...), SERVERPUSH_PUBLISHER_KEY): {e.message}"
            ) from None

    def _ask(self, command: type[amp.Command], arguments: bytes, deadline: float) -> dict[str, Any]:
        """One exchange on the open connection."""
        self._tag += 1
        tag = b"%x" % self._tag
        head = pack_pairs([(b"_command", command.commandName), (b"_ask", tag)])
        try:
            self._send_all(head + arguments, deadline)
            answer = self._read_box(deadline)
        except BlockingIOError:
            self.close()
            raise PushServerUnavailable(
                f"push server did not answer within {self.timeout} s"
            ) from None
        except (OSError, EOFError) as e:
            self.close()
            raise PushServerUnavailable(f"push server connection broke: {e}") from None
        if answer.get(b"_answer") == tag:
            try:
                return {
                    key.decode(): value.fromString(answer[key]) for key, value in command.response
                }
            except (KeyError, ValueError):
                pass
        if answer.get(b"_error") == tag:
            code = answer.get(b"_error_code", b"UNKNOWN")
            message = answer.get(b"_error_description", b"").decode("utf-8", "replace")
            error = ERRORS.get(code)
            raise error(message) if error else RemoteError(code.decode(), message)
        self.close()
        raise PushServerUnavailable(f"unexpected answer from the push server: {answer!r}")

    def _send_all(self, data: bytes, deadline: float) -> None:
        assert self._sock is not None
        view = memoryview(data)
        while view:
            self._arm(socket.SO_SNDTIMEO, deadline)
            view = view[self._sock.send(view) :]

    def _read_box(self, deadline: float) -> dict[bytes, bytes]:
        assert self._sock is not None
        while True:
            self._arm(socket.SO_RCVTIMEO, deadline)
            data = _receive(self._sock, self.spin)
            if not data:
                raise EOFError("connection closed by the push server")
            boxes = self._reader.feed(data)
            if self._reader.error is not None or len(boxes) > 1:
                raise EOFError(f"unreadable answer: {self._reader.error or 'more than one box'}")
            if boxes:
                return boxes[0]


def _receive(sock: socket.socket, spin: float) -> bytes:
    """The next bytes from ``sock``: polled for up to ``spin`` seconds, then waited for."""
    if spin <= 0:
        return sock.recv(65536)
    deadline = time.perf_counter() + spin
    while True:
        try:
            return sock.recv(65536, _DONTWAIT)
        except BlockingIOError:
            if time.perf_counter() > deadline:
                return sock.recv(65536)


def _closed_by_peer(sock: socket.socket) -> bool:
    """True when an idle connection was closed by the server (EOF waiting to be read).

    One non-blocking peek: select() would fail for descriptors past 1023, which a
    busy Django process easily has.
    """
    try:
        return sock.recv(1, _PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _batches(boxes: list[bytes]) -> Iterable[list[bytes]]:
    """Runs of ``boxes`` that fit one AMP value each (a box too big for any alone)."""
    batch: list[bytes] = []
    size = 0
    for box in boxes:
        if batch and size + len(box) > CHUNK:
            yield batch
            batch, size = [], 0
        batch.append(box)
        size += len(box)
    if batch:
        yield batch

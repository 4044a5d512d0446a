"""A blocking AMP client for publishers that run no reactor (Django views, scripts, workers).

It speaks the same commands as the server, imported from :mod:`twistedpush.commands`.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from twisted.protocols import amp

from twistedpush.access import check_channel, check_name
from twistedpush.commands import (
    CHUNK,
    MAX_HISTORY_ANSWER,
    PUBLISH_ERRORS,
    Authenticate,
    BoxReader,
    CurrentTimestamp,
    History,
    Presence,
    SendUpdate,
    SendUpdates,
    pack_box,
    pack_pairs,
    update_box,
)
from twistedpush.errors import BadData, PushError, Unauthorized
from twistedpush.history import HISTORY_LIMIT, check_history_query

ERRORS: dict[bytes, type[Exception]] = {code: error for error, code in PUBLISH_ERRORS.items()}

_T = TypeVar("_T")


MAX_ANSWER = MAX_HISTORY_ANSWER + 65536
"""The largest answer is a History's (its own keys on top); anything bigger is not
the push server."""


_SLACK = 0.01
"""How far past a call's deadline a blocking read or write may end (seconds)."""
_TICK = 1e-6
"""The shortest kernel timeout: a zero timeval would mean none."""

PIPELINE = 4
"""Batches in flight at once in send_updates: the server stores one while the next
travels; few enough that their answers (about 26 bytes per update) never fill a
socket buffer the server would wait on."""

_DONTWAIT = int(socket.MSG_DONTWAIT)
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


class PushServerUnavailable(ConnectionError):
    """The push server could not be reached, or the connection broke mid-call.

    From a pipelined ``send_updates``: ``stored`` (each update's ``ts``, None if
    not stored or not known) and ``unknown`` (indexes sent but never answered).
    """

    stored: list[int | None] | None = None
    unknown: list[int] | None = None


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
        self._boxes: deque[dict[bytes, bytes]] = deque()
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
        """Publish updates made by :func:`encode_update`, in order; return their ``ts``.

        More than one batch goes pipelined, up to PIPELINE commands in flight: the
        server stores one while the next travels. Each batch is stored all or
        nothing, in order. After a refusal no further batch is sent, and the error
        raised (its usual class) has ``stored``: for every update, its ``ts`` if it
        was stored (a batch already in flight may have been), else None. If the
        connection breaks, :class:`PushServerUnavailable` has ``stored`` too, and
        ``unknown``: the indexes of updates sent whose answer never came.
        """
        batches = list(_batches(boxes))
        if not batches:
            return []
        if len(batches) == 1:
            command, arguments = _publication(batches[0])
            return _stamps(command, self._call(command, arguments)["ts"])
        return self._pipelined(batches, len(boxes))

    def _pipelined(self, batches: list[list[bytes]], count: int) -> list[int]:
        stamps: list[int | None] = [None] * count
        in_flight: dict[bytes, tuple[type[amp.Command], int, int]] = {}
        refusal: PushError | None = None
        start = 0
        try:
            self._connect(self._deadline())
            for batch in batches:
                if len(in_flight) == PIPELINE:
                    refusal = self._settle(in_flight, stamps)
                    if refusal is not None:
                        break
                command, arguments = _publication(batch)
                tag = self._request(command, arguments, self._deadline())
                in_flight[tag] = (command, start, len(batch))
                start += len(batch)
            while in_flight:
                refused = self._settle(in_flight, stamps)
                refusal = refusal or refused
        except PushServerUnavailable as e:
            e.stored = stamps
            e.unknown = [i for _, first, n in in_flight.values() for i in range(first, first + n)]
            if refusal is not None:
                refusal.stored = stamps
                raise e from refusal
            raise
        except BaseException:
            self.close()  # answers left unread would be taken for the next call's
            raise
        if refusal is not None:
            refusal.stored = stamps
            raise refusal
        return cast(list[int], stamps)

    def _settle(
        self,
        in_flight: dict[bytes, tuple[type[amp.Command], int, int]],
        stamps: list[int | None],
    ) -> PushError | None:
        """Read the next answer into ``stamps``; the refusal, if it was one. Answers
        come as each command is done, not always in the order sent (batches on two
        Redis shards, a command refused at once): each is matched by its tag."""
        deadline = self._deadline()
        box = self._guarded(lambda: self._read_box(deadline))
        tag = box.get(b"_answer", box.get(b"_error"))
        if tag not in in_flight:
            self.close()
            raise PushServerUnavailable(f"unexpected answer from the push server: {box!r}")
        command, first, n = in_flight.pop(tag)
        try:
            ts = self._interpret(command, tag, box)["ts"]
        except PushError as e:
            return self._explained(e)
        stamps_of_batch = _stamps(command, ts)
        if len(stamps_of_batch) != n:
            self.close()
            raise PushServerUnavailable(
                f"the push server answered {len(stamps_of_batch)} positions for {n} updates"
            )
        stamps[first : first + n] = stamps_of_batch
        return None

    def _deadline(self) -> float:
        return time.monotonic() + self.timeout

    def current_timestamp(self) -> int:
        """The push server's current position: the ``since`` for a page rendered now."""
        return self._call(CurrentTimestamp, pack_box(()))["ts"]

    def presence(self, channel: str) -> int:
        """How many subscribers ``channel`` has now (every transport; with Redis, every
        node, the others' counts at most a few seconds old)."""
        arguments = pack_box([(b"channel", check_channel(channel).encode())])
        return self._call(Presence, arguments)["count"]

    def history(
        self, channel: str, since: int | None = None, limit: int | None = HISTORY_LIMIT
    ) -> tuple[list[dict[str, Any]], int]:
        """The first ``limit`` updates of ``channel`` after ``since`` (None: all the
        server holds), in order, each ``{"ts", "name", "data"}`` with ``data``
        decoded, and the channel's horizon: when ``since`` is below it, updates
        after ``since`` were dropped from history before this read. ``limit``
        None: HISTORY_LIMIT, as the AMP argument left out means."""
        limit = HISTORY_LIMIT if limit is None else limit
        since, limit = check_history_query(since, limit)
        pairs = [(b"channel", check_channel(channel).encode()), (b"limit", b"%d" % limit)]
        if since is not None:
            pairs.append((b"since", b"%d" % since))
        answer = self._call(History, pack_box(pairs), boxed=True)
        updates = [
            {"ts": u["ts"], "name": u["name"], "data": json.loads(u["data"])}
            for u in answer["updates"]
        ]
        return updates, answer["horizon"]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._reader = BoxReader(MAX_ANSWER)
        self._boxes = deque()

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

    def _call(
        self, command: type[amp.Command], arguments: bytes, boxed: bool = False
    ) -> dict[str, Any]:
        """Send ``command`` with its ``arguments`` box (from :func:`pack_box`); its
        answer, read by AMP's own reader when ``boxed`` (a value over several keys)."""
        deadline = self._deadline()
        self._connect(deadline)
        try:
            return self._ask(command, arguments, deadline, boxed)
        except Unauthorized as e:
            raise self._explained(e) from None

    def _explained(self, error: PushError) -> PushError:
        """A refusal for want of a key says where the key goes."""
        if not isinstance(error, Unauthorized) or self.key is not None:
            return error
        return Unauthorized(
            f"push server notifier at {self.host}:{self.port} needs a publisher key "
            f"(PushClient(key=...), SERVERPUSH_PUBLISHER_KEY): {error.message}"
        )

    def _ask(
        self, command: type[amp.Command], arguments: bytes, deadline: float, boxed: bool = False
    ) -> dict[str, Any]:
        """One exchange on the open connection."""
        tag = self._request(command, arguments, deadline)
        return self._answer(command, tag, deadline, boxed)

    def _request(self, command: type[amp.Command], arguments: bytes, deadline: float) -> bytes:
        """Send ``command``; the tag its answer will carry."""
        self._tag += 1
        tag = b"%x" % self._tag
        head = pack_pairs([(b"_command", command.commandName), (b"_ask", tag)])
        self._guarded(lambda: self._send_all(head + arguments, deadline))
        return tag

    def _guarded(self, io: Callable[[], _T]) -> _T:
        """``io()``, a failure of the connection closing it and raised as
        PushServerUnavailable."""
        try:
            return io()
        except BlockingIOError:
            self.close()
            raise PushServerUnavailable(
                f"push server did not answer within {self.timeout} s"
            ) from None
        except (OSError, EOFError) as e:
            self.close()
            raise PushServerUnavailable(f"push server connection broke: {e}") from None

    def _answer(
        self, command: type[amp.Command], tag: bytes, deadline: float, boxed: bool = False
    ) -> dict[str, Any]:
        """The answer to the request tagged ``tag``, the only one in flight."""
        answer = self._guarded(lambda: self._read_box(deadline))
        return self._interpret(command, tag, answer, boxed)

    def _interpret(
        self,
        command: type[amp.Command],
        tag: bytes,
        answer: dict[bytes, bytes],
        boxed: bool = False,
    ) -> dict[str, Any]:
        """``answer`` as ``command``'s response, or its error raised."""
        if answer.get(b"_answer") == tag:
            try:
                if boxed:
                    return command.parseResponse(answer, None)
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
        """The next answer box: one read may hold several (pipelined batches)."""
        assert self._sock is not None
        while not self._boxes:
            self._arm(socket.SO_RCVTIMEO, deadline)
            data = _receive(self._sock, self.spin)
            if not data:
                raise EOFError("connection closed by the push server")
            self._boxes.extend(self._reader.feed(data))
            if self._reader.error is not None:
                raise EOFError(f"unreadable answer: {self._reader.error}")
        return self._boxes.popleft()


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


def _stamps(command: type[amp.Command], ts: Any) -> list[int]:
    """The positions in ``command``'s answer: SendUpdate's one, SendUpdates' list."""
    return [ts] if command is SendUpdate else ts


def _publication(batch: list[bytes]) -> tuple[type[amp.Command], bytes]:
    """The command that publishes ``batch`` (one update alone: SendUpdate)."""
    if len(batch) == 1:
        return SendUpdate, batch[0]
    return SendUpdates, pack_box([(b"updates", b"".join(batch))])


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

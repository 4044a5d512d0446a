"""The AMP notifier commands: the one definition that the server and every client import."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any

from twisted.protocols import amp

from twistedpush.errors import BadChannel, BadData, TooLarge, Unauthorized, Unavailable

CHUNK = 0xFFFF
"""AMP's limit on one value; longer data goes on in ``data.2``, ``data.3``, ..."""


class ChunkedBytes(amp.Argument):
    """Bytes of any length, split over ``key``, ``key.2``, ``key.3``, ... on the wire."""

    def __init__(self, optional: bool = False) -> None:
        super().__init__(optional)

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        value = objects.get(amp._wireNameToPythonIdentifier(name))
        if value is None:
            if not self.optional:
                raise KeyError(name)
            return
        strings.update(_chunk_pairs(name, value.encode() if isinstance(value, str) else value))

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        first = strings.get(name)
        if first is None and not self.optional:
            raise KeyError(name)
        objects[amp._wireNameToPythonIdentifier(name)] = _join_chunks(strings, name, first)


def _chunk_pairs(name: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    """``value`` as (key, value) pairs: ``name``, ``name.2``, ... of at most CHUNK bytes each."""
    pairs = [(name, value[:CHUNK])]
    for index, start in enumerate(range(CHUNK, len(value), CHUNK), start=2):
        pairs.append((b"%s.%d" % (name, index), value[start : start + CHUNK]))
    return pairs


def _join_chunks(strings: dict[bytes, bytes], name: bytes, first: bytes | None) -> bytes | None:
    """``first`` (the value of ``name``) with ``name.2``, ``name.3``, ... after it."""
    if first is None or name + b".2" not in strings:
        return first
    parts = [first]
    index = 2
    while (part := strings.get(b"%s.%d" % (name, index))) is not None:
        parts.append(part)
        index += 1
    return b"".join(parts)


class Text(amp.Unicode):
    """UTF-8 text; undecodable bytes become U+FFFD, so validation (not AMP) rejects them."""

    def fromString(self, inString: bytes) -> str:
        return inString.decode("utf-8", "replace")


PUBLISH_ERRORS: dict[type[Exception], bytes] = {
    BadChannel: b"BAD_CHANNEL",
    BadData: b"BAD_DATA",
    TooLarge: b"TOO_LARGE",
    Unavailable: b"UNAVAILABLE",
    Unauthorized: b"UNAUTHORIZED",
}
"""Every error a publishing command can answer (UNAUTHORIZED: before ``Authenticate``)."""


class _PublishCommand(amp.Command):
    """Arguments that are missing or cannot be parsed get the contract's codes, not UNKNOWN."""

    @classmethod
    def parseArguments(cls, box: amp.AmpBox, protocol: Any) -> dict[str, Any]:
        try:
            return cls.read_arguments(box, protocol)
        except KeyError as e:
            name = e.args[0] if e.args else b"?"
            code = b"BAD_CHANNEL" if name == b"channel" else b"BAD_DATA"
            raise amp.RemoteAmpError(code, f"missing argument {name!r}") from None
        except Exception as e:
            raise amp.RemoteAmpError(b"BAD_DATA", f"malformed arguments: {e}") from None

    @classmethod
    def read_arguments(cls, box: amp.AmpBox, protocol: Any) -> dict[str, Any]:
        """The arguments as AMP's generic reader gives them."""
        return super().parseArguments(box, protocol)


MAX_KEY = 255
"""AMP's limit on one key."""

_LENGTH = struct.Struct("!H")


def pack_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Key-value pairs on the wire, from pairs already in bounds (keys of at most
    255 bytes, values of at most 64 KiB): a publisher's and the notifier's hot
    path, without AmpBox's checks and copies per key."""
    pack = _LENGTH.pack
    parts: list[bytes] = []
    for key, value in pairs:
        parts += (pack(len(key)), key, pack(len(value)), value)
    return b"".join(parts)


def pack_box(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """One box on the wire, as ``AmpBox.serialize`` writes it: its pairs, then an empty key."""
    return pack_pairs(pairs) + b"\0\0"


def update_pairs(channel: str, data: bytes, name: str | None) -> list[tuple[bytes, bytes]]:
    """One update's arguments as wire pairs, ``data`` chunked as ChunkedBytes does it."""
    pairs = [(b"channel", channel.encode()), *_chunk_pairs(b"data", data)]
    if name is not None:
        pairs.append((b"name", name.encode()))
    return pairs


def update_box(channel: str, data: bytes, name: str | None) -> bytes:
    """One update's arguments as a box: ``pack_box(update_pairs(...))``, put together
    in one join when ``data`` fits one value (a batch's updates all do)."""
    if len(data) > CHUNK:
        return pack_box(update_pairs(channel, data, name))
    pack = _LENGTH.pack
    encoded = channel.encode()
    parts = [b"\0\x07channel", pack(len(encoded)), encoded, b"\0\x04data", pack(len(data)), data]
    if name is not None:
        encoded = name.encode()
        parts += (b"\0\x04name", pack(len(encoded)), encoded)
    parts.append(b"\0\0")
    return b"".join(parts)


class BoxReader:
    """AMP boxes out of a byte stream, each as soon as it is complete.

    Twisted's AMP parses a box one string at a time through a state machine;
    this reads every whole pair of a chunk in one loop. Parsing is incremental:
    the pairs of an unfinished box are kept, and only the unfinished pair after
    them is looked at again, once enough bytes have come to finish it, so a big
    box arriving in many segments costs what it costs in one. A key over 255
    bytes or a box over ``max_box`` bytes sets ``error``, after which nothing
    more is read.
    """

    def __init__(self, max_box: int) -> None:
        self.max_box = max_box
        self.error: str | None = None
        self._box: dict[bytes, bytes] = {}
        """The pairs read so far of the box not finished yet."""
        self._box_size = 0
        """Their size on the wire."""
        self._pending: list[bytes] = []
        """Bytes after those pairs, not parsed yet (at most the start of one pair)."""
        self._pending_size = 0
        self._needed = 0
        """How many pending bytes that pair needs before parsing it again is of use."""

    def feed(self, data: bytes) -> list[dict[bytes, bytes]]:
        """The boxes that ``data`` completes, in order."""
        if self.error is not None:
            return []
        if self._pending:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._needed:
                self._check_size()
                return []
            data = b"".join(self._pending)
        boxes = self._read(data)
        self._check_size()
        return boxes

    def _read(self, data: bytes) -> list[dict[bytes, bytes]]:
        """The boxes that ``data`` (the pending bytes) completes; keeps the rest."""
        unpack = _LENGTH.unpack_from
        boxes = []
        box = self._box
        size = self._box_size
        counted = position = needed = 0
        end = len(data)
        while True:
            if position + 2 > end:
                needed = 2
                break
            (length,) = unpack(data, position)
            if length == 0:
                boxes.append(box)
                box = {}
                size = 0
                position += 2
                counted = position
                continue
            if length > MAX_KEY:
                self.error = f"an AMP key is {length} bytes long; at most {MAX_KEY} are allowed"
                break
            value = position + length + 4
            if value > end:
                needed = value - position
                break
            (length,) = unpack(data, value - 2)
            if value + length > end:
                needed = value + length - position
                break
            box[data[position + 2 : value - 2]] = data[value : value + length]
            position = value + length
        self._box = box
        self._box_size = size + position - counted
        rest = data[position:]
        self._pending = [rest] if rest else []
        self._pending_size = len(rest)
        self._needed = needed
        return boxes

    def _check_size(self) -> None:
        if self.error is None and self._box_size + self._pending_size > self.max_box:
            self.error = f"an AMP box is over {self.max_box} bytes"

    @property
    def idle(self) -> bool:
        """True between boxes: nothing of an unfinished box has been read."""
        return not self._box and not self._pending


def parse_boxes(data: bytes) -> list[dict[bytes, bytes]]:
    """AMP wire bytes as boxes; ValueError unless they are whole boxes, end to end."""
    reader = BoxReader(len(data))
    boxes = reader.feed(data)
    if reader.error is not None:
        raise ValueError(reader.error)
    if not reader.idle:
        raise ValueError("the last AMP box is not finished")
    return boxes


def read_update(box: dict[bytes, bytes]) -> dict[str, Any]:
    """One update's arguments from its box, as AMP would read ``_update_arguments()``
    (``channel`` and ``name`` as text, ``data`` as bytes joined from its chunks),
    in one pass: AMP's generic reader costs more per update than storing it."""
    channel, data, name = box.get(b"channel"), box.get(b"data"), box.get(b"name")
    if channel is None:
        raise KeyError(b"channel")
    if data is None:
        raise KeyError(b"data")
    return {
        "channel": channel.decode("utf-8", "replace"),
        "data": _join_chunks(box, b"data", data),
        "name": None if name is None else name.decode("utf-8", "replace"),
    }


class UpdateList(amp.AmpList):
    """Updates as an AmpList of boxes, read with :func:`read_update`; trailing or
    truncated bytes are refused, not ignored."""

    def __init__(self) -> None:
        super().__init__(_update_arguments())

    def fromStringProto(self, inString: bytes, proto: Any) -> list[dict[str, Any]]:
        return [read_update(box) for box in parse_boxes(inString)]


class IntegerList(amp.ListOf):
    """Integers as ``amp.ListOf(amp.Integer())`` writes them, encoded in one pass
    (a batch's positions, one per update)."""

    def __init__(self) -> None:
        super().__init__(amp.Integer())

    def toString(self, inObject: list[int]) -> bytes:
        pack = _LENGTH.pack
        return b"".join([pack(len(text)) + text for text in map(b"%d".__mod__, inObject)])


def _update_arguments() -> list[tuple[bytes, amp.Argument]]:
    return [(b"channel", Text()), (b"data", ChunkedBytes()), (b"name", Text(optional=True))]


class SendUpdate(_PublishCommand):
    """Publish ``data`` (JSON text) to ``channel``; answers the position it was given."""

    commandName = b"SendUpdate"
    arguments = _update_arguments()
    response = [(b"ts", amp.Integer())]
    errors = PUBLISH_ERRORS

    @classmethod
    def read_arguments(cls, box: amp.AmpBox, protocol: Any) -> dict[str, Any]:
        return read_update(box)


class SendUpdates(_PublishCommand):
    """Publish several updates, all or none; answers their positions in order."""

    commandName = b"SendUpdates"
    arguments = [(b"updates", UpdateList())]
    response = [(b"ts", IntegerList())]
    errors = PUBLISH_ERRORS


class CurrentTimestamp(amp.Command):
    """The push side's current position, for pages to catch up from."""

    commandName = b"CurrentTimestamp"
    response = [(b"ts", amp.Integer())]
    errors = {Unavailable: b"UNAVAILABLE", Unauthorized: b"UNAUTHORIZED"}


class Authenticate(amp.Command):
    """Present the publisher key. With ``--publisher-key`` set it must be a
    connection's first command; a wrong key is answered UNAUTHORIZED and the
    connection closed. Without one, any key is accepted."""

    commandName = b"Authenticate"
    arguments = [(b"key", amp.Unicode())]
    errors = {Unauthorized: b"UNAUTHORIZED"}


class HistoryUpdates(amp.Argument):
    """Updates as an AmpList of boxes (``ts``, ``name`` if any, ``data``), each box's
    ``data`` chunked as in ``SendUpdate`` and the list's own value chunked the same
    way (``updates``, ``updates.2``, ...): AMP's AmpList, byte for byte, whenever
    everything fits its 64 KiB values; a history may hold more than that."""

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        boxes = []
        for update in objects[amp._wireNameToPythonIdentifier(name)]:
            pairs = [(b"ts", b"%d" % update["ts"])]
            if update["name"] is not None:
                pairs.append((b"name", update["name"].encode()))
            pairs += _chunk_pairs(b"data", update["data"])
            boxes.append(pack_box(pairs))
        strings.update(_chunk_pairs(name, b"".join(boxes)))

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        value = _join_chunks(strings, name, strings.get(name))
        if value is None:
            raise KeyError(name)
        updates = []
        for box in parse_boxes(value):
            updated = box.get(b"name")
            updates.append(
                {
                    "ts": int(box[b"ts"]),
                    "name": None if updated is None else updated.decode("utf-8", "replace"),
                    "data": _join_chunks(box, b"data", box[b"data"]),
                }
            )
        objects[amp._wireNameToPythonIdentifier(name)] = updates


MAX_HISTORY_ANSWER = 8 * 1024 * 1024
"""The largest ``History`` answer (``updates`` on the wire): a longer one is refused
with TOO_LARGE, so that the caller asks for fewer rather than for an answer of up to
``limit`` MiB."""


class Presence(_PublishCommand):
    """How many subscribers ``channel`` has now, on every transport and (with Redis)
    on every node; what the other nodes last reported is at most a few seconds old."""

    commandName = b"Presence"
    arguments = [(b"channel", Text())]
    response = [(b"count", amp.Integer())]
    errors = PUBLISH_ERRORS


class History(_PublishCommand):
    """The first ``limit`` (default 100) updates of ``channel`` held after ``since``
    (omitted: all held), in order, and the channel's horizon: a ``since`` below it
    has missed updates that are no longer held."""

    commandName = b"History"
    arguments = [
        (b"channel", Text()),
        (b"since", amp.Integer(optional=True)),
        (b"limit", amp.Integer(optional=True)),
    ]
    response = [(b"updates", HistoryUpdates()), (b"horizon", amp.Integer())]
    errors = PUBLISH_ERRORS

"""The AMP notifier commands: the one definition that the server and every client import."""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from twistedpush.errors import BadChannel, BadData, TooLarge, Unavailable

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
        if isinstance(value, str):
            value = value.encode()
        strings[name] = value[:CHUNK]
        for index, start in enumerate(range(CHUNK, len(value), CHUNK), start=2):
            strings[b"%s.%d" % (name, index)] = value[start : start + CHUNK]

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        first = strings.get(name)
        if first is None:
            if not self.optional:
                raise KeyError(name)
            objects[amp._wireNameToPythonIdentifier(name)] = None
            return
        parts = [first]
        index = 2
        while (part := strings.get(b"%s.%d" % (name, index))) is not None:
            parts.append(part)
            index += 1
        objects[amp._wireNameToPythonIdentifier(name)] = b"".join(parts)


class Text(amp.Unicode):
    """UTF-8 text; undecodable bytes become U+FFFD, so validation (not AMP) rejects them."""

    def fromString(self, inString: bytes) -> str:
        return inString.decode("utf-8", "replace")


PUBLISH_ERRORS: dict[type[Exception], bytes] = {
    BadChannel: b"BAD_CHANNEL",
    BadData: b"BAD_DATA",
    TooLarge: b"TOO_LARGE",
    Unavailable: b"UNAVAILABLE",
}


class _PublishCommand(amp.Command):
    """Arguments that are missing or cannot be parsed get the contract's codes, not UNKNOWN."""

    @classmethod
    def parseArguments(cls, box: amp.AmpBox, protocol: Any) -> dict[str, Any]:
        try:
            return super().parseArguments(box, protocol)
        except KeyError as e:
            name = e.args[0] if e.args else b"?"
            code = b"BAD_CHANNEL" if name == b"channel" else b"BAD_DATA"
            raise amp.RemoteAmpError(code, f"missing argument {name!r}") from None
        except Exception as e:
            raise amp.RemoteAmpError(b"BAD_DATA", f"malformed arguments: {e}") from None


def parse_boxes(data: bytes) -> list[amp.AmpBox]:
    """AMP wire bytes as boxes; ValueError unless they are whole boxes, end to end."""
    boxes = []
    box = amp.AmpBox()
    position, end = 0, len(data)
    while position < end:
        size = int.from_bytes(data[position : position + 2], "big")
        position += 2
        if size == 0:
            boxes.append(box)
            box = amp.AmpBox()
            continue
        if size > 255 or position + size + 2 > end:
            raise ValueError("malformed AMP key")
        key = data[position : position + size]
        position += size
        size = int.from_bytes(data[position : position + 2], "big")
        position += 2
        if position + size > end:
            raise ValueError("truncated AMP value")
        box[key] = data[position : position + size]
        position += size
    if box or position != end:
        raise ValueError("the last AMP box is not finished")
    return boxes


class StrictAmpList(amp.AmpList):
    """An AmpList that refuses trailing or truncated bytes instead of ignoring them."""

    def fromStringProto(self, inString: bytes, proto: Any) -> list[dict[str, Any]]:
        return [amp._stringsToObjects(box, self.subargs, proto) for box in parse_boxes(inString)]


def _update_arguments() -> list[tuple[bytes, amp.Argument]]:
    return [(b"channel", Text()), (b"data", ChunkedBytes()), (b"name", Text(optional=True))]


class SendUpdate(_PublishCommand):
    """Publish ``data`` (JSON text) to ``channel``; answers the position it was given."""

    commandName = b"SendUpdate"
    arguments = _update_arguments()
    response = [(b"ts", amp.Integer())]
    errors = PUBLISH_ERRORS


class SendUpdates(_PublishCommand):
    """Publish several updates, all or none; answers their positions in order."""

    commandName = b"SendUpdates"
    arguments = [(b"updates", StrictAmpList(_update_arguments()))]
    response = [(b"ts", amp.ListOf(amp.Integer()))]
    errors = PUBLISH_ERRORS


class CurrentTimestamp(amp.Command):
    """The push side's current position, for pages to catch up from."""

    commandName = b"CurrentTimestamp"
    arguments: list = []
    response = [(b"ts", amp.Integer())]
    errors = {Unavailable: b"UNAVAILABLE"}

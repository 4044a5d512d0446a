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


def _update_arguments() -> list[tuple[bytes, amp.Argument]]:
    return [(b"channel", Text()), (b"data", ChunkedBytes()), (b"name", Text(optional=True))]


class SendUpdate(amp.Command):
    """Publish ``data`` (JSON text) to ``channel``; answers the position it was given."""

    commandName = b"SendUpdate"
    arguments = _update_arguments()
    response = [(b"ts", amp.Integer())]
    errors = PUBLISH_ERRORS


class SendUpdates(amp.Command):
    """Publish several updates, all or none; answers their positions in order."""

    commandName = b"SendUpdates"
    arguments = [(b"updates", amp.AmpList(_update_arguments()))]
    response = [(b"ts", amp.ListOf(amp.Integer()))]
    errors = PUBLISH_ERRORS


class CurrentTimestamp(amp.Command):
    """The push side's current position, for pages to catch up from."""

    commandName = b"CurrentTimestamp"
    arguments: list = []
    response = [(b"ts", amp.Integer())]
    errors = {Unavailable: b"UNAVAILABLE"}

"""AMP notifier: publishers' commands translated into hub calls."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twistedpush.commands import (
    CHUNK,
    MAX_HISTORY_ANSWER,
    Authenticate,
    BoxReader,
    CurrentTimestamp,
    History,
    Presence,
    SendUpdate,
    SendUpdates,
    pack_box,
)
from twistedpush.errors import TooLarge
from twistedpush.history import History as HistoryRead
from twistedpush.hub import MAX_DATA, Hub
from twistedpush.writes import write_now

log = Logger()

MAX_BOX = 4 * MAX_DATA
"""A bigger box closes the connection: an update's data is refused (TOO_LARGE)
past 1 MiB, so a publisher never needs more, and nothing buffers without end."""


Shape = Callable[[Any], dict[str, Any]]
"""What a hub call fired with, as the command's response (one callback, not two)."""


def _one_ts(stamps: list[int]) -> dict[str, Any]:
    return {"ts": stamps[0]}


def _as_ts(ts: Any) -> dict[str, Any]:
    return {"ts": ts}


def _history_answer(history: HistoryRead) -> dict[str, Any]:
    """The History answer, refused (TOO_LARGE) past MAX_HISTORY_ANSWER bytes on the
    wire, counted generously: each update's keys and its data's chunk keys included."""
    updates = []
    size = 0
    for update in history.updates:
        data = update.data.encode()
        size += len(data) + len(update.name or "") + 64 + 16 * (len(data) // CHUNK)
        updates.append({"ts": update.ts, "name": update.name, "data": data})
    if size > MAX_HISTORY_ANSWER:
        raise TooLarge(
            f"the {len(updates)} updates asked for take about {size} bytes, over the "
            f"{MAX_HISTORY_ANSWER} a History answer may: ask for fewer (limit)"
        )
    return {"updates": updates, "horizon": history.horizon}


class NotifierProtocol(amp.AMP):
    """The notifier commands, answered straight from ``ampBoxReceived``.

    Arguments, answers and error codes come from the command definitions in
    ``twistedpush.commands``, as with AMP's responders; this reads boxes in one
    loop, skips the generic locate-and-wrap dispatch per box and writes each
    answer at once, because a Django process waits for every answer before it
    sends the next update. Anything else goes to AMP's own dispatch.

    With a publisher ``key``, the publishing commands are only looked up once
    ``Authenticate`` has given it: until then every command is answered
    UNAUTHORIZED, and a wrong key is answered so and ends the connection (one
    guess per connection). The check costs nothing per box after that.
    """

    transport: Any  # a stream transport: its disconnecting flag is read

    def __init__(self, hub: Hub, key: str | None = None) -> None:
        super().__init__()
        self.hub = hub
        self._key = None if key is None else key.encode()
        self._reader = BoxReader(MAX_BOX)
        self._commands: dict[bytes, tuple[type[amp.Command], Callable[..., Deferred], Shape]] = {
            SendUpdate.commandName: (SendUpdate, self.send_update, _one_ts),
            SendUpdates.commandName: (SendUpdates, self.send_updates, _as_ts),
            CurrentTimestamp.commandName: (CurrentTimestamp, self.hub.now, _as_ts),
        }
        self._handlers = self._commands if key is None else {}
        self._refused = False

    def connectionMade(self) -> None:
        """Become the producer of our own answers: a peer that sends commands but does
        not read their answers (every answer is bigger than its command) is not read
        from until it has, so what it makes us buffer stays bounded."""
        super().connectionMade()
        self.transport.registerProducer(self, True)

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is going: nothing to stop beyond what closing does."""

    @property
    def authenticated(self) -> bool:
        """True once this connection may publish (at once when no key is configured)."""
        return self._handlers is self._commands

    def dataReceived(self, data: bytes) -> None:
        for box in self._reader.feed(data):
            self.ampBoxReceived(box)
        if self._reader.error is not None and not self.transport.disconnecting:
            log.warn("notifier connection closed: {error}", error=self._reader.error)
            self.transport.loseConnection()

    def ampBoxReceived(self, box: dict[bytes, bytes]) -> None:
        handler = self._handlers.get(box.get(b"_command", b""))
        ask = box.get(b"_ask")
        if handler is None or ask is None:
            self._other_box(box, ask)
            return
        command, function, shape = handler
        try:
            d = function(**command.parseArguments(box, self))
        except Exception:
            d = fail()
        d.addCallbacks(
            self._answer,
            self._error,
            callbackArgs=(command, ask, shape),
            errbackArgs=(command, ask),
        )

    def _other_box(self, box: dict[bytes, bytes], ask: bytes | None) -> None:
        """Boxes off the publishing path: answers (the notifier asks nothing, so
        one is a publisher's mistake, not worth its connection), Authenticate,
        commands before it, and what AMP itself answers (unknown commands)."""
        if b"_answer" in box or b"_error" in box:
            log.warn("notifier ignored an answer box: it asks publishers nothing")
        elif box.get(b"_command") == Authenticate.commandName:
            self._authenticate(box.get(b"key"), ask)
        elif not self.authenticated:
            if ask is not None:
                self._send_error(ask, b"UNAUTHORIZED", b"send Authenticate with the publisher key")
        else:
            super().ampBoxReceived(amp.AmpBox(box))

    def _authenticate(self, key: bytes | None, ask: bytes | None) -> None:
        """Take the publisher key (any key when none is configured, so that
        publishers configured with one work everywhere), compared in constant
        time; after a wrong one, nothing more on this connection is acted on."""
        if self._refused:
            return
        if self._key is None or (key is not None and hmac.compare_digest(key, self._key)):
            self._handlers = self._commands
            if ask is not None:
                self._send(pack_box([(b"_answer", ask)]))
            return
        self._refused = True
        self._handlers = {}
        if ask is not None:
            self._send_error(ask, b"UNAUTHORIZED", b"wrong publisher key")
        log.warn(
            "notifier connection from {peer} closed: wrong publisher key",
            peer=self.transport.getPeer(),
        )
        self.transport.loseConnection()

    def _answer(self, result: Any, command: type[amp.Command], ask: bytes, shape: Shape) -> None:
        values = shape(result)
        pairs = [(b"_answer", ask)]
        pairs += [
            (key, argument.toString(values[key.decode()])) for key, argument in command.response
        ]
        self._send(pack_box(pairs))

    def _error(self, failure: Failure, command: type[amp.Command], ask: bytes) -> None:
        error = failure.value
        known = [code for kind, code in command.errors.items() if isinstance(error, kind)]
        if isinstance(error, amp.RemoteAmpError):
            code, text = error.errorCode, error.description
        elif known:
            code, text = known[0], str(error)
        else:
            log.failure("{command} failed", failure, command=command.commandName)
            code, text = amp.UNKNOWN_ERROR_CODE, "Unknown Error"
        if isinstance(text, str):
            text = text.encode("utf-8", "replace")
        self._send_error(ask, code, text)

    def _send_error(self, ask: bytes, code: bytes, text: bytes) -> None:
        self._send(
            pack_box(
                [(b"_error", ask), (b"_error_code", code), (b"_error_description", text[:1024])]
            )
        )

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.disconnecting:
            write_now(self.transport, data)

    def send_update(self, channel: str, data: bytes, name: str | None = None) -> Deferred:
        return self.hub.publish([(channel, name, data)])

    # Queries: off the publishing path, answered by AMP's own dispatch (after
    # Authenticate, like every other command, when a publisher key is set).

    @Presence.responder
    def presence(self, channel: str) -> Deferred:
        return self.hub.presence_count(channel).addCallback(lambda count: {"count": count})

    @History.responder
    def history(self, channel: str, since: int | None = None, limit: int | None = None) -> Deferred:
        read = self.hub.history(channel, since, limit)
        return read.addCallback(_history_answer)

    def send_updates(self, updates: list[dict]) -> Deferred:
        return self.hub.publish([(u["channel"], u["name"], u["data"]) for u in updates])


class NotifierFactory(Factory):
    def __init__(self, hub: Hub, key: str | None = None) -> None:
        self.hub = hub
        self.key = key

    def buildProtocol(self, addr: object) -> NotifierProtocol:
        return NotifierProtocol(self.hub, self.key)

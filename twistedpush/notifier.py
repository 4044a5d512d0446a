"""AMP notifier: publishers' commands translated into hub calls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twistedpush.commands import BoxReader, CurrentTimestamp, SendUpdate, SendUpdates, pack_box
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


class NotifierProtocol(amp.AMP):
    """The three notifier commands, answered straight from ``ampBoxReceived``.

    Arguments, answers and error codes come from the command definitions in
    ``twistedpush.commands``, as with AMP's responders; this reads boxes in one
    loop, skips the generic locate-and-wrap dispatch per box and writes each
    answer at once, because a Django process waits for every answer before it
    sends the next update. Anything else goes to AMP's own dispatch.
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub
        self._reader = BoxReader(MAX_BOX)
        self._handlers: dict[bytes, tuple[type[amp.Command], Callable[..., Deferred], Shape]] = {
            SendUpdate.commandName: (SendUpdate, self.send_update, _one_ts),
            SendUpdates.commandName: (SendUpdates, self.send_updates, _as_ts),
            CurrentTimestamp.commandName: (CurrentTimestamp, self.hub.now, _as_ts),
        }

    def dataReceived(self, data: bytes) -> None:
        for box in self._reader.feed(data):
            self.ampBoxReceived(box)
        if self._reader.error is not None and not self.transport.disconnecting:
            log.warn("notifier connection closed: {error}", error=self._reader.error)
            self.transport.loseConnection()

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        handler = self._handlers.get(box.get(b"_command"))
        ask = box.get(b"_ask")
        if handler is None or ask is None:
            super().ampBoxReceived(box)
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

    def _answer(self, result: Any, command: type[amp.Command], ask: bytes, shape: Shape) -> None:
        values = shape(result)
        pairs = [(b"_answer", ask)]
        pairs += [
            (key, argument.toString(values[key.decode()])) for key, argument in command.response
        ]
        self._send(pack_box(pairs))

    def _error(self, failure: Failure, command: type[amp.Command], ask: bytes) -> None:
        if failure.check(amp.RemoteAmpError):
            code, text = failure.value.errorCode, failure.value.description
        elif known := failure.check(*command.allErrors):
            code, text = command.allErrors[known], str(failure.value)
        else:
            log.failure("{command} failed", failure, command=command.commandName)
            code, text = amp.UNKNOWN_ERROR_CODE, "Unknown Error"
        if isinstance(text, str):
            text = text.encode("utf-8", "replace")
        text = text[:1024]
        self._send(
            pack_box([(b"_error", ask), (b"_error_code", code), (b"_error_description", text)])
        )

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.disconnecting:
            write_now(self.transport, data)

    def send_update(self, channel: str, data: bytes, name: str | None = None) -> Deferred:
        return self.hub.publish([(channel, name, data)])

    def send_updates(self, updates: list[dict]) -> Deferred:
        return self.hub.publish([(u["channel"], u["name"], u["data"]) for u in updates])


class NotifierFactory(Factory):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def buildProtocol(self, addr: object) -> NotifierProtocol:
        return NotifierProtocol(self.hub)

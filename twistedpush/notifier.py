"""AMP notifier: publishers' commands translated into hub calls."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twistedpush.commands import CurrentTimestamp, SendUpdate, SendUpdates
from twistedpush.hub import Hub
from twistedpush.writes import write_now

log = Logger()


class NotifierProtocol(amp.AMP):
    """The three notifier commands, answered straight from ``ampBoxReceived``.

    Arguments, answers and error codes come from the command definitions in
    ``twistedpush.commands``, as with AMP's responders; this skips the generic
    locate-and-wrap dispatch per box and writes each answer at once, because a
    Django process waits for every answer before it sends the next update.
    Anything else goes to AMP's own dispatch.
    """

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub
        self._handlers = {
            SendUpdate.commandName: (SendUpdate, self.send_update),
            SendUpdates.commandName: (SendUpdates, self.send_updates),
            CurrentTimestamp.commandName: (CurrentTimestamp, self.current_timestamp),
        }

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        handler = self._handlers.get(box.get(b"_command"))
        ask = box.get(b"_ask")
        if handler is None or ask is None:
            super().ampBoxReceived(box)
            return
        command, function = handler
        try:
            d = function(**command.parseArguments(box, self))
        except Exception:
            d = fail()
        d.addCallbacks(
            self._answer, self._error, callbackArgs=(command, ask), errbackArgs=(command, ask)
        )

    def _answer(self, result: dict, command: type[amp.Command], ask: bytes) -> None:
        answer = command.makeResponse(result, self)
        answer[b"_answer"] = ask
        self._send(answer)

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
        self._send(amp.AmpBox(_error=ask, _error_code=code, _error_description=text))

    def _send(self, box: amp.AmpBox) -> None:
        if self.transport is not None and not self.transport.disconnecting:
            write_now(self.transport, box.serialize())

    def send_update(self, channel: str, data: bytes, name: str | None = None) -> Deferred:
        return self.hub.publish([(channel, name, data)]).addCallback(lambda ts: {"ts": ts[0]})

    def send_updates(self, updates: list[dict]) -> Deferred:
        items = [(u["channel"], u["name"], u["data"]) for u in updates]
        return self.hub.publish(items).addCallback(lambda ts: {"ts": ts})

    def current_timestamp(self) -> Deferred:
        return self.hub.now().addCallback(lambda ts: {"ts": ts})


class NotifierFactory(Factory):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def buildProtocol(self, addr: object) -> NotifierProtocol:
        return NotifierProtocol(self.hub)

"""AMP notifier: publishers' commands translated into hub calls."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from twistedpush.commands import CurrentTimestamp, SendUpdate, SendUpdates
from twistedpush.hub import Hub


class NotifierProtocol(amp.AMP):
    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    @SendUpdate.responder
    def send_update(self, channel: str, data: bytes, name: str | None = None) -> Deferred:
        return self.hub.publish([(channel, name, data)]).addCallback(lambda ts: {"ts": ts[0]})

    @SendUpdates.responder
    def send_updates(self, updates: list[dict]) -> Deferred:
        items = [(u["channel"], u["name"], u["data"]) for u in updates]
        return self.hub.publish(items).addCallback(lambda ts: {"ts": ts})

    @CurrentTimestamp.responder
    def current_timestamp(self) -> Deferred:
        return self.hub.now().addCallback(lambda ts: {"ts": ts})


class NotifierFactory(Factory):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def buildProtocol(self, addr: object) -> NotifierProtocol:
        return NotifierProtocol(self.hub)

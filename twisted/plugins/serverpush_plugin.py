"""twistd plugin: ``twistd -n serverpush``."""

from twisted.application.service import ServiceMaker

serverpush = ServiceMaker(
    "twistedpush",
    "twistedpush.tap",
    "Live updates for Django: WebSocket, long-poll and an AMP notifier.",
    "serverpush",
)

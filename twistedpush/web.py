"""The public HTTP site: WebSocket, long-poll and health on one port."""

from __future__ import annotations

import json
from pathlib import Path

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IReactorTime
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.static import File

from twistedpush.hub import Hub
from twistedpush.longpoll import PollResource
from twistedpush.websocket import PushWebSocketFactory


def client_script() -> Path:
    """The browser client: packaged beside this module by ``pip install``, or in a checkout's
    top-level ``static/`` (the developer install runs from the checkout)."""
    installed = Path(__file__).with_name("static") / "serverpush.js"
    if installed.exists():
        return installed
    return Path(__file__).resolve().parent.parent / "static" / "serverpush" / "serverpush.js"


class BoundedRequest(server.Request):
    """A request that keeps at most ``max_body`` bytes of its body, chunked or not."""

    max_body = 65536

    def handleContentChunk(self, data: bytes) -> None:
        room = self.max_body + 1 - self.content.tell()
        if room > 0:
            super().handleContentChunk(data[:room])


class HealthResource(Resource):
    isLeaf = True

    def __init__(
        self, hub: Hub, clock: IReactorTime, websockets: PushWebSocketFactory, polls: PollResource
    ) -> None:
        super().__init__()
        self.hub = hub
        self.clock = clock
        self.websockets = websockets
        self.polls = polls
        self.started = clock.seconds()

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        healthy = self.hub.store.healthy()
        if not healthy:
            request.setResponseCode(503)
        report = {
            "status": "ok" if healthy else "unavailable",
            "connections": {
                "websocket": self.websockets.connections,
                "longpoll": self.polls.active,
            },
            "uptime": round(self.clock.seconds() - self.started, 3),
            **self.hub.stats(),
        }
        return json.dumps(report).encode()


class RootResource(Resource):
    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"twistedpush: WebSocket at /ws, long-poll at POST /poll, status at /health\n"


def make_site(
    hub: Hub, clock: IReactorTime, max_message_size: int = 4096, max_body: int = 65536
) -> server.Site:
    websockets = PushWebSocketFactory(hub, max_message_size, reactor=clock)
    polls = PollResource(hub, clock, max_body, hub.max_subscriptions)
    root = RootResource()
    root.putChild(b"ws", WebSocketResource(websockets))
    root.putChild(b"poll", polls)
    root.putChild(b"health", HealthResource(hub, clock, websockets, polls))
    static = Resource()
    script = File(str(client_script()), defaultType="application/javascript")
    static.putChild(b"serverpush.js", script)
    root.putChild(b"static", static)
    site = server.Site(root)
    site.requestFactory = type("Request", (BoundedRequest,), {"max_body": max_body})
    site.displayTracebacks = False
    return site

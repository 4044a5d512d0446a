"""The public HTTP site: WebSocket, long-poll, health, metrics and the client script."""

from __future__ import annotations

import json
from pathlib import Path

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IReactorTime
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.static import File

from twistedpush.hub import Hub
from twistedpush.limits import TRANSPORTS, Admission
from twistedpush.longpoll import PollResource
from twistedpush.websocket import PushWebSocketFactory


def client_script() -> Path:
    """The browser client: packaged beside this module by ``pip install``, or in a checkout's
    top-level ``static/`` (the developer install runs from the checkout)."""
    installed = Path(__file__).with_name("static") / "serverpush.js"
    if installed.exists():
        return installed
    return Path(__file__).resolve().parent.parent / "static" / "serverpush" / "serverpush.js"


class UpgradeResource(WebSocketResource):
    """Autobahn's upgrade, then release the HTTP side at once.

    The HTTP channel that carried the handshake would otherwise live on (with
    its request) until its 60 s idle timer fires: memory per new WebSocket.
    """

    def render(self, request: server.Request) -> int | bytes:
        result = super().render(request)
        channel = request.channel
        if channel is not None:
            channel.setTimeout(None)
        return result


class BoundedRequest(server.Request):
    """A request that keeps at most ``max_body`` bytes of its body, chunked or not."""

    max_body = 65536

    def handleContentChunk(self, data: bytes) -> None:
        room = self.max_body + 1 - self.content.tell()
        if room > 0:
            super().handleContentChunk(data[:room])


class Status:
    """Everything /health and /metrics report, gathered from hub, store and transports."""

    def __init__(
        self, hub: Hub, clock: IReactorTime, admission: Admission, websockets: PushWebSocketFactory
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.admission = admission
        self.websockets = websockets
        self.started = clock.seconds()

    def report(self) -> dict:
        return {
            "status": "ok" if self.hub.store.healthy() else "unavailable",
            "connections": {t: self.admission.by_transport[t] for t in TRANSPORTS},
            "uptime": round(self.clock.seconds() - self.started, 3),
            "slow_client_drops": self.websockets.slow_drops,
            "refused": dict(self.admission.refused),
            **self.hub.stats(),
        }


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, status: Status) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: server.Request) -> bytes:
        report = self.status.report()
        if report["status"] != "ok":
            request.setResponseCode(503)
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(report).encode()


# name, type, help, how to read it from Status.report()
METRICS = [
    ("connections", "gauge", "Open connections by transport.", "connections"),
    ("subscriptions", "gauge", "Subscriptions on this node.", "subscriptions"),
    ("channels", "gauge", "Channels with local subscribers.", "channels"),
    ("updates_in_total", "counter", "Updates accepted from publishers.", "updates_in"),
    ("updates_out_total", "counter", "Updates sent to subscribers.", "updates_out"),
    ("replays_total", "counter", "Subscriptions that caught up from a position.", "replays"),
    ("resets_total", "counter", "Resets sent (history did not reach back).", "resets"),
    ("slow_client_drops_total", "counter", "Clients dropped for not reading.", "slow_client_drops"),
    ("amp_errors_total", "counter", "Publications refused or failed.", "publish_errors"),
    ("refused_total", "counter", "Connections refused, by reason.", "refused"),
    ("history_channels", "gauge", "Channels with stored history.", "history_channels"),
    ("history_updates", "gauge", "Updates kept in history.", "history_updates"),
    ("uptime_seconds", "gauge", "Seconds since the node started.", "uptime"),
]


def prometheus(report: dict) -> str:
    """The report in Prometheus text format (0.0.4)."""
    lines = []
    for name, kind, text, key in METRICS:
        if key not in report:
            continue
        metric = f"twistedpush_{name}"
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        value = report[key]
        if isinstance(value, dict):
            label = "transport" if key == "connections" else "reason"
            lines += [f'{metric}{{{label}="{k}"}} {v}' for k, v in sorted(value.items())]
        else:
            lines.append(f"{metric} {value}")
    return "\n".join(lines) + "\n"


class MetricsResource(HealthResource):
    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return prometheus(self.status.report()).encode()


class RootResource(Resource):
    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return (
            b"twistedpush: WebSocket at /ws, long-poll at POST /poll, "
            b"status at /health and /metrics\n"
        )


def make_site(
    hub: Hub,
    clock: IReactorTime,
    admission: Admission | None = None,
    max_message_size: int = 4096,
    max_body: int = 65536,
) -> server.Site:
    admission = admission or Admission()
    websockets = PushWebSocketFactory(hub, admission, max_message_size, reactor=clock)
    status = Status(hub, clock, admission, websockets)
    root = RootResource()
    root.putChild(b"ws", UpgradeResource(websockets))
    root.putChild(b"poll", PollResource(hub, clock, admission, max_body))
    root.putChild(b"health", HealthResource(status))
    root.putChild(b"metrics", MetricsResource(status))
    static = Resource()
    script = File(str(client_script()), defaultType="application/javascript")
    static.putChild(b"serverpush.js", script)
    root.putChild(b"static", static)
    site = server.Site(root)
    site.requestFactory = type("Request", (BoundedRequest,), {"max_body": max_body})
    site.displayTracebacks = False
    return site

"""The public HTTP site: WebSocket, long-poll, Server-Sent Events, HTTP publishing, the
push-relay long-poll, health, metrics and the client script; in one-port mode
(``runserverpush --allrequests``) every other path goes to Django."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import Resource
from twisted.web.static import File

from twistedpush.errors import Limit, PushError, TooLarge
from twistedpush.httputil import finish, refuse
from twistedpush.hub import Hub
from twistedpush.limits import TRANSPORTS, Admission, Limits, Ticket, address_key
from twistedpush.longpoll import PollResource, allow_cross_origin, poll_error
from twistedpush.publish import PUBLISH_BODY, PublishingOff, PublishResource
from twistedpush.relay import RelayResource
from twistedpush.sse import SSEResource
from twistedpush.stats import (
    StatsFeed,
    StatsKey,
    StatsPage,
    StatsWebSocketFactory,
    TrackedAdmission,
    access_log_line,
    admission_for,
)
from twistedpush.websocket import AdmittingFactory, PushWebSocketFactory
from twistedpush.wire import http_error


def client_script() -> Path:
    """The browser client: packaged beside this module by ``pip install``, or in a checkout's
    top-level ``static/`` (the developer install runs from the checkout)."""
    installed = Path(__file__).with_name("static") / "serverpush.js"
    if installed.exists():
        return installed
    return Path(__file__).resolve().parent.parent / "static" / "serverpush" / "serverpush.js"


class UpgradeResource(WebSocketResource):
    """Autobahn's upgrade, handing the connection's admission ticket to the WebSocket,
    then releasing the HTTP side at once.

    The HTTP channel that carried the handshake would otherwise live on (with
    its request) until its 60 s idle timer fires: memory per new WebSocket.
    """

    _factory: AdmittingFactory

    def render(self, request: PushRequest) -> int | bytes:
        channel = request.connection
        self._factory.handover = channel.ticket
        try:
            result = super().render(request)
        finally:
            self._factory.handover = None
        channel.setTimeout(None)
        channel.upgraded()
        return result


def _raw_response(status: bytes, error: PushError) -> bytes:
    """A whole HTTP answer for a connection that is refused before (or while) its
    request arrives; the connection closes after it."""
    body = http_error(error)
    return (
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        % (
            status,
            len(body),
        )
        + b"Connection: close\r\n\r\n"
        + body
    )


class PushHTTPChannel(http.HTTPChannel):
    """HTTP/1.1 for the public port: every connection is counted from the moment it
    is accepted, a request must arrive whole (line, headers and body) within
    ``request_timeout`` seconds, and a body declared too large is answered at once.

    Without this a client that sends its headers a byte at a time holds a
    connection that no cap counts and no idle timer ends (slowloris).
    """

    site: PushSite
    transport: Any  # a TCP (or TLS) connection: its producer and state attributes are used
    ticket: Ticket | None = None
    paused = False
    _deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._waiting: list[Callable[[], None]] = []
        super().connectionMade()
        try:
            self.ticket = self.site.admission.accept(address_key(self.transport.getPeer()))
        except Limit as e:
            self.transport.write(_raw_response(b"503 Service Unavailable", e))
            self.transport.loseConnection()
            return
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self.ticket is not None:  # a refused connection's requests are not read
            super().dataReceived(data)

    def _arm(self) -> None:
        self._deadline = self.callLater(self.site.admission.limits.request_timeout, self._late)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if self.transport is None:
            return  # a WebSocket's now
        timeout = self.site.admission.limits.request_timeout
        error = PushError(f"the request did not arrive whole within {timeout:g} s")
        self.transport.write(_raw_response(b"408 Request Timeout", error))
        self.timeoutConnection()

    def allHeadersReceived(self) -> None:
        request: PushRequest = self.requests[-1]
        request.max_body = self.site.body_limit(self._path)
        declared = self.length
        if declared is not None and declared > request.max_body:
            # Answered before the body: no "100 Continue" invites it.
            request.requestHeaders.removeHeader(b"expect")
        super().allHeadersReceived()
        assert self.ticket is not None
        forwarded = request.getHeader(b"x-forwarded-for")
        try:
            self.site.admission.identify(
                self.ticket, forwarded.decode("latin-1") if forwarded else None
            )
        except Limit as e:
            request.refusal = e  # 503
        if declared is not None and declared > request.max_body:
            request.refusal = TooLarge(  # 413
                f"body is {declared} bytes; at most {request.max_body} are accepted"
            )
        if request.refusal is not None:
            # Answer now; the rest of the body is read into nothing until the
            # connection, no longer persistent, closes after the answer.
            self.persistent = False
            self.allContentReceived()
            self.length = None

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def requestDone(self, request: server.Request) -> None:
        # The next request must arrive whole in time too. Armed first: twisted.web
        # goes straight on to a pipelined request already buffered, which disarms
        # it once whole (or takes the connection over as a WebSocket).
        self._disarm()
        self._arm()
        super().requestDone(request)
        if self.transport is None or not self.persistent or self.transport.disconnecting:
            self._disarm()

    def pauseProducing(self) -> None:
        self.paused = True
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        super().resumeProducing()
        waiting, self._waiting = self._waiting, []
        for callback in waiting:
            callback()

    def when_sent(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once what was written has gone to the kernel (now, unless
        the send buffer is full); never, if the connection is lost first."""
        if self.paused and not self.transport.disconnected:
            self._waiting.append(callback)
        else:
            callback()

    def upgraded(self) -> None:
        """The connection is a WebSocket's now, and so is its ticket."""
        self._disarm()
        self.ticket = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self.ticket is not None:
            self.site.admission.close(self.ticket)
        super().connectionLost(reason)


class PushRequest(server.Request):
    """A request that keeps at most ``max_body`` bytes of its body (its path's limit,
    see PushSite.body_limit), chunked or not, names the client behind a trusted
    proxy, and may be refused before it is read."""

    max_body = 65536
    refusal: PushError | None = None
    """Limit or TooLarge: refused before the body is read."""
    channel: PushHTTPChannel

    def __init__(self, channel: PushHTTPChannel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self.connection = channel
        """The channel, kept after twisted.web lets go of it when the answer is finished."""

    def handleContentChunk(self, data: bytes) -> None:
        assert self.content is not None
        room = self.max_body + 1 - self.content.tell()
        if room > 0:
            super().handleContentChunk(data[:room])

    @property
    def ticket(self) -> Ticket:
        """The admission ticket of this request's connection."""
        assert self.channel is not None and self.channel.ticket is not None
        return self.channel.ticket

    def when_sent(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this request's answer has left for the kernel
        (never, if the connection is gone first or became a WebSocket: closing it
        releases everything, and a WebSocket holds its ticket)."""
        transport = self.connection.transport
        if transport is not None and not transport.disconnected:
            self.connection.when_sent(callback)

    def getClientAddress(self) -> IAddress:
        """The peer, or for a trusted proxy's connection the client it forwards for
        (so that logs and per-address caps name the browser, not the proxy)."""
        peer = super().getClientAddress()
        ticket = self.channel.ticket if self.channel is not None else None
        if ticket is None or ticket.address in (None, ticket.peer):
            return peer
        kind = IPv6Address if ":" in ticket.address else IPv4Address
        return kind("TCP", ticket.address, 0)

    def process(self) -> None:
        if self.refusal is None:
            super().process()
            return
        error = self.refusal
        body = refuse(self, error)
        allow_cross_origin(self, self.channel.site.admission)
        finish(self, poll_error(error) if self.path == b"/poll" else body)


PUSH_PATHS = frozenset((b"ws", b"poll", b"sse", b"updates", b"publish", b"health", b"metrics"))
"""First path segments of the push server's own endpoints (and /static/serverpush.js)."""

CLIENT_SCRIPT_PATH = b"/static/serverpush.js"

DJANGO_BODY = 64 * 1024 * 1024
"""The largest request body Django is handed in one-port mode (uploads included)."""


class PushSite(server.Site):
    """The public site, with the admission that counts its connections; with
    ``django`` (one-port mode) every path that is not the push server's goes to it."""

    # HTTP/1.1 only (twisted.web's default would switch to h2 when TLS negotiates it).
    protocol = PushHTTPChannel  # type: ignore[assignment]
    push_paths = PUSH_PATHS
    stats: StatsFeed | None = None
    """What /stats shows (with --stats-key), ticked by the node's service."""

    def __init__(
        self,
        resource: Resource,
        admission: Admission,
        max_body: int,
        reactor: IReactorTime,
        django: Resource | None = None,
        access_log: bool = True,
    ) -> None:
        # No form parsing: push paths read JSON bodies, and Django (one-port mode)
        # parses its own; twisted.web's parser took a fifth of an HTTP publish (py-spy).
        super().__init__(
            resource,
            requestFactory=PushRequest,
            reactor=reactor,
            logFormatter=access_log_line,
            parsePOSTFormSubmission=False,
        )
        self.admission = admission
        self.max_body = max_body
        self.django = django
        self.access_log = access_log
        self.displayTracebacks = False

    def log(self, request: http.Request) -> None:
        """One access log line per request, unless ``--no-access-log``."""
        if self.access_log:
            super().log(request)

    def is_push_path(self, path: bytes) -> bool:
        return path == CLIENT_SCRIPT_PATH or path[1:].partition(b"/")[0] in self.push_paths

    def body_limit(self, target: bytes) -> int:
        """The largest body a request to ``target`` (its request line's) may send."""
        path = target.partition(b"?")[0]
        if path == b"/publish" or path.startswith(b"/publish/"):
            return PUBLISH_BODY
        if self.django is not None and not self.is_push_path(path):
            return DJANGO_BODY
        return self.max_body

    def getResourceFor(self, request: server.Request) -> Resource:
        if self.django is not None and not self.is_push_path(request.path):
            return self.django  # the whole path is Django's (WSGI's PATH_INFO)
        return super().getResourceFor(request)


class Status:
    """Everything /health and /metrics report, gathered from hub, store and transports."""

    def __init__(
        self,
        hub: Hub,
        clock: IReactorTime,
        admission: Admission,
        websockets: PushWebSocketFactory,
        streams: SSEResource,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.admission = admission
        self.websockets = websockets
        self.streams = streams
        self.started = clock.seconds()
        self._frozen: int | None = None

    def counters(self) -> tuple[int, int, int]:
        """Updates in, updates out and slow clients dropped, as report() has them:
        what /stats samples every second, without counting every subscription."""
        return self.hub.updates_in, self.hub.updates_out, self.slow_drops()

    def frozen_objects(self) -> int:
        """What start-up froze (tap.tune_collector), counted at the first report after:
        Python counts them by walking them all, half the node's time with /health
        asked ten times a second (py-spy, bench/crowd.py)."""
        if self._frozen is None:
            self._frozen = gc.get_freeze_count()
        return self._frozen

    def slow_drops(self) -> int:
        return self.websockets.slow_drops + self.streams.slow_drops

    def report(self) -> dict:
        """``status`` is ``ok``, ``degraded`` while some Redis shards are away (the other
        shards' channels work: a load balancer must not take every node out for it), or
        ``unavailable`` when history cannot be reached at all."""
        healthy = self.hub.store.healthy()
        stats = self.hub.stats()  # the store's stats with the hub's: read once
        if healthy:
            status = "ok"
        elif any(shard["connected"] for shard in stats.get("shards", ())):
            status = "degraded"
        else:
            status = "unavailable"
        return {
            "status": status,
            "connections": {t: self.admission.by_transport[t] for t in TRANSPORTS},
            "uptime": round(self.clock.seconds() - self.started, 3),
            "slow_client_drops": self.slow_drops(),
            "refused": dict(self.admission.refused),
            # A full collection (generation 2) stops the node for a time that grows
            # with what connections and history hold: the latency tail's first suspect.
            "gc_collections": {str(g): s["collections"] for g, s in enumerate(gc.get_stats())},
            "gc_frozen_objects": self.frozen_objects(),
            **stats,
        }


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, status: Status) -> None:
        super().__init__()
        self.status = status

    def render_GET(self, request: server.Request) -> bytes:
        report = self.status.report()
        if report["status"] == "unavailable":
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
    ("gc_collections_total", "counter", "Garbage collections by generation (2: full).",
     "gc_collections"),
    ("gc_frozen_objects", "gauge", "Objects put out of the collector's reach at start-up.",
     "gc_frozen_objects"),
]  # fmt: skip

# Per Redis shard (label ``shard``, its number in the --redis list, and ``address``):
# name, type, help, field of the report's ``shards`` entries.
SHARD_METRICS = [
    ("redis_up", "gauge", "Whether this node can use the Redis shard (1) or not (0).",
     "connected"),
    ("redis_watched_channels", "gauge", "Channels this node subscribes to on the shard.",
     "watched_channels"),
    ("redis_pubsub_losses_total", "counter", "Pub/sub connections to the shard lost.",
     "pubsub_losses"),
]  # fmt: skip


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
            label = {"connections": "transport", "gc_collections": "generation"}.get(key, "reason")
            lines += [f'{metric}{{{label}="{k}"}} {v}' for k, v in sorted(value.items())]
        else:
            lines.append(f"{metric} {value}")
    for name, kind, text, field in SHARD_METRICS if report.get("shards") else ():
        metric = f"twistedpush_{name}"
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        for shard in report["shards"]:
            labels = f'shard="{shard["shard"]}",address="{shard["address"]}"'
            lines.append(f"{metric}{{{labels}}} {int(shard[field])}")
    return "\n".join(lines) + "\n"


class MetricsResource(HealthResource):
    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return prometheus(self.status.report()).encode()


class RootResource(Resource):
    """``/`` names the endpoints; everything else is a child."""

    def getChild(self, path: bytes, request: server.Request) -> Resource:
        return self if path == b"" else super().getChild(path, request)

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return (
            b"twistedpush: WebSocket at /ws, long-poll at POST /poll, "
            b"Server-Sent Events at /sse/<channel>, push-relay long-poll at /updates/<channel>, "
            b"HTTP publishing at POST /publish (with --publisher-key), "
            b"status at /health and /metrics\n"
        )


def make_site(
    hub: Hub,
    clock: IReactorTime,
    admission: Admission | None = None,
    max_message_size: int = 4096,
    max_body: int = 65536,
    wamp_realm: str = "serverpush",
    publisher_key: str | None = None,
    django: Resource | None = None,
    stats_key: str | None = None,
    access_log: bool = True,
) -> PushSite:
    """The public site; ``publisher_key`` turns HTTP publishing on, ``django`` (a WSGI
    resource) serves every other path (one-port mode), ``stats_key`` turns /stats on
    (its ``admission`` must then be a TrackedAdmission: /stats counts its tickets)."""
    admission = admission or admission_for(stats_key, Limits())
    websockets = PushWebSocketFactory(
        hub, admission, max_message_size, reactor=clock, wamp_realm=wamp_realm
    )
    streams = SSEResource(hub, clock, admission)
    status = Status(hub, clock, admission, websockets, streams)
    root = RootResource()
    root.putChild(b"ws", UpgradeResource(websockets))
    root.putChild(b"poll", PollResource(hub, clock, admission, max_body))
    root.putChild(b"sse", streams)
    root.putChild(b"updates", RelayResource(hub, clock, admission))
    publish = PublishingOff() if publisher_key is None else PublishResource(hub, publisher_key)
    root.putChild(b"publish", publish)
    root.putChild(b"health", HealthResource(status))
    root.putChild(b"metrics", MetricsResource(status))
    static = Resource()
    script = File(str(client_script()), defaultType="application/javascript")
    static.putChild(b"serverpush.js", script)
    root.putChild(b"static", static)
    site = PushSite(root, admission, max_body, clock, django, access_log)
    if stats_key is not None:
        if not isinstance(admission, TrackedAdmission):
            raise TypeError("/stats needs a TrackedAdmission: it counts the open connections")
        key = StatsKey(stats_key, clock)
        site.stats = StatsFeed(clock, status, hub, admission, key)
        feed = StatsWebSocketFactory(site.stats, key, admission, clock)
        root.putChild(b"stats", StatsPage(key, UpgradeResource(feed)))
        site.push_paths = PUSH_PATHS | {b"stats"}
    return site

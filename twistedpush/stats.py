"""The operator's view: ``GET /stats``, a page behind ``--stats-key``, and ``/stats/ws``,
the WebSocket that sends it a snapshot of the node every second.

Off unless a key is set (else ``/stats`` is absent: 404). The snapshot is built
without I/O (:class:`Recorder`, :func:`snapshot`) from what /health and
/metrics report, plus the busiest channels and the open connections by kind.
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from itertools import pairwise
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes, urlsplit

from autobahn.websocket.types import ConnectionRequest
from twisted.application.internet import TimerService
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web import http
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from twistedpush.errors import Forbidden, Unauthorized
from twistedpush.httputil import bearer, query, refuse
from twistedpush.hub import Hub
from twistedpush.limits import Admission, Limits, Ticket
from twistedpush.websocket import AdmittedWebSocket, AdmittingFactory

MIN_KEY_LENGTH = 16
"""The stats key guards channel names and the node's load: no short, guessable keys."""

TOP_CHANNELS = 10
"""How many of the busiest channels a snapshot names."""

KINDS = ("websocket", "wamp", "longpoll", "relay", "sse", "http", "stats")
"""Open connections as /stats counts them: /health's transports, with WAMP sessions
apart from plain WebSockets, push-relay polls (``GET /updates/``) apart from long-polls,
and the /stats pages' own WebSockets apart from both."""

RATES = ("publish", "deliver", "drops")
"""Counters the page shows as rates: updates accepted from publishers, updates sent
to subscribers (replays included), slow clients dropped."""

SECONDS = 60
TENS = 60
"""Samples kept: one a second for the last minute, one every 10 s for 10 minutes."""

TICKET_TTL = 300
"""Seconds a page's WebSocket ticket is good for. Each snapshot brings the page a
fresh one, so an open page reconnects after a restart of up to this long; a
ticket copied from a page (or its HTML) opens nothing after it."""

AUTH_TIMEOUT = 10.0
"""Seconds a /stats/ws client has to send its key or ticket."""

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403


# Keeping the key out of the access log


_QUERY_ITEM = re.compile(rb"([&;])")


def hide_keys(target: bytes) -> bytes:
    """``target`` (a request target or URL) with the value of each query argument
    named ``key`` as twisted.web decodes names (``%6bey`` is ``key`` too) hidden."""
    path, mark, arguments = target.partition(b"?")
    if not mark:
        return target
    items = _QUERY_ITEM.split(arguments)
    for index, item in enumerate(items):
        name, equals, _ = item.partition(b"=")
        if equals and unquote_to_bytes(name.replace(b"+", b" ")) == b"key":
            items[index] = name + b"=[hidden]"
    return path + mark + b"".join(items)


class KeysHidden:
    """What Twisted's access log formatter reads of a request, keys hidden from the
    target and the referrer."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.method = request.method
        self.uri = hide_keys(request.uri)
        self.clientproto = request.clientproto
        self.code = request.code
        self.sentLength = request.sentLength

    def getClientAddress(self) -> Any:
        return self.request.getClientAddress()

    def getHeader(self, name: bytes) -> bytes | None:
        value = self.request.getHeader(name)
        return hide_keys(value) if value and name.lower() == b"referer" else value


def access_log_line(timestamp: str, request: Any) -> str:
    """Twisted's combined access log line with every ``key`` query value hidden:
    /stats takes its key in the query string, and the log is no place for it."""
    return http.combinedLogFormatter(timestamp, KeysHidden(request))


# Open connections by kind


@dataclass
class TrackedAdmission(Admission):
    """An admission that also keeps its open connections' tickets, so that /stats can
    tell what holds each one (a WAMP session, a push-relay poll)."""

    tickets: set[Ticket] = field(default_factory=set)

    def accept(self, peer: str) -> Ticket:
        ticket = super().accept(peer)
        self.tickets.add(ticket)
        return ticket

    def close(self, ticket: Ticket) -> None:
        super().close(ticket)
        self.tickets.discard(ticket)


def admission_for(stats_key: str | None, limits: Limits) -> Admission:
    """The node's admission: with a stats key, one that /stats can count."""
    return (TrackedAdmission if stats_key else Admission)(limits)


def kind_of(ticket: Ticket) -> str:
    """What the connection of ``ticket`` is (one of KINDS), from its holder."""
    holder = ticket.holder
    if ticket.transport == "websocket":
        if isinstance(holder, StatsViewer):
            return "stats"
        return "wamp" if getattr(holder, "wamp", None) is not None else "websocket"
    if ticket.transport == "longpoll" and getattr(holder, "path", b"").startswith(b"/updates/"):
        return "relay"
    return ticket.transport


def connection_counts(tickets: set[Ticket]) -> dict[str, int]:
    counts = dict.fromkeys(KINDS, 0)
    for ticket in tickets:
        counts[kind_of(ticket)] += 1
    return counts


# Rates over the last minutes


Sample = tuple[float, tuple[int, ...]]


class Recorder:
    """Samples of the node's cumulative counters (RATES, in order): one a second for
    the last minute, one every 10 s for the last 10 minutes.

    Rates are differences between samples over the time between them, so a late
    tick (a busy reactor) spreads over the time it covered instead of spiking.
    """

    def __init__(self) -> None:
        self._seconds: deque[Sample] = deque(maxlen=SECONDS + 1)
        self._tens: deque[Sample] = deque(maxlen=TENS + 1)

    def add(self, now: float, counts: tuple[int, ...]) -> None:
        if self._seconds and now <= self._seconds[-1][0]:
            return  # the clock stepped back: rates over it would be nonsense
        self._seconds.append((now, counts))
        if not self._tens or now // 10 > self._tens[-1][0] // 10:
            self._tens.append((now, counts))

    def rates(self) -> dict[str, dict[str, Any]]:
        """Per counter: per-second rates of the last minute (``per_second``) and of
        each 10 s of the last 10 minutes (``per_10s``), oldest first, and the
        averages over the last minute and the last 10 minutes (per second)."""
        seconds, tens = list(self._seconds), list(self._tens)
        return {
            name: {
                "per_second": _series(seconds, index),
                "per_10s": _series(tens, index),
                "last_minute": _rate(seconds[0], seconds[-1], index) if seconds else 0.0,
                "last_10_minutes": _rate(tens[0], seconds[-1], index) if seconds else 0.0,
            }
            for index, name in enumerate(RATES)
        }


def _rate(older: Sample, newer: Sample, index: int) -> float:
    elapsed = newer[0] - older[0]
    if elapsed <= 0:
        return 0.0
    return round(max(0, newer[1][index] - older[1][index]) / elapsed, 2)


def _series(samples: list[Sample], index: int) -> list[float]:
    return [_rate(older, newer, index) for older, newer in pairwise(samples)]


# The snapshot

SHARD_FIELDS = ("shard", "address", "connected", "watched_channels", "pubsub_losses")


def counts_of(report: dict) -> tuple[int, ...]:
    """The RATES counters in a /health report (as Source.counters gives them)."""
    return report["updates_in"], report["updates_out"], report["slow_client_drops"]


def snapshot(
    report: dict,
    connections: dict[str, int],
    busiest: list[tuple[str, int]],
    rates: dict[str, dict[str, Any]],
    now: float,
) -> dict[str, Any]:
    """What the page shows, as JSON: ``report`` is /health's."""
    return {
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")[:-6] + "Z",
        "status": report["status"],
        "uptime": report["uptime"],
        "connections": connections,
        "refused": dict(report["refused"]),
        "subscriptions": report["subscriptions"],
        "channels": report["channels"],
        "busiest": [{"channel": name, "subscribers": count} for name, count in busiest],
        "totals": {
            **dict(zip(RATES, counts_of(report), strict=True)),
            "publish_errors": report["publish_errors"],
        },
        "rates": rates,
        "store": report.get("store", "memory"),
        "shards": [{k: shard[k] for k in SHARD_FIELDS} for shard in report.get("shards", ())],
    }


class Viewer(Protocol):
    def push(self, message: bytes) -> None: ...


class Source(Protocol):
    """What the feed reads of the node (web.Status)."""

    def report(self) -> dict:
        """/health's report: it counts every subscription, so only for a snapshot."""
        ...

    def counters(self) -> tuple[int, ...]:
        """The RATES counters alone, cheap enough to sample every second."""
        ...


class StatsFeed:
    """Once a second (:meth:`tick`): sample the counters, and while pages watch, send
    them the snapshot. Nothing else is built while nobody watches."""

    def __init__(
        self,
        clock: IReactorTime,
        source: Source,
        hub: Hub,
        admission: TrackedAdmission,
        key: StatsKey,
        top: int = TOP_CHANNELS,
    ) -> None:
        self.clock = clock
        self.source = source
        self.hub = hub
        self.admission = admission
        self.key = key
        self.top = top
        self.recorder = Recorder()
        self.viewers: set[Viewer] = set()

    def tick(self) -> None:
        self.recorder.add(self.clock.seconds(), self.source.counters())
        if self.viewers:
            message = json.dumps(self.current()).encode()
            for viewer in list(self.viewers):
                viewer.push(message)

    def current(self) -> dict[str, Any]:
        """The snapshot, with a fresh ticket the page reconnects with (TICKET_TTL)."""
        return {
            **snapshot(
                self.source.report(),
                connection_counts(self.admission.tickets),
                self.hub.busiest(self.top),
                self.recorder.rates(),
                self.clock.seconds(),
            ),
            "ticket": self.key.ticket(),
        }


def ticker(feed: StatsFeed, clock: IReactorTime) -> TimerService:
    """The service that ticks ``feed`` every second while the node runs."""
    service = TimerService(1.0, feed.tick)
    service.clock = clock
    return service


# Keys and tickets


class StatsKey:
    """The operator's key, and the tickets a served page opens its WebSocket with
    (the page never holds the key itself: it may have come in a header)."""

    def __init__(self, key: str, clock: IReactorTime) -> None:
        self._key = key.encode()
        self.clock = clock

    def matches(self, given: str | bytes) -> bool:
        """Whether ``given`` is the key, compared in constant time."""
        raw = given.encode() if isinstance(given, str) else given
        return hmac.compare_digest(raw, self._key)

    def _mac(self, expires: int) -> str:
        return hmac.new(self._key, b"stats-ws %d" % expires, sha256).hexdigest()

    def ticket(self) -> str:
        expires = int(self.clock.seconds()) + TICKET_TTL
        return f"{expires}.{self._mac(expires)}"

    def check_ticket(self, ticket: str) -> None:
        """Raise Forbidden unless ``ticket`` is one of ours and has not expired."""
        expires, _, mac = ticket.partition(".")
        if not (expires.isascii() and expires.isdigit()) or not hmac.compare_digest(
            mac.encode(), self._mac(int(expires)).encode()
        ):
            raise Forbidden("wrong stats key or ticket")
        if int(expires) < self.clock.seconds():
            raise Forbidden("the page's ticket has expired: reload the page")

    def check_request(self, request: Request) -> None:
        """Raise Unauthorized without a key (``?key=`` or ``Authorization: Bearer``),
        Forbidden with a wrong one."""
        given = bearer(request)
        if given is None:
            given = query(request, b"key")
        if not given:
            raise Unauthorized(
                "/stats needs the stats key: ?key=<key> or Authorization: Bearer <key>"
            )
        if not self.matches(given):
            raise Forbidden("wrong stats key")


# The page


class StatsPage(Resource):
    """``GET /stats``: the page, to whoever has the key; ``/stats/ws`` is its feed."""

    def __init__(self, key: StatsKey, feed_resource: IResource) -> None:
        super().__init__()
        self.key = key
        self.putChild(b"ws", feed_resource)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self if path == b"" else super().getChild(path, request)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        try:
            self.key.check_request(request)
        except (Unauthorized, Forbidden) as e:
            if isinstance(e, Unauthorized):
                request.setHeader(b"WWW-Authenticate", b'Bearer realm="twistedpush stats"')
            return refuse(request, e)
        nonce = secrets.token_urlsafe(18)
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(
            b"Content-Security-Policy",
            (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'"
            ).encode(),
        )
        return PAGE.replace("{nonce}", nonce).replace("{ticket}", self.key.ticket()).encode()


# The feed's WebSocket


def same_origin(origin: str, host: str | None) -> bool:
    """Whether a page at ``origin`` is one of this server's own, as the browser
    addressed it (``Host``; a port left out is the origin's scheme's default)."""
    if host is None:
        return False
    page, served = urlsplit(origin), urlsplit("//" + host)
    default = {"http": 80, "https": 443}.get(page.scheme)
    try:
        return page.hostname == served.hostname and (page.port or default) == (
            served.port or default
        )
    except ValueError:  # a port that is not a number
        return False


class Gate:
    """A viewer's flow: paused while its page does not read, and then the viewer
    skips snapshots (the next one is newer) rather than queue them."""

    paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True


class StatsViewer(AdmittedWebSocket):
    """One page watching: silent until it sends ``{"key": ...}`` or the page's
    ``{"ticket": ...}``, then sent each snapshot, or none while it does not read."""

    factory: StatsWebSocketFactory
    gate: Gate
    _deadline: IDelayedCall | None = None
    _watching = False

    def check_origin(self, admission: Admission, request: ConnectionRequest) -> None:
        """Refuse every page but this server's own: /stats/ws is opened by the /stats
        page or by scripts (which send no Origin), whatever --allowed-origin lets
        open /ws."""
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(origin, request.headers.get("host")):
            admission.refused["origin"] += 1
            raise Forbidden(f"origin {origin!r} is not this server's: only /stats opens /stats/ws")

    def onConnect(self, request: ConnectionRequest) -> None:
        self.admit(self.factory.admission, request)

    def connectionMade(self) -> None:
        self.gate = Gate()
        super().connectionMade()

    @property
    def flow(self) -> Gate:
        return self.gate

    def onOpen(self) -> None:
        self._deadline = self.factory.reactor.callLater(AUTH_TIMEOUT, self._late)

    def _late(self) -> None:
        self._deadline = None
        self.sendClose(CLOSE_UNAUTHORIZED, f"no stats key within {AUTH_TIMEOUT:g} s")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._watching:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        try:
            message = json.loads(payload) if not isBinary else None
        except ValueError:
            message = None
        key = self.factory.key
        if not isinstance(message, dict) or not isinstance(
            message.get("key", message.get("ticket")), str
        ):
            self.sendClose(CLOSE_UNAUTHORIZED, 'send {"key": "<stats key>"} first')
            return
        try:
            if "key" in message:
                if not key.matches(message["key"]):
                    raise Forbidden("wrong stats key")
            else:
                key.check_ticket(message["ticket"])
        except Forbidden as e:
            self.sendClose(CLOSE_FORBIDDEN, e.message)
            return
        self._watching = True
        self.factory.feed.viewers.add(self)
        self.push(json.dumps(self.factory.feed.current()).encode())

    def push(self, message: bytes) -> None:
        if not self.gate.paused and self.state == self.STATE_OPEN:
            self.sendMessage(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self.factory.feed.viewers.discard(self)
        if self.ticket is not None:
            self.factory.admission.close(self.ticket)


class StatsWebSocketFactory(AdmittingFactory):
    """The /stats/ws endpoint's connections."""

    protocol = StatsViewer  # type: ignore[assignment]

    def __init__(
        self, feed: StatsFeed, key: StatsKey, admission: Admission, reactor: IReactorTime
    ) -> None:
        super().__init__(reactor=reactor)
        self.feed = feed
        self.key = key
        self.admission = admission
        self.setProtocolOptions(
            maxFramePayloadSize=4096,
            maxMessagePayloadSize=4096,
            autoPingInterval=30,
            autoPingTimeout=30,
            perMessageCompressionAccept=lambda offers: None,
            failByDrop=False,
        )


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="stats-ticket" content="{ticket}">
<title>twistedpush stats</title>
<style nonce="{nonce}">
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
#state { color: #555; }
#state.bad { color: #b00; font-weight: bold; }
.grid { display: flex; flex-wrap: wrap; gap: 1.5em; }
section { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em; }
table { border-collapse: collapse; }
th, td { text-align: left; padding: .15em .8em .15em 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
svg { vertical-align: middle; }
polyline { fill: none; stroke: #2a6ebb; stroke-width: 1.5; }
.up { color: #080; } .down { color: #b00; font-weight: bold; }
</style>
</head>
<body>
<h1>twistedpush stats</h1>
<div id="state">connecting&hellip;</div>
<div class="grid">
<section>
<h2>Connections</h2>
<table id="connections"><tbody></tbody></table>
<p><span id="subscriptions">0</span> subscriptions on <span id="channels">0</span> channels</p>
</section>
<section>
<h2>Busiest channels</h2>
<table id="busiest"><thead><tr><th>channel</th><th>subscribers</th></tr></thead>
<tbody></tbody></table>
</section>
<section>
<h2>Rates (per second)</h2>
<table id="rates"><thead><tr><th></th><th>now</th><th>1 min</th><th>10 min</th>
<th>last minute</th><th>last 10 minutes</th><th>total</th></tr></thead><tbody></tbody></table>
<p>Slow clients dropped: <span id="drops">0</span>; publications refused or failed:
<span id="publish-errors">0</span></p>
</section>
<section>
<h2>History store</h2>
<p id="store"></p>
<table id="shards"><thead><tr><th>shard</th><th>address</th><th>state</th>
<th>watched channels</th><th>pub/sub losses</th></tr></thead><tbody></tbody></table>
</section>
</div>
<script nonce="{nonce}">
"use strict";
var ticket = document.querySelector('meta[name="stats-ticket"]').content;
// The key stays out of the address bar (and so out of history, bookmarks, screens).
var params = new URLSearchParams(location.search);
if (params.has("key")) {
  params.delete("key");
  var rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
}
var LABELS = {publish: "published", deliver: "delivered", drops: "slow drops"};

function cell(row, text, numeric) {
  var td = document.createElement("td");
  td.textContent = String(text);
  if (numeric) td.className = "n";
  row.appendChild(td);
  return td;
}

function fill(id, rows) {
  var body = document.querySelector("#" + id + " tbody");
  body.replaceChildren.apply(body, rows.map(function (cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (c) {
      if (c instanceof Node) cell(tr, "").appendChild(c);
      else cell(tr, c, typeof c === "number");
    });
    return tr;
  }));
}

function spark(values) {
  var ns = "http://www.w3.org/2000/svg", w = 120, h = 24;
  var svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h);
  var line = document.createElementNS(ns, "polyline");
  var top = Math.max.apply(null, values.concat([1]));
  var step = values.length > 1 ? w / (values.length - 1) : 0;
  line.setAttribute("points", values.map(function (v, i) {
    return (i * step).toFixed(1) + "," + (h - 1 - (v / top) * (h - 2)).toFixed(1);
  }).join(" "));
  svg.appendChild(line);
  return svg;
}

function render(s) {
  var state = document.getElementById("state");
  state.className = s.status === "ok" ? "" : "bad";
  state.textContent =
    s.time + " \\u2014 status " + s.status + ", up " + Math.round(s.uptime) + " s";
  var total = 0;
  var conns = Object.keys(s.connections).map(function (k) {
    total += s.connections[k];
    return [k, s.connections[k]];
  });
  fill("connections", conns.concat([["total", total]]));
  document.getElementById("subscriptions").textContent = s.subscriptions;
  document.getElementById("channels").textContent = s.channels;
  fill("busiest", s.busiest.map(function (b) { return [b.channel, b.subscribers]; }));
  fill("rates", Object.keys(LABELS).map(function (k) {
    var r = s.rates[k], last = r.per_second.length ? r.per_second[r.per_second.length - 1] : 0;
    return [LABELS[k], last, r.last_minute, r.last_10_minutes,
            spark(r.per_second), spark(r.per_10s), s.totals[k]];
  }));
  document.getElementById("drops").textContent = s.totals.drops;
  document.getElementById("publish-errors").textContent = s.totals.publish_errors;
  document.getElementById("store").textContent =
    s.store === "redis" ? "Redis, " + s.shards.length + " shard(s)" : "memory (this node only)";
  fill("shards", s.shards.map(function (sh) {
    var state = document.createElement("span");
    state.className = sh.connected ? "up" : "down";
    state.textContent = sh.connected ? "up" : "DOWN";
    return [sh.shard, sh.address, state, sh.watched_channels, sh.pubsub_losses];
  }));
}

function connect() {
  var scheme = location.protocol === "https:" ? "wss://" : "ws://";
  var ws = new WebSocket(scheme + location.host + "/stats/ws");
  ws.onopen = function () { ws.send(JSON.stringify({ticket: ticket})); };
  ws.onmessage = function (e) {
    var s = JSON.parse(e.data);
    ticket = s.ticket;  // fresh: the page's own expires within minutes
    render(s);
  };
  ws.onclose = function (e) {
    var state = document.getElementById("state");
    state.className = "bad";
    if (e.code === 4401 || e.code === 4403) {
      state.textContent = "refused: " + e.reason;
      return;
    }
    state.textContent = "disconnected from the server; reconnecting\\u2026";
    setTimeout(connect, 2000);
  };
}
connect();
</script>
</body>
</html>
"""

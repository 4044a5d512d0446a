"""Test doubles and small helpers shared by the tests."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.request
from collections.abc import Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connectedServerAndClient
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from twistedpush.access import AccessPolicy
from twistedpush.history import MemoryHistory, Update
from twistedpush.hub import Hub
from twistedpush.limits import Admission

START = 1_700_000_000.0


def make_clock(at: float = START) -> Clock:
    clock = Clock()
    clock.advance(at)
    return clock


def make_hub(
    clock: Clock | None = None, size: int = 100, ttl: float = 3600, **access: object
) -> Hub:
    clock = clock or make_clock()
    store = MemoryHistory(clock, size, ttl)
    policy = AccessPolicy(access.get("secret"), access.get("public", ("*",)))  # type: ignore[arg-type]
    hub = Hub(store, policy, clock, max_subscriptions=int(access.get("max_subscriptions", 100)))  # type: ignore[call-overload]
    hub.start()
    return hub


class Recorder:
    """A subscriber that records what a client would receive, as parsed messages."""

    lasting = True
    cookie = None

    def __init__(self) -> None:
        self.messages: list[dict] = []

    def send_update(self, update: Update) -> None:
        self.messages.append(json.loads(update.message))

    def send_replay(self, updates: Sequence[Update]) -> None:
        for update in updates:
            self.send_update(update)

    def discard(self, channel: str) -> None:
        pass

    def send_reset(self, channel: str, now: int) -> None:
        self.messages.append({"type": "reset", "channel": channel, "ts": now})

    def send_subscribed(self, channel: str, now: int) -> None:
        self.messages.append({"type": "subscribed", "channel": channel, "ts": now})

    def data(self, kind: str = "update") -> list:
        return [m["data"] for m in self.messages if m["type"] == kind]

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]


class SlowReplayStore(MemoryHistory):
    """Memory history whose replays answer only when the test says so (as Redis would).

    The snapshot is taken when replay() is called, or with ``late=True`` only on
    release, so that it also holds updates the hub has already seen live.
    """

    def __init__(self, *args: object, late: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.late = late
        self.waiting: list[tuple[str, int | None, Deferred | None, Deferred]] = []

    def replay(self, channel: str, since: int | None) -> Deferred:
        snapshot = None if self.late else super().replay(channel, since)
        later: Deferred = Deferred()
        self.waiting.append((channel, since, snapshot, later))
        return later

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for channel, since, snapshot, later in waiting:
            if snapshot is None:
                snapshot = super().replay(channel, since)
            snapshot.chainDeferred(later)


class PollRequest(DummyRequest):
    """A DummyRequest as the long-poll resource sees a real one: on a connection its
    admission counted. Its answer leaves at once; waiting on a full send buffer is
    the real channel's part, tested over iosim in test_hardening."""

    def __init__(self, admission: Admission, peer: str = "192.0.2.1") -> None:
        super().__init__([b"poll"])
        self.ticket = admission.accept(peer)

    def when_sent(self, callback: object) -> None:
        callback()  # type: ignore[operator]


class Raw(Protocol):
    """A client that writes bytes by hand (over iosim) and keeps what it is answered."""

    def connectionMade(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


def raw_connect(site: Site, clock: Clock, peer: str = "192.0.2.1") -> tuple[Raw, Any, IOPump]:
    """A :class:`Raw` client connected to ``site`` over iosim, from ``peer``."""
    return connectedServerAndClient(
        lambda: site.buildProtocol(None),
        Raw,
        serverTransportFactory=lambda protocol: FakeTransport(
            protocol, isServer=True, peerAddress=IPv4Address("TCP", peer, 40000)
        ),
        clock=clock,
    )


class PageServer:
    """A test page from a loopback HTTP server of its own, at its own origin (as a
    Django page on another port would be). Other paths (the page's scripts and
    CSS) come from ``fallback`` when given, else they get the page too."""

    def __init__(self, html: str, fallback: str | None = None) -> None:
        page = html.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                content_type, body = "text/html; charset=utf-8", page
                if self.path != "/" and fallback is not None:
                    with urllib.request.urlopen(fallback + self.path, timeout=10) as response:
                        content_type, body = response.headers["Content-Type"], response.read()
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def poll_once(server: Any, channel: str, since: int | None) -> list[dict]:
    """One long-poll of ``channel`` after ``since`` on a real server, answered at once."""
    body = json.dumps({"subscriptions": [{"channel": channel, "since": since}], "timeout": 0})
    request = urllib.request.Request(f"{server.url}/poll", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["messages"]

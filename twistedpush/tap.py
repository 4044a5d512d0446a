"""``twistd serverpush``: options and the service tree of one push server node."""

from __future__ import annotations

import os
import sys
from typing import Any
from urllib.parse import urlsplit

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python import usage

from twistedpush.access import AccessPolicy
from twistedpush.history import IHistoryStore, MemoryHistory
from twistedpush.hub import Hub
from twistedpush.limits import Admission, Limits
from twistedpush.notifier import NotifierFactory
from twistedpush.web import make_site

log = Logger()


def parse_redis_url(url: str) -> dict[str, Any]:
    """Split ``redis://host:port/db`` into txredisapi's arguments, or raise ValueError."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"--redis must look like redis://host:port/db, got {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"--redis has a bad port: {url!r}") from None
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"--redis database must be a number, got {db_text!r}")
    return {
        "host": parts.hostname,
        "port": port,
        "dbid": int(db_text),
        "password": parts.password,
    }


def _number(options: usage.Options, key: str, kind: type[int] | type[float]) -> None:
    """Convert option ``key`` in place; it must be a positive, finite number."""
    try:
        value = kind(options[key])
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 < value < float("inf"):
        what = "a whole number, at least 1" if kind is int else "a positive number of seconds"
        raise usage.UsageError(f"--{key} must be {what}, got {options[key]!r}")
    options[key] = value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run a twistedpush push server: WebSocket and long-poll for browsers, AMP for publishers."
    )

    optParameters = [
        ["port", None, "tcp:8013", "Public HTTP + WebSocket listener (strports)."],
        ["notifier", None, "tcp:8014:interface=127.0.0.1", "AMP notifier listener (strports)."],
        ["history-size", None, "100", "Updates kept per channel."],
        ["history-ttl", None, "3600", "Seconds after which an update is dropped."],
        ["secret", None, None, "Token key (default: environment SERVERPUSH_SECRET)."],
        ["redis", None, None, "Redis history and fan-out, redis://host:port/db (default: memory)."],
        ["max-subscriptions", None, "100", "Subscriptions per connection."],
        ["max-message-size", None, "4096", "Bytes per client message."],
        ["max-connections", None, "10000", "Open connections (WebSocket + long-poll)."],
        ["max-connections-per-ip", None, "1000", "Open connections from one client address."],
        ["max-polls", None, "5000", "Long-poll requests held at once."],
        ["max-pending-bytes", None, "1048576", "Unsent bytes before a slow client is dropped."],
        ["shutdown-timeout", None, "5", "Seconds to finish in-flight publications on SIGTERM."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["public"] = []
        self["allowed-origin"] = []

    def opt_public(self, glob: str) -> None:
        """Channels matching this glob need no token (repeatable)."""
        self["public"].append(glob)

    def opt_allowed_origin(self, glob: str) -> None:
        """Page origins allowed to connect, e.g. 'https://*.example.com' (repeatable;
        default: any)."""
        self["allowed-origin"].append(glob)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Parse, and on a bad option say so in one line and exit non-zero."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            sys.stderr.write(f"serverpush: error: {e}\n")
            raise SystemExit(2) from None

    def postOptions(self) -> None:
        from twisted.internet import reactor

        for key in (
            "history-size",
            "max-subscriptions",
            "max-message-size",
            "max-connections",
            "max-connections-per-ip",
            "max-polls",
            "max-pending-bytes",
        ):
            _number(self, key, int)
        _number(self, "history-ttl", float)
        _number(self, "shutdown-timeout", float)
        for key in ("port", "notifier"):
            try:
                endpoints.serverFromString(reactor, self[key])
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(
                    f"--{key} {self[key]!r} is not a usable endpoint: {e}"
                ) from None
        if self["secret"] is None:
            self["secret"] = os.environ.get("SERVERPUSH_SECRET") or None
        if self["redis"] is not None:
            try:
                self["redis-args"] = parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(str(e)) from None


class HubService(service.Service):
    """Starts the hub's history store before the listeners; on shutdown, after the
    listeners have stopped accepting, finishes in-flight publications (within
    ``timeout``), sends every client elsewhere, then stops the store."""

    def __init__(self, hub: Hub, timeout: float) -> None:
        self.hub = hub
        self.timeout = timeout

    def startService(self) -> None:
        super().startService()
        self.hub.start()

    def stopService(self) -> Deferred:
        super().stopService()
        log.info("shutting down: finishing publications, sending clients elsewhere")
        d = self.hub.drain(self.timeout)
        d.addCallback(lambda _: self.hub.going_away())
        d.addCallback(lambda _: self.hub.stop())
        return d


def make_store(options: Options, reactor: IReactorTime) -> IHistoryStore:
    if options["redis"] is not None:
        from twistedpush.redis_history import RedisHistory

        return RedisHistory(
            reactor, options["history-size"], options["history-ttl"], **options["redis-args"]
        )
    return MemoryHistory(reactor, options["history-size"], options["history-ttl"])


def makeService(options: Options, reactor: IReactorCore | None = None) -> service.MultiService:
    if reactor is None:
        from twisted.internet import reactor  # type: ignore[no-redef]
    hub = Hub(
        make_store(options, reactor),
        AccessPolicy(options["secret"], options["public"]),
        reactor,
        options["max-subscriptions"],
    )
    admission = Admission(
        Limits(
            max_connections=options["max-connections"],
            max_connections_per_ip=options["max-connections-per-ip"],
            max_polls=options["max-polls"],
            max_pending_bytes=options["max-pending-bytes"],
            allowed_origins=tuple(options["allowed-origin"]),
        )
    )
    top = service.MultiService()
    top.hub = hub  # type: ignore[attr-defined]  (runserverpush attaches Django's presence)
    HubService(hub, options["shutdown-timeout"]).setServiceParent(top)
    site = make_site(hub, reactor, admission, options["max-message-size"])
    for strport, factory in ((options["port"], site), (options["notifier"], NotifierFactory(hub))):
        endpoint = endpoints.serverFromString(reactor, strport)
        listener = StreamServerEndpointService(endpoint, factory)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    return top

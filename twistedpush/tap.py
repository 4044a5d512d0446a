"""``twistd serverpush``: options and the service tree of one push server node."""

from __future__ import annotations

import gc
import ipaddress
import os
import socket
import sys
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from autobahn.wamp.exception import InvalidUriError
from autobahn.wamp.message import check_or_raise_uri
from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.web.resource import Resource

import twistedpush
from twistedpush.access import AccessPolicy
from twistedpush.history import IHistoryStore, MemoryHistory
from twistedpush.hub import Hub
from twistedpush.limits import Limits
from twistedpush.logs import LOG_FORMATS, JSONLineObserver, TextOut, twistd_log_file
from twistedpush.notifier import NotifierFactory
from twistedpush.stats import MIN_KEY_LENGTH, admission_for, ticker
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


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR as a network (a bare address is a /32 or /128; host bits
    past the prefix are ignored), or raise ValueError."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except (TypeError, ValueError):
        raise ValueError(f"{text!r} is not an address or CIDR") from None


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


def package_version() -> str:
    """The installed distribution's version, or ``__version__`` in a bare checkout."""
    try:
        return metadata.version("twistedpush")
    except metadata.PackageNotFoundError:
        return twistedpush.__version__


class Options(usage.Options):
    synopsis = "[options]"
    log_file: TextOut | None = None
    """Where ``--log-format json`` lines go: twistd's log file or stdout."""
    longdesc = (
        "Run a twistedpush push server: WebSocket and long-poll for browsers, AMP for publishers."
    )

    optFlags: list[list[Any]] = [
        ["no-access-log", None, "No access log line per HTTP request (errors are still logged)."],
    ]

    optParameters: list[list[Any]] = [
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
        [
            "publisher-key",
            None,
            None,
            "Key publishers must present (AMP Authenticate, HTTP Authorization: Bearer); "
            "turns POST /publish on (default: environment SERVERPUSH_PUBLISHER_KEY).",
        ],
        ["request-timeout", None, "30", "Seconds a request's line, headers and body may take."],
        ["wamp-realm", None, "serverpush", "The WAMP realm served on /ws (wamp.2.json)."],
        [
            "stats-key",
            None,
            None,
            "Key for the operator's page GET /stats, at least 16 characters; off without "
            "one (default: environment SERVERPUSH_STATS_KEY).",
        ],
        ["log-format", None, "text", "Log lines as text, or json: one object per line."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["public"] = []
        self["allowed-origin"] = []
        self["trusted-proxy"] = []
        self["redis-shards"] = []

    def opt_version(self) -> None:
        """Print twistedpush's version and exit."""
        print(f"twistedpush {package_version()}")
        raise SystemExit(0)

    def opt_public(self, glob: str) -> None:
        """Channels matching this glob need no token (repeatable)."""
        self["public"].append(glob)

    def opt_allowed_origin(self, glob: str) -> None:
        """Page origins allowed to connect, e.g. 'https://*.example.com' (repeatable;
        default: any)."""
        self["allowed-origin"].append(glob)

    def opt_redis(self, url: str) -> None:
        """Redis history and fan-out, redis://host:port/db (default: memory); repeated,
        one shard each: every node lists the same URLs in the same order."""
        if url in (self["redis"] or []):
            raise usage.UsageError(f"--redis {url!r} is given twice")
        try:
            args = parse_redis_url(url)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["redis"] = [*(self["redis"] or []), url]
        self["redis-shards"].append(args)

    def opt_trusted_proxy(self, cidr: str) -> None:
        """A proxy (address or CIDR) whose X-Forwarded-For names the client (repeatable)."""
        try:
            self["trusted-proxy"].append(parse_network(cidr))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy: {e}") from None

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
        _number(self, "request-timeout", float)
        try:
            check_or_raise_uri(self["wamp-realm"])
        except InvalidUriError:
            realm = self["wamp-realm"]
            raise usage.UsageError(f"--wamp-realm must be a WAMP URI, got {realm!r}") from None
        for key in ("port", "notifier"):
            try:
                endpoints.serverFromString(reactor, self[key])
            except (ValueError, TypeError, KeyError) as e:
                raise usage.UsageError(
                    f"--{key} {self[key]!r} is not a usable endpoint: {e}"
                ) from None
        if self["secret"] is None:
            self["secret"] = os.environ.get("SERVERPUSH_SECRET") or None
        self["publisher-key"] = (
            self["publisher-key"] or os.environ.get("SERVERPUSH_PUBLISHER_KEY") or None
        )
        self["stats-key"] = self["stats-key"] or os.environ.get("SERVERPUSH_STATS_KEY") or None
        if self["stats-key"] is not None and len(self["stats-key"]) < MIN_KEY_LENGTH:
            raise usage.UsageError(
                f"--stats-key must be at least {MIN_KEY_LENGTH} characters; make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(
                f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {self['log-format']!r}"
            )
        if self["log-format"] == "json":
            # twistd's own options, or None when runserverpush parses these itself.
            self.log_file = twistd_log_file(self.parent)


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
        from twistedpush.shards import ShardedHistory

        shards = [
            RedisHistory(reactor, options["history-size"], options["history-ttl"], **args)
            for args in options["redis-shards"]
        ]
        return shards[0] if len(shards) == 1 else ShardedHistory(shards)
    return MemoryHistory(reactor, options["history-size"], options["history-ttl"])


def _tcp_address(endpoint: IStreamServerEndpoint) -> tuple[str, int] | None:
    """The interface and port a TCP or TLS listener will bind, None for other kinds.

    Twisted's endpoints offer no accessor; these attributes have been there
    since endpoints exist.
    """
    kinds = (
        endpoints.TCP4ServerEndpoint,
        endpoints.TCP6ServerEndpoint,
        endpoints.SSL4ServerEndpoint,
    )
    if isinstance(endpoint, kinds):
        return endpoint._interface, endpoint._port
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class CannotBind(Exception):
    """A listener's address is taken or not ours to bind; the message says which."""


def check_ports(options: Options, reactor: IReactorTime) -> None:
    """Raise CannotBind if the address of a TCP listener is taken.

    Each is bound (not listened on) with a socket of our own, as Twisted binds
    it, before anything listens: a listen that fails during start leaves the
    other listener up for a moment and ends in a traceback.
    """
    taken: dict[int, tuple[str, str]] = {}
    for key in ("port", "notifier"):
        address = _tcp_address(endpoints.serverFromString(reactor, options[key]))
        if address is None or address[1] == 0:
            continue
        interface, port = address
        # Two probes with SO_REUSEADDR may share an address that two listeners cannot.
        if port in taken and _overlap(interface, taken[port][1]):
            raise CannotBind(
                f"--{key} {options[key]!r} and --{taken[port][0]} "
                f"{options[taken[port][0]]!r} both listen on port {port}"
            )
        taken[port] = (key, interface)
        with socket.socket(socket.AF_INET6 if ":" in interface else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                raise CannotBind(
                    f"--{key} {options[key]!r}: cannot listen on {interface or '*'}:{port}: "
                    f"{e.strerror}"
                ) from None


def _overlap(one: str, other: str) -> bool:
    """Whether listeners on these interfaces (same port) would collide."""
    wildcard = ("", "0.0.0.0", "::")
    return one == other or one in wildcard or other in wildcard


class NodeService(service.MultiService):
    """One node's services; ``hub`` is where runserverpush attaches Django's presence."""

    log_observer: ILogObserver | None = None
    """The observer twistd logs to instead of its own (``--log-format json``)."""

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self.hub = hub

    def setServiceParent(self, parent: Any) -> None:
        """twistd makes its application after the plugin's service and picks its log
        observer from the application's ILogObserver component: set it here."""
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)


def makeService(options: Options) -> NodeService:
    """twistd's entry point: the node on the global reactor, once its ports are
    known to be free (else one line and exit status 1; twistd would print a
    traceback after the other listener had started)."""
    from twisted.internet import reactor

    try:
        check_ports(options, reactor)
    except CannotBind as e:
        sys.stderr.write(f"serverpush: error: {e}\n")
        raise SystemExit(1) from None
    top = build_service(options, reactor)
    if options.log_file is not None:
        top.log_observer = JSONLineObserver(options.log_file)
    tune_collector(reactor)
    return top


def tune_collector(reactor: IReactorCore) -> None:
    """Once the reactor runs, put everything made at start-up (modules, classes, a
    Django project) out of the collector's reach for good: a full collection, which
    stops the node while it walks every object, then walks only what connections
    and history hold (about half as much at 1,000 connections).

    Full collections are left as frequent as Python has them: made rarer (at most
    one per 100 middle ones, not 10), 10,000 browsers connecting at once spent a
    third as long collecting, but what their HTTP requests left in reference cycles
    waited, 2 KiB more per idle connection (bench/bench.py, many channels).
    """
    reactor.callWhenRunning(_collect_and_freeze)


def _collect_and_freeze() -> None:
    """What start-up left in reference cycles goes first, rather than for good."""
    gc.collect()
    gc.freeze()


def build_service(
    options: Options, reactor: IReactorTime, django: Resource | None = None
) -> NodeService:
    """The node's service tree: the hub's store first, then both listeners; with
    ``django`` (a WSGI resource) the public port serves the Django site too."""
    hub = Hub(
        make_store(options, reactor),
        AccessPolicy(options["secret"], options["public"]),
        reactor,
        options["max-subscriptions"],
    )
    admission = admission_for(
        options["stats-key"],
        Limits(
            max_connections=options["max-connections"],
            max_connections_per_ip=options["max-connections-per-ip"],
            max_polls=options["max-polls"],
            max_pending_bytes=options["max-pending-bytes"],
            allowed_origins=tuple(options["allowed-origin"]),
            trusted_proxies=tuple(options["trusted-proxy"]),
            request_timeout=options["request-timeout"],
        ),
    )
    top = NodeService(hub)
    HubService(hub, options["shutdown-timeout"]).setServiceParent(top)
    site = make_site(
        hub,
        reactor,
        admission,
        options["max-message-size"],
        wamp_realm=options["wamp-realm"],
        publisher_key=options["publisher-key"],
        django=django,
        stats_key=options["stats-key"],
        access_log=not options["no-access-log"],
    )
    if site.stats is not None:
        ticker(site.stats, reactor).setServiceParent(top)
    notifier = endpoints.serverFromString(reactor, options["notifier"])
    for endpoint, factory in (
        (endpoints.serverFromString(reactor, options["port"]), site),
        (notifier, NotifierFactory(hub, options["publisher-key"])),
    ):
        listener = StreamServerEndpointService(endpoint, factory)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    address = _tcp_address(notifier)
    if options["publisher-key"] is None and address is not None and not _is_loopback(address[0]):
        log.warn(
            "the notifier listens on {interface} without --publisher-key: anyone who can "
            "reach port {port} can publish; set a key or keep it on a loopback interface",
            interface=address[0] or "every interface",
            port=address[1],
        )
    return top

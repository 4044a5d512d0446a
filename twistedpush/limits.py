"""Admission rules for connections, free of I/O: counts, caps, client addresses and
the origin policy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import NoReturn

from twistedpush.errors import Forbidden, Limit

TRANSPORTS = ("websocket", "longpoll", "sse", "http")
"""What an open connection is counted as: upgraded, holding a poll (``POST /poll``
or a push-relay ``GET /updates/``), streaming Server-Sent Events, or anything else
(a request still arriving, a keep-alive connection between requests)."""


def address_key(address: object) -> str:
    """The client address a per-address cap counts (a UNIX socket's clients share one)."""
    return str(getattr(address, "host", "local"))


@dataclass
class Limits:
    """Caps that keep one node's memory bounded; every one is a twistd option."""

    max_connections: int = 10_000
    max_connections_per_ip: int = 1_000
    max_polls: int = 5_000
    max_pending_bytes: int = 1024 * 1024
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    request_timeout: float = 30.0


@dataclass(eq=False, slots=True)
class Ticket:
    """One accepted connection and what it is counted as.

    ``address`` is the client address counted against the per-address cap:
    the peer's own, or for a trusted proxy's connection the client its
    ``X-Forwarded-For`` names (None until a request has said so).
    """

    peer: str
    address: str | None
    transport: str = "http"
    holder: object = None
    """What counts the connection as ``transport`` now (a poll request), if anything."""
    closed: bool = False


@dataclass
class Admission:
    """Open connections by transport and by client address, and the origin policy.

    Every connection is counted from the moment it is accepted, before any
    request line, so that connections still sending their headers count too.
    """

    limits: Limits = field(default_factory=Limits)
    by_transport: Counter = field(default_factory=Counter)
    by_ip: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)

    @property
    def open(self) -> int:
        return sum(self.by_transport.values())

    def check_origin(self, origin: str | None) -> None:
        """Raise Forbidden for a page origin outside ``--allowed-origin`` (if any is set).

        Requests without an Origin header (not from a browser page) pass: the
        policy is about which sites may embed this server, tokens guard channels.
        """
        globs = self.limits.allowed_origins
        if globs and origin is not None and not any(fnmatchcase(origin, g) for g in globs):
            self.refused["origin"] += 1
            raise Forbidden(f"origin {origin!r} is not allowed")

    def is_trusted_proxy(self, address: str) -> bool:
        proxies = self.limits.trusted_proxies
        if not proxies:
            return False
        try:
            parsed = ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in proxies)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """Who is at the other end: the peer itself, or for a trusted proxy the
        rightmost ``X-Forwarded-For`` entry that is not itself a trusted proxy
        (entries to its left could have been written by the client)."""
        if forwarded_for is None or not self.is_trusted_proxy(peer):
            return peer
        client = peer
        for entry in reversed(forwarded_for.split(",")):
            client = entry.strip()[:64]
            if not self.is_trusted_proxy(client):
                break
        return client or peer

    def accept(self, peer: str) -> Ticket:
        """Count a new connection from ``peer``, or raise Limit if a cap would be passed.

        A trusted proxy's connection counts against the per-address cap only
        once a request names its client (see :meth:`identify`).
        """
        limits = self.limits
        proxied = self.is_trusted_proxy(peer)
        if self.open >= limits.max_connections:
            self._refuse(f"server is at its limit of {limits.max_connections} connections")
        if not proxied and self.by_ip[peer] >= limits.max_connections_per_ip:
            self._refuse(f"at most {limits.max_connections_per_ip} connections per client address")
        ticket = Ticket(peer, None if proxied else peer)
        self.by_transport[ticket.transport] += 1
        if ticket.address is not None:
            self.by_ip[ticket.address] += 1
        return ticket

    def identify(self, ticket: Ticket, forwarded_for: str | None) -> str:
        """The client address of a request on ``ticket``'s connection, counted
        against the per-address cap (a proxy's keep-alive connection may carry
        several clients' requests, one after the other)."""
        client = self.client_address(ticket.peer, forwarded_for)
        if client == ticket.address:
            return client
        if self.by_ip[client] >= self.limits.max_connections_per_ip:
            self._refuse(
                f"at most {self.limits.max_connections_per_ip} connections per client address"
            )
        self._forget_address(ticket)
        ticket.address = client
        self.by_ip[client] += 1
        return client

    def use(self, ticket: Ticket, transport: str, holder: object = None) -> None:
        """Count ``ticket``'s connection as ``transport`` from now on, on behalf of
        ``holder``, or raise Limit."""
        if ticket.closed:
            return
        if ticket.transport != transport:
            if transport == "longpoll" and self.by_transport[transport] >= self.limits.max_polls:
                self._refuse(f"at most {self.limits.max_polls} long-poll requests at once")
            self.by_transport[ticket.transport] -= 1
            self.by_transport[transport] += 1
            ticket.transport = transport
        ticket.holder = holder

    def done(self, ticket: Ticket, holder: object) -> None:
        """``holder`` is finished with the connection: it counts as plain HTTP again,
        unless something else (a pipelined poll, a WebSocket) holds it since."""
        if ticket.holder is holder:
            self.use(ticket, "http")

    def close(self, ticket: Ticket) -> None:
        """The connection is gone: release whatever it was counted as (once)."""
        if ticket.closed:
            return
        ticket.closed = True
        self.by_transport[ticket.transport] -= 1
        self._forget_address(ticket)

    def _forget_address(self, ticket: Ticket) -> None:
        address = ticket.address
        if address is not None:
            self.by_ip[address] -= 1
            if not self.by_ip[address]:
                del self.by_ip[address]
            ticket.address = None

    def _refuse(self, reason: str) -> NoReturn:
        self.refused["limit"] += 1
        raise Limit(reason)

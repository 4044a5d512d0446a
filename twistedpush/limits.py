"""Admission rules for connections, free of I/O: counts, caps and the origin policy."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from twistedpush.errors import Forbidden, Limit

TRANSPORTS = ("websocket", "longpoll")


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


@dataclass
class Admission:
    """Open connections by transport and by client address, and the origin policy."""

    limits: Limits = field(default_factory=Limits)
    by_transport: Counter = field(default_factory=Counter)
    by_ip: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)

    def check_origin(self, origin: str | None) -> None:
        """Raise Forbidden for a page origin outside ``--allowed-origin`` (if any is set).

        Requests without an Origin header (not from a browser page) pass: the
        policy is about which sites may embed this server, tokens guard channels.
        """
        globs = self.limits.allowed_origins
        if globs and origin is not None and not any(fnmatchcase(origin, g) for g in globs):
            self.refused["origin"] += 1
            raise Forbidden(f"origin {origin!r} is not allowed")

    def admit(self, transport: str, ip: str) -> None:
        """Count a new connection, or raise Limit if a cap would be passed."""
        limits = self.limits
        total = sum(self.by_transport.values())
        if total >= limits.max_connections:
            reason = f"server is at its limit of {limits.max_connections} connections"
        elif self.by_ip[ip] >= limits.max_connections_per_ip:
            reason = f"at most {limits.max_connections_per_ip} connections per client address"
        elif transport == "longpoll" and self.by_transport[transport] >= limits.max_polls:
            reason = f"at most {limits.max_polls} long-poll requests at once"
        else:
            self.by_transport[transport] += 1
            self.by_ip[ip] += 1
            return
        self.refused["limit"] += 1
        raise Limit(reason)

    def release(self, transport: str, ip: str) -> None:
        self.by_transport[transport] -= 1
        self.by_ip[ip] -= 1
        if not self.by_ip[ip]:
            del self.by_ip[ip]

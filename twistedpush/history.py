"""Positions, updates and the history stores behind one interface.

A position (``ts``) is an integer count of microseconds since the Unix epoch,
handed out by the push side only.  Each store owns its positions so that they
are strictly increasing across every channel it holds, whatever the wall clock
does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import NamedTuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import Interface, implementer

from twistedpush.errors import BadData


class Update(NamedTuple):
    """One published update; ``message`` is its WebSocket/long-poll JSON, encoded once.

    A named tuple, not a frozen dataclass: as immutable, and made several times
    faster, which counts once per update published.
    """

    channel: str
    ts: int
    name: str | None
    data: str
    message: bytes

    @classmethod
    def create(cls, channel: str, ts: int, name: str | None, data: str) -> Update:
        """``channel`` and ``name`` are validated names (no character JSON escapes) and
        ``data`` is validated JSON, so the message is put together without encoding."""
        quoted = "null" if name is None else f'"{name}"'
        message = (
            f'{{"type":"update","channel":"{channel}","ts":{ts},"name":{quoted},"data":{data}}}'
        ).encode()
        return cls(channel, ts, name, data, message)


@dataclass(frozen=True, slots=True)
class Replay:
    """What a store can replay of a channel after ``since``, as of position ``now``.

    Every update of the channel with ``ts <= now`` is either in ``updates`` or
    was at or before ``since``; ``reset`` means some of them are gone.
    """

    updates: Sequence[Update]
    reset: bool
    now: int
    horizon: int = 0
    """With ``reset``: the channel's horizon, a ``since`` that replays all of its history."""


Publication = tuple[str, "str | None", str]
"""(channel, name, data) as accepted from a publisher, already validated."""


class History(NamedTuple):
    """A channel's updates as a publisher reads them back (AMP ``History``)."""

    updates: Sequence[Update]
    """The first updates held after the ``since`` asked for, in order."""
    horizon: int
    """The newest position no longer held: a ``since`` below it has missed updates."""


HISTORY_LIMIT = 100
"""Updates a history read gives when it names no limit."""

MAX_HISTORY_LIMIT = 1_000_000
"""The largest limit taken: far past any history size, so a bigger one is a mistake."""


def check_history_query(since: object, limit: object) -> tuple[int | None, int]:
    """``since`` (None or a position) and ``limit`` as given, else BadData saying why."""
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise BadData(f"since must be omitted or a non-negative integer, got {since!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_HISTORY_LIMIT:
        raise BadData(f"limit must be an integer from 0 to {MAX_HISTORY_LIMIT}, got {limit!r}")
    return since, limit


class IHistoryStore(Interface):
    """Keeps each channel's recent updates and tells the hub of new ones."""

    def start(on_update: Callable[[Update], None], on_resync: Callable[[str], None]) -> Deferred:
        """Begin; ``on_update`` is then called, in ``ts`` order (over Redis shards, in
        each shard's order), for every update published to a watched channel
        (through this node or any other), and
        ``on_resync`` for a watched channel whose updates may have been lost in
        transit (they are still in history)."""

    def stop() -> Deferred:
        """Release connections and timers."""

    def publish(items: Sequence[Publication]) -> Deferred:
        """Store all of ``items`` or none; fire with their positions in order."""

    def replay(channel: str, since: int | None) -> Deferred:
        """Fire with a :class:`Replay` of ``channel`` after ``since``
        (``None``: nothing, only the current position).  For a watched channel
        the snapshot is taken only once its updates are being delivered, so
        every later update reaches ``on_update``."""

    def now() -> Deferred:
        """Fire with a position: every update at or before it has been stored."""

    def history(channel: str, since: int | None, limit: int) -> Deferred:
        """Fire with a :class:`History`: the first ``limit`` updates of ``channel``
        held after ``since`` (``None``: all held), in order, and the channel's horizon.
        (A channel holds at most the store's size: a larger limit gives them all.)"""

    def report(channel: str, subscribers: int) -> None:
        """This node has ``subscribers`` of ``channel`` now (0: none left); a store
        that nodes share tells the others, for :meth:`presence`."""

    def presence(channel: str, local: int) -> Deferred:
        """Fire with the subscribers of ``channel`` on every node that shares this store:
        ``local`` (this node's, exact) and what the other live nodes last reported."""

    def watch(channel: str) -> None:
        """The hub has local subscribers of ``channel``: deliver its updates."""

    def unwatch(channel: str) -> None:
        """The hub's last local subscriber of ``channel`` left."""

    def healthy() -> bool:
        """Whether the store can take updates now (for /health)."""

    def stats() -> dict:
        """Counts for /health."""


class Positions:
    """Strictly increasing positions from a clock that may step backwards."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.last = 0

    def _wall(self) -> int:
        return int(self._clock.seconds() * 1_000_000)

    def allocate(self, count: int) -> range:
        """``count`` new positions in order, each greater than every one handed out before."""
        first = max(self._wall(), self.last + 1)
        self.last = first + count - 1
        return range(first, first + count)

    def now(self) -> int:
        """The current position; every later :meth:`allocate` is greater."""
        self.last = max(self._wall(), self.last)
        return self.last


class _ChannelHistory:
    __slots__ = ("entries", "horizon")

    def __init__(self, horizon: int) -> None:
        self.entries: deque[Update] = deque()
        self.horizon = horizon


@implementer(IHistoryStore)
class MemoryHistory:
    """History in this process: ``size`` updates per channel, none older than ``ttl`` seconds.

    Age is checked when a channel is touched and by one sweep every
    ``sweep_interval`` seconds, never by a timer per update.  A channel whose
    history has all expired is forgotten, its horizon folded into one shared
    horizon so that no ``since`` before it is ever answered with a partial replay.
    Only watched channels are delivered, as with Redis: the stores keep one contract.
    """

    def __init__(
        self, clock: IReactorTime, size: int = 100, ttl: float = 3600, sweep_interval: float = 60
    ) -> None:
        self._clock = clock
        self.size = size
        self.ttl = ttl
        self.positions = Positions(clock)
        self._channels: dict[str, _ChannelHistory] = {}
        self._forgotten_horizon = self.positions.now()
        self._watched: set[str] = set()
        self._on_update: Callable[[Update], None] = lambda update: None
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = clock
        self._sweep_interval = sweep_interval

    def start(
        self, on_update: Callable[[Update], None], on_resync: Callable[[str], None] | None = None
    ) -> Deferred:
        """Begin; updates never travel, so nothing ever needs a resync."""
        self._on_update = on_update
        self._sweeper.start(self._sweep_interval, now=False)
        return succeed(None)

    def stop(self) -> Deferred:
        if self._sweeper.running:
            self._sweeper.stop()
        return succeed(None)

    def _cutoff(self) -> int:
        return int((self._clock.seconds() - self.ttl) * 1_000_000)

    def _trim(self, history: _ChannelHistory, cutoff: int, keep: int) -> None:
        entries = history.entries
        while entries and (len(entries) > keep or entries[0].ts <= cutoff):
            history.horizon = entries.popleft().ts

    def sweep(self) -> None:
        """Drop expired updates everywhere and forget channels left empty."""
        cutoff = self._cutoff()
        for channel, history in list(self._channels.items()):
            self._trim(history, cutoff, self.size)
            if not history.entries:
                self._forgotten_horizon = max(self._forgotten_horizon, history.horizon)
                del self._channels[channel]

    def publish(self, items: Sequence[Publication]) -> Deferred:
        channels = self._channels
        touched: dict[str, _ChannelHistory] = {}
        updates = []
        positions = self.positions.allocate(len(items))
        for (channel, name, data), ts in zip(items, positions, strict=True):
            history = channels.get(channel)
            if history is None:
                history = channels[channel] = _ChannelHistory(self._forgotten_horizon)
            touched[channel] = history
            update = Update.create(channel, ts, name, data)
            history.entries.append(update)
            updates.append(update)
        cutoff = self._cutoff()
        for history in touched.values():
            self._trim(history, cutoff, self.size)
        watched = self._watched
        for update in updates:
            if update.channel in watched:  # checked per update: on_update may unwatch
                self._on_update(update)
        return succeed([update.ts for update in updates])

    def _held(self, channel: str) -> tuple[int, Sequence[Update]]:
        """The channel's horizon and the updates it holds, expired ones dropped first."""
        history = self._channels.get(channel)
        if history is None:
            return self._forgotten_horizon, ()
        self._trim(history, self._cutoff(), self.size)
        return history.horizon, history.entries

    def replay(self, channel: str, since: int | None) -> Deferred:
        now = self.positions.now()
        horizon, entries = self._held(channel)
        if since is None:
            return succeed(Replay((), False, now))
        if since < horizon:
            return succeed(Replay((), True, now, horizon))
        return succeed(Replay([u for u in entries if u.ts > since], False, now))

    def now(self) -> Deferred:
        return succeed(self.positions.now())

    def history(self, channel: str, since: int | None, limit: int) -> Deferred:
        horizon, entries = self._held(channel)
        if since is not None:
            entries = [u for u in entries if u.ts > since]
        return succeed(History(list(islice(entries, limit)), horizon))

    def report(self, channel: str, subscribers: int) -> None:
        """No other node shares this store: nothing to tell."""

    def presence(self, channel: str, local: int) -> Deferred:
        return succeed(local)

    def watch(self, channel: str) -> None:
        self._watched.add(channel)

    def unwatch(self, channel: str) -> None:
        self._watched.discard(channel)

    def healthy(self) -> bool:
        return True

    def stats(self) -> dict:
        return {
            "store": "memory",
            "history_channels": len(self._channels),
            "history_updates": sum(len(h.entries) for h in self._channels.values()),
        }

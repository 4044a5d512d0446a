"""History in Redis (txredisapi, hiredis), shared by every node that uses the same database.

Every change to history is one Lua script, so positions (taken from Redis's
clock, never a node's), storage, trimming and the pub/sub message that fans an
update out to other nodes happen atomically and in ``ts`` order.

Keys: ``{twistedpush:<db>}:clock`` (last position), ``:start`` (when this history
began), ``:forgotten`` (horizon of expired channels), ``:active`` (channels by
last ``ts``), ``:h:<channel>`` (sorted set of updates, scored by ``ts``),
``:z:<channel>`` (its horizon), ``:nodes`` (live nodes, scored by the moment their
reports stop counting) and ``:p:<channel>`` (hash: node, its subscribers of the
channel); pub/sub channel ``twistedpush:<db>:u:<channel>``.
Every key a script touches is passed in ``KEYS``, and all of them share the one
hash tag ``{twistedpush:<db>}``: positions must increase across every channel of
a store, so every publication reads and writes the store's clock together with
its channel's keys, and a script's keys must lie in one hash slot for Redis
Cluster and for proxies. A store is therefore one slot; spreading channels over
servers is done by shards (``twistedpush.shards``), not by Cluster slots.

Scripts are loaded on each connection before any request and called by SHA
(``EVALSHA``); a ``NOSCRIPT`` answer (a ``SCRIPT FLUSH``) sends the script's source
once more, which loads it again. A turn's first request is written at once; what
the turn asks for after it goes at the end of the turn, in order, neighbouring
requests of one kind merged into one script call (publications into one publishing
script, replays and positions into one read, a channel's replays sharing one
snapshot); a replay of a channel whose snapshot is on its way waits for the next.
"""

from __future__ import annotations

import hashlib
import secrets
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import txredisapi
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistedpush.errors import Unavailable
from twistedpush.history import History, IHistoryStore, Publication, Replay, Update
from twistedpush.writes import write_now

log = Logger()

# KEYS[1..4]: clock, start, forgotten, active; channel i (from 1): KEYS[3 + 2i] its
# updates, KEYS[4 + 2i] its horizon. ARGV[1..3]: size, ttl (µs), floor (a position
# the clock is raised to first; shards use it). Each redis.call costs a few µs, most
# of a script's time: the scripts make as few as they can (the clock is read, the
# start only when the clock is not there yet, a channel's count once).
_PRELUDE = """
local size = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local function fmt(n) return string.format('%.0f', n) end
local t = redis.call('TIME')
local wall = tonumber(t[1]) * 1000000 + tonumber(t[2])
local clock = redis.call('GET', KEYS[1])
local last = math.max(tonumber(clock or '0'), tonumber(ARGV[3]))
local start = nil
if not clock then
  start = tonumber(redis.call('GET', KEYS[2]) or '-1')
  if start < 0 then
    start = math.max(wall, last)
    last = start
    redis.call('SET', KEYS[2], fmt(start))
  end
end
local cutoff = wall - ttl
local function base_horizon()
  start = start or tonumber(redis.call('GET', KEYS[2]) or '0')
  return math.max(start, tonumber(redis.call('GET', KEYS[3]) or '0'))
end
local function horizon(z)
  local v = redis.call('GET', z)
  if v then return tonumber(v) end
  return base_horizon()
end
-- Drop the oldest of ``count`` updates held past the size bound, or those past the ttl;
-- the horizon moves to the newest dropped (or ``newest``, newer than all held): every
-- update held is newer than the horizon, so that one is the new horizon.
local function set_horizon(z, newest)
  if newest then redis.call('SET', z, fmt(newest)) end
end
local function trim_size(h, z, count, newest)
  if count > size then
    local popped = redis.call('ZPOPMIN', h, count - size)
    newest = math.max(newest or 0, tonumber(popped[#popped]))
  end
  set_horizon(z, newest)
end
local function trim_age(h, z)
  local old = redis.call('ZREVRANGEBYSCORE', h, fmt(cutoff), '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if old[2] then
    redis.call('ZREMRANGEBYSCORE', h, '-inf', fmt(cutoff))
    set_horizon(z, tonumber(old[2]))
  end
end
"""

# ARGV[4]: pub/sub prefix, ARGV[5]: channel count k, ARGV[6 .. 5 + k]: channel names,
# then (channel number, name, data) per update. The script reads the time once, so
# its positions are consecutive: it answers the first. An update that the size bound
# would drop at once (more than ``size`` of one channel in the batch) is published
# but not stored: only the horizon moves past it. Several updates of a channel that
# no node subscribes to are not published (no node can subscribe while this runs).
# Age is not trimmed here: every read trims it first, and the sweep forgets channels.
_PUBLISH_SOURCE = (
    _PRELUDE
    + """
local k = tonumber(ARGV[5])
local first = 6 + k
local left, held, topic = {}, {}, {}
for c = 1, k do
  left[c] = 0
  topic[c] = ARGV[4] .. ARGV[5 + c]
  held[c] = redis.call('ZCARD', KEYS[3 + 2 * c])
  if held[c] == 0 then
    redis.call('SET', KEYS[4 + 2 * c], fmt(base_horizon()), 'NX')
  end
end
for at = first, #ARGV, 3 do
  local c = tonumber(ARGV[at])
  left[c] = left[c] + 1
end
for c = 1, k do
  if left[c] > 1 and redis.call('PUBSUB', 'NUMSUB', topic[c])[2] == 0 then topic[c] = nil end
end
local start_ts = math.max(wall, last + 1)
last = start_ts - 1
local newest, dropped = {}, {}
for at = first, #ARGV, 3 do
  local c = tonumber(ARGV[at])
  last = last + 1
  local kept = left[c] <= size
  left[c] = left[c] - 1
  if kept or topic[c] then
    local ts = fmt(last)
    local entry = ts .. '\\n' .. ARGV[at + 1] .. '\\n' .. ARGV[at + 2]
    if kept then
      redis.call('ZADD', KEYS[3 + 2 * c], ts, entry)
      held[c] = held[c] + 1
    end
    if topic[c] then redis.call('PUBLISH', topic[c], entry) end
  end
  if not kept then dropped[c] = last end
  newest[c] = last
end
for c, ts in pairs(newest) do
  trim_size(KEYS[3 + 2 * c], KEYS[4 + 2 * c], held[c], dropped[c])
  redis.call('ZADD', KEYS[4], fmt(ts), ARGV[5 + c])
end
redis.call('SET', KEYS[1], fmt(last))
return fmt(start_ts)
"""
)

# ARGV[4..]: the since of each channel. Answers now, then per channel its horizon and
# its updates after max(since, horizon). (A channel never holds more than ``size``.)
_READ_SOURCE = (
    _PRELUDE
    + """
local now = math.max(wall, last)
if now ~= tonumber(clock or '-1') then redis.call('SET', KEYS[1], fmt(now)) end
local out = {fmt(now)}
for c = 1, #ARGV - 3 do
  local h, z = KEYS[3 + 2 * c], KEYS[4 + 2 * c]
  trim_age(h, z)
  local hz = horizon(z)
  out[2 * c] = fmt(hz)
  out[2 * c + 1] = redis.call(
    'ZRANGEBYSCORE', h, '(' .. fmt(math.max(tonumber(ARGV[3 + c]), hz)), '+inf')
end
return out
"""
)

# ARGV[4]: how many. Channels whose last update is past the ttl: candidates for _SWEEP.
_EXPIRED_SOURCE = (
    _PRELUDE
    + """
return redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', fmt(cutoff), 'LIMIT', 0, ARGV[4])
"""
)

# ARGV[4..]: channel names. Forgets those whose whole history expired.
_SWEEP_SOURCE = (
    _PRELUDE
    + """
local forgotten = tonumber(redis.call('GET', KEYS[3]) or '0')
for c = 1, #ARGV - 3 do
  local h, z = KEYS[3 + 2 * c], KEYS[4 + 2 * c]
  trim_age(h, z)
  if redis.call('ZCARD', h) == 0 then
    forgotten = math.max(forgotten, horizon(z))
    redis.call('DEL', h, z)
    redis.call('ZREM', KEYS[4], ARGV[3 + c])
  end
end
redis.call('SET', KEYS[3], fmt(forgotten))
return #ARGV - 3
"""
)


# Presence. KEYS[1]: nodes; KEYS[2..]: the channels' presence hashes. ARGV[1]: the
# node, ARGV[2]: how long its reports count (µs), ARGV[3]: how long a hash is kept
# unless written again (ms), ARGV[4]: '1' when the node reports every channel it
# has, ARGV[5..]: the channels' counts. Dead nodes are forgotten first. A node that
# is not live (its entry lapsed, or Redis lost it) may have left counts that are no
# longer true: answers 0 and writes nothing, unless this report is a whole one.
_REPORT_SOURCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if ARGV[4] ~= '1' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
for i = 2, #KEYS do
  local count = ARGV[3 + i]
  if count ~= '0' then
    redis.call('HSET', KEYS[i], ARGV[1], count)
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
  else
    redis.call('HDEL', KEYS[i], ARGV[1])
  end
end
return 1
"""

# KEYS[1]: nodes, KEYS[2]: the channel's presence hash; ARGV[1]: the asking node,
# whose own count the caller adds (exact, where the hash's is up to a report old).
# Counts of nodes that are not live are dropped as they are met.
_PRESENCE_SOURCE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local fields = redis.call('HGETALL', KEYS[2])
local total = 0
for i = 1, #fields, 2 do
  local node = fields[i]
  if node ~= ARGV[1] then
    local live = redis.call('ZSCORE', KEYS[1], node)
    if live and tonumber(live) > now then
      total = total + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[2], node)
    end
  end
end
return total
"""


class Script:
    """A Lua script called by its SHA; its source goes to Redis only when Redis does not
    have it (``NOSCRIPT``): ``EVAL`` runs it and loads it for every later ``EVALSHA``."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest()

    def run(self, connection: Any, keys: list[str], args: list[Any]) -> Deferred:
        d = connection.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        return d.addErrback(self._not_loaded, connection, keys, args)

    def _not_loaded(self, failure: Any, connection: Any, keys: list[str], args: list[Any]) -> Any:
        if failure.check(txredisapi.ResponseError) and str(failure.value).startswith("NOSCRIPT"):
            log.info("Redis had no script {sha}: sending it again", sha=self.sha)
            return connection.execute_command("EVAL", self.source, len(keys), *keys, *args)
        return failure


_PUBLISH = Script(_PUBLISH_SOURCE)
_READ = Script(_READ_SOURCE)
_EXPIRED = Script(_EXPIRED_SOURCE)
_SWEEP = Script(_SWEEP_SOURCE)
_REPORT = Script(_REPORT_SOURCE)
_PRESENCE = Script(_PRESENCE_SOURCE)
_SCRIPTS = (_PUBLISH, _READ, _EXPIRED, _SWEEP, _REPORT, _PRESENCE)

_SWEEP_BATCH = 1000
"""Channels one sweep script forgets at most: Redis serves no other client while it runs."""

_MERGE_LIMIT = 1000
"""Updates merged into one publishing script at most (Redis serves no one else meanwhile)."""

_REPORT_LIMIT = 1000
"""Channels one presence report writes at most (more go in several scripts)."""

PRESENCE_LIFE = 3
"""Report intervals during which a node's counts count without a new report: a node
that stopped is out of every count within that, one that is slow is not."""

PRESENCE_REFRESH = 20
"""Reports between two that rewrite every count of the node (in between, only those
that changed): each rewrite keeps the node's hashes from expiring."""


def _parse_entry(channel: str, entry: str) -> Update:
    ts, name, data = entry.split("\n", 2)
    return Update.create(channel, int(ts), name or None, data)


def _reader() -> hiredis.Reader:
    """hiredis's reply parser, answers decoded as UTF-8 in C (txredisapi decodes in Python)."""
    return hiredis.Reader(
        protocolError=txredisapi.InvalidData,
        replyError=txredisapi.ResponseError,
        encoding="utf-8",
    )


def encode_command(args: Sequence[Any]) -> bytes:
    """One command in Redis's protocol: an array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Commands(txredisapi.HiredisProtocol):
    """The node's command connection.

    Each command is written at once, straight to the socket when Twisted holds
    nothing unsent for it (``write_now``: no wait for the next reactor turn), every
    answer one read holds is handed over in that read, and one timer per connection,
    not one per command, notices a Redis that stops answering (the connection is
    then dropped, and every waiting command fails).
    """

    factory: _CommandFactory

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reader = _reader()
        self._waiting: deque[Deferred] = deque()
        self._progress = 0.0
        self._watchdog: IDelayedCall | None = None

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred:
        """Send one command (txredisapi's AUTH and SELECT too); fire with its answer."""
        if not self.connected:
            raise txredisapi.ConnectionError("Not connected")
        d: Deferred = Deferred()
        if not self._waiting:
            self._progress = self.factory.reactor.seconds()
        self._waiting.append(d)
        write_now(self.transport, encode_command(args))
        if self._watchdog is None and self.replyTimeout:
            self._watchdog = self.factory.reactor.callLater(self.replyTimeout, self._check)
        return d

    def _check(self) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        quiet = self.factory.reactor.seconds() - self._progress
        if quiet >= self.replyTimeout:
            log.warn("Redis answered nothing for {quiet:.1f} s: reconnecting", quiet=quiet)
            self.transport.abortConnection()
        else:
            self._watchdog = self.factory.reactor.callLater(self.replyTimeout - quiet, self._check)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        reply = reader.gets()
        if reply is not False:
            self._progress = self.factory.reactor.seconds()
        while reply is not False:
            if waiting:
                d = waiting.popleft()
                if isinstance(reply, Exception):
                    d.errback(reply)
                else:
                    d.callback(reply)
            reply = reader.gets()

    def connectionLost(self, why: Any = None) -> None:
        super().connectionLost(why)
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(txredisapi.ConnectionError("Lost connection"))


class _CommandFactory(txredisapi.RedisFactory):
    protocol = _Commands

    def __init__(self, store: RedisHistory, dbid: int, password: str | None, timeout: float):
        super().__init__(
            store.address, dbid, 1, isLazy=True, password=password, replyTimeout=timeout,
            convertNumbers=False,
        )  # fmt: skip
        self.store = store
        self.reactor = store._reactor

    def addConnection(self, conn: _Commands) -> None:
        super().addConnection(conn)
        if conn.connected and conn in self.pool:
            self.store.commands_up(conn)

    def delConnection(self, conn: _Commands) -> None:
        super().delConnection(conn)
        self.store.commands_down(conn)


class _Subscription:
    """A channel's SUBSCRIBE on its way: who waits for it, and whether the channel is
    to be resynced once it is confirmed (after the pub/sub connection was lost)."""

    __slots__ = ("resync", "waiters")

    def __init__(self, resync: bool) -> None:
        self.waiters: list[Deferred] = []
        self.resync = resync


class _Listener(txredisapi.SubscriberProtocol):
    """The node's one pub/sub connection.

    Every message one read of the socket holds is delivered in that read, so the
    hub sees them all in one reactor turn and each WebSocket is written once for
    them (txredisapi's own parser hands over one message per turn). Confirmations
    are matched to the SUBSCRIBE commands in the order they were sent: one command
    subscribes many channels.
    """

    factory: _ListenerFactory

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reader = _reader()
        self._pending: deque[deque[tuple[str, _Subscription]]] = deque()

    def subscribe_many(self, prefix: str, subscriptions: list[tuple[str, _Subscription]]) -> None:
        self._pending.append(deque(subscriptions))
        names = [prefix + channel for channel, _ in subscriptions]
        self.transport.write(encode_command(["SUBSCRIBE", *names]))

    def unsubscribe_many(self, prefix: str, channels: list[str]) -> None:
        self.transport.write(encode_command(["UNSUBSCRIBE", *(prefix + c for c in channels)]))

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        reader = self._reader
        reader.feed(data)
        store = self.factory.store
        reply = reader.gets()
        while reply is not False:
            if type(reply) is list:
                kind = reply[0]
                if kind == "message":
                    store.received(reply[1], reply[2])
                elif kind == "subscribe":
                    self._confirmed()
            elif self._pending and isinstance(reply, Exception):
                store.refused(list(self._pending.popleft()), reply)
            else:
                self.replyReceived(reply)  # AUTH's answer while connecting
            reply = reader.gets()

    def _confirmed(self) -> None:
        first = self._pending[0]
        channel, subscription = first.popleft()
        if not first:
            self._pending.popleft()
        self.factory.store.confirmed(channel, subscription)


class _ListenerFactory(txredisapi.SubscriberFactory):
    protocol = _Listener

    def __init__(self, store: RedisHistory, password: str | None) -> None:
        super().__init__()
        self.store = store
        self.password = password
        self.charset = "utf-8"

    def addConnection(self, conn: _Listener) -> None:
        super().addConnection(conn)
        if conn.connected and conn in self.pool:
            self.store.listener_up(conn)

    def delConnection(self, conn: _Listener) -> None:
        super().delConnection(conn)
        self.store.listener_down()


_PUBLISH_OP = 0
_READ_OP = 1
_HISTORY_OP = 2
"""Read with the replays (one script, one snapshot per channel), answered as a History."""


@implementer(IHistoryStore)
class RedisHistory:
    """History and fan-out through Redis: nodes on the same database act as one server.

    A replay is only read once the channel's pub/sub subscription is confirmed,
    so every update after the snapshot reaches this node live. When the pub/sub
    connection comes back after a loss, every watched channel is handed to the
    hub's ``on_resync`` so that what was published meanwhile is read from history.

    ``prepare``, when set (shards set it), runs each time the command connection is
    (re)established, before the store takes requests: a shard raises its clock there.

    Presence: every ``presence_interval`` seconds the node writes the subscriber
    counts that changed since its last report (every count, each
    PRESENCE_REFRESH-th time) and renews its entry in ``:nodes``; a node's counts
    count for PRESENCE_LIFE intervals after its last report, so another node's
    change shows within one interval and a node that died drops out within three.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        size: int = 100,
        ttl: float = 3600,
        host: str = "127.0.0.1",
        port: int = 6379,
        dbid: int = 0,
        password: str | None = None,
        sweep_interval: float = 60,
        timeout: float = 5,
        sweep_budget: float = 1,
        presence_interval: float = 1,
    ) -> None:
        self._reactor = reactor
        self.address = f"{host}:{port}/{dbid}"
        """Where this store is, for logs, /health and /metrics (never the password)."""
        self._limits = [str(size), str(int(ttl * 1_000_000))]
        tag = self._tag = f"{{twistedpush:{dbid}}}:"
        self._shared_keys = [tag + "clock", tag + "start", tag + "forgotten", tag + "active"]
        self._history_key, self._horizon_key = tag + "h:", tag + "z:"
        self._pubsub_prefix = f"twistedpush:{dbid}:u:"
        self._host, self._port, self._dbid, self._password = host, port, dbid, password
        self._timeout = timeout
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = reactor
        self._sweep_interval = sweep_interval
        self._sweep_budget = sweep_budget
        self._on_update: Callable[[Update], None] = lambda update: None
        self._on_resync: Callable[[str], None] = lambda channel: None
        self.prepare: Callable[[], Deferred] | None = None
        self._factories: list[Any] = []
        self._connection: _Commands | None = None
        self._open = False
        self._listener: _Listener | None = None
        self._watched: dict[str, _Subscription | bool | None] = {}
        self._ops: list[tuple] = []
        self._reading: dict[str, list[tuple]] = {}
        """Channels whose snapshot is on its way, and the replays that wait for it."""
        self._subscribing: list[tuple[str, _Subscription | None]] = []
        self._flush_call: IDelayedCall | None = None
        self.pubsub_losses = 0
        """Times the pub/sub connection was lost (each return resyncs every watched channel)."""
        self.node = secrets.token_hex(8)
        """This node's name in presence reports: new in each process."""
        self._nodes_key, self._presence_key = tag + "nodes", tag + "p:"
        life = presence_interval * PRESENCE_LIFE
        keep = max(60.0, 3 * presence_interval * PRESENCE_REFRESH)
        self._report_limits = [str(int(life * 1_000_000)), str(int(keep * 1000))]
        self._counts: dict[str, int] = {}
        """This node's subscribers per channel, as the hub reports them."""
        self._changed: set[str] = set()
        """Channels whose count changed since the last report that went through."""
        self._reported: set[str] = set()
        """Channels whose hash holds a count of this node."""
        self._report_all = True
        self._reports = 0
        self._reporting = False
        self._reporter = LoopingCall(self._report)
        self._reporter.clock = reactor
        self._presence_interval = presence_interval

    # Lifecycle

    def start(
        self,
        on_update: Callable[[Update], None],
        on_resync: Callable[[str], None] = lambda channel: None,
    ) -> Deferred:
        self._on_update = on_update
        self._on_resync = on_resync
        commands = _CommandFactory(self, self._dbid, self._password, self._timeout)
        listener = _ListenerFactory(self, self._password)
        self._factories = [commands, listener]
        for factory in self._factories:
            factory.initialDelay, factory.maxDelay = 0.2, 2  # be back soon after Redis is
            factory.startConnecting(self._endpoint())
        self._sweeper.start(self._sweep_interval, now=False)
        self._reporter.start(self._presence_interval, now=False)
        return succeed(None)

    def _endpoint(self) -> endpoints.TCP4ClientEndpoint:
        reactor: IReactorTCP = self._reactor  # type: ignore[assignment]
        return endpoints.TCP4ClientEndpoint(reactor, self._host, self._port, self._timeout)

    def stop(self) -> Deferred:
        """Stop; this node's counts leave every presence count at once (no wait for
        them to lapse), as the removal is written before the connection closes."""
        if self._sweeper.running:
            self._sweeper.stop()
        if self._reporter.running:
            self._reporter.stop()
        if self._open and self._connection is not None:
            self._command(self._connection, "ZREM", self._nodes_key, self.node).addErrback(
                lambda failure: None
            )
        return DeferredList([f.disconnect() for f in self._factories], consumeErrors=True)

    # The command connection

    def commands_up(self, connection: _Commands) -> None:
        """Load the scripts (and let ``prepare`` run) before taking requests: a script
        loaded by its first use would be sent as ``EVAL`` and could run after a request
        asked for later that found its own script loaded."""
        self._connection = connection
        try:
            loading = [connection.execute_command("SCRIPT", "LOAD", s.source) for s in _SCRIPTS]
        except txredisapi.ConnectionError:
            return  # lost already: commands_down follows
        ready = gatherResults(loading, consumeErrors=True)
        prepare = self.prepare
        if prepare is not None:
            ready.addCallback(lambda _: prepare())
        ready.addCallbacks(
            self._prepared,
            self._not_prepared,
            callbackArgs=(connection,),
            errbackArgs=(connection,),
        )

    def _prepared(self, _: object, connection: _Commands) -> None:
        if self._connection is connection:
            log.info("Redis {address}: connected", address=self.address)
            self._open = True
            self._report_all = True  # the next report: every count, whatever Redis holds

    def _not_prepared(self, failure: Any, connection: _Commands) -> None:
        log.info(
            "Redis {address}: not ready ({error}); trying again",
            address=self.address,
            error=failure.getErrorMessage(),
        )
        self._reactor.callLater(0.5, self._prepare_again, connection)

    def _prepare_again(self, connection: _Commands) -> None:
        if self._connection is connection and not self._open:
            self.commands_up(connection)

    def commands_down(self, connection: _Commands) -> None:
        if self._connection is connection:
            self._connection = None
            self._open = False

    @property
    def connected(self) -> bool:
        """Whether the command connection is up (the store may still be preparing)."""
        return self._connection is not None

    def read(self, key: str) -> Deferred:
        """The value of one of the store's own keys (``clock``, ``start``), read as it
        is: no script runs, so nothing begins or moves."""
        connection = self._connection
        if connection is None:
            return fail(self._not_connected())
        return self._command(connection, "GET", self._tag + key)

    @property
    def accepting(self) -> bool:
        """Whether publications and replays are taken now (the command connection is up)."""
        return self._open

    # Requests: queued during the turn, sent at its end

    def _queue(self, op: tuple) -> None:
        """Send the turn's first request at once (a lone request waits for nothing),
        the others together at the end of the turn, after it."""
        connection = self._connection
        if not self._ops and self._flush_call is None and connection is not None:
            self._send(connection, [op])
            self._schedule()  # marks the turn: what follows waits for its end
            return
        self._ops.append(op)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        ops, self._ops = self._ops, []
        subscribing, self._subscribing = self._subscribing, []
        if subscribing and self._listener is not None:
            self._send_subscriptions(self._listener, subscribing)
        self._send_now(ops)

    def _send_now(self, ops: list[tuple]) -> None:
        connection = self._connection
        if connection is None or not connection.connected:
            error = self._not_connected()
            for op in ops:
                op[-1].errback(error)
            return
        self._send(connection, ops)

    def _send(self, connection: _Commands, ops: list[tuple]) -> None:
        """``ops`` in order, each run of neighbours of one kind in one script."""
        first = 0
        while first < len(ops):
            kind = ops[first][0]
            end = first + 1
            if kind == _PUBLISH_OP:
                count = len(ops[first][1])
                while end < len(ops) and ops[end][0] == kind and count < _MERGE_LIMIT:
                    count += len(ops[end][1])
                    end += 1
                self._send_publish(connection, ops[first:end])
            else:  # replays, positions and history reads: one read
                while end < len(ops) and ops[end][0] != _PUBLISH_OP:
                    end += 1
                self._send_read(connection, ops[first:end])
            first = end

    def _keys_of(self, channels: Sequence[str]) -> list[str]:
        keys = list(self._shared_keys)
        history, horizon = self._history_key, self._horizon_key
        for channel in channels:
            keys += (history + channel, horizon + channel)
        return keys

    def _send_publish(self, connection: _Commands, ops: list[tuple]) -> None:
        numbers: dict[str, int] = {}
        entries: list[Any] = []
        for _, items, _ in ops:
            for channel, name, data in items:
                number = numbers.get(channel)
                if number is None:
                    number = numbers[channel] = len(numbers) + 1
                entries += (number, name or "", data)
        names = list(numbers)
        args = [*self._limits, 0, self._pubsub_prefix, len(names), *names, *entries]
        self._run(connection, _PUBLISH, self._keys_of(names), args).addCallbacks(
            self._published, self._failed, callbackArgs=(ops,), errbackArgs=(ops,)
        )

    @staticmethod
    def _published(first: str, ops: list[tuple]) -> None:
        at = int(first)
        for _, items, d in ops:
            d.callback(list(range(at, at + len(items))))
            at += len(items)

    def _failed(self, failure: Any, ops: list[tuple]) -> None:
        error = self._unavailable(failure)
        for op in ops:
            op[-1].errback(error)

    def _send_read(self, connection: _Commands, ops: list[tuple]) -> None:
        floor = 0
        since_of: dict[str, int] = {}
        for _, channel, since, op_floor, _ in ops:
            floor = max(floor, op_floor)
            if since is not None:
                since_of[channel] = min(since, since_of.get(channel, since))
        channels = list(since_of)
        for channel in channels:
            self._reading.setdefault(channel, [])
        args = [*self._limits, floor, *since_of.values()]
        self._run(connection, _READ, self._keys_of(channels), args).addBoth(
            self._read, ops, channels
        )

    def _read(self, result: Any, ops: list[tuple], channels: list[str]) -> None:
        """Answer each request from the snapshot; then send, in one read, the replays
        of these channels asked for while this one was on its way."""
        waited = [op for channel in channels for op in self._reading.pop(channel, ())]
        try:
            if isinstance(result, Failure):
                self._failed(result, ops)
            else:
                self._answer_read(result, ops, channels)
        finally:
            if waited:
                self._send_now(waited)

    @staticmethod
    def _answer_read(result: list, ops: list[tuple], channels: list[str]) -> None:
        now = int(result[0])
        snapshots = {}
        for index, channel in enumerate(channels):
            updates = [_parse_entry(channel, entry) for entry in result[2 + 2 * index]]
            stamps = [update.ts for update in updates]
            snapshots[channel] = (int(result[1 + 2 * index]), updates, stamps)
        for kind, channel, since, _, d in ops:
            if kind == _HISTORY_OP:
                horizon, updates, stamps = snapshots[channel]
                d.callback(History(updates[bisect_right(stamps, since) :], horizon))
            elif channel is None:
                d.callback(now)
            elif since is None:
                d.callback(Replay((), False, now))
            else:
                horizon, updates, stamps = snapshots[channel]
                if since < horizon:
                    d.callback(Replay((), True, now, horizon))
                else:
                    d.callback(Replay(updates[bisect_right(stamps, since) :], False, now))

    def _run(self, connection: _Commands, script: Script, keys: list[str], args: list) -> Deferred:
        try:
            return script.run(connection, keys, args)
        except txredisapi.ConnectionError as e:
            return fail(Unavailable(f"Redis {self.address}: {e}"))

    def _command(self, connection: _Commands, *args: Any) -> Deferred:
        try:
            return connection.execute_command(*args).addErrback(self._unavailable_failure)
        except txredisapi.ConnectionError as e:
            return fail(Unavailable(f"Redis {self.address}: {e}"))

    def _not_connected(self) -> Unavailable:
        return Unavailable(f"Redis {self.address} is not connected")

    def _unavailable_failure(self, failure: Any) -> Any:
        raise self._unavailable(failure)

    def _unavailable(self, failure: Any) -> Unavailable:
        if failure.check(Unavailable):
            return failure.value
        if not failure.check(txredisapi.ConnectionError):
            log.failure("Redis {address}: command failed", failure, address=self.address)
        return Unavailable(f"Redis {self.address} failed: {failure.getErrorMessage()}")

    def _ask(self, op: tuple) -> Deferred:
        """Queue ``op``; a replay of a channel whose snapshot is being read waits for it
        and goes with the others that waited (a thousand browsers catching up on one
        channel take a few reads, not a thousand). A replay read later than asked is
        as good: its snapshot is only newer."""
        if not self._open:
            return fail(self._not_connected())
        waiting = self._reading.get(op[1]) if op[0] == _READ_OP and op[2] is not None else None
        if waiting is not None:
            waiting.append(op)
        else:
            self._queue(op)
        return op[-1]

    def publish(self, items: Sequence[Publication]) -> Deferred:
        return self._ask((_PUBLISH_OP, items, Deferred()))

    def replay(self, channel: str, since: int | None) -> Deferred:
        return self._when_subscribed(channel).addCallback(
            lambda _: self._ask((_READ_OP, channel, since, 0, Deferred()))
        )

    def now(self) -> Deferred:
        return self._ask((_READ_OP, None, None, 0, Deferred()))

    def history(self, channel: str, since: int | None, limit: int) -> Deferred:
        """Read with the turn's replays; the snapshot holds at most ``size`` updates."""
        d = self._ask((_HISTORY_OP, channel, since or 0, 0, Deferred()))
        return d.addCallback(lambda history: History(history.updates[:limit], history.horizon))

    # Presence

    def report(self, channel: str, subscribers: int) -> None:
        if subscribers:
            self._counts[channel] = subscribers
        else:
            self._counts.pop(channel, None)
        self._changed.add(channel)

    def _report(self) -> None:
        """Write the counts that changed (or all of them) and renew this node's entry;
        what fails is written with the next report."""
        if not self._open or self._reporting or self._connection is None:
            return
        self._reports += 1
        whole = self._report_all or self._reports % PRESENCE_REFRESH == 0
        channels = list(self._counts.keys() | self._reported if whole else self._changed)
        self._changed, self._report_all, self._reporting = set(), False, True
        counts = [self._counts.get(channel, 0) for channel in channels]
        nodes, prefix = self._nodes_key, self._presence_key
        args = [self.node, *self._report_limits, "1" if whole else "0"]
        sent = [
            self._run(
                self._connection,
                _REPORT,
                [nodes, *(prefix + channel for channel in channels[at : at + _REPORT_LIMIT])],
                [*args, *counts[at : at + _REPORT_LIMIT]],
            )
            for at in range(0, max(len(channels), 1), _REPORT_LIMIT)
        ]
        gatherResults(sent, consumeErrors=True).addCallbacks(
            self._reported_all,
            self._report_failed,
            callbackArgs=(channels, counts),
            errbackArgs=(channels,),
        )

    def _reported_all(self, answers: list[Any], channels: list[str], counts: list[int]) -> None:
        self._reporting = False
        if not all(int(answer) for answer in answers):
            # Not live (it was away too long, or Redis lost its data): report every count now.
            self._report_all = True
            self._reactor.callLater(0, self._report)
            return
        for channel, count in zip(channels, counts, strict=True):
            if count:
                self._reported.add(channel)
            else:
                self._reported.discard(channel)

    def _report_failed(self, failure: Failure, channels: list[str]) -> None:
        self._reporting = False
        self._changed.update(channels)
        log.info("Redis {address}: presence report failed: {error}", address=self.address,
                 error=failure.getErrorMessage())  # fmt: skip

    def presence(self, channel: str, local: int) -> Deferred:
        connection = self._connection
        if not self._open or connection is None:
            return fail(self._not_connected())
        keys = [self._nodes_key, self._presence_key + channel]
        d = self._run(connection, _PRESENCE, keys, [self.node])
        return d.addCallbacks(lambda others: local + int(others), self._unavailable_failure)

    def raise_to(self, floor: int) -> Deferred:
        """Raise this store's clock to at least ``floor``; fire with its position then.
        Shards call it while preparing too, before the store takes other requests."""
        if self._connection is None:
            return fail(self._not_connected())
        op: tuple = (_READ_OP, None, None, floor, Deferred())
        self._queue(op)
        return op[-1]

    def sweep(self) -> Deferred:
        """Forget channels whose whole history expired, every one of them: one batch per
        script, so that Redis serves other clients in between, repeated while batches
        come back full, for ``sweep_budget`` seconds at most (the rest waits for the
        next sweep). The candidates are read first, so that the script that forgets
        them is given every key it touches."""
        deadline = self._reactor.seconds() + self._sweep_budget

        def script(which: Script, channels: list[str], *args: Any) -> Deferred:
            connection = self._connection
            if connection is None:
                return fail(self._not_connected())
            return self._run(connection, which, self._keys_of(channels), [*self._limits, 0, *args])

        def batch() -> Deferred:
            return script(_EXPIRED, [], _SWEEP_BATCH).addCallback(forget)

        def forget(channels: list[str]) -> Deferred | None:
            if not channels:
                return None
            return script(_SWEEP, channels, *channels).addCallback(swept)

        def swept(count: str) -> Deferred | None:
            if int(count) == _SWEEP_BATCH and self._reactor.seconds() < deadline:
                return batch()
            return None

        return batch().addErrback(lambda failure: None)

    # Pub/sub: ``_watched[channel]`` is True once subscribed, a _Subscription while
    # its SUBSCRIBE is on the way, None while disconnected.

    def watch(self, channel: str) -> None:
        self._watched[channel] = None
        if self._listener is not None:
            self._subscribe(channel, resync=False)

    def unwatch(self, channel: str) -> None:
        state = self._watched.pop(channel)
        if isinstance(state, _Subscription):
            self._release(state.waiters, Unavailable("unsubscribed"))
        if self._listener is not None:
            self._subscribing.append((channel, None))
            self._schedule()

    def _subscribe(self, channel: str, resync: bool) -> None:
        subscription = _Subscription(resync)
        self._watched[channel] = subscription
        self._subscribing.append((channel, subscription))
        self._schedule()

    def _send_subscriptions(
        self, listener: _Listener, requests: list[tuple[str, _Subscription | None]]
    ) -> None:
        """SUBSCRIBE and UNSUBSCRIBE in the order asked, each run of one kind in one
        command; a subscription replaced or ended meanwhile is not sent."""
        watched = self._watched
        first = 0
        while first < len(requests):
            subscribing = requests[first][1] is not None
            end = first
            while end < len(requests) and (requests[end][1] is not None) == subscribing:
                end += 1
            run = requests[first:end]
            if subscribing:
                current = [(c, s) for c, s in run if s is not None and watched.get(c) is s]
                if current:
                    listener.subscribe_many(self._pubsub_prefix, current)
            else:
                listener.unsubscribe_many(self._pubsub_prefix, [c for c, _ in run])
            first = end

    def _when_subscribed(self, channel: str) -> Deferred:
        if channel not in self._watched:
            return succeed(None)  # nothing to deliver: history alone answers
        state = self._watched[channel]
        if state is True:
            return succeed(None)
        if isinstance(state, _Subscription):
            waiter: Deferred = Deferred()
            state.waiters.append(waiter)
            return waiter
        return fail(Unavailable(f"Redis {self.address}: pub/sub is not connected"))

    def confirmed(self, channel: str, subscription: _Subscription) -> None:
        """Redis confirmed ``subscription``: its channel's updates reach this node now."""
        if self._watched.get(channel) is subscription:
            self._watched[channel] = True
            self._release(subscription.waiters, None)
            if subscription.resync:
                self._on_resync(channel)

    def refused(self, subscriptions: list[tuple[str, _Subscription]], error: Exception) -> None:
        """A SUBSCRIBE was answered with an error: Redis does so while it is still loading
        its data after a restart. Ask again on this connection (the waiters wait)."""
        log.info("Redis {address}: subscribing failed, retrying: {error}", address=self.address,
                 error=error)  # fmt: skip
        self._reactor.callLater(0.25, self._retry, self._listener, subscriptions)

    def _retry(self, listener: _Listener, subscriptions: list[tuple[str, _Subscription]]) -> None:
        if self._listener is listener:
            for channel, subscription in subscriptions:
                if self._watched.get(channel) is subscription:
                    self._subscribing.append((channel, subscription))
            self._schedule()

    @staticmethod
    def _release(waiters: list[Deferred], error: Exception | None) -> None:
        for waiter in waiters:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    def received(self, redis_channel: str, entry: str) -> None:
        """Deliver an update of a watched channel; messages still in flight when the
        channel was unwatched (Redis has not read the UNSUBSCRIBE yet) are dropped."""
        channel = redis_channel[len(self._pubsub_prefix) :]
        if channel in self._watched:
            self._on_update(_parse_entry(channel, entry))

    def listener_up(self, listener: _Listener) -> None:
        """(Re)subscribe every watched channel, in one command; after a loss, have each
        one resynced."""
        log.info("Redis {address}: pub/sub connected; subscribing {n} channels",
                 address=self.address, n=len(self._watched))  # fmt: skip
        self._listener = listener
        for channel in list(self._watched):
            self._subscribe(channel, resync=True)

    def listener_down(self) -> None:
        log.info("Redis {address}: pub/sub connection lost", address=self.address)
        if self._listener is not None:
            self.pubsub_losses += 1
        self._listener = None
        self._subscribing = []
        for channel, state in list(self._watched.items()):
            self._watched[channel] = None
            if isinstance(state, _Subscription):
                self._release(state.waiters, Unavailable("Redis pub/sub connection lost"))

    def healthy(self) -> bool:
        return self._open and self._listener is not None

    def shard_stats(self) -> dict:
        return {
            "address": self.address,
            "connected": self.healthy(),
            "watched_channels": len(self._watched),
            "pubsub_losses": self.pubsub_losses,
        }

    def stats(self) -> dict:
        return redis_stats([self])


def redis_stats(stores: Sequence[RedisHistory]) -> dict:
    """/health's counts of Redis stores, the shards of one history: each one's and in all
    (each shard asked once, so that its ``connected`` and the total agree)."""
    shards = [{"shard": n, **store.shard_stats()} for n, store in enumerate(stores)]
    return {
        "store": "redis",
        "redis_connected": all(shard["connected"] for shard in shards),
        "watched_channels": sum(shard["watched_channels"] for shard in shards),
        "shards": shards,
    }

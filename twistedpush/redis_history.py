"""History in Redis (through txredisapi), shared by every node that uses the same database.

Every change to history is one Lua script, so positions (taken from Redis's
clock, never a node's), storage, trimming and the pub/sub message that fans an
update out to other nodes happen atomically and in ``ts`` order.

Keys, under ``twistedpush:<db>:``: ``clock`` (last position), ``start`` (when
this history began), ``forgotten`` (horizon of expired channels), ``active``
(channels by last ``ts``), ``h:<channel>`` (sorted set of updates, scored by
``ts``), ``z:<channel>`` (its horizon); pub/sub channel ``u:<channel>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTCP, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from twistedpush.errors import Unavailable
from twistedpush.history import IHistoryStore, Publication, Replay, Update

log = Logger()

_PRELUDE = """
local p = ARGV[1]
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local function fmt(n) return string.format('%.0f', n) end
local t = redis.call('TIME')
local wall = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', p .. 'clock') or '0')
local start = tonumber(redis.call('GET', p .. 'start') or '-1')
if start < 0 then
  start = math.max(wall, last)
  last = start
  redis.call('SET', p .. 'start', fmt(start))
end
local cutoff = wall - ttl
local function base_horizon()
  return math.max(start, tonumber(redis.call('GET', p .. 'forgotten') or '0'))
end
local function horizon(c)
  local z = redis.call('GET', p .. 'z:' .. c)
  if z then return tonumber(z) end
  return base_horizon()
end
local function drop_through(c, ts)
  local z = p .. 'z:' .. c
  if ts > tonumber(redis.call('GET', z) or '0') then redis.call('SET', z, fmt(ts)) end
end
local function trim(c)
  local h = p .. 'h:' .. c
  local old = redis.call('ZREVRANGEBYSCORE', h, fmt(cutoff), '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if old[2] then
    drop_through(c, tonumber(old[2]))
    redis.call('ZREMRANGEBYSCORE', h, '-inf', fmt(cutoff))
  end
  local extra = redis.call('ZCARD', h) - size
  if extra > 0 then
    local newest = redis.call('ZRANGE', h, extra - 1, extra - 1, 'WITHSCORES')
    drop_through(c, tonumber(newest[2]))
    redis.call('ZREMRANGEBYRANK', h, 0, extra - 1)
  end
end
"""

_PUBLISH = (
    _PRELUDE
    + """
local out = {}
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local c, name, data = ARGV[5 + 3 * i], ARGV[6 + 3 * i], ARGV[7 + 3 * i]
  if redis.call('EXISTS', p .. 'z:' .. c) == 0 then
    redis.call('SET', p .. 'z:' .. c, fmt(base_horizon()))
  end
  local ts = math.max(wall, last + 1)
  last = ts
  local entry = fmt(ts) .. '\\n' .. name .. '\\n' .. data
  redis.call('ZADD', p .. 'h:' .. c, fmt(ts), entry)
  trim(c)
  redis.call('ZADD', p .. 'active', fmt(ts), c)
  redis.call('PUBLISH', p .. 'u:' .. c, entry)
  out[i + 1] = fmt(ts)
end
redis.call('SET', p .. 'clock', fmt(last))
return out
"""
)

_REPLAY = (
    _PRELUDE
    + """
local c, since = ARGV[4], ARGV[5]
local now = math.max(wall, last)
redis.call('SET', p .. 'clock', fmt(now))
if since == '' then return {fmt(now), 0, {}} end
since = tonumber(since)
trim(c)
if since < horizon(c) then return {fmt(now), 1, {}} end
return {fmt(now), 0, redis.call('ZRANGEBYSCORE', p .. 'h:' .. c, '(' .. fmt(since), '+inf')}
"""
)

_NOW = (
    _PRELUDE
    + """
local now = math.max(wall, last)
redis.call('SET', p .. 'clock', fmt(now))
return fmt(now)
"""
)

_SWEEP = (
    _PRELUDE
    + """
local gone = redis.call('ZRANGEBYSCORE', p .. 'active', '-inf', fmt(cutoff), 'LIMIT', 0, ARGV[4])
local forgotten = tonumber(redis.call('GET', p .. 'forgotten') or '0')
for _, c in ipairs(gone) do
  trim(c)
  if redis.call('ZCARD', p .. 'h:' .. c) == 0 then
    forgotten = math.max(forgotten, horizon(c))
    redis.call('DEL', p .. 'z:' .. c, p .. 'h:' .. c)
    redis.call('ZREM', p .. 'active', c)
  end
end
redis.call('SET', p .. 'forgotten', fmt(forgotten))
return #gone
"""
)


_SWEEP_BATCH = 1000
"""Channels one sweep script forgets at most: Redis serves no other client while it runs."""


def _parse_entry(channel: str, entry: str) -> Update:
    ts, name, data = entry.split("\n", 2)
    return Update.create(channel, int(ts), name or None, data)


class _Listener(txredisapi.SubscriberProtocol):
    """The node's one pub/sub connection; it reports to its store."""

    store: RedisHistory

    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.factory.store.received(channel, message)


class _ListenerFactory(txredisapi.SubscriberFactory):
    protocol = _Listener

    def __init__(self, store: RedisHistory, password: str | None) -> None:
        super().__init__()
        self.store = store
        self.password = password
        self.charset = "utf-8"

    def addConnection(self, conn: _Listener) -> None:
        super().addConnection(conn)
        if conn.connected:
            self.store.listener_up(conn)

    def delConnection(self, conn: _Listener) -> None:
        super().delConnection(conn)
        self.store.listener_down()


@implementer(IHistoryStore)
class RedisHistory:
    """History and fan-out through Redis: nodes on the same database act as one server.

    A replay is only read once the channel's pub/sub subscription is confirmed,
    so every update after the snapshot reaches this node live. When the pub/sub
    connection comes back after a loss, every watched channel is handed to the
    hub's ``on_resync`` so that what was published meanwhile is read from history.
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
    ) -> None:
        self._reactor = reactor
        self._args = [f"twistedpush:{dbid}:", str(size), str(int(ttl * 1_000_000))]
        self._host, self._port, self._dbid, self._password = host, port, dbid, password
        self._timeout = timeout
        self._sweeper = LoopingCall(self.sweep)
        self._sweeper.clock = reactor
        self._sweep_interval = sweep_interval
        self._sweep_budget = sweep_budget
        self._on_update: Callable[[Update], None] = lambda update: None
        self._on_resync: Callable[[str], None] = lambda channel: None
        self._commands: Any = None
        self._listener_factory: _ListenerFactory | None = None
        self._listener: _Listener | None = None
        self._watched: dict[str, list[Deferred] | bool | None] = {}
        self._pubsub_prefix = self._args[0] + "u:"

    # Lifecycle

    def start(
        self,
        on_update: Callable[[Update], None],
        on_resync: Callable[[str], None] = lambda channel: None,
    ) -> Deferred:
        self._on_update = on_update
        self._on_resync = on_resync
        self._commands = txredisapi.lazyConnection(
            self._host,
            self._port,
            self._dbid,
            password=self._password,
            connectTimeout=self._timeout,
            replyTimeout=self._timeout,
            convertNumbers=False,
        )
        self._listener_factory = _ListenerFactory(self, self._password)
        for factory in (self._commands._factory, self._listener_factory):
            factory.initialDelay, factory.maxDelay = 0.2, 2  # be back soon after Redis is
        self._listener_factory.startConnecting(self._endpoint())
        self._sweeper.start(self._sweep_interval, now=False)
        return succeed(None)

    def _endpoint(self) -> endpoints.TCP4ClientEndpoint:
        reactor: IReactorTCP = self._reactor  # type: ignore[assignment]
        return endpoints.TCP4ClientEndpoint(reactor, self._host, self._port, self._timeout)

    def stop(self) -> Deferred:
        if self._sweeper.running:
            self._sweeper.stop()
        pending = []
        if self._listener_factory is not None:
            pending.append(self._listener_factory.disconnect())
        if self._commands is not None:
            pending.append(self._commands.disconnect())
        return DeferredList(pending, consumeErrors=True)

    # Scripts

    def _run(self, script: str, *args: str) -> Deferred:
        if self._commands is None or not self._commands._factory.size:
            return fail(Unavailable("Redis is not connected"))
        d = self._commands.eval(script, [], [*self._args, *args])
        return d.addErrback(self._unavailable)

    @staticmethod
    def _unavailable(failure: Any) -> Any:
        if failure.check(Unavailable):
            return failure
        log.failure("Redis command failed", failure)
        raise Unavailable(f"Redis failed: {failure.getErrorMessage()}")

    def publish(self, items: Sequence[Publication]) -> Deferred:
        args = [str(len(items))]
        for channel, name, data in items:
            args += [channel, name or "", data]
        return self._run(_PUBLISH, *args).addCallback(lambda stamps: [int(s) for s in stamps])

    def replay(self, channel: str, since: int | None) -> Deferred:
        return (
            self._when_subscribed(channel)
            .addCallback(lambda _: self._run(_REPLAY, channel, "" if since is None else str(since)))
            .addCallback(self._replayed, channel)
        )

    @staticmethod
    def _replayed(result: list, channel: str) -> Replay:
        now, reset, entries = result
        return Replay([_parse_entry(channel, e) for e in entries], bool(int(reset)), int(now))

    def now(self) -> Deferred:
        return self._run(_NOW).addCallback(int)

    def sweep(self) -> Deferred:
        """Forget channels whose whole history expired, every one of them: one batch per
        script, so that Redis serves other clients in between, repeated while batches
        come back full, for ``sweep_budget`` seconds at most (the rest waits for the
        next sweep)."""
        deadline = self._reactor.seconds() + self._sweep_budget

        def batch() -> Deferred:
            return self._run(_SWEEP, str(_SWEEP_BATCH)).addCallback(swept)

        def swept(count: int) -> Deferred | None:
            if int(count) == _SWEEP_BATCH and self._reactor.seconds() < deadline:
                return batch()
            return None

        return batch().addErrback(lambda failure: None)

    # Pub/sub: ``_watched[channel]`` is True once subscribed, a list of waiting
    # Deferreds while the subscription is on its way, None while disconnected.

    def watch(self, channel: str) -> None:
        self._watched[channel] = None
        if self._listener is not None:
            self._subscribe(channel, resync=False)

    def unwatch(self, channel: str) -> None:
        state = self._watched.pop(channel)
        if isinstance(state, list):
            self._release(state, Unavailable("unsubscribed"))
        if self._listener is not None:
            self._listener.unsubscribe(self._pubsub_prefix + channel)

    def _when_subscribed(self, channel: str) -> Deferred:
        if channel not in self._watched:
            return succeed(None)  # nothing to deliver: history alone answers
        state = self._watched[channel]
        if state is True:
            return succeed(None)
        if isinstance(state, list):
            waiter: Deferred = Deferred()
            state.append(waiter)
            return waiter
        return fail(Unavailable("Redis pub/sub is not connected"))

    def _subscribe(self, channel: str, resync: bool) -> None:
        assert self._listener is not None
        waiters: list[Deferred] = []
        self._watched[channel] = waiters

        def subscribed(_: object) -> None:
            if self._watched.get(channel) is waiters:
                self._watched[channel] = True
                self._release(waiters, None)
                if resync:
                    self._on_resync(channel)

        def failed(failure: Any) -> None:
            log.info(
                "subscribing {channel} failed, retrying: {error}",
                channel=channel,
                error=failure.getErrorMessage(),
            )
            # Redis answers errors while it is still loading its data after a restart:
            # keep asking on this connection (the waiters wait with us).
            if self._watched.get(channel) is waiters and self._listener is listener:
                self._reactor.callLater(0.25, retry)

        def retry() -> None:
            if self._watched.get(channel) is waiters and self._listener is listener:
                listener.subscribe(redis_channel).addCallbacks(subscribed, failed)

        listener = self._listener
        redis_channel = self._pubsub_prefix + channel
        listener.subscribe(redis_channel).addCallbacks(subscribed, failed)

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
        channel = redis_channel.removeprefix(self._pubsub_prefix)
        if channel in self._watched:
            self._on_update(_parse_entry(channel, entry))

    def listener_up(self, listener: _Listener) -> None:
        """(Re)subscribe every watched channel; after a loss, have each one resynced."""
        log.info("Redis pub/sub connected; subscribing {n} channels", n=len(self._watched))
        self._listener = listener
        for channel in list(self._watched):
            self._subscribe(channel, resync=True)

    def listener_down(self) -> None:
        log.info("Redis pub/sub connection lost")
        self._listener = None
        for channel, state in list(self._watched.items()):
            self._watched[channel] = None
            if isinstance(state, list):
                self._release(state, Unavailable("Redis pub/sub connection lost"))

    def healthy(self) -> bool:
        commands = self._commands._factory.size if self._commands is not None else 0
        return bool(commands and self._listener is not None)

    def stats(self) -> dict:
        return {
            "store": "redis",
            "redis_connected": self.healthy(),
            "watched_channels": len(self._watched),
        }

"""The history store contract: one set of tests, run against every store.

Each test runs on ``MemoryHistory``, on ``RedisHistory`` (a real redis-server of
its own, from the ``redis_server`` fixture) and on ``ShardedHistory`` over two
real redis-servers, so a store that keeps its own rules (Redis's are Lua scripts)
fails here under the rule's name. Where shards differ by contract (positions and
delivery order hold within a shard, not across shards), the test says so.

Both stores run on the real global reactor, in a thread of its own for the whole
session (``reactor_thread`` in conftest.py): the test calls into it and waits for
each answer with a bound, so a store that never answers fails in seconds, not a hang.
Where a rule is about time (TTL), both stores use their real clock (Redis's cannot
be faked): a tiny ttl, and the test polls the store's own ``now()`` until it has
passed, within a deadline; no fixed sleep decides anything. Live deliveries through
pub/sub are awaited the same way, and "nothing else was delivered" is checked after
a later delivery that the store must make after it (Redis sends a connection's
messages in order), never after a pause.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import pairwise
from typing import Any

import pytest
from twisted.internet.defer import gatherResults
from zope.interface.verify import verifyObject

from tests.conftest import ReactorThread, RedisServer
from twistedpush.history import IHistoryStore, MemoryHistory, Replay, Update
from twistedpush.redis_history import RedisHistory
from twistedpush.shards import ShardedHistory, shard_of

pytestmark = pytest.mark.integration

PREFIX = "{twistedpush:0}:"


def microseconds() -> int:
    return int(time.time() * 1_000_000)


class StoreUnderTest:
    """One started store on the reactor thread, and what it handed to ``on_update``."""

    def __init__(
        self, reactor: ReactorThread, redis: RedisServer | list[RedisServer] | None, **options: Any
    ) -> None:
        self.reactor = reactor
        self.servers = [] if redis is None else redis if isinstance(redis, list) else [redis]
        self.kind = "memory" if redis is None else "redis"
        self.delivered: list[Update] = []
        self.on_delivery: Callable[[Update], None] = lambda update: None
        options.setdefault("sweep_interval", 3600)  # sweeps here are the test's own calls
        if redis is None:
            options.pop("presence_interval", None)  # nothing to report: nothing shares it
            self.store: Any = MemoryHistory(reactor.reactor, **options)
        else:
            # However slow this machine is today, a sweep ends because it is done, not
            # because its budget ran out (test_redis.py tests the budget).
            options.setdefault("sweep_budget", 60)
            shards = [RedisHistory(reactor.reactor, port=s.port, **options) for s in self.servers]
            self.store = shards[0] if len(shards) == 1 else ShardedHistory(shards)
        self.call(self.store.start, self._deliver)
        self.wait_until(lambda: self.call(self.store.healthy), "the store to be healthy")

    def _deliver(self, update: Update) -> None:
        self.delivered.append(update)
        self.on_delivery(update)

    def call(self, function: Callable[..., Any], *args: Any) -> Any:
        return self.reactor.call(function, *args)

    def publish(self, *items: tuple[str, str | None, str]) -> list[int]:
        return self.call(self.store.publish, list(items))

    def publish_each(self, *items: tuple[str, str | None, str]) -> list[int]:
        """Each item on its own, all asked for in one reactor turn (pipelined to Redis)."""
        answers = self.call(lambda: gatherResults([self.store.publish([i]) for i in items]))
        return [ts for (ts,) in answers]

    def replay(self, channel: str, since: int | None) -> Replay:
        return self.call(self.store.replay, channel, since)

    def now(self) -> int:
        return self.call(self.store.now)

    def watch(self, *channels: str) -> None:
        """Watch, and return once each channel's updates are being delivered (a replay
        waits for that)."""
        for channel in channels:
            self.call(self.store.watch, channel)
            self.replay(channel, None)

    def sweep(self) -> None:
        self.call(self.store.sweep)

    def channels_held(self) -> int:
        """Channels the store still holds anything of (Redis: counted in Redis itself)."""
        if not self.servers:
            return self.call(self.store.stats)["history_channels"]
        held = 0
        for server in self.servers:
            keys = server.command("KEYS", PREFIX + "[hz]:*")
            active = server.command("ZRANGE", PREFIX + "active", "0", "-1")
            held += len({key[len(PREFIX) + 2 :] for key in keys} | set(active))
        return held

    def store_of(self, channel: str) -> int:
        """The number of the store (shard) that holds ``channel``."""
        return shard_of(channel, len(self.servers)) if len(self.servers) > 1 else 0

    def neighbour(self, channel: str, prefix: str) -> str:
        """A channel named ``prefix...`` in the same store (shard) as ``channel``."""
        return next(
            name
            for name in (f"{prefix}{i}" for i in range(1000))
            if self.store_of(name) == self.store_of(channel)
        )

    def increasing_within_stores(self, channels: Sequence[str], stamps: Sequence[int]) -> bool:
        """Positions increase within each store (over shards: within each shard)."""
        by_store: dict[int, list[int]] = {}
        for channel, ts in zip(channels, stamps, strict=True):
            by_store.setdefault(self.store_of(channel), []).append(ts)
        return all(increasing(positions) for positions in by_store.values())

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.01)

    def wait_past(self, position: int) -> None:
        """Until the store's own clock is past ``position``."""
        self.wait_until(lambda: self.now() > position, f"the store's clock to pass {position}")

    def wait_delivered(self, count: int) -> list[Update]:
        self.wait_until(lambda: len(self.delivered) >= count, f"{count} deliveries")
        return list(self.delivered)


@pytest.fixture(params=["memory", "redis", "shards"])
def make_store(
    request: pytest.FixtureRequest, reactor_thread: ReactorThread
) -> Iterator[Callable[..., StoreUnderTest]]:
    """``make_store(**options)``: a started store of the parameter's kind, stopped after."""
    made: list[StoreUnderTest] = []
    # Asked for here, not in make(): then Redis stops only after the stores have.
    redis: RedisServer | list[RedisServer] | None = None
    if request.param == "redis":
        redis = request.getfixturevalue("redis_server")
    elif request.param == "shards":
        redis = request.getfixturevalue("redis_shards")

    def make(**options: Any) -> StoreUnderTest:
        store = StoreUnderTest(reactor_thread, redis, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.call(store.store.stop)


@pytest.fixture
def store(make_store: Callable[..., StoreUnderTest]) -> StoreUnderTest:
    return make_store()


def item(channel: str, value: object, name: str | None = None) -> tuple[str, str | None, str]:
    return (channel, name, json.dumps(value))


def increasing(positions: Sequence[int]) -> bool:
    return all(earlier < later for earlier, later in pairwise(positions))


def test_provides_the_interface(store):
    assert verifyObject(IHistoryStore, store.store)


def test_publish_answers_strictly_increasing_positions_across_channels(store):
    stamps = store.publish(item("a", 1))
    stamps += store.publish(item("b", 2), item("a", 3), item("c", 4))
    stamps += store.publish(item("c", 5))
    stamps += store.publish_each(*(item(channel, i) for i, channel in enumerate("abcab")))
    assert len(stamps) == 10 and store.increasing_within_stores("abacc" + "abcab", stamps)


def test_replay_after_since_gives_exactly_the_later_updates_in_order(store):
    published = [
        ("a", None, '{"n": 0}'),
        ("b", "other", '{"n": 1}'),
        ("a", "named", '{"text": "line\\nbreak", "é": [1, 2.5, null]}'),
        ("a", None, '{\n  "raw": "newline in the JSON text"\n}'),
        ("b", None, "2"),
        ("a", "last", '"end"'),
    ]
    stamps = store.publish(*published[:3]) + store.publish(*published[3:])
    expected = [
        Update.create(channel, ts, name, data)
        for (channel, name, data), ts in zip(published, stamps, strict=True)
    ]
    start = stamps[0] - 1  # after the store began: a full replay, no reset
    for since in [start, *stamps]:
        replay = store.replay("a", since)
        assert not replay.reset
        assert list(replay.updates) == [u for u in expected if u.channel == "a" and u.ts > since]
        assert replay.now >= stamps[-1]


def test_replay_of_an_unwatched_channel_reads_history(store):
    (ts,) = store.publish(item("never-watched", "x"))
    replay = store.replay("never-watched", ts - 1)
    assert [u.data for u in replay.updates] == ['"x"'] and not replay.reset


def test_since_none_gives_no_updates_and_now(store):
    stamps = store.publish(item("a", 1), item("a", 2))
    asked = microseconds()
    replay = store.replay("a", None)
    assert list(replay.updates) == [] and not replay.reset
    assert replay.now >= max(stamps[-1], asked)  # the moment of asking, not of the last update
    assert store.publish(item("a", 3))[0] > replay.now


def test_now_is_at_or_above_every_stored_position_and_below_every_later_one(store):
    stored = store.publish(item("a", 1), item("b", 2))
    now = store.now()
    assert now >= max(stored)
    assert store.now() >= now
    later = store.publish(item("c", 3)) + store.publish(item("a", 4), item("b", 5))
    assert min(later) > now
    assert store.replay("c", now).updates[0].ts == later[0]


def test_size_bound_moves_the_horizon_and_an_older_since_resets(make_store):
    store = make_store(size=3)
    stamps = store.publish(*(item("c", i) for i in range(5)))
    kept = store.replay("c", stamps[1])  # since the newest dropped update: nothing missing
    assert [u.data for u in kept.updates] == ["2", "3", "4"] and not kept.reset
    for older in (stamps[1] - 1, stamps[0], stamps[0] - 1):
        replay = store.replay("c", older)
        assert replay.reset and list(replay.updates) == [], older
    assert not store.replay("other", stamps[0] - 1).reset  # a horizon per channel


def test_ttl_moves_the_horizon_and_an_older_since_resets(make_store):
    ttl = 0.2
    store = make_store(ttl=ttl)
    old = store.publish(item("c", "oldest"), item("c", "newest dropped"))
    store.wait_past(old[-1] + int(ttl * 1_000_000))
    # (Nothing newer is published: with so short a ttl it could expire under a slow test.)
    kept = store.replay("c", old[-1])
    assert list(kept.updates) == [] and not kept.reset
    for older in (old[0], old[-1] - 1, old[0] - 1):
        replay = store.replay("c", older)
        assert replay.reset and list(replay.updates) == [], older


def test_a_fresh_store_resets_a_since_from_before_it_started(make_store):
    before = microseconds()
    store = make_store()
    first = store.now()
    assert store.replay("c", before - 1).reset
    assert not store.replay("c", first).reset
    (ts,) = store.publish(item("c", 1))
    assert store.replay("c", before - 1).reset  # a channel's history starts at the store's
    assert [u.ts for u in store.replay("c", first).updates] == [ts]


def test_sweep_forgets_every_expired_channel_in_one_call(make_store):
    ttl = 0.2
    store = make_store(ttl=ttl)
    expired = [f"short-lived-{i}" for i in range(3000)]
    stamps = store.publish(*(item(channel, i) for i, channel in enumerate(expired)))
    assert store.channels_held() == 3000
    store.wait_past(max(stamps) + int(ttl * 1_000_000))
    store.sweep()
    assert store.channels_held() == 0
    # Forgotten, but not their horizon (the newest position of their store, or shard):
    # a since before it still gets a reset.
    here = store.store_of(expired[0])
    newest = max(ts for c, ts in zip(expired, stamps, strict=True) if store.store_of(c) == here)
    assert store.replay(expired[0], newest - 1).reset
    assert store.replay(store.neighbour(expired[0], "never-used-"), newest - 1).reset
    assert not store.replay(expired[0], newest).reset


def test_sweep_keeps_channels_with_updates_younger_than_the_ttl(store):
    stamps = store.publish(*(item(f"alive-{i}", i) for i in range(3)))
    store.sweep()
    assert store.channels_held() == 3
    # (Not since stamps[0]: with shards, positions of different channels need not be ordered.)
    assert [u.ts for u in store.replay("alive-2", stamps[2] - 1).updates] == [stamps[2]]


def test_watched_channels_are_delivered_live_in_ts_order(store):
    store.watch("a", "b")
    published = [item("a", 0), item("unwatched", 1), item("b", 2, "two"), item("a", 3)]
    published += [item("b", 4), item("unwatched", 5), item("a", 6)]
    stamps = store.publish(*published[:2]) + store.publish(*published[2:4])
    stamps += store.publish_each(*published[4:])
    expected = [
        Update.create(channel, ts, name, data)
        for (channel, name, data), ts in zip(published, stamps, strict=True)
        if channel != "unwatched"
    ]
    got = store.wait_delivered(len(expected))
    if len(store.servers) > 1:  # each shard delivers in its order; shards side by side
        assert sorted(got, key=lambda u: u.ts) == sorted(expected, key=lambda u: u.ts)
        for channel in "ab":
            assert [u for u in got if u.channel == channel] == [
                u for u in expected if u.channel == channel
            ]
    else:
        assert got == expected and increasing([u.ts for u in got])


def test_unwatch_stops_delivery(store):
    store.watch("a", "b")
    store.call(store.store.unwatch, "a")
    store.watch("barrier")  # confirmed after the unwatch was (one connection, in order)
    store.publish(item("a", "after unwatch"))
    (last,) = store.publish(item("b", "marker"))
    got = store.wait_delivered(1)
    assert [(u.channel, u.ts) for u in got] == [("b", last)]


def test_unwatch_stops_delivery_at_once_even_of_updates_in_flight(store):
    marker = store.neighbour("a", "b")  # after a's updates on one connection
    store.watch("a", marker)

    def unwatch_on_first(update: Update) -> None:
        if update.channel == "a":
            store.store.unwatch("a")

    store.on_delivery = unwatch_on_first
    stamps = store.publish(item("a", 1), item("a", 2), item("a", 3))
    (last,) = store.publish(item(marker, "marker"))
    got = store.wait_delivered(2)
    assert [(u.channel, u.ts) for u in got] == [("a", stamps[0]), (marker, last)]


def test_a_batch_is_stored_all_at_once(store):
    """What one reactor turn asks for reaches the store in order: a replay before the
    batch sees none of it, one after sees all, and nothing lands between its updates."""
    since = store.now()
    batch = [item("a", 1), item("b", 2), item("a", 3), item("b", 4)]
    before, stamps, single, after = store.call(
        lambda: gatherResults(
            [
                store.store.replay("a", since),
                store.store.publish(batch),
                store.store.publish([item("a", 5)]),
                store.store.replay("a", since),
            ]
        )
    )
    assert list(before.updates) == []
    assert store.increasing_within_stores("abab" + "a", [*stamps, *single])
    assert [u.ts for u in after.updates] == [stamps[0], stamps[2], single[0]]


def test_healthy_and_stats(store):
    assert store.call(store.store.healthy) is True
    store.publish(item("a", 1))
    stats = store.call(store.store.stats)
    assert stats["store"] == store.kind
    json.dumps(stats)  # /health serves it as it is


def test_history_gives_the_first_limit_updates_after_since_in_order(store):
    start = store.now()
    stamps = store.publish(*(item("a", i, "n" if i % 2 else None) for i in range(5)))
    store.publish(item(store.neighbour("a", "b"), "another channel"))
    read = store.call(store.store.history, "a", None, 100)
    assert [(u.ts, u.name, u.data) for u in read.updates] == [
        (ts, "n" if i % 2 else None, str(i)) for i, ts in enumerate(stamps)
    ]
    assert read.horizon <= start  # nothing of the channel is gone
    assert [u.ts for u in store.call(store.store.history, "a", stamps[1], 2).updates] == [
        stamps[2],
        stamps[3],
    ]
    assert list(store.call(store.store.history, "a", stamps[-1], 100).updates) == []
    assert list(store.call(store.store.history, "a", None, 0).updates) == []


def test_history_in_the_same_turn_as_replays_and_publications_keeps_their_order(store):
    """A history read goes with the replays of its turn (Redis: one script), after
    what was published before it in the turn and before what comes after it."""
    since = store.now()
    replay, first, read, later = store.call(
        lambda: gatherResults(
            [
                store.store.replay("a", since),
                store.store.publish([item("a", 1)]),
                store.store.history("a", since, 10),
                store.store.publish([item("a", 2)]),
            ]
        )
    )
    assert list(replay.updates) == []
    assert [u.ts for u in read.updates] == first
    assert [u.ts for u in store.call(store.store.history, "a", since, 10).updates] == [
        *first,
        *later,
    ]


def test_history_past_the_size_bound_starts_after_the_horizon(make_store):
    store = make_store(size=3)
    stamps = store.publish(*(item("c", i) for i in range(5)))
    for since in (None, 0, stamps[0], stamps[1]):  # a replay from these would reset
        read = store.call(store.store.history, "c", since, 100)
        assert [u.data for u in read.updates] == ["2", "3", "4"], since
        assert read.horizon == stamps[1]


def test_history_of_a_channel_never_published_is_empty_at_the_stores_horizon(store):
    read = store.call(store.store.history, "never", None, 100)
    assert list(read.updates) == [] and read.horizon <= store.now()
    assert store.replay("never", read.horizon - 1).reset
    assert not store.replay("never", read.horizon).reset


def test_presence_adds_what_other_nodes_sharing_the_store_report(make_store):
    """Two stores on the same Redis are two nodes: each counts its own subscribers
    exactly and the other's as last reported; a store that stops leaves the count at
    once. Memory stores share nothing: each counts its own."""
    here = make_store(presence_interval=0.05)
    there = make_store(presence_interval=0.05)
    here.call(here.store.report, "room", 2)
    there.call(there.store.report, "room", 3)
    there.call(there.store.report, "hall", 1)
    assert here.call(here.store.presence, "room", 2) in (2, 5)
    if here.kind == "memory":
        assert here.call(here.store.presence, "room", 2) == 2
        return
    here.wait_until(lambda: here.call(here.store.presence, "room", 2) == 5, "there's report")
    assert here.call(here.store.presence, "hall", 0) == 1
    assert here.call(here.store.presence, "other", 0) == 0
    there.call(there.store.report, "room", 0)
    here.wait_until(lambda: here.call(here.store.presence, "room", 2) == 2, "the drop to 0")
    there.call(there.store.stop)
    assert here.call(here.store.presence, "hall", 0) == 0  # gone at once, no lapse waited for


def test_presence_of_a_node_that_stops_reporting_lapses(make_store):
    here = make_store(presence_interval=0.05)
    there = make_store(presence_interval=0.05)
    there.call(there.store.report, "room", 4)
    if here.kind == "memory":
        assert here.call(here.store.presence, "room", 0) == 0
        return
    here.wait_until(lambda: here.call(here.store.presence, "room", 0) == 4, "there's report")
    for shard in getattr(there.store, "shards", [there.store]):  # as if its process hung
        there.call(shard._reporter.stop)
    here.wait_until(lambda: here.call(here.store.presence, "room", 0) == 0, "the lapse", 5)

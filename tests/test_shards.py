"""The Redis store's request batching and the sharded store, without Redis: deterministic.

Each ``RedisHistory`` runs on a ``task.Clock`` with a command connection whose
answers the test gives (``FakeRedis``), so what goes to Redis, in which order and
merged how, and what each request then fires with, is checked exactly.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twistedpush.errors import Unavailable
from twistedpush.history import Replay, Update
from twistedpush.redis_history import _PUBLISH, _READ, _SCRIPTS, RedisHistory
from twistedpush.shards import ShardedHistory, _ranges, jump_hash, shard_of


class FakeRedis:
    """A command connection: records each command; the test answers them in order."""

    connected = 1

    def __init__(self) -> None:
        self.asked: list[tuple[tuple, Deferred]] = []

    @property
    def pending(self) -> int:
        return len(self.asked)

    def execute_command(self, *args: Any, **kwargs: Any) -> Deferred:
        d: Deferred = Deferred()
        self.asked.append((args, d))
        return d

    def answer(self, reply: Any) -> tuple:
        """Answer the oldest command with ``reply`` (an exception: an error reply)."""
        args, d = self.asked.pop(0)
        if isinstance(reply, Exception):
            d.errback(Failure(reply))
        else:
            d.callback(reply)
        return args


def script_call(args: tuple) -> tuple[str, list[str], list[str]]:
    """An EVALSHA's script SHA, keys and arguments."""
    assert args[0] == "EVALSHA", args
    count = args[2]
    return args[1], list(args[3 : 3 + count]), [str(a) for a in args[3 + count :]]


def connected(clock: Clock, **options: Any) -> tuple[RedisHistory, FakeRedis]:
    store = RedisHistory(clock, **options)
    redis = FakeRedis()
    store.commands_up(redis)  # type: ignore[arg-type]
    for _ in _SCRIPTS:
        assert redis.answer("sha")[:2] == ("SCRIPT", "LOAD")
    assert store.accepting
    return store, redis


def results(*ds: Deferred) -> list[Any]:
    """What each Deferred fired with, as they fire (they fire with it again later)."""
    out: list[Any] = []

    def keep(result: Any) -> Any:
        out.append(result)
        return result

    for d in ds:
        d.addBoth(keep).addErrback(lambda failure: None)
    return out


def entry(ts: int, data: str, name: str = "") -> str:
    return f"{ts}\n{name}\n{data}"


def test_scripts_are_loaded_before_any_request_and_called_by_sha():
    clock = Clock()
    store = RedisHistory(clock)
    redis = FakeRedis()
    store.commands_up(redis)  # type: ignore[arg-type]
    assert [args[:2] for args, _ in redis.asked] == [("SCRIPT", "LOAD")] * len(_SCRIPTS)
    (refused,) = results(store.publish([("c", None, "1")]))
    assert refused.check(Unavailable) and not store.accepting
    for _ in _SCRIPTS:
        redis.answer("sha")
    d = store.publish([("c", None, "1")])
    clock.advance(0)
    sha, keys, _ = script_call(redis.answer("7"))
    assert sha == _PUBLISH.sha
    assert results(d) == [[7]]


def test_one_turns_requests_go_in_order_neighbours_merged():
    clock = Clock()
    store, redis = connected(clock, size=5, ttl=60)
    busy = store.now()  # sent at once: Redis had nothing of ours to answer
    asked = [
        store.replay("a", 10),
        store.replay("a", 30),
        store.replay("b", None),
        store.now(),
        store.publish([("a", "n", '"x"')]),
        store.publish([("b", None, "1"), ("a", None, "2")]),
        store.replay("a", 10),
    ]
    assert len(redis.asked) == 1
    clock.advance(0)
    assert script_call(redis.answer(["1"]))[0] == _READ.sha and results(busy) == [1]
    assert len(redis.asked) == 3  # READ, PUBLISH, READ
    sha, keys, args = script_call(redis.asked[0][0])
    assert sha == _READ.sha
    tag = "{twistedpush:0}:"
    shared = [tag + "clock", tag + "start", tag + "forgotten", tag + "active"]
    assert keys == [*shared, tag + "h:a", tag + "z:a"]  # one snapshot of a, for both
    assert args == ["5", "60000000", "0", "10"]  # the smaller since
    sha, keys, args = script_call(redis.asked[1][0])
    assert sha == _PUBLISH.sha
    assert keys == [*shared, tag + "h:a", tag + "z:a", tag + "h:b", tag + "z:b"]
    assert args == ["5", "60000000", "0", "twistedpush:0:u:", "2", "a", "b",
                    "1", "n", '"x"', "2", "", "1", "1", "", "2"]  # fmt: skip
    got = results(*asked)
    redis.answer(["50", "15", [entry(20, "1"), entry(40, "2")]])
    redis.answer("51")  # the first position: they are consecutive
    redis.answer(["53", "15", [entry(20, "1"), entry(40, "2"), entry(53, "2")]])
    one, two, three = (
        Update.create("a", ts, None, d) for ts, d in ((20, "1"), (40, "2"), (53, "2"))
    )
    assert got == [
        Replay((), True, 50, 15),  # since 10, before the horizon 15
        Replay([two], False, 50),
        Replay((), False, 50),
        50,
        [51],
        [52, 53],
        Replay((), True, 53, 15),
    ]
    assert one.ts == 20 and three.ts == 53


def test_noscript_sends_the_source_once_more():
    clock = Clock()
    store, redis = connected(clock)
    d = store.now()
    clock.advance(0)
    keys = script_call(redis.asked[0][0])[1]
    redis.answer(txredisapi.ResponseError("NOSCRIPT No matching script. Use EVAL."))
    args = redis.answer(["42"])
    assert args[0] == "EVAL" and args[1] == _READ.source and list(args[3 : 3 + len(keys)]) == keys
    assert results(d) == [42]


def test_a_failed_script_fails_each_request_it_carried_with_unavailable():
    clock = Clock()
    store, redis = connected(clock)
    store.now()  # sent at once; the two below wait for the end of the turn, together
    ds = [store.publish([("a", None, "1")]), store.publish([("b", None, "2")])]
    clock.advance(0)
    redis.answer(["1"])
    assert len(redis.asked) == 1
    redis.answer(txredisapi.ConnectionError("Lost connection"))
    got = results(*ds)
    assert [failure.check(Unavailable) for failure in got] == [Unavailable, Unavailable]


def test_jump_hash_moves_keys_only_to_the_new_bucket_and_spreads_them():
    keys = [shard_of_key for shard_of_key in range(0, 2**64, 2**64 // 5000)]
    for buckets in range(1, 9):
        for key in keys:
            before, after = jump_hash(key, buckets), jump_hash(key, buckets + 1)
            assert after in (before, buckets)
    spread = Counter(shard_of(f"channel.{i}", 4) for i in range(8000))
    assert set(spread) == {0, 1, 2, 3} and min(spread.values()) > 1800


def test_shard_of_is_stable():
    """The same name gives the same shard on every node, in every version: a change here
    moves channels between shards (docs/scaling.md says what clients then see)."""
    assert [shard_of(name, 2) for name in ("a", "b", "room", "user:42", "news.demo")] == [
        shard_of(name, 2) for name in ("a", "b", "room", "user:42", "news.demo")
    ]
    assert [shard_of(f"c{i}", 3) for i in range(12)] == GOLDEN


GOLDEN = [0, 2, 2, 2, 0, 1, 1, 0, 2, 1, 1, 1]


def test_jump_hash_is_the_papers():
    """Lamping and Veach's C function, compiled and run on these keys, gave these buckets."""
    key, got = 1, []
    for buckets in range(1, 11):
        key = (key * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        got.append(jump_hash(key, buckets))
    assert got == [0, 1, 0, 3, 1, 5, 6, 2, 6, 5]


def test_ranges():
    assert _ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert _ranges([3]) == "3"


def names_on(shard: int, count: int, prefix: str = "c") -> list[str]:
    return [n for n in (f"{prefix}{i}" for i in range(1000)) if shard_of(n, 2) == shard][:count]


def load_scripts(redis: FakeRedis) -> None:
    for _ in _SCRIPTS:
        assert redis.answer("sha")[:2] == ("SCRIPT", "LOAD")


def sharded(clock: Clock) -> tuple[ShardedHistory, list[FakeRedis]]:
    """Two shards: shard 0 with a history, alone at first; then shard 1, new, raised to
    shard 0's position by its very first script."""
    shards = [RedisHistory(clock, port=6379 + n) for n in range(2)]
    store = ShardedHistory(shards)
    fakes = [FakeRedis(), FakeRedis()]
    shards[0].commands_up(fakes[0])  # type: ignore[arg-type]
    load_scripts(fakes[0])
    assert fakes[0].answer("50") == ("GET", "{twistedpush:0}:start")  # its history began
    assert script_call(fakes[0].answer(["100"]))[2][2] == "0"  # no other shard to follow
    assert shards[0].accepting
    shards[1].commands_up(fakes[1])  # type: ignore[arg-type]
    load_scripts(fakes[1])
    assert fakes[1].answer(None) == ("GET", "{twistedpush:0}:start")  # none yet: new
    assert fakes[0].answer("120") == ("GET", "{twistedpush:0}:clock")
    clock.advance(0)
    assert script_call(fakes[1].answer(["120"]))[2][2] == "120"  # shard 1's first script
    assert shards[1].accepting and not fakes[0].asked and not fakes[1].asked
    clock.advance(0)
    return store, fakes


def test_a_shard_that_connects_is_raised_to_the_others_position_first():
    sharded(Clock())


def test_a_new_shard_begins_only_once_every_other_shard_can_be_reached():
    """Its history must begin above every position handed out, even by a shard that
    is still connecting (every node restarted at once when a shard is added)."""
    clock = Clock()
    shards = [RedisHistory(clock, port=6379 + n) for n in range(2)]
    ShardedHistory(shards)
    new, old = FakeRedis(), FakeRedis()
    shards[1].commands_up(new)  # type: ignore[arg-type]
    load_scripts(new)
    new.answer(None)  # no history yet, and shard 0 cannot be reached
    assert not new.asked and not shards[1].accepting
    shards[0].commands_up(old)  # type: ignore[arg-type]
    load_scripts(old)
    old.answer("50")
    assert new.answer(None) == ("GET", "{twistedpush:0}:clock")  # (nothing handed out)
    clock.advance(0)
    assert script_call(old.answer(["900"]))[2][2] == "0"
    clock.advance(0.5)  # shard 1 tries again
    load_scripts(new)
    new.answer(None)
    assert old.answer("900") == ("GET", "{twistedpush:0}:clock")
    clock.advance(0)
    assert script_call(new.answer(["900"]))[2][2] == "900"
    assert shards[1].accepting


def test_now_raises_every_shard_to_the_greatest_position():
    clock = Clock()
    store, (zero, one) = sharded(clock)
    d = store.now()
    clock.advance(0)
    zero.answer(["500"])
    one.answer(["700"])  # this shard's clock is ahead
    assert not results(d)
    clock.advance(0)
    assert not one.asked
    assert script_call(zero.answer(["700"]))[2][2] == "700"
    assert results(d) == [700]


def test_now_is_refused_while_a_shard_is_down():
    clock = Clock()
    store, (zero, one) = sharded(clock)
    store.shards[1].commands_down(one)  # type: ignore[arg-type]
    (failure,) = results(store.now())
    assert failure.check(Unavailable) and "127.0.0.1:6380/0" in failure.getErrorMessage()
    assert not store.healthy()


def test_a_batch_over_a_shard_known_down_is_refused_before_anything_is_stored():
    clock = Clock()
    store, (zero, one) = sharded(clock)
    store.shards[1].commands_down(one)  # type: ignore[arg-type]
    (a,), (b,) = names_on(0, 1), names_on(1, 1)
    (failure,) = results(store.publish([(a, None, "1"), (b, None, "2")]))
    clock.advance(0)
    assert failure.check(Unavailable) and "nothing of this batch was stored" in str(failure.value)
    assert not zero.asked
    ok = results(store.publish([(a, None, "3")]))  # the other shard's channels work
    clock.advance(0)
    zero.answer("130")
    assert ok == [[130]]


def test_a_batch_over_shards_fires_with_positions_in_order():
    clock = Clock()
    store, (zero, one) = sharded(clock)
    a, b = names_on(0, 2), names_on(1, 1)
    items = [(a[0], None, "1"), (b[0], None, "2"), (a[1], None, "3")]
    got = results(store.publish(items))
    clock.advance(0)
    assert script_call(zero.asked[0][0])[2][4:7] == ["2", a[0], a[1]]
    zero.answer("200")
    one.answer("150")
    assert got == [[200, 150, 201]]


def test_a_shard_failing_mid_batch_says_which_updates_were_stored():
    clock = Clock()
    store, (zero, one) = sharded(clock)
    a, b = names_on(0, 2), names_on(1, 2)
    items = [(a[0], None, "1"), (a[1], None, "2"), (b[0], None, "3"), (b[1], None, "4")]
    got = results(store.publish(items))
    clock.advance(0)
    zero.answer("200")
    one.answer(txredisapi.ConnectionError("Lost connection"))
    (failure,) = got
    assert failure.check(Unavailable)
    text = failure.getErrorMessage()
    assert "updates 0-1 (from 0) were stored" in text and "127.0.0.1:6380/0" in text


def test_each_channel_is_watched_and_replayed_on_its_shard():
    clock = Clock()
    store, (zero, one) = sharded(clock)
    (b,) = names_on(1, 1)
    store.watch(b)
    assert b in store.shards[1]._watched and b not in store.shards[0]._watched
    store.unwatch(b)
    got = results(store.replay(b, None))
    clock.advance(0)
    one.answer(["300"])
    assert got == [Replay((), False, 300)] and not zero.asked


def test_stats_per_shard():
    store, _ = sharded(Clock())
    stats = store.stats()
    assert [s["shard"] for s in stats["shards"]] == [0, 1]
    assert [s["address"] for s in stats["shards"]] == ["127.0.0.1:6379/0", "127.0.0.1:6380/0"]
    assert stats["shards"][0]["connected"] is False  # no pub/sub connection here


def test_replays_asked_while_their_channel_is_read_wait_and_share_the_next_read():
    """A thousand browsers catching up on one channel take a few reads, not a thousand."""
    clock = Clock()
    store, redis = connected(clock)
    first = store.replay("a", 5)  # sent at once
    clock.advance(0)
    later = [store.replay("a", 7), store.replay("a", 9)]
    other = store.replay("b", 1)  # another channel: not held back
    clock.advance(0)
    assert [script_call(args)[1][-1] for args, _ in redis.asked] == [
        "{twistedpush:0}:z:a",
        "{twistedpush:0}:z:b",
    ]
    got = results(first, *later, other)
    redis.answer(["20", "0", [entry(6, "1"), entry(8, "2")]])
    assert len(got) == 1
    redis.answer(["21", "0", []])
    sha, keys, args = script_call(redis.asked[0][0])  # both waiting, in one read
    assert keys[-2:] == ["{twistedpush:0}:h:a", "{twistedpush:0}:z:a"] and args[-1] == "7"
    redis.answer(["30", "0", [entry(8, "2"), entry(25, "3")]])
    eight, late = Update.create("a", 8, None, "2"), Update.create("a", 25, None, "3")
    assert got[1:] == [
        Replay([], False, 21),
        Replay([eight, late], False, 30),
        Replay([late], False, 30),
    ]


def test_redis_repeated_makes_one_shard_each_in_order():
    from twistedpush.tap import Options, make_store

    options = Options()
    options.parseOptions(["--redis", "redis://a:6379/0", "--redis", "redis://b:6380/1"])
    store = make_store(options, Clock())
    assert isinstance(store, ShardedHistory)
    assert [s.address for s in store.shards] == ["a:6379/0", "b:6380/1"]
    one = Options()
    one.parseOptions(["--redis", "redis://a:6379/0"])
    assert isinstance(make_store(one, Clock()), RedisHistory)
    with pytest.raises(SystemExit):
        Options().parseOptions(["--redis", "redis://a:6379/0", "--redis", "redis://a:6379/0"])


def test_serverpush_redis_url_may_list_shards(settings):
    from django_adapter.management.commands.runserverpush import server_arguments

    settings.SERVERPUSH_REDIS_URL = ["redis://a:6379/0", "redis://b:6379/0"]
    args = server_arguments()
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--redis"] == [
        "redis://a:6379/0",
        "redis://b:6379/0",
    ]
    settings.SERVERPUSH_REDIS_URL = "redis://a:6379/0"
    assert server_arguments().count("--redis") == 1

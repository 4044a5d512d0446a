"""Two push server nodes on two Redis shards: real processes, real redis-servers."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request

import pytest

from tests import test_redis
from tests.conftest import RedisServer
from tests.test_redis import publish_retrying
from twistedpush.client import PushClient
from twistedpush.errors import Unavailable
from twistedpush.shards import shard_of

pytestmark = pytest.mark.integration

PREFIX = "{twistedpush:0}:"

collect = test_redis.collect  # the fixture: WebSocket collectors closed after the test


def on_shard(shard: int, prefix: str = "c") -> str:
    """A channel name that lives on ``shard`` of two."""
    return next(n for n in (f"{prefix}{i}" for i in range(1000)) if shard_of(n, 2) == shard)


def sharded_nodes(push_server, shards, count=2, *extra):
    urls = [arg for redis in shards for arg in ("--redis", redis.url)]
    return [push_server("--public", "*", *urls, *extra) for _ in range(count)]


def status(node) -> dict:
    """/health, whatever its HTTP status."""
    try:
        return node.health()
    except urllib.error.HTTPError as e:
        return json.load(e)


def test_two_nodes_on_two_shards_act_as_one(push_server, redis_shards, collect):
    a, b = sharded_nodes(push_server, redis_shards)
    pub_a, pub_b = PushClient(port=a.notifier_port), PushClient(port=b.notifier_port)
    channels = [on_shard(0, "left"), on_shard(1, "right")]
    since = pub_a.current_timestamp()
    watchers = {c: collect(b, c) for c in channels}
    stamps: dict[str, list[int]] = {c: [] for c in channels}
    for i in range(30):
        channel = channels[i % 2]
        stamps[channel].append((pub_a if i % 3 else pub_b).send_update(channel, i))
    for number, channel in enumerate(channels):
        got = watchers[channel].wait_updates(15)
        assert [u["ts"] for u in got] == stamps[channel], "in order, once, on the other node"
        assert [u["data"] for u in got] == list(range(number, 30, 2))
        assert all(ts > since for ts in stamps[channel])
        late = collect(a, channel, since=since)  # catch-up on A of what went through both
        assert [u["ts"] for u in late.wait_updates(15)] == stamps[channel]
        held, other = redis_shards[number], redis_shards[1 - number]
        assert held.command("ZCARD", PREFIX + "h:" + channel) == 15
        assert other.command("EXISTS", PREFIX + "h:" + channel) == 0
    health = b.health()
    assert health["status"] == "ok"
    assert [(s["shard"], s["connected"]) for s in health["shards"]] == [(0, True), (1, True)]
    batch = pub_b.send_updates([(channels[0], "x"), (channels[1], "y"), (channels[0], "z")])
    assert [u["ts"] for u in watchers[channels[0]].wait_updates(17)[-2:]] == batch[::2]
    assert watchers[channels[1]].wait_updates(16)[-1]["ts"] == batch[1]


def test_current_timestamp_is_below_every_later_update_on_every_shard_with_clocks_apart(
    push_server, tmp_path, faketime_preload, collect
):
    """One Redis runs 2 s ahead (libfaketime): positions from its clock are 2 s above the
    other's, and a page's CurrentTimestamp must still be below every later update on
    both. The loop runs past the 2 s so that the slower shard's own clock has passed
    the position it was raised to when the nodes connected."""
    (tmp_path / "behind").mkdir()
    (tmp_path / "ahead").mkdir()
    behind = RedisServer(tmp_path / "behind").start()
    ahead = RedisServer(
        tmp_path / "ahead", env={"LD_PRELOAD": faketime_preload, "FAKETIME": "+2s"}
    ).start()
    try:
        skew = int(ahead.command("TIME")[0]) - int(behind.command("TIME")[0])
        assert skew >= 1, f"libfaketime did not move the second Redis's clock ({skew} s)"
        a, b = sharded_nodes(push_server, [behind, ahead])
        pub_a, pub_b = PushClient(port=a.notifier_port), PushClient(port=b.notifier_port)
        slow, fast = on_shard(0, "slow"), on_shard(1, "fast")
        rounds = 0
        started = time.monotonic()
        while time.monotonic() - started < 3 or rounds < 20:
            one, other = (pub_a, pub_b) if rounds % 2 else (pub_b, pub_a)
            position = one.current_timestamp()
            for channel in (slow, fast, slow):
                ts = other.send_update(channel, rounds)
                assert ts > position, f"{channel}: {ts} at or below the page's {position}"
            rounds += 1
        page = pub_a.current_timestamp()  # a page rendered now subscribes from here
        watcher = collect(b, slow, since=page)
        after = pub_b.send_update(slow, "after the page")
        assert [u["ts"] for u in watcher.wait_updates(1)] == [after]
    finally:
        for redis in (behind, ahead):
            redis.stop(signal.SIGKILL)


def test_a_shard_killed_and_restarted_mid_stream(push_server, redis_shards, collect):
    """The other shard's channels go on without loss or reset; the killed shard's
    subscribers get every acknowledged update, or an explicit reset, never a gap."""
    zero, one = redis_shards
    a, b = sharded_nodes(push_server, redis_shards, 2, "--history-size", "1000")
    pub = PushClient(port=a.notifier_port, timeout=10)
    steady, hit = on_shard(0, "steady"), on_shard(1, "hit")
    since = pub.current_timestamp()
    steady_watcher, hit_watcher = collect(b, steady, since=since), collect(b, hit, since=since)
    acked: dict[str, list[int]] = {steady: [], hit: []}
    for i in range(200):
        if i == 80:
            one.stop(signal.SIGKILL)
            with pytest.raises(Unavailable):
                pub.send_update(hit, "refused")
            a.wait_for(lambda h: h["status"] == "degraded", "node A to see shard 1 down")
            with pytest.raises(Unavailable, match="nothing of this batch was stored"):
                pub.send_updates([(steady, "never"), (hit, "never")])
            with pytest.raises(Unavailable):
                pub.current_timestamp()  # shard 1's clock cannot be raised
            metrics = urllib.request.urlopen(f"{a.url}/metrics", timeout=5).read().decode()
            assert f'twistedpush_redis_up{{shard="1",address="127.0.0.1:{one.port}/0"}} 0' in (
                metrics
            )
            health = a.health()  # 200: the other shard's channels work
            assert health["status"] == "degraded" and health["shards"][0]["connected"] is True
            one.start()  # same port, same append-only file
        acked[steady].append(pub.send_update(steady, i))  # never refused
        acked[hit].append(publish_retrying(pub, hit, i))
    got = steady_watcher.wait_updates(200)
    assert [u["ts"] for u in got] == acked[steady]
    assert not [m for m in steady_watcher.messages if m["type"] == "reset"]
    hit_watcher.wait(
        lambda: any(u["ts"] == acked[hit][-1] for u in hit_watcher.updates()), "the last update"
    )
    received = [m for m in hit_watcher.messages if m["type"] in ("update", "reset")]
    resets = [n for n, m in enumerate(received) if m["type"] == "reset"]
    after = received[resets[-1] + 1 :] if resets else received
    from_position = received[resets[-1]]["ts"] if resets else since
    expected = [ts for ts in acked[hit] if ts > from_position]
    assert [m["ts"] for m in after] == expected, "every acknowledged update, once, in order"
    assert status(b)["status"] == "ok"


def test_adding_a_shard_resets_the_channels_that_move(
    push_server, tmp_path, faketime_preload, collect
):
    """docs/scaling.md: every node restarted with the new list; a channel that moved to the
    new shard has no history there, and a client's since from before gets a reset, even
    when the new Redis's clock is behind the old one's."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    old = RedisServer(tmp_path / "old").start()
    new = RedisServer(
        tmp_path / "new", env={"LD_PRELOAD": faketime_preload, "FAKETIME": "-2s"}
    ).start()
    try:
        (node,) = sharded_nodes(push_server, [old], 1)
        pub = PushClient(port=node.notifier_port)
        moving, staying = on_shard(1, "moving"), on_shard(0, "staying")
        since = {c: pub.send_update(c, "before") for c in (moving, staying)}
        node.stop()
        (node,) = sharded_nodes(push_server, [old, new], 1)
        pub = PushClient(port=node.notifier_port)
        moved = collect(node, moving, since=since[moving])
        assert [m["type"] for m in moved.messages[:2]] == ["reset", "subscribed"]
        kept = collect(node, staying, since=since[staying] - 1)
        assert [u["data"] for u in kept.wait_updates(1)] == ["before"]
        after = pub.send_update(moving, "after")
        assert after > since[moving]
        assert [u["ts"] for u in moved.wait_updates(1)] == [after]
    finally:
        for redis in (old, new):
            redis.stop(signal.SIGKILL)

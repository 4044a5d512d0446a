"""Redis history and fan-out between nodes, against a real redis-server."""

import codecs
import json
import re
import signal
import socket
import threading
import time

import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import PushServer, RedisServer, free_port
from tests.test_store_contract import StoreUnderTest, item
from twistedpush.client import PushClient
from twistedpush.errors import Unavailable
from twistedpush.history import Update
from twistedpush.redis_history import _PUBLISH, _READ, RedisHistory, _Listener

pytestmark = pytest.mark.integration


class Collector:
    """A WebSocket client in a thread, recording every message of one channel.

    What the thread fails with is kept and raised in the test: by ``wait`` as soon
    as the thread has ended (it will record nothing more), else by ``close``. The
    server closing the connection (the tests kill nodes) is not an error, only
    waiting on a closed connection is.
    """

    def __init__(self, node, channel, since=None):
        self.messages = []
        self.ws = None
        self.error = None
        subscribe = {"type": "subscribe", "channel": channel, "since": since}
        self.thread = threading.Thread(target=self._run, args=(node, subscribe), daemon=True)
        self.thread.start()
        self.wait(lambda: any(m["type"] == "subscribed" for m in self.messages), "subscribed")

    def _run(self, node, subscribe):
        try:
            with connect(node.ws_url, open_timeout=5) as self.ws:
                self.ws.send(json.dumps(subscribe))
                for frame in self.ws:
                    self.messages.append(json.loads(frame))
        except ConnectionClosed:
            pass
        except Exception as e:
            self.error = e

    def raise_error(self):
        """Raise the thread's exception, once."""
        error, self.error = self.error, None
        if error is not None:
            raise error

    def updates(self):
        return [m for m in self.messages if m["type"] == "update"]

    def wait(self, predicate, what, timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            ended = not self.thread.is_alive()  # before the check: nothing comes after
            if predicate():
                return
            if ended:
                self.raise_error()
                raise AssertionError(f"connection closed before {what}: {self.messages[-5:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.messages[-5:]}")
            time.sleep(0.02)

    def wait_updates(self, count):
        self.wait(lambda: len(self.updates()) >= count, f"{count} updates")
        return self.updates()

    def close(self):
        if self.ws is not None:
            self.ws.close()
        self.thread.join(5)
        self.raise_error()
        assert not self.thread.is_alive(), "the client thread did not end"


@pytest.fixture
def collect():
    """``collect(node, channel, since=None)``: a started Collector, closed after the test
    (which fails there if its thread met an error that nothing raised yet)."""
    made = []

    def start(node, channel, since=None):
        collector = Collector(node, channel, since)
        made.append(collector)
        return collector

    yield start
    for collector in made:
        collector.close()


def nodes(push_server, redis, count=2, *extra):
    return [push_server("--public", "*", "--redis", redis.url, *extra) for _ in range(count)]


def publish_retrying(client, channel, value, deadline=30):
    """Publish, retrying while Redis is away; return the acknowledged ts."""
    end = time.monotonic() + deadline
    while True:
        try:
            return client.send_update(channel, value)
        except Unavailable:
            if time.monotonic() > end:
                raise
            time.sleep(0.05)


def test_two_nodes_act_as_one(push_server, redis_server, collect):
    a, b = nodes(push_server, redis_server)
    pub_a, pub_b = PushClient(port=a.notifier_port), PushClient(port=b.notifier_port)
    since = pub_a.current_timestamp()
    on_a, on_b = collect(a, "room"), collect(b, "room")
    stamps = []
    for i in range(20):
        stamps.append((pub_a if i % 2 else pub_b).send_update("room", i))
    assert stamps == sorted(stamps) and len(set(stamps)) == 20  # one clock for both nodes
    for collector in (on_a, on_b):
        got = collector.wait_updates(20)
        assert [(u["ts"], u["data"]) for u in got] == list(zip(stamps, range(20), strict=True))
    late = collect(b, "room", since=since)  # catch-up on B of what went through both
    assert [u["data"] for u in late.wait_updates(20)] == list(range(20))
    assert b.health()["store"] == "redis"


def test_same_horizon_and_reset_as_memory(push_server, redis_server, collect):
    (node,) = nodes(push_server, redis_server, 1, "--history-size", "3")
    pub = PushClient(port=node.notifier_port)
    stamps = [pub.send_update("c", i) for i in range(5)]
    assert [u["data"] for u in collect(node, "c", since=stamps[1]).wait_updates(3)] == [2, 3, 4]
    reset = collect(node, "c", since=stamps[1] - 1)
    assert [m["type"] for m in reset.messages[:2]] == ["reset", "subscribed"]
    fresh = collect(node, "never-used", since=stamps[0] - 10**9)  # before the store began
    assert fresh.messages[0]["type"] == "reset"


def test_acknowledged_updates_survive_a_node_killed_with_sigkill(
    push_server, redis_server, collect
):
    a, b = nodes(push_server, redis_server)
    pub = PushClient(port=a.notifier_port)
    since = pub.current_timestamp()
    stamps = [pub.send_update("k", i) for i in range(50)]
    a.stop(signal.SIGKILL)
    got = collect(b, "k", since=since).wait_updates(50)
    assert [u["ts"] for u in got] == stamps


def test_node_restart_client_catches_up(push_server, redis_server, collect):
    a, b = nodes(push_server, redis_server)
    pub = PushClient(port=a.notifier_port)
    first = collect(b, "n")
    pub.send_update("n", "before")
    last_seen = first.wait_updates(1)[-1]["ts"]
    b.stop(signal.SIGKILL)
    missed = [pub.send_update("n", f"while-down-{i}") for i in range(10)]
    b.start()
    again = collect(b, "n", since=last_seen)
    assert [u["ts"] for u in again.wait_updates(10)] == missed


def test_redis_restarted_mid_stream_loses_nothing(push_server, redis_server, collect):
    # History long enough for the whole stream: the test is about the outage, not trimming.
    a, b = nodes(push_server, redis_server, 2, "--history-size", "1000")
    pub = PushClient(port=a.notifier_port, timeout=10)
    watcher = collect(b, "s", since=pub.current_timestamp())
    acked = []
    for i in range(200):
        if i == 80:
            redis_server.stop(signal.SIGKILL)
            with pytest.raises(Unavailable):
                pub.send_update("s", "refused")
            redis_server.start()  # same port, same append-only file
        acked.append(publish_retrying(pub, "s", i))
    got = watcher.wait_updates(200)
    assert [m["type"] for m in watcher.messages].count("reset") == 0
    assert [u["ts"] for u in got] == acked, "each acknowledged update once, in order"
    assert [u["data"] for u in got] == list(range(200))


def test_redis_data_lost_gives_an_explicit_reset(push_server, tmp_path, collect):
    redis = RedisServer(tmp_path, persist=False).start()
    try:
        a, b = nodes(push_server, redis)
        pub = PushClient(port=a.notifier_port)
        watcher = collect(b, "gone", since=pub.current_timestamp())
        pub.send_update("gone", 1)
        watcher.wait_updates(1)
        redis.stop(signal.SIGKILL)
        redis.start()  # empty: history is really gone
        publish_retrying(pub, "gone", 2)
        watcher.wait(
            lambda: (
                any(m["type"] == "reset" for m in watcher.messages) or len(watcher.updates()) == 2
            ),
            "reset or the update",
        )
        after = collect(b, "gone", since=watcher.updates()[0]["ts"])
        assert after.messages[0]["type"] == "reset", "history older than the restart is gone"
    finally:
        redis.stop(signal.SIGKILL)


def test_redis_down_send_update_errors_and_health_says_so(push_server, redis_server):
    (node,) = nodes(push_server, redis_server, 1)
    pub = PushClient(port=node.notifier_port)
    pub.send_update("d", 1)
    redis_server.stop(signal.SIGKILL)
    with pytest.raises(Unavailable):
        pub.send_update("d", 2)
    with pytest.raises(Unavailable):
        pub.send_updates([("d", 3), ("d", 4)])
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as status:
        node.health()
    assert status.value.code == 503
    redis_server.start()
    assert publish_retrying(pub, "d", 5)


def test_a_client_threads_error_is_reported_at_once(tmp_path):
    nobody = PushServer(tmp_path)  # its ports, never listened on
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        Collector(nobody, "c")
    assert time.monotonic() - started < 10, "reported, not left to time out"


def test_sweep_stops_at_its_time_budget_and_the_next_one_goes_on(reactor_thread, redis_server):
    """No time at all: one batch per sweep, so that Redis is never held for long."""
    ttl = 0.2
    store = StoreUnderTest(reactor_thread, redis_server, ttl=ttl, sweep_budget=0)
    try:
        stamps = store.publish(*(item(f"short-lived-{i}", i) for i in range(2500)))
        store.wait_past(stamps[-1] + int(ttl * 1_000_000))
        for left in (1500, 500, 0):
            store.sweep()
            assert store.channels_held() == left
    finally:
        store.call(store.store.stop)


def test_every_message_of_one_read_is_delivered_in_that_read():
    """The hub writes each WebSocket once per reactor turn: Redis's messages must reach it
    together, not one per turn (txredisapi's own parser hands over one at a time). The
    node's subscriptions of one turn go in one SUBSCRIBE, confirmed channel by channel."""
    clock = MemoryReactorClock()
    store = RedisHistory(clock)
    delivered: list[Update] = []
    store.start(delivered.append)
    listener = _Listener()
    listener.factory = store._factories[1]
    transport = StringTransport()
    listener.makeConnection(transport)
    store.listener_up(listener)
    store.watch("a")
    store.watch("b")
    clock.advance(0)
    assert transport.value() == resp("SUBSCRIBE", "twistedpush:0:u:a", "twistedpush:0:u:b")
    listener.dataReceived(
        resp("subscribe", "twistedpush:0:u:a", ":1") + resp("subscribe", "twistedpush:0:u:b", ":2")
    )
    assert store._watched == {"a": True, "b": True}
    listener.dataReceived(
        b"".join(
            resp("message", f"twistedpush:0:u:{channel}", f"{ts}\n\n{ts}")
            for channel, ts in (("a", 1), ("b", 2), ("a", 3))
        )
    )
    assert [(u.channel, u.ts) for u in delivered] == [("a", 1), ("b", 2), ("a", 3)]
    store.stop()


def resp(*parts: str) -> bytes:
    """A RESP array of bulk strings (``:n`` an integer)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        if part.startswith(":"):
            out.append(part.encode() + b"\r\n")
        else:
            out.append(b"$%d\r\n%s\r\n" % (len(part.encode()), part.encode()))
    return b"".join(out)


def test_noscript_after_a_script_flush_is_handled(reactor_thread, redis_server):
    store = StoreUnderTest(reactor_thread, redis_server)
    try:
        first = store.publish(item("c", 1))
        redis_server.command("SCRIPT", "FLUSH")  # what a restart without reconnecting does
        second = store.publish(item("c", 2), item("d", 3))
        replay = store.replay("c", first[0] - 1)
        assert [u.ts for u in replay.updates] == [first[0], second[0]]
        assert redis_server.command("SCRIPT", "EXISTS", _PUBLISH.sha, _READ.sha) == [1, 1]
    finally:
        store.call(store.store.stop)


# Where each command the scripts use takes its keys: the first argument, all of them,
# or none (PUBLISH and PUBSUB name pub/sub channels, not keys).
KEY_ARGUMENTS = {
    "DEL": slice(0, None), "TIME": slice(0, 0), "PUBLISH": slice(0, 0), "PUBSUB": slice(0, 0)
}  # fmt: skip


def monitor_lines(redis: RedisServer, stop: threading.Event, lines: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
        sock.sendall(b"MONITOR\r\n")
        sock.settimeout(0.2)
        buffer = b""
        while not stop.is_set() or buffer:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                if stop.is_set():
                    break
                continue
            buffer += data
            *done, buffer = buffer.split(b"\r\n")
            lines += [line.decode() for line in done]


def parse_monitor(line: str) -> tuple[str, list[str]]:
    """``+1700000000.1 [0 lua] "GET" "k"``: the client (``lua`` inside a script) and words."""
    client = line.split("[", 1)[1].split("]", 1)[0].split()[-1]
    words = [
        codecs.escape_decode(w.encode())[0].decode()
        for w in re.findall(r'"((?:[^"\\]|\\.)*)"', line)
    ]
    return client, words


def test_scripts_touch_only_the_keys_they_are_given_all_in_one_hash_slot(
    reactor_thread, redis_server
):
    """What lets the scripts run on Redis Cluster and behind proxies."""
    stop, lines = threading.Event(), []
    watcher = threading.Thread(target=monitor_lines, args=(redis_server, stop, lines))
    watcher.start()
    store = StoreUnderTest(reactor_thread, redis_server, ttl=0.2)
    try:
        store.watch("w")
        stamps = store.publish(item("a", 1), item("b", 2), item("a", 3), item("w", 4))
        store.replay("a", stamps[0] - 1)
        store.replay("b", stamps[0] - 10**9)
        store.now()
        store.wait_past(stamps[-1] + 200_000)
        store.sweep()
    finally:
        store.call(store.store.stop)
        stop.set()
        watcher.join(10)
    declared: set[str] = set()
    checked = scripts = 0
    for line in lines:
        if not line.startswith("+") or "[" not in line:
            continue
        client, words = parse_monitor(line)
        command = words[0].upper()
        if client != "lua" and command in ("EVALSHA", "EVAL"):
            scripts += 1
            declared = set(words[3 : 3 + int(words[2])])
            assert {re.match(r"\{[^}]*\}", key).group() for key in declared} == {
                "{twistedpush:0}"
            }, declared
        elif client == "lua":
            for key in words[1:][KEY_ARGUMENTS.get(command, slice(0, 1))]:
                assert key in declared, f"{command} touches {key}, not given in KEYS"
                checked += 1
    assert scripts >= 6 and checked > 30


def test_the_store_runs_on_a_redis_cluster_node(reactor_thread, tmp_path):
    """A one-node Redis Cluster (every slot its own) refuses a script whose keys are not
    all in one slot (CROSSSLOT): every script, the sweep's too, runs there."""
    redis = RedisServer(
        tmp_path,
        persist=False,
        args=("--cluster-enabled", "yes", "--cluster-port", str(free_port())),
    ).start()
    try:
        redis.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        deadline = time.monotonic() + 10
        while "cluster_state:ok" not in redis.command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.05)
        with pytest.raises(RuntimeError, match="CROSSSLOT"):
            redis.command("EVAL", "return 1", "2", "{a}x", "{b}y")
        store = StoreUnderTest(reactor_thread, redis, ttl=0.2)
        try:
            store.watch("a")
            stamps = store.publish(item("a", 1), item("b", 2))
            assert [u.ts for u in store.wait_delivered(1)] == stamps[:1]
            assert [u.ts for u in store.replay("b", stamps[0]).updates] == stamps[1:]
            store.wait_past(stamps[-1] + 200_000)
            store.sweep()
            assert store.channels_held() == 0
        finally:
            store.call(store.store.stop)
    finally:
        redis.stop(signal.SIGKILL)

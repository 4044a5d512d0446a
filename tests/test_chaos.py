"""Chaos with real processes: clients reconnect at random while updates flow and servers die.

Every client's received sequence must be the published one (no loss, no duplicate,
in order) except across an explicit reset. The counts are printed as a report.
"""

import json
import random
import signal
import threading
import time

import pytest
from websockets.sync.client import connect

from twistedpush.client import PushClient, PushServerUnavailable
from twistedpush.errors import Unavailable

pytestmark = pytest.mark.integration

CHANNEL = "chaos"


class ChaosClient(threading.Thread):
    """Subscribes with its last position; drops its connection at random; records all."""

    def __init__(self, nodes, since, seed):
        super().__init__(daemon=True)
        self.nodes = nodes
        self.since = since  # where the client started: its first update is checked from here
        self.position = since
        self.random = random.Random(seed)
        self.events = []  # ("update", ts, value) or ("reset", ts)
        self.reconnects = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            node = self.random.choice(self.nodes)
            try:
                with connect(node.ws_url, open_timeout=2) as ws:
                    ws.send(json.dumps(
                        {"type": "subscribe", "channel": CHANNEL, "since": self.position}
                    ))  # fmt: skip
                    until = time.monotonic() + self.random.uniform(0.05, 1.5)
                    while time.monotonic() < until and not self.stop.is_set():
                        try:
                            message = json.loads(ws.recv(timeout=0.2))
                        except TimeoutError:
                            continue
                        self.record(message)
            except (OSError, Exception):
                time.sleep(0.05)  # the node is down: try again (maybe another one)
            self.reconnects += 1

    def record(self, message):
        kind = message["type"]
        if kind == "update":
            self.events.append(("update", message["ts"], message["data"]))
            self.position = message["ts"]
        elif kind == "reset":
            self.events.append(("reset", message["ts"]))
            self.position = message["ts"]
        elif kind == "subscribed" and (self.position is None or message["ts"] > self.position):
            self.position = message["ts"]

    def last_update(self):
        updates = [e for e in self.events if e[0] == "update"]
        return updates[-1][1] if updates else None


def publish_steadily(port_of, count, acked, failed, interval=0.004):
    client = PushClient(port=port_of(), timeout=2)
    for value in range(count):
        while True:
            try:
                acked.append((client.send_update(CHANNEL, value), value))
                break
            except (PushServerUnavailable, Unavailable):
                failed.add(value)  # maybe stored, maybe not: never acknowledged
                client = PushClient(port=port_of(), timeout=2)
                time.sleep(0.05)
        time.sleep(interval)


def start_publishing(port_of, count=600):
    """A publisher thread; returns it with the acknowledged (ts, value) list and the
    values whose publication failed (maybe stored, never acknowledged)."""
    acked, failed = [], set()
    thread = threading.Thread(target=publish_steadily, args=(port_of, count, acked, failed))
    thread.start()
    return thread, acked, failed


def check(clients, acked, failed):
    stamps = [ts for ts, _ in acked]
    assert stamps == sorted(stamps)
    known = dict(acked)
    report = {"clients": len(clients), "published": len(acked), "resets": 0,
              "reconnects": 0, "delivered": 0}  # fmt: skip
    for client in clients:
        report["reconnects"] += client.reconnects
        previous = client.since  # the last position the client had: start, update or reset
        for event in client.events:
            if event[0] == "reset":
                report["resets"] += 1
                previous = event[1]
                continue
            _, ts, value = event
            report["delivered"] += 1
            assert ts in known or value in failed, f"update {event} was never published"
            if ts in known:
                assert known[ts] == value
            assert ts > previous, f"duplicate or out of order: {ts} after {previous}"
            gap = [t for t in stamps if previous < t < ts]
            assert not gap, f"client missed {len(gap)} acknowledged updates"
            previous = ts
        assert client.last_update() == stamps[-1], "client did not reach the end"
    return report


def show(capsys, name, report):
    with capsys.disabled():
        print(f"\nchaos report ({name}): {report}")


def run_clients(nodes, since, count=6):
    clients = [ChaosClient(nodes, since, seed) for seed in range(count)]
    for client in clients:
        client.start()
    return clients


def finish(clients, acked, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(c.last_update() == acked[-1][0] for c in clients):
            break
        time.sleep(0.1)
    for client in clients:
        client.stop.set()
    for client in clients:
        client.join(5)


def test_chaos_memory_server_killed_and_restarted(push_server, capsys):
    server = push_server("--public", "*", "--history-size", "5000")
    since = PushClient(port=server.notifier_port).current_timestamp()
    clients = run_clients([server], since)
    publisher, acked, failed = start_publishing(lambda: server.notifier_port)
    time.sleep(1.0)
    server.stop(signal.SIGKILL)
    server.start()  # memory history: everything before is gone, clients must be told
    publisher.join(60)
    finish(clients, acked)
    report = check(clients, acked, failed)
    show(capsys, "memory, server killed", report)
    assert report["resets"] >= 1


def test_chaos_redis_node_and_redis_killed(push_server, redis_server, capsys):
    a = push_server("--public", "*", "--redis", redis_server.url, "--history-size", "5000")
    b = push_server("--public", "*", "--redis", redis_server.url, "--history-size", "5000")
    since = PushClient(port=b.notifier_port).current_timestamp()
    clients = run_clients([a, b], since)
    publisher, acked, failed = start_publishing(lambda: b.notifier_port)
    time.sleep(0.8)
    a.stop(signal.SIGKILL)
    a.start()
    time.sleep(0.8)
    redis_server.stop(signal.SIGKILL)
    redis_server.start()  # with its append-only file: nothing acknowledged is lost
    publisher.join(60)
    finish(clients, acked)
    show(capsys, "redis, node and redis killed", check(clients, acked, failed))

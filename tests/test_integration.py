"""The push server as a process, over real sockets, with real clients."""

import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from websockets.sync.client import connect

from twistedpush.access import sign_token
from twistedpush.client import PushClient, PushServerUnavailable
from twistedpush.errors import BadChannel, BadData, TooLarge

pytestmark = pytest.mark.integration


def poll(server, body, timeout=10):
    request = urllib.request.Request(
        f"{server.url}/poll",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def receive(ws, count):
    return [json.loads(ws.recv(timeout=10)) for _ in range(count)]


def test_publish_over_amp_reaches_websocket_and_long_poll(push_server):
    server = push_server("--public", "news")
    publisher = PushClient(port=server.notifier_port)
    since = publisher.current_timestamp()
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": "news", "since": None, "token": None}))
        assert receive(ws, 1)[0]["type"] == "subscribed"
        ts = publisher.send_update("news", {"headline": "hi"}, name="story")
        update = receive(ws, 1)[0]
    assert update == {
        "type": "update", "channel": "news", "ts": ts, "name": "story", "data": {"headline": "hi"}
    }  # fmt: skip
    status, body = poll(server, {"subscriptions": [{"channel": "news", "since": since}]})
    assert status == 200
    assert [m["data"] for m in body["messages"]] == [{"headline": "hi"}]


def test_long_poll_holds_until_published(push_server):
    server = push_server("--public", "*")
    publisher = PushClient(port=server.notifier_port)
    result = {}
    waiter = threading.Thread(
        target=lambda: result.update(
            answer=poll(server, {"subscriptions": [{"channel": "q", "since": None}], "timeout": 30})
        )
    )
    waiter.start()
    server.wait_for(lambda h: h["subscriptions"] == 1, "the poll to subscribe")
    ts = publisher.send_update("q", [1, 2])
    waiter.join(10)
    status, body = result["answer"]
    assert status == 200
    assert [(m["ts"], m["data"]) for m in body["messages"]] == [(ts, [1, 2])]
    server.wait_for(lambda h: h["connections"]["longpoll"] == 0, "the poll to be forgotten")


def test_cors_preflight_and_malformed_body(push_server):
    server = push_server()
    request = urllib.request.Request(
        f"{server.url}/poll",
        method="OPTIONS",
        headers={
            "Origin": "http://elsewhere.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    status, body = poll(server, {"subscriptions": "nope"})
    assert status == 400
    assert body["messages"][0]["code"] == "bad_request"


def test_tokens_over_websocket(push_server):
    server = push_server("--secret", "s3cret")
    publisher = PushClient(port=server.notifier_port)
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": "user:7", "token": "1.forged"}))
        error = receive(ws, 1)[0]
        assert (error["type"], error["code"]) == ("error", "forbidden")
        token = sign_token("s3cret", "user:7", 4_000_000_000)
        ws.send(json.dumps({"type": "subscribe", "channel": "user:7", "token": token}))
        assert receive(ws, 1)[0]["type"] == "subscribed"
        publisher.send_update("user:7", "private")
        assert receive(ws, 1)[0]["data"] == "private"


def test_client_errors_and_big_data(push_server):
    server = push_server("--public", "*")
    publisher = PushClient(port=server.notifier_port)
    with pytest.raises(BadChannel):
        publisher.send_update("not a channel", 1)
    with pytest.raises(BadData):
        publisher.send_update("c", float("inf"))
    with pytest.raises(TooLarge):
        publisher.send_update("c", "x" * (1024 * 1024))
    big = "é" * 300_000
    since = publisher.current_timestamp()
    stamps = publisher.send_updates([("c", i) for i in range(2000)] + [("c", big, "big")])
    assert len(stamps) == 2001 and stamps == sorted(stamps) and stamps[0] > since
    status, body = poll(server, {"subscriptions": [{"channel": "c", "since": stamps[-2]}]})
    assert body["messages"][0]["data"] == big


def test_push_client_reconnects_and_reports_a_dead_server(push_server):
    server = push_server()
    publisher = PushClient(port=server.notifier_port, timeout=2)
    first = publisher.current_timestamp()
    server.stop()
    with pytest.raises(PushServerUnavailable):
        publisher.current_timestamp()
    server.start()
    assert publisher.current_timestamp() > first


def test_subscribers_racing_publishes_get_each_update_once_in_order(push_server):
    """Clients subscribe with ``since`` while updates are being published."""
    server = push_server("--public", "*", "--history-size", "1000")
    publisher = PushClient(port=server.notifier_port)
    published: list[int] = []
    since = publisher.current_timestamp()
    total = 300
    clients = 6
    received: dict[int, list[int]] = {}
    started = threading.Barrier(clients + 1)

    def subscriber(index):
        with connect(server.ws_url) as ws:
            started.wait()
            ws.send(json.dumps({"type": "subscribe", "channel": "race", "since": since}))
            seen = []
            while len(seen) < total:
                message = json.loads(ws.recv(timeout=20))
                if message["type"] == "update":
                    seen.append(message["data"])
                else:
                    assert message["type"] == "subscribed"
            received[index] = seen

    threads = [threading.Thread(target=subscriber, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    started.wait()
    for i in range(total):
        published.append(publisher.send_update("race", i))
    for thread in threads:
        thread.join(30)
    assert published == sorted(published)
    assert len(received) == clients
    for seen in received.values():
        assert seen == list(range(total))


def test_garbage_on_every_port_leaves_the_server_working(push_server):
    server = push_server("--public", "*")
    rng = random.Random(7)
    for port in (server.port, server.notifier_port):
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(bytes(rng.randrange(256) for _ in range(4096)))
    with socket.create_connection(("127.0.0.1", server.port)) as sock:  # truncated handshake
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    publisher = PushClient(port=server.notifier_port)
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": "ok"}))
        assert receive(ws, 1)[0]["type"] == "subscribed"
        publisher.send_update("ok", "still here")
        assert receive(ws, 1)[0]["data"] == "still here"
    assert server.health()["status"] == "ok"


def test_push_client_works_with_descriptors_past_1023(push_server):
    """A Django process may hold many files; the client must not rely on select()."""
    import resource

    server = push_server()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    hogs = [socket.socket() for _ in range(1100)]
    try:
        publisher = PushClient(port=server.notifier_port, timeout=30)
        first = publisher.current_timestamp()
        assert publisher._sock.fileno() > 1023
        started = time.monotonic()
        assert publisher.current_timestamp() >= first  # the stale check ran on a high fd
        assert time.monotonic() - started < 10, "the stale check waited for the timeout"
    finally:
        for sock in hogs:
            sock.close()

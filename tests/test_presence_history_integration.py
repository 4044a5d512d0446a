"""Presence and History against real push server processes: every transport's
subscribers counted, two nodes on one real redis-server counting each other's, and
``PushClient`` and ``django_adapter`` asking them."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from websockets.sync.client import connect

import django_adapter
from django_adapter import viewers
from django_adapter.client import get_client
from tests.conftest import PushServer, free_port
from twistedpush.access import check_channel
from twistedpush.client import PushClient, PushServerUnavailable
from twistedpush.errors import BadChannel, BadData, Unauthorized
from twistedpush.history import HISTORY_LIMIT

pytestmark = pytest.mark.integration


def wait_for(value: Callable[[], object], expected: object, timeout: float = 10) -> float:
    """Until ``value()`` is ``expected``; the seconds it took."""
    start = time.monotonic()
    seen = None
    while time.monotonic() - start < timeout:
        seen = value()
        if seen == expected:
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"still {seen!r}, not {expected!r}, after {timeout} s")


@contextmanager
def websocket(server: PushServer, channel: str) -> Iterator[object]:
    """A v1 WebSocket subscribed to ``channel``."""
    with connect(server.ws_url, proxy=None) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        while json.loads(ws.recv(timeout=10))["type"] != "subscribed":
            pass
        yield ws


@contextmanager
def wamp(server: PushServer, channel: str) -> Iterator[object]:
    """A WAMP v2 session subscribed to ``channel``."""
    with connect(server.ws_url, subprotocols=["wamp.2.json"], proxy=None) as ws:
        ws.send(json.dumps([1, "serverpush", {"roles": {"subscriber": {}}}]))
        assert json.loads(ws.recv(timeout=10))[0] == 2  # WELCOME
        ws.send(json.dumps([32, 1, {}, channel]))
        assert json.loads(ws.recv(timeout=10))[0] == 33  # SUBSCRIBED
        yield ws


@contextmanager
def held(server: PushServer, request: bytes) -> Iterator[socket.socket]:
    """An HTTP request sent and left waiting for its answer (a poll, a stream)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request)
        yield sock


def long_poll(server: PushServer, channel: str):
    body = json.dumps({"subscriptions": [{"channel": channel}], "timeout": 60}).encode()
    return held(
        server,
        b"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
    )


def sse(server: PushServer, channel: str):
    return held(server, b"GET /sse/%s HTTP/1.1\r\nHost: x\r\n\r\n" % channel.encode())


def relay(server: PushServer, channel: str):
    return held(server, b"GET /updates/%s HTTP/1.1\r\nHost: x\r\n\r\n" % channel.encode())


def test_presence_counts_subscribers_on_every_transport(push_server):
    server = push_server("--public", "*")
    push = PushClient(port=server.notifier_port)
    transports = [websocket, wamp, long_poll, sse, relay]
    with ExitStack() as stack:
        for count, transport in enumerate(transports, start=1):
            stack.enter_context(transport(server, "room"))
            wait_for(lambda: push.presence("room"), count)
        stack.enter_context(websocket(server, "hall"))
        wait_for(lambda: push.presence("hall"), 1)
        assert push.presence("room") == len(transports)
    wait_for(lambda: push.presence("room"), 0)  # every connection closed
    assert push.presence("hall") == 0


def test_history_through_pushclient(push_server):
    server = push_server("--history-size", "5")
    with PushClient(port=server.notifier_port) as push:
        stamps = push.send_updates([("room", {"n": i}, "tick") for i in range(7)])
        updates, horizon = push.history("room")
        assert updates == [{"ts": ts, "name": "tick", "data": {"n": i}} for i, ts in
                           enumerate(stamps) if i >= 2]  # fmt: skip
        assert horizon == stamps[1]
        later, _ = push.history("room", since=stamps[3], limit=2)
        assert [u["ts"] for u in later] == stamps[4:6]
        assert push.history("never") == ([], push.history("never")[1])
        with pytest.raises(BadChannel):
            push.presence("not a channel")
        with pytest.raises(BadData, match="limit"):
            push.history("room", limit=-1)
        assert push.send_update("room", "still usable") > stamps[-1]


def test_a_history_limit_of_none_is_the_default_one(push_server, settings):
    server = push_server("--history-size", str(HISTORY_LIMIT + 5))
    settings.SERVERPUSH_NOTIFIER_PORT = server.notifier_port
    with PushClient(port=server.notifier_port) as push:
        stamps = push.send_updates([("room", i) for i in range(HISTORY_LIMIT + 5)])
        read = push.history("room", limit=None)
        assert [u["ts"] for u in read[0]] == stamps[:HISTORY_LIMIT]
    try:
        assert django_adapter.history("room", limit=None) == read
        assert django_adapter.history("room") == read
    finally:
        get_client().close()


def test_queries_need_the_publisher_key_when_there_is_one(push_server, monkeypatch):
    monkeypatch.setenv("SERVERPUSH_PUBLISHER_KEY", "sesame")
    server = push_server()
    with pytest.raises(Unauthorized, match="needs a publisher key"):
        PushClient(port=server.notifier_port).presence("room")
    with PushClient(port=server.notifier_port, key="sesame") as push:
        push.send_update("room", 1)
        assert push.presence("room") == 0 and len(push.history("room")[0]) == 1


def test_a_stopped_server_is_unavailable():
    with pytest.raises(PushServerUnavailable, match="unreachable"):
        PushClient(port=free_port()).history("room")


# Two nodes on one Redis


def test_two_nodes_on_one_redis_count_each_others_subscribers(push_server, redis_server):
    first = push_server("--public", "*", "--redis", redis_server.url)
    second = push_server("--public", "*", "--redis", redis_server.url)
    one = PushClient(port=first.notifier_port)
    two = PushClient(port=second.notifier_port)
    with websocket(first, "room"), websocket(first, "room"), long_poll(first, "room"):
        with websocket(second, "room"):
            wait_for(lambda: one.presence("room"), 4, timeout=5)
            wait_for(lambda: two.presence("room"), 4, timeout=5)
        # The second node's own count is exact at once; the first hears within a report.
        assert two.presence("room") == 3
        took = wait_for(lambda: one.presence("room"), 3, timeout=5)
        assert took < 2.5
        with websocket(second, "room"):
            wait_for(lambda: one.presence("room"), 4, timeout=5)
            second.stop(signal.SIGKILL)  # no goodbye: its counts lapse
            took = wait_for(lambda: one.presence("room"), 3, timeout=8)
            assert took < 4.5


def test_history_is_the_same_on_every_node(push_server, redis_server):
    first = push_server("--redis", redis_server.url)
    second = push_server("--redis", redis_server.url)
    with PushClient(port=first.notifier_port) as one, PushClient(port=second.notifier_port) as two:
        stamps = one.send_updates([("room", i) for i in range(3)])
        assert two.history("room") == one.history("room")
        assert [u["ts"] for u in two.history("room", since=stamps[0])[0]] == stamps[1:]


# django_adapter.presence and django_adapter.history


def test_django_presence_and_history_ask_the_push_server(push):
    with websocket(push, "demo.room"), sse(push, "demo.room"):
        wait_for(lambda: django_adapter.presence("demo.room"), 2)
    wait_for(lambda: django_adapter.presence("demo.room"), 0)
    first = django_adapter.send_update("demo.room", {"when": "2024-01-02"}, name="said")
    second = django_adapter.send_update("demo.room", [1, 2])
    assert django_adapter.history("demo.room", since=first) == (
        [{"ts": second, "name": None, "data": [1, 2]}],
        django_adapter.history("demo.room")[1],
    )
    updates, _ = django_adapter.history("demo.room", limit=1)
    assert updates == [{"ts": first, "name": "said", "data": {"when": "2024-01-02"}}]
    with pytest.raises(BadChannel):
        django_adapter.presence("demo room")
    with pytest.raises(BadData, match="since"):
        django_adapter.history("demo.room", since=-1)


def test_django_queries_when_the_push_server_is_down_say_what_to_check(settings):
    settings.SERVERPUSH_NOTIFIER_PORT = free_port()
    with pytest.raises(PushServerUnavailable, match="runserverpush"):
        django_adapter.presence("demo.room")
    with pytest.raises(PushServerUnavailable, match="not tried again"):
        django_adapter.history("demo.room")  # backing off, as send_update does


# django_adapter.viewers: "N people are viewing this page"


def test_each_page_path_has_a_viewer_channel_of_its_own():
    assert viewers.viewers_channel("/chat/") == "viewers:/chat/"
    odd = [viewers.viewers_channel(path) for path in ("/a b/", "/é/", "/" + "x" * 300)]
    assert len(set(odd)) == 3 and all(check_channel(c) == c for c in odd)
    assert viewers.viewers_channel("/a b/") == odd[0]  # the same in every process


def test_a_viewer_count_is_published_to_the_pages_copies(push):
    channel = viewers.viewers_channel("/chat/")
    with websocket(push, channel) as first, websocket(push, channel):
        viewers.publish_count(channel)
        message = json.loads(first.recv(timeout=10))
        assert (message["channel"], message["name"], message["data"]) == (
            channel,
            "viewers",
            {"count": 2},
        )
        assert viewers.page_viewers("/chat/") == 3  # a page rendered now: itself too

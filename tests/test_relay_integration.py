"""The push-relay long-poll against a real push server on a real Redis (one, and two
shards): the oldest update still in history, one per answer, then held."""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest

from twistedpush.client import PushClient

pytestmark = pytest.mark.integration

EPOCH = ("Thu, 1 Jan 1970 00:00:00 GMT", "0")


def ask(server, channel: str, position: tuple[str, str] | None) -> urllib.request.Request:
    request = urllib.request.Request(f"{server.url}/updates/{channel}")
    if position is not None:
        request.add_header("If-Modified-Since", position[0])
        request.add_header("If-None-Match", position[1])
    return request


def answer(request: urllib.request.Request, timeout: float = 10) -> tuple[object, tuple]:
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.load(response)
        return body, (response.headers["Last-Modified"], response.headers["Etag"])


@pytest.mark.parametrize("redis", ["redis_server", "redis_shards"])
def test_from_the_oldest_update_in_redis_history_one_per_answer(request, redis, push_server):
    servers = request.getfixturevalue(redis)
    urls = [servers.url] if redis == "redis_server" else [s.url for s in servers]
    options = [arg for url in urls for arg in ("--redis", url)]
    server = push_server(*options, "--public", "news.*", "--history-size", "2")
    push = PushClient(port=server.notifier_port)
    for n in range(4):
        push.send_update("news.relay", {"n": n})
    body, position = answer(ask(server, "news.relay", EPOCH))
    assert body == {"n": 2}  # the oldest one history still holds, and no reset
    body, position = answer(ask(server, "news.relay", position))
    assert body == {"n": 3}
    held: list = []
    waiter = threading.Thread(
        target=lambda: held.append(answer(ask(server, "news.relay", position), timeout=30))
    )
    waiter.start()
    server.wait_for(lambda h: h["connections"]["longpoll"] == 1, "the held request")
    push.send_update("news.relay", {"n": 4})
    waiter.join(30)
    assert held[0][0] == {"n": 4}


def test_cors_for_a_page_that_sends_its_cookies(push_server):
    server = push_server("--public", "news.*")
    PushClient(port=server.notifier_port).send_update("news.relay", 1)
    request = ask(server, "news.relay", None)
    request.add_header("Origin", "http://page.example")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "http://page.example"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert response.headers["Access-Control-Expose-Headers"] == "Last-Modified, Etag"
        assert response.headers["Cache-Control"] == f"etag={response.headers['Etag']}"

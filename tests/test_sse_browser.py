"""A browser's own EventSource (Debian chromium through Playwright) on /sse/: live
updates, and after the push server restarts, a resume with Last-Event-ID that
misses nothing and repeats nothing. The page comes from a loopback server of its
own, so the stream is cross-origin, as from a Django page on another port."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import RedisServer
from tests.helpers import PageServer
from tests.test_browser import browser, context  # noqa: F401 (fixtures)
from twistedpush.client import PushClient

pytestmark = [pytest.mark.integration, pytest.mark.browser]

PAGE = """<!doctype html><title>SSE</title><script>
window.events = [];
window.opens = 0;
var source = new EventSource(%(url)s);
source.onopen = function () { opens += 1; };
function keep(type) {
  return function (e) {
    events.push({type: type, id: e.lastEventId, message: JSON.parse(e.data)});
  };
}
source.onmessage = keep("message");
source.addEventListener("tick", keep("tick"));
source.addEventListener("subscribed", keep("subscribed"));
source.addEventListener("reset", keep("reset"));
</script>"""


def updates(page) -> list[tuple[str, str, object]]:
    return [
        (e["type"], e["id"], e["message"]["data"])
        for e in page.evaluate("events")
        if e["message"]["type"] == "update"
    ]


def wait_events(page, count: int, timeout: float = 30000) -> None:
    page.wait_for_function(f"events.length >= {count}", timeout=timeout)


def test_event_source_is_live_and_resumes_after_a_restart_without_loss_or_repeats(
    tmp_path,
    context,  # noqa: F811
    push_server,
):
    redis = RedisServer(tmp_path).start()
    node = push_server("--redis", redis.url, "--public", "news.*")
    other = push_server("--redis", redis.url, "--public", "news.*")  # same history
    page_server = PageServer(PAGE % {"url": repr(f"{node.url}/sse/news.sse")})
    try:
        page = context.new_page()
        page.goto(page_server.url)
        wait_events(page, 1)
        assert page.evaluate("events[0].type") == "subscribed"
        push = PushClient(port=node.notifier_port)
        published = [
            push.send_update("news.sse", {"n": 1}),
            push.send_update("news.sse", {"n": 2}, name="tick"),
        ]
        wait_events(page, 3)
        assert updates(page) == [
            ("message", str(published[0]), {"n": 1}),
            ("tick", str(published[1]), {"n": 2}),
        ]
        node.stop()  # the stream ends; the browser tries again every 3 s
        # While it is down, through the other node: only a resume from the last
        # event's id can bring these.
        away = PushClient(port=other.notifier_port)
        published += [away.send_update("news.sse", {"n": n}) for n in (3, 4)]
        node.start()
        wait_events(page, 6)  # the two missed, and subscribed again
        published.append(PushClient(port=node.notifier_port).send_update("news.sse", {"n": 5}))
        wait_events(page, 7)
        assert [int(id) for _, id, _ in updates(page)] == published  # each once, in order
        assert [data["n"] for _, _, data in updates(page)] == [1, 2, 3, 4, 5]
        assert [e["type"] for e in page.evaluate("events")].count("subscribed") == 2
        assert page.evaluate("opens") == 2
    finally:
        page_server.close()
        redis.stop(signal.SIGKILL)


def test_event_source_without_history_is_told_to_reset_after_a_restart(
    context,  # noqa: F811
    push_server,
):
    node = push_server("--public", "news.*")  # memory history: gone with the process
    page_server = PageServer(PAGE % {"url": repr(f"{node.url}/sse/news.sse")})
    try:
        page = context.new_page()
        page.goto(page_server.url)
        wait_events(page, 1)
        PushClient(port=node.notifier_port).send_update("news.sse", "before")
        wait_events(page, 2)
        node.stop()
        node.start()
        wait_events(page, 4)
        assert [e["type"] for e in page.evaluate("events")] == [
            "subscribed",
            "message",
            "reset",
            "subscribed",
        ]
    finally:
        page_server.close()

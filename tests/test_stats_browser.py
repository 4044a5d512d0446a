"""The operator's /stats page in Debian chromium (Playwright), on a real ``twistd``
node: it shows the node's numbers change live, under its own strict policy, and
it is refused without the key, with a wrong one, and absent unless turned on."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect

from tests.test_browser import browser, context  # noqa: F401 (fixtures)
from twistedpush.client import PushClient

pytestmark = [pytest.mark.integration, pytest.mark.browser]

KEY = "operator-key-0123456789"

CELL = """([table, label, column]) => {
  for (const row of document.querySelectorAll("#" + table + " tbody tr")) {
    if (row.cells[0].textContent === label) return row.cells[column].textContent;
  }
  return null;
}"""


def wait_cell(page, table: str, label: str, column: int, value: str | None) -> None:
    """Wait until the page's ``table`` shows ``value`` in ``label``'s row."""
    page.wait_for_function(
        f"args => ({CELL})(args) === {json.dumps(value)}",
        arg=[table, label, column],
        timeout=15000,
    )


def test_page_shows_connections_channels_and_rates_live(push_server, context):  # noqa: F811
    node = push_server("--stats-key", KEY, "--public", "room*")
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))
    response = page.goto(f"{node.url}/stats?key={KEY}")
    assert response is not None and response.status == 200
    wait_cell(page, "connections", "stats", 1, "1")  # the page's own feed
    assert page.url == f"{node.url}/stats"  # the key is gone from the address bar
    wait_cell(page, "connections", "websocket", 1, "0")
    assert page.text_content("#store") == "memory (this node only)"

    with connect(f"{node.ws_url}") as client:
        client.send(json.dumps({"type": "subscribe", "channel": "room.1"}))
        assert json.loads(client.recv(10))["type"] == "subscribed"
        wait_cell(page, "connections", "websocket", 1, "1")
        wait_cell(page, "busiest", "room.1", 1, "1")
        assert page.text_content("#subscriptions") == "1"

        PushClient(port=node.notifier_port).send_update("room.1", {"n": 1})
        assert json.loads(client.recv(10))["data"] == {"n": 1}
        wait_cell(page, "rates", "published", 6, "1")  # the totals column
        wait_cell(page, "rates", "delivered", 6, "1")
        # The per-second rate shows the publication in the last minute's average.
        assert float(page.evaluate(CELL, ["rates", "published", 2])) > 0

    wait_cell(page, "connections", "websocket", 1, "0")
    wait_cell(page, "busiest", "room.1", 1, None)  # gone from the list
    assert "status ok" in page.text_content("#state")
    assert problems == []  # no policy violation, no script error


def test_page_refused_without_the_key_or_with_a_wrong_one(push_server, context):  # noqa: F811
    node = push_server("--stats-key", KEY)
    page = context.new_page()
    response = page.goto(f"{node.url}/stats")
    assert response is not None and response.status == 401
    assert "needs the stats key" in page.text_content("body")
    response = page.goto(f"{node.url}/stats?key=not-the-key-at-all")
    assert response is not None and response.status == 403
    assert "wrong stats key" in page.text_content("body")


def test_an_open_page_after_the_key_changed_says_it_is_refused(push_server, context):  # noqa: F811
    node = push_server("--stats-key", KEY)
    page = context.new_page()
    page.goto(f"{node.url}/stats?key={KEY}")
    wait_cell(page, "connections", "stats", 1, "1")
    node.stop()
    node.args = ["--stats-key", "a-new-key-0123456789"]
    node.start()  # the page reconnects with a ticket made with the old key
    page.wait_for_function(
        "() => document.getElementById('state').textContent.startsWith('refused:')",
        timeout=15000,
    )
    assert page.text_content("#state") == "refused: wrong stats key or ticket"


def test_stats_is_absent_unless_turned_on(push_server, context, monkeypatch):  # noqa: F811
    monkeypatch.delenv("SERVERPUSH_STATS_KEY", raising=False)
    node = push_server()
    page = context.new_page()
    response = page.goto(f"{node.url}/stats?key={KEY}")
    assert response is not None and response.status == 404

"""``python manage.py runserverpush --allrequests``: the demo site and its live updates
from one process on one port, in Debian chromium."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import free_port
from tests.test_browser import (  # noqa: F401 (fixtures)
    DEMO,
    DemoSite,
    browser,
    context,
    counter,
    wait_counter,
    wait_http,
    wait_state,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def one_port(tmp_path):
    """The demo served by runserverpush --allrequests alone: yields its URL."""
    site = DemoSite(tmp_path)  # migrated; its push port is unused here
    port = free_port()
    with open(tmp_path / "one-port.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runserverpush", "--allrequests",
             "--port", f"tcp:{port}:interface=127.0.0.1"],
            cwd=DEMO, env=site.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/login/")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_a_django_page_and_its_live_updates_on_one_port(one_port, context):  # noqa: F811
    page = context.new_page()
    page.goto(one_port + "/")
    wait_state(page, "live over WebSocket")
    assert page.evaluate("ServerPush.url") == one_port  # the page's own origin
    script = page.evaluate("document.querySelector('script[src$=\"/serverpush.js\"]').src")
    assert script == one_port + "/static/serverpush/serverpush.js"  # Django's static files
    start = counter(page)
    with urllib.request.urlopen(one_port + "/", timeout=10):  # another visit, same port
        pass
    wait_counter(page, start + 1)
    assert page.evaluate("fetch('/health').then(r => r.json()).then(h => h.status)") == "ok"


def test_a_chat_message_posted_to_django_reaches_the_other_page(one_port, context):  # noqa: F811
    reader, writer = context.new_page(), context.new_page()
    reader.goto(one_port + "/chat/")
    writer.goto(one_port + "/chat/")
    wait_state(reader, "live over WebSocket")
    writer.fill("#text", "one port, one process")
    writer.click("#say button")
    reader.wait_for_selector("#messages li >> text=one port, one process")

"""The demo's live "N people are viewing this page" on its chat, in Debian's chromium
(Playwright): right as copies of the page open and close."""

from __future__ import annotations

import pytest

from tests import test_browser
from tests.test_browser import browser, context  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def demo(tmp_path):
    site = test_browser.DemoSite(tmp_path).start()
    yield site
    site.stop()


def viewers(page) -> str:
    """The sentence as the visitor reads it."""
    return " ".join(page.text_content("#viewers").split())


def wait_viewers(page, sentence: str) -> None:
    page.wait_for_function(
        "text => document.getElementById('viewers').textContent.replace(/\\s+/g, ' ').trim()"
        " === text",
        arg=sentence,
        timeout=15000,
    )


def test_viewers_of_a_page_are_counted_live_as_tabs_open_and_close(demo, context):  # noqa: F811 (the fixture)
    first = context.new_page()
    first.goto(demo.url + "/chat/")
    test_browser.wait_state(first, "live over WebSocket")
    assert viewers(first) == "1 person is viewing this page"
    second = context.new_page()
    second.goto(demo.url + "/chat/")
    wait_viewers(second, "2 people are viewing this page")
    wait_viewers(first, "2 people are viewing this page")
    # A copy rendered now starts at three (itself included), before it is even open.
    assert '<b id="viewers-count">3</b>' in demo.visit("/chat/")
    second.close()
    wait_viewers(first, "1 person is viewing this page")
    assert "changed" in (first.get_attribute("#viewers-count", "class") or "")
    second = context.new_page()
    second.goto(demo.url + "/chat/")
    wait_viewers(first, "2 people are viewing this page")
    second.reload()  # one copy closes as another opens: still two
    test_browser.wait_state(second, "live over WebSocket")
    wait_viewers(second, "2 people are viewing this page")
    wait_viewers(first, "2 people are viewing this page")


def test_a_page_renders_without_a_count_while_the_push_server_is_down(demo, context):  # noqa: F811 (the fixture)
    demo.stop_push()
    page = context.new_page()
    page.goto(demo.url + "/chat/")
    assert viewers(page) == "? people are viewing this page"
    demo.start_push()
    wait_viewers(page, "1 person is viewing this page")

"""The demo in a real browser: Debian's chromium driven by Playwright."""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from demo import views

from tests.conftest import ROOT, RedisServer, free_port
from tests.helpers import PageServer

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
DEMO = ROOT / "demo_site"


class DemoSite:
    """The demo as scripts/demo.sh runs it: migrate, then its serve_push and serve_django."""

    def __init__(self, workdir: Path, redis_url: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = {
            **os.environ,
            "VENV": sys.prefix,
            "DEMO_PORT": str(self.port),
            "DEMO_DB": str(workdir / "demo.sqlite3"),
            "DEMO_PUSH_PORT": str(free_port()),
            "DEMO_NOTIFIER_PORT": str(free_port()),
            "DEMO_HISTORY_SIZE": "100",
            "DEMO_REDIS_URL": redis_url or "",
            "PYTHONUNBUFFERED": "1",
        }
        self.push: subprocess.Popen | None = None
        self.django: subprocess.Popen | None = None
        self.manage("migrate", "-v0")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def push_url(self) -> str:
        return f"http://127.0.0.1:{self.env['DEMO_PUSH_PORT']}"

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, "manage.py", *args], cwd=DEMO, env=self.env, check=True)

    def _spawn(self, name: str, function: str) -> subprocess.Popen:
        """A server function of scripts/demo.sh (it execs: the process is the server)."""
        log = open(self.workdir / f"{name}.log", "ab")  # closed with the process
        script = f". scripts/demo.sh && cd demo_site && {function}"
        return subprocess.Popen(
            ["bash", "-c", script], cwd=ROOT, env=self.env, stdout=log, stderr=log
        )

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text()

    def start_push(self) -> None:
        self.push = self._spawn("push", "serve_push")
        wait_http(f"{self.push_url}/health")

    def stop_push(self) -> None:
        if self.push and self.push.poll() is None:
            self.push.send_signal(signal.SIGKILL)
            self.push.wait(10)

    def start(self) -> DemoSite:
        self.start_push()
        self.django = self._spawn("django", "serve_django")
        wait_http(f"{self.url}/login/")
        return self

    def visit(self, path: str = "/") -> str:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return response.read().decode()

    def stop(self) -> None:
        self.stop_push()
        if self.django and self.django.poll() is None:
            self.django.terminate()
            self.django.wait(10)


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture
def demo(tmp_path):
    site = DemoSite(tmp_path).start()
    yield site
    site.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        pytest.fail("Debian chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield instance
        instance.close()


@pytest.fixture
def context(browser):
    context = browser.new_context()
    yield context
    context.close()


def counter(page) -> int:
    return int(page.text_content("#counter"))


def wait_counter(page, value: int) -> None:
    page.wait_for_function(
        f"document.getElementById('counter').textContent === '{value}'", timeout=15000
    )


def wait_state(page, words: str) -> None:
    """Until the page's connection state, as the visitor reads it, starts with ``words``."""
    page.wait_for_function(
        "words => document.getElementById('state').textContent.startsWith(words)",
        arg=words,
        timeout=20000,
    )


def highlighted(page, selector: str) -> bool:
    return "changed" in (page.get_attribute(selector, "class") or "").split()


def assert_explains_itself(page, sentence: str, template: str, *functions) -> None:
    """The page says what it shows and shows its code as it is in the source files."""
    assert sentence in " ".join(page.text_content("#what").split())
    assert page.is_visible("#code-python") and page.is_visible("#code-template")
    python = page.text_content("#code-python")
    for function in functions:
        assert inspect.getsource(function) in python
    shown = page.text_content("#code-template")
    assert "{% serverpush_js" in shown
    source = (DEMO / "demo" / "templates" / "demo" / template).read_text()
    assert all(line.strip() in source for line in shown.splitlines())


def test_counter_page_explains_itself_and_flashes_live_changes(demo, context):
    page = context.new_page()
    page.goto(demo.url)
    assert_explains_itself(
        page, "Every visit to this page adds one", "index.html", views.index, views.index_update
    )
    assert 'addEventListener("serverpush_counter"' in page.text_content("#code-template")
    wait_state(page, "live over WebSocket")
    start = counter(page)
    assert not highlighted(page, "#counter")
    context.new_page().goto(demo.url)  # someone else visits
    wait_counter(page, start + 1)
    assert highlighted(page, "#counter")


def test_state_reads_reconnecting_while_the_push_server_is_down(demo, context):
    page = context.new_page()
    page.goto(demo.url)
    wait_state(page, "live over WebSocket")
    demo.stop_push()
    wait_state(page, "reconnecting…")
    demo.start_push()  # memory history: the page reloads to catch up (a visit of its own)
    wait_state(page, "live over ")
    start = counter(page)
    demo.visit("/")
    # Past ``start``: the reload may land after it was read and count one more.
    page.wait_for_function(
        f"Number(document.getElementById('counter').textContent) > {start}", timeout=15000
    )


def test_page_rendered_while_the_push_server_is_down_goes_live_when_it_is_back(demo, context):
    demo.stop_push()
    page = context.new_page()
    page.goto(demo.url)
    script = page.evaluate("document.querySelector('script[src$=\"/serverpush.js\"]').src")
    assert script.startswith(demo.url + "/static/")  # from Django, not the push server
    wait_state(page, "reconnecting…")
    demo.start_push()
    wait_state(page, "live over ")
    start = counter(page)
    # Django found the push server down when it rendered the page, and skips it for
    # SERVERPUSH_BACKOFF seconds: a visit in that window publishes nothing (it is
    # counted as unsent), and the page may go live sooner. A later visit's count
    # reaches the page.
    deadline = time.monotonic() + 20
    while counter(page) <= start:
        assert time.monotonic() < deadline, "no visit's count reached the live page"
        demo.visit("/")
        page.wait_for_timeout(500)


def test_two_pages_see_the_counter_live(demo, context):
    first, second = context.new_page(), context.new_page()
    first.goto(demo.url)
    start = counter(first)
    first.wait_for_function("ServerPush.state === 'websocket'")
    second.goto(demo.url)
    assert counter(second) == start + 1
    wait_counter(first, start + 1)
    demo.visit("/")
    wait_counter(first, start + 2)
    wait_counter(second, start + 2)


def test_page_rendered_before_an_update_catches_up_on_load(demo, context):
    html = demo.visit("/")  # rendered now, reaching the browser later
    rendered = int(html.split('id="counter">')[1].split("<")[0])
    stale = PageServer(html, demo.url)  # rendered earlier; scripts and CSS from the demo
    try:
        page = context.new_page()
        demo.visit("/")
        demo.visit("/")  # two updates published before the page loads
        page.goto(stale.url)
        wait_counter(page, rendered + 2)
    finally:
        stale.close()


def test_long_poll_when_websocket_is_blocked(demo, context):
    page = context.new_page()
    page.add_init_script("window.WebSocket = function () { throw new Error('blocked'); };")
    page.goto(demo.url)
    start = counter(page)
    wait_state(page, "live over long-poll")
    demo.visit("/")
    wait_counter(page, start + 1)
    demo.visit("/")
    wait_counter(page, start + 2)


def test_push_server_restart_without_history_resets_the_page(demo, context):
    page = context.new_page()
    page.goto(demo.url)
    page.wait_for_function("ServerPush.state === 'websocket'")
    page.evaluate("window.beforeRestart = true")
    demo.stop_push()
    missed = counter(page) + 1
    demo.visit("/")  # published nowhere: the push server is down
    demo.start_push()  # memory history: everything before this is gone
    page.wait_for_function("window.beforeRestart === undefined", timeout=20000)  # reloaded
    page.wait_for_function("typeof ServerPush !== 'undefined'")
    assert counter(page) >= missed


def test_push_server_restart_with_redis_catches_up_without_reload(tmp_path, context):
    redis = RedisServer(tmp_path).start()
    site = DemoSite(tmp_path, redis.url).start()
    try:
        page = context.new_page()
        page.goto(site.url)
        page.wait_for_function("ServerPush.state === 'websocket'")
        page.evaluate("window.beforeRestart = true")
        start = counter(page)
        site.stop_push()
        site.start_push()
        site.visit("/")
        site.visit("/")
        wait_counter(page, start + 2)
        assert page.evaluate("window.beforeRestart") is True  # caught up, no reload
    finally:
        site.stop()
        redis.stop(signal.SIGKILL)


def login(context, site, name):
    page = context.new_page()
    page.goto(site.url + "/login/")
    page.fill("#id_username", name)
    page.fill("#id_password", "demo")
    page.click("#login")
    page.wait_for_url(site.url + "/me/")
    return page


def test_each_user_sees_only_their_own_updates(demo, browser):
    alice_context, bob_context = browser.new_context(), browser.new_context()
    try:
        alice, bob = login(alice_context, demo, "alice"), login(bob_context, demo, "bob")
        assert_explains_itself(
            alice,
            "Press +1: the score changes on every page alice has open",
            "me.html",
            views.me,
            views.me_update,
            views.score_for_page,
        )
        for page in (alice, bob):
            page.wait_for_function("ServerPush.state === 'websocket'")
            page.evaluate(
                "window.scores = [];"
                "document.addEventListener('serverpush_score', e => scores.push(e.detail));"
            )
        bob_points = bob.text_content("#points")
        alice.click("#bump button")
        alice.wait_for_function("document.getElementById('points').textContent === '1'")
        alice_again = alice_context.new_page()
        alice_again.goto(demo.url + "/me/")
        alice_again.wait_for_function("ServerPush.state === 'websocket'")
        alice.click("#bump button")
        alice_again.wait_for_function("document.getElementById('points').textContent === '2'")
        assert highlighted(alice_again, "#points")  # changed by alice's other tab
        bob.click("#bump button")
        bob.wait_for_function("document.getElementById('points').textContent === '1'")
        assert alice.text_content("#points") == "2"
        assert bob.text_content("#points") == str(int(bob_points) + 1)
        assert {score["for"] for score in alice.evaluate("scores")} == {"alice"}
        assert bob.evaluate("scores") == [{"points": int(bob_points) + 1, "for": "bob"}]
    finally:
        alice_context.close()
        bob_context.close()


def test_chat_through_send_update(demo, context):
    reader, writer = context.new_page(), context.new_page()
    reader.goto(demo.url + "/chat/")
    writer.goto(demo.url + "/chat/")
    assert_explains_itself(
        reader,
        "A message sent here appears at once on every open chat page",
        "chat.html",
        views.chat,
    )
    assert "send_update(" in reader.text_content("#code-python")
    wait_state(reader, "live over WebSocket")
    writer.fill("#text", "hello from the other tab")
    writer.click("#say button")
    reader.wait_for_selector("#messages li.changed >> text=hello from the other tab")
    assert reader.locator("#messages li").count() == writer.locator("#messages li").count()


def test_seed_jquery_bindings_work_unchanged(demo, context):
    import jquery

    jquery_js = Path(jquery.__file__).parent / "static" / "js" / "jquery.min.js"
    page = context.new_page()
    page.goto(demo.url)
    page.add_script_tag(path=str(jquery_js))
    page.evaluate(
        """() => {
        window.seen = [];
        $(document).bind('serverpush_counter', function (event, data) { seen.push(data.value); });
        $.updates = ServerPush.updates;
        $.updates.subscribe('demo.jq');
        $.updates.registerProcessor('demo.jq', 'note', function (data) { seen.push(data.text); });
    }"""
    )
    page.wait_for_function("ServerPush.state === 'websocket'")
    start = counter(page)
    demo.visit("/")
    page.wait_for_function(f"seen.indexOf({start + 1}) >= 0")
    from twistedpush.client import PushClient

    PushClient(port=int(demo.env["DEMO_NOTIFIER_PORT"])).send_update(
        "demo.jq", {"type": "note", "text": "processed"}
    )
    page.wait_for_function("seen.indexOf('processed') >= 0")
    assert page.evaluate(f"seen.filter(v => v === {start + 1}).length") == 1


def test_reset_can_be_handled_by_the_page(demo, context):
    page = context.new_page()
    page.goto(demo.url)
    page.wait_for_function("ServerPush.state === 'websocket'")
    page.evaluate(
        "window.resets = [];"
        "document.addEventListener('serverpush_reset', e => {"
        "  e.preventDefault(); resets.push(e.detail.channel); });"
    )
    demo.stop_push()
    demo.start_push()  # history gone: the page is told, and keeps itself
    page.wait_for_function("resets.length === 1", timeout=20000)
    assert page.evaluate("resets")[0].startswith("sp.counter.")
    start = counter(page)
    demo.visit("/")
    wait_counter(page, start + 1)  # still live after the reset


# The /wamp/ page: the chat through AutobahnJS (npm package autobahn-browser)


AUTOBAHN_JS = ROOT / "node_modules" / "autobahn-browser" / "autobahn.min.js"


def wamp_page(context, url: str):
    if not AUTOBAHN_JS.exists():
        pytest.fail("AutobahnJS is not installed: run `npm ci` at the repository root")
    page = context.new_page()
    page.goto(url)
    wait_state(page, "live over WAMP")
    return page


def received(page) -> int:
    return int(page.text_content("#received"))


def chat_update(port: str, id: int, text: str) -> int:
    """A chat message as the chat view publishes it, sent to the notifier on ``port``."""
    from twistedpush.client import PushClient

    message = {"id": id, "author": "test", "text": text}
    return PushClient(port=int(port)).send_update("demo.chat", message, name="chat_message")


def test_wamp_page_explains_itself_and_is_live_with_v1_pages(demo, context):
    reader = wamp_page(context, demo.url + "/wamp/")
    assert "AutobahnJS subscribes to the topic demo.chat" in " ".join(
        reader.text_content("#what").split()
    )
    assert inspect.getsource(views.wamp_chat) in reader.text_content("#code-python")
    shown = reader.text_content("#code-template")
    assert "{% serverpush_wamp_config" in shown and "new autobahn.Connection" in shown
    script = reader.evaluate("document.querySelector('script[src$=\"autobahn.min.js\"]').src")
    assert script == demo.url + "/static/autobahn/autobahn.min.js"  # from Django's static files
    writer = context.new_page()
    writer.goto(demo.url + "/chat/")  # the v1 client
    wait_state(writer, "live over WebSocket")
    writer.fill("#text", "from serverpush.js")
    writer.click("#say button")
    reader.wait_for_selector("#messages li.changed >> text=from serverpush.js")
    assert received(reader) == 1
    reader.fill("#text", "from AutobahnJS")
    reader.click("#say button")
    writer.wait_for_selector("#messages li.changed >> text=from AutobahnJS")
    reader.wait_for_selector("#messages li >> text=from AutobahnJS")


def test_wamp_page_rendered_before_updates_catches_up_with_since(demo, context):
    html = demo.visit("/wamp/")  # rendered now, reaching the browser later
    stale = PageServer(html, demo.url)  # rendered earlier; scripts and CSS from the demo
    try:
        port = demo.env["DEMO_NOTIFIER_PORT"]
        chat_update(port, 900001, "published before the page loaded")
        last = chat_update(port, 900002, "this one too")
        page = wamp_page(context, stale.url)
        page.wait_for_selector('#messages li[data-id="900002"]')
        assert page.is_visible('#messages li[data-id="900001"]')
        assert received(page) == 2
        assert page.text_content("#resume") == str(last)
    finally:
        stale.close()


def test_wamp_page_resumes_from_its_last_publication_after_a_restart(
    tmp_path, context, push_server
):
    redis = RedisServer(tmp_path).start()
    site = DemoSite(tmp_path, redis.url).start()
    try:
        other_node = push_server("--redis", redis.url, "--public", "demo.*")
        page = wamp_page(context, site.url + "/wamp/")
        page.evaluate("window.beforeRestart = true")
        first = chat_update(site.env["DEMO_NOTIFIER_PORT"], 900011, "before the restart")
        page.wait_for_selector('#messages li[data-id="900011"]')
        assert page.text_content("#resume") == str(first)
        site.stop_push()
        # Published while the page's push server is down, through another node on the
        # same Redis: the page can only get them by resuming from ``first``.
        chat_update(str(other_node.notifier_port), 900012, "while it was down")
        missed = chat_update(str(other_node.notifier_port), 900013, "this one too")
        site.start_push()
        page.wait_for_selector('#messages li[data-id="900013"]', timeout=30000)
        assert page.is_visible('#messages li[data-id="900012"]')
        assert page.text_content("#resume") == str(missed)
        live = chat_update(site.env["DEMO_NOTIFIER_PORT"], 900014, "live again")
        page.wait_for_selector('#messages li[data-id="900014"]')
        assert received(page) == 4  # each once: a repeat would have come before the live one
        assert page.text_content("#resume") == str(live)
        assert page.evaluate("window.beforeRestart") is True  # resumed, not reloaded
    finally:
        site.stop()
        redis.stop(signal.SIGKILL)

"""A django-pushserver page, as it was written for django-pushserver, in Debian chromium:
``{% load pushserver %}``, ``$.updates.subscribe({'main': '{% channel_url ... %}'})`` and
``$.updates.registerProcessor('main', 'answer', fn)``, with a jQuery push-relay client
(tests/js/pushrelay_updates.js, written from the protocol) or with serverpush.js.

The views below are this module's URLconf, served by ``manage.py runserver`` with the
demo's settings in a process of its own (Playwright's event loop leaves no room for
Django's database in the test process), next to a push server of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jquery
import pytest
from django.http import HttpResponse
from django.template import engines
from django.urls import path

from django_adapter import conf
from tests.conftest import ROOT, free_port
from tests.test_browser import browser, context, wait_http  # noqa: F401 (fixtures)
from twistedpush.client import PushClient

pytestmark = [pytest.mark.integration, pytest.mark.browser]

JQUERY = Path(jquery.__file__).parent / "static" / "js" / "jquery.min.js"
RELAY_CLIENT = ROOT / "tests" / "js" / "pushrelay_updates.js"

# django-pushserver's usage, unchanged but for where the client script comes from.
PAGE = engines["django"].from_string(
    """{% load pushserver static %}<!doctype html><title>answers</title>
<ul id="answers"></ul>
<script src="/jquery.js"></script>
<script src="{{ client }}"></script>
<script>
  $.updates.subscribe({
    'main': '{% filter escapejs %}{% channel_url "private.answers" %}{% endfilter %}'
  });
  $.updates.registerProcessor('main', 'answer', function (data) {
    $('#answers').append($('<li>').text(data.value));
  });
</script>"""
)


def relay_page(request):
    return HttpResponse(PAGE.render({"client": "/updates.js"}, request))


def serverpush_page(request):
    return HttpResponse(PAGE.render({"client": "/static/serverpush/serverpush.js"}, request))


def script(file: Path):
    return lambda request: HttpResponse(file.read_bytes(), content_type="text/javascript")


urlpatterns = [
    path("relay/", relay_page),
    path("serverpush/", serverpush_page),
    path("jquery.js", script(JQUERY)),
    path("updates.js", script(RELAY_CLIENT)),
]


RUNSERVER = """
import sys
from django.conf import settings
settings.ROOT_URLCONF = "tests.test_relay_browser"
import django
django.setup()
from django.core.management import call_command
call_command("runserver", sys.argv[1], "--noreload", "--skip-checks")
"""


@pytest.fixture
def push(push_server, tmp_path):
    """The push server, and Django on a port of its own: yields (push server, Django URL)."""
    server = push_server("--secret", conf.settings.secret, "--public", "demo.*")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'demo_site'}",
        "DJANGO_SETTINGS_MODULE": "demo_site.settings",
        "DEMO_DB": str(tmp_path / "db.sqlite3"),
        "DEMO_PUSH_PORT": str(server.port),
        "DEMO_NOTIFIER_PORT": str(server.notifier_port),
    }
    with open(tmp_path / "django.log", "ab") as log:
        django = subprocess.Popen(
            [sys.executable, "-c", RUNSERVER, f"127.0.0.1:{port}"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/jquery.js")
        yield server, f"http://127.0.0.1:{port}"
    finally:
        django.terminate()
        django.wait(10)


def answer(server, value, kind="answer"):
    PushClient(port=server.notifier_port).send_update(
        "private.answers", {"type": kind, "value": value}
    )


def answers(page) -> list[str]:
    return page.eval_on_selector_all("#answers li", "items => items.map(i => i.textContent)")


def test_a_django_pushserver_page_with_a_push_relay_client(push, context):  # noqa: F811
    push, django = push
    answer(push, "published before the page")
    page = context.new_page()
    page.goto(django + "/relay/")
    page.wait_for_function("document.querySelectorAll('#answers li').length === 1")
    answer(push, "other", kind="question")  # no processor for it
    answer(push, 42)
    page.wait_for_function("document.querySelectorAll('#answers li').length === 2")
    assert answers(page) == ["published before the page", "42"]  # the whole history, then live


def test_the_same_page_with_serverpush_js(push, context):  # noqa: F811
    push, django = push
    page = context.new_page()
    page.goto(django + "/serverpush/")
    page.wait_for_function("ServerPush.state === 'websocket'")
    page.wait_for_function("ServerPush.channels.get('private.answers').since !== null")
    answer(push, 42)
    page.wait_for_function("document.querySelectorAll('#answers li').length === 1")
    assert answers(page) == ["42"]

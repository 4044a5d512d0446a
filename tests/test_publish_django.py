"""``python manage.py sendupdate CHANNEL JSON [--name N]`` against a real push server:
in-process through call_command, and as a shell script runs it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration


def poll_from(server, since, channel="news.cli"):
    body = {"subscriptions": [{"channel": channel, "since": since}], "timeout": 0}
    request = urllib.request.Request(
        f"{server.url}/poll", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["messages"]


@pytest.fixture
def server(push_server, settings, monkeypatch):
    monkeypatch.delenv("SERVERPUSH_PUBLISHER_KEY", raising=False)
    settings.SERVERPUSH_PUBLISHER_KEY = "cli-key"
    started = push_server("--public", "news.*", "--publisher-key", "cli-key")
    settings.SERVERPUSH_NOTIFIER_PORT = started.notifier_port
    return started


def sendupdate(*args: str) -> str:
    out = io.StringIO()
    call_command("sendupdate", *args, stdout=out)
    return out.getvalue().strip()


def test_publishes_with_a_name_and_prints_the_position(server):
    from django_adapter import current_timestamp

    since = current_timestamp()
    ts = int(sendupdate("news.cli", '{"title": "Hello"}', "--name", "headline"))
    assert poll_from(server, since) == [
        {"type": "update", "channel": "news.cli", "ts": ts, "name": "headline",
         "data": {"title": "Hello"}}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("news.cli", "{not json"), "the data is not JSON"),
        (("news.cli", "NaN"), "the data is not JSON"),
        (("bad channel", "1"), "channel must be"),
        (("news.cli", "1", "--name", "bad name"), "name must be"),
    ],
)
def test_mistakes_are_one_line_errors(server, args, message):
    with pytest.raises(CommandError, match=message):
        sendupdate(*args)


def test_an_unreachable_push_server_says_where_it_was_looked_for(settings):
    settings.SERVERPUSH_NOTIFIER_PORT = free_port()
    settings.SERVERPUSH_BACKOFF = 0
    with pytest.raises(CommandError, match=r"is `manage\.py runserverpush` running"):
        sendupdate("news.cli", "1")


def test_from_a_shell(server, tmp_path):
    from django_adapter import current_timestamp

    since = current_timestamp()
    env = {
        **os.environ,
        "DEMO_NOTIFIER_PORT": str(server.notifier_port),
        "DEMO_DB": str(tmp_path / "db.sqlite3"),
        "SERVERPUSH_PUBLISHER_KEY": "cli-key",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "sendupdate", "news.cli", "[1, 2]"],
        cwd=ROOT / "demo_site",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [update] = poll_from(server, since)
    assert update["ts"] == int(done.stdout) and update["data"] == [1, 2]

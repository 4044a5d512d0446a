"""``runserverpush`` as a site runs it: a fresh process, a real session, real WebSockets.

Presence signals must work in a process that imported nothing beforehand, speak
only for the site's own pages, and stay one signal per real change however a
connection re-subscribes; the log must not gain a line per Django connection.
"""

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable

import pytest
from websockets.sync.client import connect

from tests.conftest import ROOT, free_port
from twistedpush.client import PushClient

pytestmark = pytest.mark.integration

DEMO = ROOT / "demo_site"

RUNNER = """
import sys

import django

django.setup()
from django.core.management import call_command

from django_adapter.signals import channel_subscribe, channel_unsubscribe


def heard(sender, signal, user, channel, **kwargs):
    kind = "joined" if signal is channel_subscribe else "left"
    print("presence:", kind, user.username or "anonymous", channel, flush=True)


channel_subscribe.connect(heard)
channel_unsubscribe.connect(heard)
call_command("runserverpush", *sys.argv[1:])
"""
"""What a site does: receivers connected at startup, then the command."""


class Site:
    """The demo site's database and ports, for processes of its own."""

    def __init__(self, workdir) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "demo_site.settings",
            "PYTHONPATH": str(ROOT),  # this checkout's code, whatever is installed
            "DEMO_DB": str(workdir / "db.sqlite3"),
            "DEMO_PUSH_PORT": str(self.port),
            "DEMO_NOTIFIER_PORT": str(free_port()),
            "PYTHONUNBUFFERED": "1",
        }
        self.lines: queue.Queue[str] = queue.Queue()
        self.process: subprocess.Popen | None = None

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=DEMO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def manage(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start(self, *command: str) -> None:
        """Run ``command`` (its output read line by line) until /health answers."""
        self.process = subprocess.Popen(
            [sys.executable, *command],
            cwd=DEMO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.drain()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"runserverpush did not come up: {self.drain()}")

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate: Callable[[str], bool]) -> list[str]:
        """The lines written up to the first one ``predicate`` accepts."""
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            seen.append(line)
            if predicate(line):
                return seen
        raise AssertionError(f"no such line; the process wrote, last: {seen[-30:]}")

    def drain(self) -> list[str]:
        seen = []
        while not self.lines.empty():
            seen.append(self.lines.get())
        return seen

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def site(tmp_path):
    site = Site(tmp_path)
    site.manage("migrate", "-v0")
    yield site
    site.stop()


def alice_session(site: Site) -> str:
    """Alice's session cookie value, as a browser holds it after logging in."""
    return site.manage(
        "shell",
        "-c",
        "from django.test import Client; c = Client(); "
        "assert c.login(username='alice', password='demo'); print(c.cookies['sessionid'].value)",
    ).split()[-1]


def websocket(site: Site, origin: str, session: str):
    return connect(
        f"ws://127.0.0.1:{site.port}/ws",
        origin=origin,
        additional_headers={"Cookie": f"sessionid={session}"},
        proxy=None,
    )


def subscribe(socket, channel: str, times: int = 1) -> None:
    for _ in range(times):
        socket.send(json.dumps({"type": "subscribe", "channel": channel}))
    answered = 0
    while answered < times:
        message = json.loads(socket.recv(timeout=10))
        answered += message["type"] == "subscribed"


def test_presence_signals_from_a_fresh_process_for_the_sites_own_pages_once(site):
    session = alice_session(site)
    site.start("-c", RUNNER)
    with websocket(site, "http://evil.example", session) as evil:
        subscribe(evil, "demo.evil")  # another site's page, with alice's cookie
    with websocket(site, "http://127.0.0.1:8000", session) as page:
        subscribe(page, "demo.room")
        subscribe(page, "demo.room", times=3000)  # a loop that re-subscribes
    lines = site.until(lambda line: "presence: left" in line)
    assert [line[line.index("presence:") :] for line in lines if "presence:" in line] == [
        "presence: joined alice demo.room",
        "presence: left alice demo.room",
    ]
    assert not any("Traceback" in line or "failed" in line for line in lines), lines


@pytest.mark.parametrize(("verbosity", "shown"), [("1", False), ("2", True)])
def test_runserverpush_logs_no_line_per_django_connection(site, verbosity, shown):
    site.start("manage.py", "runserverpush", "-v", verbosity)
    for _ in range(3):  # as three Django threads would
        with PushClient(port=int(site.env["DEMO_NOTIFIER_PORT"])) as client:
            client.current_timestamp()
    urllib.request.urlopen(f"http://127.0.0.1:{site.port}/health?marker", timeout=10)
    lines = site.until(lambda line: "/health?marker" in line)
    assert any("NotifierProtocol connection" in line for line in lines) is shown


def test_runserverpush_refuses_a_public_glob_that_opens_page_groups(site):
    done = site.run("runserverpush", "--public", "*")
    assert done.returncode != 0
    assert "--public '*' matches page-group channels" in done.stderr

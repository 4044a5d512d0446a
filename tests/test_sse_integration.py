"""Server-Sent Events with a real client, ``curl -N``, against a real push server: the
documented command, live updates, and a resume with ``Last-Event-ID``."""

from __future__ import annotations

import json
import queue
import re
import shutil
import subprocess
import threading
import time

import pytest

from tests.test_publish_integration import example
from tests.test_readme import shell_env
from twistedpush.client import PushClient

pytestmark = pytest.mark.integration


class Curl:
    """``curl -N`` in bash, its output read line by line as it streams."""

    def __init__(self, script: str) -> None:
        assert shutil.which("curl"), "curl is not installed"
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {script}"],
            env=shell_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.events: list[dict] = []
        self.comments: list[str] = []
        self._fields: dict = {}

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def until(self, predicate, what: str, timeout: float = 10) -> None:
        """Read events until ``predicate(events)`` holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"curl did not show {what}: {self.events}") from None
            if line.startswith(":"):
                self.comments.append(line)
            elif line:
                name, _, value = line.partition(": ")
                self._fields[name] = value
            elif "data" in self._fields:
                self._fields["message"] = json.loads(self._fields["data"])
                self.events.append(self._fields)
                self._fields = {}
            else:
                self._fields = {}

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)


def test_the_documented_curl_command_streams_live_updates(push_server):
    server = push_server("--public", "news.*")
    curl = Curl(example("sse-curl", server.port))
    try:
        curl.until(lambda events: events, "the subscribed event")
        assert curl.comments[0] == ": twistedpush"  # the first line of the stream
        assert curl.events[0]["event"] == "subscribed"
        push = PushClient(port=server.notifier_port)
        first = push.send_update("news.demo", {"title": "Hello"}, name="headline")
        second = push.send_update("news.demo", [1, 2])
        curl.until(lambda events: len(events) == 3, "two updates")
        headline, plain = curl.events[1:]
        assert (headline["id"], headline["event"]) == (str(first), "headline")
        assert headline["message"]["data"] == {"title": "Hello"}
        assert plain["id"] == str(second) and "event" not in plain
        server.wait_for(lambda h: h["connections"]["sse"] == 1, "the stream in /health")
    finally:
        curl.stop()
    server.wait_for(lambda h: h["connections"]["sse"] == 0, "curl's stream to be forgotten")


def test_curl_resumes_with_last_event_id_missing_nothing(push_server):
    server = push_server("--public", "news.*")
    push = PushClient(port=server.notifier_port)
    seen = push.send_update("news.demo", 1)
    missed = [push.send_update("news.demo", n) for n in (2, 3)]
    url = f"http://127.0.0.1:{server.port}/sse/news.demo"
    curl = Curl(f"curl -sN -H 'Last-Event-ID: {seen}' '{url}?since=0'")
    try:
        curl.until(lambda events: len(events) == 3, "the two missed updates and subscribed")
        assert [int(e["id"]) for e in curl.events[:2]] == missed
        assert curl.events[2]["event"] == "subscribed"
    finally:
        curl.stop()


def test_the_readmes_sse_example(push_server):
    from tests.test_readme import snippet

    server = push_server("--public", "news.*")
    curl = Curl(re.sub(r"\b8013\b", str(server.port), snippet("sse")))
    try:
        curl.until(lambda events: events, "the subscribed event")
        ts = PushClient(port=server.notifier_port).send_update("news.demo", "hi")
        curl.until(lambda events: len(events) == 2, "the update")
        assert curl.events[1]["id"] == str(ts)
    finally:
        curl.stop()

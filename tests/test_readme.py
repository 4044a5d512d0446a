"""The README's commands and snippets work as written, pasted in order.

Each snippet run here is the fenced block that follows a ``<!-- readme: NAME -->``
comment in README.md (invisible once rendered), read afresh on every run, so a
snippet that breaks fails its test. Python snippets are pasted into an
interactive ``python -i`` session, shell ones run by bash, in a directory of
the test's own. The one change made to them: the README's ports become free
ones: 8013 (browsers) and 8014 (publishers) in the snippets, and the server's
command line gets ``--port`` and ``--notifier`` options for them.
"""

from __future__ import annotations

import ast
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import ROOT, PushServer
from twistedpush.client import PushClient

pytestmark = pytest.mark.integration

BLOCK = re.compile(r"<!-- readme: (?P<name>[\w-]+) -->\n```\w*\n(?P<body>.*?)\n```", re.S)
BIN = str(Path(sys.executable).parent)  # python and twistd, as after the README's install


def snippet(name: str) -> str:
    """The README's block called ``name``, as it reads today."""
    blocks = {m["name"]: m["body"] for m in BLOCK.finditer((ROOT / "README.md").read_text())}
    assert name in blocks, f"README.md has no block marked <!-- readme: {name} -->"
    # The tests run only what addresses this machine (loopback).
    assert all(ip.startswith("127.") for ip in re.findall(r"\d+\.\d+\.\d+\.\d+", blocks[name]))
    return blocks[name]


def shell_env(**extra: str) -> dict[str, str]:
    """A shell where the README's install is done; no server secrets but those given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERPUSH_")}
    return {**env, "PATH": f"{BIN}:{env['PATH']}", "PYTHONUNBUFFERED": "1", **extra}


class ReadmeServer(PushServer):
    """The README's server block, run by bash on free ports."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        super().__init__(workdir)
        self.env = env

    def on_ports(self, text: str) -> str:
        text = re.sub(r"\b8013\b", str(self.port), text)
        return re.sub(r"\b8014\b", str(self.notifier_port), text)

    def start(self) -> ReadmeServer:
        block = snippet("server")
        assert block.count("twistd -n serverpush") == 1, block
        command = block.replace(
            "twistd -n serverpush",
            f"twistd -n serverpush --port tcp:{self.port}:interface=127.0.0.1"
            f" --notifier tcp:{self.notifier_port}:interface=127.0.0.1",
        )
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", command], cwd=self.workdir, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the README's server exited: {self.log.read_text()}")
            try:
                self.health()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop bash and the twistd it started (its process group)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(10)


@pytest.fixture
def readme_server(tmp_path: Path) -> Iterator:
    """A factory: ``readme_server(**env)`` starts the README's server in ``tmp_path``."""
    servers: list[ReadmeServer] = []

    def start(**env: str) -> ReadmeServer:
        server = ReadmeServer(tmp_path, shell_env(**env)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class PythonSession:
    """The named snippets pasted in order into one interactive ``python``."""

    def __init__(self, server: ReadmeServer, *names: str, **env: str) -> None:
        pasted = "".join(server.on_ports(snippet(name)) + "\n\n" for name in names)
        self.process = subprocess.Popen(
            [sys.executable, "-i", "-q"], cwd=server.workdir, env=shell_env(**env), text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self.process.stdin.write(pasted)
        self.process.stdin.close()
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        self.errors = ""

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.put(line)

    def printed(self, count: int, timeout: float = 15) -> list[dict]:
        """The next ``count`` dicts the session printed (other lines are skipped)."""
        found: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(found) < count:
            try:
                line = self.lines.get(timeout=max(0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise AssertionError(f"printed {found}, then nothing: {self.errors}") from None
            if line.startswith("{"):
                found.append(ast.literal_eval(line))
        return found

    def close(self) -> str:
        """End the session (a subscriber loops forever); return its stderr."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        assert self.process.stderr
        self.errors = self.process.stderr.read()
        return self.errors

    def finish(self) -> str:
        """Wait for a session that ends by itself; return its stderr."""
        self.process.wait(30)
        return self.close()


def test_publish_then_subscribe_catches_up_then_goes_live(readme_server):
    server = readme_server()
    session = PythonSession(server, "publish", "subscribe")
    caught_up = session.printed(4)
    assert [(m["type"], m["channel"], m.get("data")) for m in caught_up] == [
        ("update", "news.demo", {"title": "Hello"}),
        ("update", "news.demo", {"n": 1}),
        ("update", "news.demo", {"n": 2}),
        ("subscribed", "news.demo", None),
    ]
    PushClient("127.0.0.1", server.notifier_port).send_update("news.demo", {"title": "Live"})
    [live] = session.printed(1)
    assert live["data"] == {"title": "Live"}
    assert "Traceback" not in session.close()


def test_long_poll_with_curl_answers_when_an_update_is_published(readme_server):
    server = readme_server()
    poll = subprocess.Popen(
        ["bash", "-c", server.on_ports(snippet("long-poll"))], cwd=server.workdir,
        env=shell_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    server.wait_for(lambda h: h.get("connections", {}).get("longpoll") == 1, "curl's long-poll")
    assert "Traceback" not in PythonSession(server, "publish").finish()
    out, _ = poll.communicate(timeout=30)
    answer = json.loads(out)
    assert answer["messages"][0]["channel"] == "news.demo"
    assert answer["messages"][0]["data"] == {"title": "Hello"}


def test_a_token_opens_a_private_channel(readme_server):
    server = readme_server()
    session = PythonSession(server, "token")
    [reply] = session.printed(1)
    assert (reply["type"], reply["channel"]) == ("subscribed", "user:42")
    assert "Traceback" not in session.finish()


def test_a_publisher_key_is_needed_and_enough(readme_server):
    server = readme_server(SERVERPUSH_PUBLISHER_KEY="the key")
    accepted = PythonSession(server, "publisher-key", SERVERPUSH_PUBLISHER_KEY="the key")
    assert "Traceback" not in accepted.finish()
    refused = PythonSession(server, "publisher-key", SERVERPUSH_PUBLISHER_KEY="another")
    assert "twistedpush.errors.Unauthorized" in refused.finish()


def test_a_smoke_bench_run_prints_no_ratios_to_set_against_the_readme():
    """``scripts/test.sh`` ends with a smoke run: its tiny sizes once printed "0.50x Nchan"."""
    from bench import bench

    results = {
        "twistedpush": {"fanout_1": {"deliveries_per_s": 100.0}},
        "nchan": {"fanout_1": {"deliveries_per_s": 200.0}},
    }
    smoke = bench.report(results, "smoke", 60).split("\nRaw results:")[0]  # what it prints
    assert "not comparable" in smoke
    assert "/ nchan" not in smoke and "0.50x" not in smoke
    assert "| twistedpush / nchan |" in bench.report(results, "full", 60)
    assert "| 0.50x |" in bench.report(results, "full", 60)


def test_the_bench_report_sets_wamp_against_v1_and_against_crossbar():
    """Issue 13's target is WAMP / v1 fan-out in the same run; Crossbar's column gets a ratio."""
    from bench import bench

    ours = {"fanout_32": {"deliveries_per_s": 400.0}, "wamp_fanout_32": {"deliveries_per_s": 300.0}}
    results = {"twistedpush": ours, "crossbar": {"wamp_fanout_32": {"deliveries_per_s": 100.0}}}
    full = bench.report(results, "full", 60)
    assert "| WAMP fan-out / WebSocket fan-out, 32 in flight | 0.75x | n/a |  |" in full
    assert "| WAMP fan-out, 32 in flight: deliveries/s | 300 | 100 | 3.00x |" in full
    smoke = bench.report(results, "smoke", 60).split("\nRaw results:")[0]
    assert "0.75x" not in smoke and "WAMP fan-out / WebSocket" not in smoke

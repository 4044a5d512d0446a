"""docs/protocol.md's HTTP publishing examples, run as written with real curl and Node
(``fetch``) against a real push server, and checked on a subscriber.

Each example is the fenced block after an ``<!-- example: NAME -->`` comment in
docs/protocol.md, read afresh on every run. The one change made to them: port
8013 becomes the test server's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_readme import shell_env

pytestmark = pytest.mark.integration

BLOCK = re.compile(r"<!-- example: (?P<name>[\w-]+) -->\n```\w*\n(?P<body>.*?)\n```", re.S)
KEY = "0123456789abcdef-test-key"


def example(name: str, port: int, document: Path = ROOT / "docs" / "protocol.md") -> str:
    """The example block ``name``, for a server on ``port``."""
    blocks = {m["name"]: m["body"] for m in BLOCK.finditer(document.read_text())}
    assert name in blocks, f"{document.name} has no block marked <!-- example: {name} -->"
    return re.sub(r"\b8013\b", str(port), blocks[name])


@pytest.fixture
def server(push_server):
    return push_server("--public", "news.*", "--publisher-key", KEY)


def run_sh(script: str, key: str = KEY) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script],
        env=shell_env(SERVERPUSH_PUBLISHER_KEY=key),
        capture_output=True,
        text=True,
        timeout=30,
    )


def subscribe_from_start(server, channel="news.demo"):
    """A long-poll position taken before anything is published."""
    request = urllib.request.Request(
        f"{server.url}/poll",
        data=json.dumps({"subscriptions": [{"channel": channel}], "timeout": 0}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["ts"]


def published_since(server, since, channel="news.demo") -> list[dict]:
    body = {"subscriptions": [{"channel": channel, "since": since}], "timeout": 0}
    request = urllib.request.Request(
        f"{server.url}/poll", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["messages"]


def test_curl_publishes_one_update(server):
    since = subscribe_from_start(server)
    done = run_sh(example("publish-curl", server.port))
    assert done.returncode == 0, done.stderr
    ts = json.loads(done.stdout)["ts"]
    [update] = published_since(server, since)
    assert update == {
        "type": "update", "channel": "news.demo", "ts": ts, "name": "headline",
        "data": {"title": "Hello from curl"},
    }  # fmt: skip


def test_curl_publishes_a_batch(server):
    since = subscribe_from_start(server)
    done = run_sh(example("publish-batch-curl", server.port))
    assert done.returncode == 0, done.stderr
    stamps = json.loads(done.stdout)["ts"]
    updates = published_since(server, since)
    assert [(u["ts"], u["name"], u["data"]) for u in updates] == [
        (stamps[0], None, {"n": 1}),
        (stamps[1], "tick", {"n": 2}),
    ]


def test_curl_with_a_wrong_key_is_refused_and_publishes_nothing(server):
    since = subscribe_from_start(server)
    script = example("publish-curl", server.port).replace("curl -s", "curl -s -w '%{http_code}'")
    done = run_sh(script, key="not-the-key")
    assert done.stdout.endswith("401")
    assert json.loads(done.stdout[:-3])["error"]["code"] == "unauthorized"
    assert published_since(server, since) == []


def test_node_fetch_publishes(server, tmp_path):
    node = shutil.which("node")
    assert node, "node is not installed (Node 20: apt-get install nodejs)"
    since = subscribe_from_start(server)
    (tmp_path / "publish.mjs").write_text(example("publish-node", server.port))
    done = subprocess.run(
        [node, "publish.mjs"],
        cwd=tmp_path,
        env=shell_env(SERVERPUSH_PUBLISHER_KEY=KEY),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    [update] = published_since(server, since)
    assert done.stdout.strip() == f"{{ ts: {update['ts']} }}"  # Node's console.log of the answer
    assert update["data"] == {"title": "Hello from Node"} and update["name"] == "headline"


def test_node_fetch_with_a_wrong_key_fails_loudly(server, tmp_path):
    (tmp_path / "publish.mjs").write_text(example("publish-node", server.port))
    done = subprocess.run(
        [shutil.which("node") or "node", "publish.mjs"],
        cwd=tmp_path,
        env=shell_env(SERVERPUSH_PUBLISHER_KEY="wrong"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "401" in done.stderr


def test_without_a_key_the_server_answers_404(push_server):
    server = push_server("--public", "news.*")
    done = run_sh(
        example("publish-curl", server.port).replace("curl -s", "curl -s -w '%{http_code}'")
    )
    assert done.stdout.endswith("404")


def test_the_readmes_http_publishing_example(server):
    from tests.test_readme import snippet

    since = subscribe_from_start(server)
    done = run_sh(re.sub(r"\b8013\b", str(server.port), snippet("http-publish")))
    assert done.returncode == 0, done.stderr
    [update] = published_since(server, since)
    assert update["ts"] == json.loads(done.stdout)["ts"]
    assert update["data"] == {"title": "Hello over HTTP"} and update["name"] == "headline"

"""docs/deploy/: the nginx site passes ``nginx -t`` and, run by a real nginx in front
of a real push server, carries WebSockets, Server-Sent Events and /stats; the
systemd unit passes ``systemd-analyze verify`` and its command line is valid."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.conftest import ROOT, free_port, twistd
from twistedpush.client import PushClient
from twistedpush.tap import Options

DEPLOY = ROOT / "docs" / "deploy"
SITE = DEPLOY / "nginx-twistedpush.conf"
UNIT = DEPLOY / "twistedpush.service"
STATS_KEY = "deploy-stats-key-0123456789"


def require(binary: str, package: str) -> str:
    """The binary's path; the test fails (never skips) without it."""
    found = shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(f"{binary} is not installed (apt-get install -y {package})")
    return found


class Nginx:
    """The site file in a test configuration of its own: certificate and ports
    substituted, every path under ``workdir``."""

    def __init__(self, workdir: Path, site: str, push_port: int = 8013) -> None:
        self.binary = require("nginx", "nginx")
        openssl = require("openssl", "openssl")
        self.workdir = workdir
        self.https = free_port()
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=www.example.com",
             "-keyout", str(workdir / "key.pem"), "-out", str(workdir / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        site = (
            site.replace(
                "/etc/letsencrypt/live/www.example.com/fullchain.pem", f"{workdir}/cert.pem"
            )
            .replace("/etc/letsencrypt/live/www.example.com/privkey.pem", f"{workdir}/key.pem")
            .replace("127.0.0.1:8013", f"127.0.0.1:{push_port}")
            .replace("listen 443 ", f"listen 127.0.0.1:{self.https} ")
            .replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
        )
        site = "\n".join(line for line in site.splitlines() if "listen [::]" not in line)
        (workdir / "site.conf").write_text(site)
        temp = " ".join(
            f"{kind}_temp_path {workdir}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.access_log = workdir / "access.log"
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(
            f"pid {workdir}/nginx.pid;\nerror_log {workdir}/error.log;\nevents {{}}\n"
            f"http {{\n  access_log {self.access_log};\n  {temp}\n"
            f"  include {workdir}/site.conf;\n}}\n"
        )
        self.process: subprocess.Popen | None = None

    def command(self, *args: str) -> list[str]:
        return [self.binary, "-e", str(self.workdir / "error.log"), "-p", str(self.workdir),
                "-c", str(self.conf), *args]  # fmt: skip

    def test(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command("-t"), capture_output=True, text=True)

    def start(self) -> Nginx:
        self.process = subprocess.Popen(
            self.command("-g", "daemon off;"), stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.https), timeout=1).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"nginx exited: {self.process.stderr.read()}") from None
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


def test_nginx_site_passes_nginx_t(tmp_path):
    result = Nginx(tmp_path, SITE.read_text()).test()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_t_catches_a_broken_site(tmp_path):
    broken = SITE.read_text().replace("proxy_buffering off;", "proxy_buffering of;", 1)
    result = Nginx(tmp_path, broken).test()
    assert result.returncode != 0 and "proxy_buffering" in result.stderr


@pytest.mark.integration
def test_through_nginx_websocket_sse_and_stats_work(tmp_path, push_server):
    node = push_server(
        "--public", "room*", "--stats-key", STATS_KEY, "--trusted-proxy", "127.0.0.1",
        "--allowed-origin", "https://www.example.com",
    )  # fmt: skip
    proxy = Nginx(tmp_path, SITE.read_text(), node.port).start()
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    base = f"127.0.0.1:{proxy.https}"
    try:
        sse = urllib.request.urlopen(f"https://{base}/sse/room.sse", context=tls, timeout=10)
        read_until(sse, b"event: subscribed")
        read_until(sse, b"data: ")  # the subscribed message's
        with connect(f"wss://{base}/ws", ssl=tls, origin="https://www.example.com") as client:
            client.send(json.dumps({"type": "subscribe", "channel": "room.ws"}))
            assert json.loads(client.recv(10))["type"] == "subscribed"
            PushClient(port=node.notifier_port).send_updates(
                [("room.ws", {"n": 1}, None), ("room.sse", {"n": 2}, None)]
            )
            assert json.loads(client.recv(10))["data"] == {"n": 1}
        # The event arrives while the stream stays open: nothing buffered it.
        assert json.loads(read_until(sse, b"data: ")[6:])["data"] == {"n": 2}
        sse.close()
        # The /stats page's own origin is let in (nginx passes the Host, port and all);
        # another one is not (--allowed-origin).
        with connect(f"wss://{base}/stats/ws", ssl=tls, origin=f"https://{base}") as viewer:
            viewer.send(json.dumps({"key": STATS_KEY}))
            snapshot = json.loads(viewer.recv(10))
            assert snapshot["totals"]["publish"] == 2
        with pytest.raises(InvalidStatus) as refused:
            connect(f"wss://{base}/stats/ws", ssl=tls, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        page = urllib.request.urlopen(f"https://{base}/stats?key={STATS_KEY}", context=tls)
        assert page.status == 200 and b"twistedpush stats" in page.read()
        health = json.load(urllib.request.urlopen(f"https://{base}/health", context=tls))
        assert health["status"] == "ok"
        # nginx logs what it proxies, but not /stats: its address carries the key.
        logged = proxy.access_log.read_text()
        assert "GET /health " in logged
        assert "/stats" not in logged and STATS_KEY not in logged
    finally:
        proxy.stop()


def read_until(stream, start: bytes) -> bytes:
    """The first line of an event stream that starts with ``start`` (bounded)."""
    for _ in range(20):
        line = stream.readline()
        if line.startswith(start):
            return line
    raise AssertionError(f"no line starting {start!r} in the stream")


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed here (no systemd in this environment)")
    return found


def verify(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` of the unit, run by this checkout's twistd."""
    unit = tmp_path / "twistedpush.service"
    unit.write_text(text.replace("/srv/example/venv/bin/twistd", twistd()))
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True
    )


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    result = verify(tmp_path, UNIT.read_text())
    complaints = [line for line in result.stderr.splitlines() if "twistedpush.service" in line]
    assert result.returncode == 0 and complaints == [], result.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    result = verify(tmp_path, UNIT.read_text().replace("Restart=always", "Restart=sometimes"))
    assert "Failed to parse service restart specifier" in result.stderr


def exec_start() -> list[str]:
    text = UNIT.read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


def test_systemd_unit_runs_twistd_in_the_foreground_with_valid_options(monkeypatch):
    argv = exec_start()
    assert argv[0].endswith("/twistd")
    twistd_options, plugin_options = (
        argv[1 : argv.index("serverpush")],
        argv[argv.index("serverpush") + 1 :],
    )
    assert "--nodaemon" in twistd_options and "--pidfile=" in twistd_options
    monkeypatch.setenv("SERVERPUSH_STATS_KEY", STATS_KEY)
    options = Options()
    options.parseOptions(plugin_options)  # a bad option would exit 2
    assert options["log-format"] == "json" and options.log_file is not None
    assert options["stats-key"] == STATS_KEY  # from the unit's EnvironmentFile
    assert "--stats-key" not in plugin_options and "--secret" not in plugin_options


# docs/operations.md's examples, as written (ports made free, run in one shell)

DOC_BLOCK = re.compile(r"<!-- operations: (?P<name>[\w-]+) -->\n```\w*\n(?P<body>.*?)\n```", re.S)


@pytest.mark.integration
def test_operations_examples_start_curl_and_feed(tmp_path):
    require("curl", "curl")
    blocks = {
        m["name"]: m["body"]
        for m in DOC_BLOCK.finditer((ROOT / "docs" / "operations.md").read_text())
    }
    port, notifier = free_port(), free_port()
    start = blocks["start"].replace("8013", str(port))
    start = start.replace(
        "twistd -n serverpush",
        f"twistd --pidfile= -n serverpush --notifier tcp:{notifier}:interface=127.0.0.1",
    )
    (tmp_path / "feed.py").write_text(blocks["feed"].replace("8013", str(port)))
    script = "\n".join(
        [
            start + " > server.log 2>&1 &",
            f"for i in $(seq 200); do curl -sf http://127.0.0.1:{port}/health >/dev/null "
            "&& break; sleep 0.05; done",
            blocks["curl"].replace("8013", str(port)),
            "python feed.py",
            "kill %1; wait",
        ]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVERPUSH_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    result = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout == ("200\nwebsockets: 0\npublished per second, last minute: 0.0\n"), (
        result.stderr + (tmp_path / "server.log").read_text()
    )
    log = (tmp_path / "server.log").read_text().splitlines()
    assert all(json.loads(line)["time"] for line in log)  # --log-format json, as shown

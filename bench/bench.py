"""twistedpush side by side with Nchan, Django Channels and Crossbar.io, on this machine,
in one run.

    bash bench/run.sh            # installs the peers, then: python bench/bench.py
    python bench/bench.py --smoke   # tiny sizes, seconds: keeps the harness working (CI)

Every server runs on loopback and is driven by the same load generator: one
process, asyncio + uvloop + picows WebSocket clients (WAMP sessions too) and
plain asyncio EventSource-style clients, about 100 bytes of JSON per update.
Publishers keep 1, 8 or 32 publishes in flight (HTTP keep-alive for Nchan and
Channels, AMP for twistedpush, WAMP PUBLISH with acknowledge for Crossbar).
Results: bench/results/results.md and bench.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_connect
from twisted.protocols import amp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twistedpush.commands import Authenticate, SendUpdate  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PAD = "x" * 60  # about 100 bytes of JSON per update with the timestamp
KEY = "bench-publisher-key"  # twistedpush's --publisher-key: HTTP publishing needs one
CROSSBAR_VENV = ROOT / ".venv-crossbar"  # bench/run.sh installs Crossbar.io there
WAMP_HEADERS = {"Sec-WebSocket-Protocol": "wamp.2.json"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def proc_children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """CPU seconds used by ``pids`` so far: (in user space, in the kernel)."""
    user = kernel = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) / os.sysconf("SC_CLK_TCK")
        kernel += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return user, kernel


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_split(pids))


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# Servers

V1_SCENARIOS = ("many", "fanout_1", "fanout_8", "fanout_32", "latency", "latency_low", "catch_up",
                "publisher")  # fmt: skip
"""What every WebSocket peer runs; WAMP, SSE and HTTP publishing only where they are spoken."""


@dataclass
class Peer:
    """One server under test, and how the load generator talks to it."""

    name: str
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    history: bool = True  # can replay from a position
    scenarios: tuple[str, ...] | None = None  # the scenarios run on it (default: all)

    def pids(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid, *proc_children(self.process.pid)]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # Subscribing
    def ws_url(self, channels: list[str], replay: bool = False) -> str:
        raise NotImplementedError

    def subscribe_frames(self, channels: list[str], since: int | None = None) -> list[bytes]:
        return []

    def payload(self, frame: bytes) -> dict | None:
        """The published JSON of an update frame, None for other frames."""
        return json.loads(frame)

    # WAMP and Server-Sent Events subscribers (the peers that speak them)
    realm = ""

    def wamp_url(self) -> str:
        raise NotImplementedError

    def sse_path(self, channel: str) -> str:
        raise NotImplementedError

    # Publishing
    async def publisher(self) -> Callable:
        raise NotImplementedError

    async def http_publisher(self) -> Callable:
        """Publishing with one HTTP POST per update (the publish scenario)."""
        raise NotImplementedError


class PeerUnavailable(Exception):
    """A peer that cannot run on this machine (not installed): reported, not a failure."""


class HTTPPublisher:
    """HTTP/1.1 keep-alive POSTs, one request at a time on one connection."""

    def __init__(self, port: int, path: str, headers: str = "") -> None:
        self.port = port
        self.path = path
        self.headers = headers  # extra header lines, each ending in CRLF

    async def open(self) -> HTTPPublisher:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __call__(self, channel: str, body: bytes) -> None:
        try:
            await self._post(channel, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.open()  # the server ended the keep-alive connection: open another
            await self._post(channel, body)

    async def _post(self, channel: str, body: bytes) -> None:
        self.writer.write(
            f"POST {self.path}{channel} HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{self.headers}\r\n".encode()
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await self.reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 20"):
            raise RuntimeError(head[:80])


class AMPPublisher:
    """SendUpdate over asyncio, the same command definitions the server uses; a
    connection's first command is Authenticate, as the server's publisher key asks."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.key = key
        self.tag = 0

    async def open(self) -> AMPPublisher:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        await self._ask(
            Authenticate.commandName, Authenticate.makeArguments({"key": self.key}, None)
        )
        return self

    async def __call__(self, channel: str, body: bytes) -> None:
        box = SendUpdate.makeArguments({"channel": channel, "data": body, "name": None}, None)
        await self._ask(SendUpdate.commandName, box)

    async def _ask(self, command: bytes, box: amp.AmpBox) -> None:
        self.tag += 1
        box[b"_command"] = command
        box[b"_ask"] = b"%d" % self.tag
        self.writer.write(box.serialize())
        answer = {}
        while True:
            klen = int.from_bytes(await self.reader.readexactly(2), "big")
            if klen == 0:
                break
            key = await self.reader.readexactly(klen)
            vlen = int.from_bytes(await self.reader.readexactly(2), "big")
            answer[key] = await self.reader.readexactly(vlen)
        if b"_answer" not in answer:
            raise RuntimeError(answer)


class TwistedPush(Peer):
    realm = "serverpush"  # the server's default --wamp-realm

    def __init__(self, name: str, *redis_urls: str) -> None:
        super().__init__(name)
        self.notifier = free_port()
        self.redis_urls = redis_urls
        self.cap = 30000  # connections, in all and from one address

    def start(self, workdir: Path) -> None:
        twistd = shutil.which("twistd", path=str(Path(sys.executable).parent)) or "twistd"
        # No access log, as Nchan's nginx runs with access_log off.
        args = [twistd, "--pidfile=", "-n", "serverpush", "--public", "*",
                "--port", f"tcp:{self.port}:interface=127.0.0.1:backlog=4096",
                "--notifier", f"tcp:{self.notifier}:interface=127.0.0.1",
                "--max-connections", str(self.cap), "--max-connections-per-ip", str(self.cap),
                "--max-pending-bytes", str(64 * 1024 * 1024), "--publisher-key", KEY,
                "--no-access-log"]  # fmt: skip
        for url in self.redis_urls:
            args += ["--redis", url]
        log = open(workdir / f"{self.name}.log", "wb")
        self.process = subprocess.Popen(args, stdout=log, stderr=log)
        wait_port(self.port)
        wait_port(self.notifier)

    def ws_url(self, channels: list[str], replay: bool = False) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def subscribe_frames(self, channels: list[str], since: int | None = None) -> list[bytes]:
        return [
            json.dumps({"type": "subscribe", "channel": c, "since": since}).encode()
            for c in channels
        ]

    def payload(self, frame: bytes) -> dict | None:
        message = json.loads(frame)
        return message["data"] if message["type"] == "update" else None

    def wamp_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def sse_path(self, channel: str) -> str:
        return f"/sse/{channel}"

    async def publisher(self) -> Callable:
        return await AMPPublisher(self.notifier, KEY).open()

    async def http_publisher(self) -> Callable:
        return await HTTPPublisher(
            self.port, "/publish/", f"Authorization: Bearer {KEY}\r\n"
        ).open()


class TwistedPushShards(TwistedPush):
    """Two twistedpush nodes on two Redis shards (the run's Redis and one of its own):
    subscribers connect to each node in turn, publishers to each notifier in turn."""

    def __init__(self, name: str, redis_url: str) -> None:
        super().__init__(name, redis_url)
        self.scenarios = ("fanout_1", "fanout_8", "fanout_32", "latency", "catch_up")
        self.nodes: list[TwistedPush] = []
        self.second: Redis | None = None
        self._turn = 0

    def start(self, workdir: Path) -> None:
        self.second = Redis(workdir)
        urls = (*self.redis_urls, self.second.url)
        self.nodes = [TwistedPush(f"{self.name}-{n}", *urls) for n in range(2)]
        for node in self.nodes:
            node.start(workdir)
        self.port, self.notifier = self.nodes[0].port, self.nodes[0].notifier

    def pids(self) -> list[int]:
        return [pid for node in self.nodes for pid in node.pids()]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self.second is not None:
            self.second.stop()

    def _next(self) -> TwistedPush:
        self._turn += 1
        return self.nodes[self._turn % 2]

    def ws_url(self, channels: list[str], replay: bool = False) -> str:
        return self._next().ws_url(channels, replay)

    async def publisher(self) -> Callable:
        return await self._next().publisher()


class Nchan(Peer):
    def __init__(self, name: str) -> None:
        super().__init__(name, scenarios=(*V1_SCENARIOS, "sse_fanout_32", "publish_32"))

    def template(self) -> str:
        """nginx's configuration, before {prefix} and {port} are filled in."""
        return (ROOT / "bench" / "nchan.conf.template").read_text()

    def start(self, workdir: Path) -> None:
        prefix = workdir / "nchan"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(self.template().format(prefix=prefix, port=self.port))
        self.process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(prefix)],
            stdout=subprocess.DEVNULL, stderr=open(prefix / "stderr.log", "wb"),
        )  # fmt: skip
        try:
            wait_port(self.port)
        except RuntimeError:
            errors = (prefix / "error.log").read_text().strip().splitlines()[-3:]
            raise RuntimeError(f"nginx did not start: {' / '.join(errors)}") from None

    def ws_url(self, channels: list[str], replay: bool = False) -> str:
        if replay:
            return f"ws://127.0.0.1:{self.port}/replay/{channels[0]}"
        kind = "sub2" if len(channels) == 2 else "sub"
        return f"ws://127.0.0.1:{self.port}/{kind}/{'/'.join(channels)}"

    def sse_path(self, channel: str) -> str:
        return f"/sse/{channel}"

    async def publisher(self) -> Callable:
        return await HTTPPublisher(self.port, "/pub/").open()

    async def http_publisher(self) -> Callable:
        return await self.publisher()


class Channels(Peer):
    def __init__(self, name: str, redis_url: str) -> None:
        super().__init__(name, history=False, scenarios=V1_SCENARIOS)
        self.redis_url = redis_url

    def start(self, workdir: Path) -> None:
        daphne = shutil.which("daphne", path=str(Path(sys.executable).parent)) or "daphne"
        env = {**os.environ, "REDIS_URL": self.redis_url, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [daphne, "-b", "127.0.0.1", "-p", str(self.port), "bench.channels_app:application"],
            env=env, stdout=subprocess.DEVNULL,
            stderr=open(workdir / "channels.log", "wb"),
        )  # fmt: skip
        wait_port(self.port)

    def ws_url(self, channels: list[str], replay: bool = False) -> str:
        return f"ws://127.0.0.1:{self.port}/sub/{'/'.join(channels)}"

    async def publisher(self) -> Callable:
        return await HTTPPublisher(self.port, "/pub/").open()


class Crossbar(Peer):
    """A Crossbar.io router (its own venv, see bench/run.sh): one router worker, one
    realm whose anonymous role may subscribe and publish, WebSocket with JSON only."""

    realm = "bench"

    def __init__(self, name: str) -> None:
        super().__init__(name, history=False, scenarios=("wamp_fanout_32",))

    def start(self, workdir: Path) -> None:
        crossbar = CROSSBAR_VENV / "bin" / "crossbar"
        if not (CROSSBAR_VENV / "installed").exists():
            log = CROSSBAR_VENV / "install.log"
            lines = log.read_text().splitlines() if log.exists() else []
            why = [x for x in lines if x.startswith("ERROR")] or lines[-1:]  # pip's errors
            raise PeerUnavailable(
                f"Crossbar.io is not installed in {CROSSBAR_VENV.name} (bash bench/run.sh "
                f"installs it with pip){': ' + ' / '.join(why)[:300] if why else ''}"
            )
        node = workdir / "crossbar"
        node.mkdir(exist_ok=True)
        (node / "config.json").write_text(json.dumps(self.config()))
        self.process = subprocess.Popen(
            [crossbar, "start", "--cbdir", str(node), "--loglevel", "warn", "--color", "false"],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "crossbar.log", "wb"),
            cwd=node,
        )  # fmt: skip
        try:
            wait_port(self.port, timeout=60)
        except RuntimeError:
            raise RuntimeError(f"Crossbar.io did not start: see {workdir / 'crossbar.log'}")  # noqa: B904

    def config(self) -> dict:
        everything = {"uri": "", "match": "prefix", "cache": True,
                      "allow": {"call": False, "register": False, "publish": True,
                                "subscribe": True}}  # fmt: skip
        return {
            "version": 2,
            "controller": {},
            "workers": [{
                "type": "router",
                "realms": [{"name": self.realm,
                            "roles": [{"name": "anonymous", "permissions": [everything]}]}],
                "transports": [{
                    "type": "websocket",
                    "endpoint": {"type": "tcp", "port": self.port, "interface": "127.0.0.1",
                                 "backlog": 4096},
                    "serializers": ["json"],
                    "auth": {"anonymous": {"type": "static", "role": "anonymous"}},
                }],
            }],
        }  # fmt: skip

    def stop(self) -> None:
        workers = self.pids()[1:] if self.process else []
        super().stop()
        for pid in workers:  # the controller was killed before it could stop its worker
            try:
                if b"crossbar" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    def wamp_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def publisher(self) -> Callable:
        return await WampPublisher.open(self.wamp_url(), self.realm)


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--maxclients", "30000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


# Clients


class Counter(WSListener):
    """Counts update frames; records latencies for the first few subscribers."""

    def __init__(self, peer: Peer, measure: bool, latencies: list[float]) -> None:
        self.peer = peer
        self.measure = measure
        self.latencies = latencies
        self.count = 0
        self.last_ts = 0

    def on_ws_frame(self, transport, frame) -> None:  # type: ignore[no-untyped-def]
        if frame.msg_type != WSMsgType.TEXT:
            return
        raw = frame.get_payload_as_bytes()
        if self.measure:
            data = self.peer.payload(raw)
            if data is None:
                return
            self.latencies.append(time.perf_counter() - data["t"])
            self.count += 1
        elif not raw.startswith(b'{"type":"subscribed"'):
            self.count += 1


async def connect_all(
    peer: Peer, channel_sets: list[list[str]], measure: int = 0, since: int | None = None,
    replay: bool = False, settle: float = 1.0,
) -> tuple[list, list[Counter], list[float]]:  # fmt: skip
    latencies: list[float] = []
    transports, listeners = [], []
    semaphore = asyncio.Semaphore(200)

    async def one(index: int, channels: list[str]) -> None:
        async with semaphore:
            transport, listener = await ws_connect(
                lambda: Counter(peer, index < measure, latencies),
                peer.ws_url(channels, replay),
                websocket_handshake_timeout=60,
            )
            for frame in peer.subscribe_frames(channels, since):
                transport.send(WSMsgType.TEXT, frame)
            transports.append(transport)
            listeners.append(listener)

    await asyncio.gather(*(one(i, c) for i, c in enumerate(channel_sets)))
    await asyncio.sleep(settle)  # let subscriptions settle (the peers confirm differently)
    return transports, listeners, latencies


class WampCounter(WSListener):
    """A WAMP subscriber session: HELLO, SUBSCRIBE once welcomed, then counts EVENTs."""

    def __init__(self, realm: str, topic: str) -> None:
        self.hello = json.dumps([1, realm, {"roles": {"subscriber": {}}}]).encode()
        self.subscribe = json.dumps([32, 1, {}, topic]).encode()
        self.count = 0
        self.subscribed = False
        self.refused = b""

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, self.hello)

    def on_ws_frame(self, transport, frame) -> None:  # type: ignore[no-untyped-def]
        if frame.msg_type != WSMsgType.TEXT:
            return
        raw = frame.get_payload_as_bytes()
        if raw.startswith(b"[36,"):  # EVENT
            self.count += 1
        elif raw.startswith(b"[2,"):  # WELCOME
            transport.send(WSMsgType.TEXT, self.subscribe)
        elif raw.startswith(b"[33,"):  # SUBSCRIBED
            self.subscribed = True
        else:  # ABORT, ERROR, GOODBYE
            self.refused = raw[:300]

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.subscribed:
            self.refused = self.refused or b"closed before SUBSCRIBED"


async def connect_wamp(peer: Peer, subscribers: int, channel: str) -> tuple[list, list]:
    """WAMP sessions subscribed to ``channel``: returns once every SUBSCRIBED came."""
    transports: list = []
    listeners: list[WampCounter] = []
    semaphore = asyncio.Semaphore(200)

    async def one() -> None:
        async with semaphore:
            transport, listener = await ws_connect(
                lambda: WampCounter(peer.realm, channel), peer.wamp_url(),
                websocket_handshake_timeout=60, extra_headers=WAMP_HEADERS,
            )  # fmt: skip
            transports.append(transport)
            listeners.append(listener)

    await asyncio.gather(*(one() for _ in range(subscribers)))
    await _until_ready(transports, listeners, lambda x: x.subscribed, "WAMP session")
    return transports, listeners


async def _until_ready(transports: list, listeners: list, ready: Callable, what: str) -> None:
    """Wait (60 s at most) until every listener is ready; fail on the first refusal."""
    deadline = time.monotonic() + 60
    while not all(ready(listener) for listener in listeners):
        refused = next((x.refused for x in listeners if x.refused), None)
        if refused or time.monotonic() > deadline:
            close_all(transports)
            raise RuntimeError(f"{what} refused: {refused!r}" if refused else
                               f"not every {what} was ready within 60 s")  # fmt: skip
        await asyncio.sleep(0.01)


class SSECounter(asyncio.Protocol):
    """An EventSource-style client: one GET, then counts the events that carry an
    update in the text/event-stream (each update holds PAD once, whatever the
    server wraps it in), de-chunked first when the answer is chunked."""

    MARK = PAD.encode()

    def __init__(self, path: str) -> None:
        self.request = (f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
                        "Cache-Control: no-cache\r\n\r\n").encode()  # fmt: skip
        self.count = 0
        self.answered = False
        self.refused = b""
        self.chunked = False
        self._head = b""
        self._pending = b""  # an incomplete chunk-size line
        self._left = 0  # bytes left in the current chunk
        self._tail = b""  # the end of what was counted: a mark may straddle two reads

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answered:
            self.refused = self.refused or b"connection closed before the answer"

    def disconnect(self) -> None:
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.answered:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            if not head.startswith(b"HTTP/1.1 200"):
                self.refused = head[:300]
                return
            self.answered = True
            self.chunked = b"\r\ntransfer-encoding: chunked" in head.lower()
        if not self.chunked:
            self._count(data)
            return
        data = self._pending + data
        at = 0
        while at < len(data):
            if self._left:
                piece = data[at : at + self._left]
                self._count(piece)
                at += len(piece)
                self._left -= len(piece)
                continue
            end = data.find(b"\r\n", at)
            if end < 0:
                break
            line, at = data[at:end], end + 2
            if line:  # else the CRLF that ends a chunk's data
                self._left = int(line.split(b";")[0], 16)
        self._pending = data[at:]

    def _count(self, data: bytes) -> None:
        data = self._tail + data
        self.count += data.count(self.MARK)
        self._tail = data[1 - len(self.MARK) :]


async def connect_sse(peer: Peer, subscribers: int, channel: str) -> tuple[list, list]:
    """Event streams on ``channel``: returns once every stream was answered, and a
    second more (as for WebSockets: the peers confirm subscriptions differently)."""
    loop = asyncio.get_running_loop()
    listeners: list[SSECounter] = []
    semaphore = asyncio.Semaphore(200)

    async def one() -> None:
        async with semaphore:
            _, listener = await loop.create_connection(
                lambda: SSECounter(peer.sse_path(channel)), "127.0.0.1", peer.port
            )
            listeners.append(listener)

    await asyncio.gather(*(one() for _ in range(subscribers)))
    await _until_ready(listeners, listeners, lambda x: x.answered, "event stream")
    await asyncio.sleep(1.0)
    return listeners, listeners


async def connect_ws(peer: Peer, subscribers: int, channel: str) -> tuple[list, list]:
    transports, listeners, _ = await connect_all(peer, [[channel]] * subscribers)
    return transports, listeners


class WampPublisher(WSListener):
    """A WAMP publisher session: each PUBLISH asks for acknowledgement and waits
    for PUBLISHED, one at a time, as the other publishers wait for their answers."""

    def __init__(self, realm: str) -> None:
        self.hello = json.dumps([1, realm, {"roles": {"publisher": {}}}]).encode()
        self.request = 0
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, url: str, realm: str) -> WampPublisher:
        transport, publisher = await ws_connect(lambda: cls(realm), url, extra_headers=WAMP_HEADERS)
        publisher.transport = transport
        await asyncio.wait_for(publisher.answer, 30)  # WELCOME
        return publisher

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send(WSMsgType.TEXT, self.hello)

    def on_ws_frame(self, transport, frame) -> None:  # type: ignore[no-untyped-def]
        if frame.msg_type != WSMsgType.TEXT or self.answer.done():
            return
        raw = frame.get_payload_as_bytes()
        if raw.startswith((b"[2,", b"[17,")):  # WELCOME, PUBLISHED
            self.answer.set_result(raw)
        else:
            self.answer.set_exception(RuntimeError(f"WAMP publisher got {raw[:300]!r}"))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.answer.done():
            self.answer.set_exception(ConnectionError("the WAMP router closed the session"))

    async def __call__(self, channel: str, body: bytes) -> None:
        self.request += 1
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.send(
            WSMsgType.TEXT,
            b'[16,%d,{"acknowledge":true},"%s",[%s]]' % (self.request, channel.encode(), body),
        )
        await self.answer


def close_all(transports: list) -> None:
    for transport in transports:
        transport.disconnect()


def body(now: float | None = None) -> bytes:
    return json.dumps({"t": now if now is not None else time.perf_counter(), "pad": PAD}).encode()


async def wait_for_counts(listeners: list[Counter], each: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(listener.count >= each for listener in listeners):
            return True
        await asyncio.sleep(0.01)
    return False


# Scenarios


PUBLISH_FOR = 20.0  # seconds at most per publishing phase: slow peers publish less
DRAIN_FOR = 60.0  # seconds at most to wait for what was published to arrive


async def publish_all(publishers: list[Callable], jobs: list[str]) -> int:
    """Publish one update per job, in flight on every publisher; return how many went."""
    queue = iter(jobs)
    deadline = time.perf_counter() + PUBLISH_FOR
    sent = 0

    async def worker(publish: Callable) -> None:
        nonlocal sent
        for channel in queue:
            if time.perf_counter() > deadline:
                return
            await publish(channel, body())
            sent += 1

    await asyncio.gather(*(worker(p) for p in publishers))
    return sent


SUBSCRIBERS = {"ws": connect_ws, "wamp": connect_wamp, "sse": connect_sse}
"""How each kind of subscriber connects: (peer, how many, channel) -> (to close, counters)."""


async def fan_out(
    peer: Peer, subscribers: int, publishes: int, in_flight: int, kind: str = "ws"
) -> dict:
    """``subscribers`` of one ``kind`` on one channel, ``publishes`` through the peer's
    own publisher (AMP for twistedpush whatever the subscribers speak)."""
    transports, listeners = await SUBSCRIBERS[kind](peer, subscribers, "fan")
    publishers = [await peer.publisher() for _ in range(in_flight)]
    user0, kernel0 = cpu_split(peer.pids())
    start = time.perf_counter()
    sent = await publish_all(publishers, ["fan"] * publishes)
    complete = await wait_for_counts(listeners, sent, timeout=DRAIN_FOR)
    elapsed = time.perf_counter() - start
    user, kernel = cpu_split(peer.pids())
    user, kernel = user - user0, kernel - kernel0
    delivered = sum(listener.count for listener in listeners)
    close_all(transports)
    return {"deliveries_per_s": delivered / elapsed, "cpu_percent": 100 * (user + kernel) / elapsed,
            "kernel_cpu_percent": 100 * kernel / elapsed, "published": sent,
            "complete": complete}  # fmt: skip


async def latency(peer: Peer, subscribers: int, rate: float, seconds: float) -> dict:
    transports, listeners, samples = await connect_all(peer, [["lat"]] * subscribers, measure=50)
    publish = await peer.publisher()
    count = int(rate * seconds)
    start = time.perf_counter()
    for n in range(count):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif time.perf_counter() - start > seconds + PUBLISH_FOR:
            count = n  # the server cannot take this rate: measure what it took
            break
        await publish("lat", body())
    published_per_s = count / (time.perf_counter() - start)
    complete = await wait_for_counts(listeners, count, timeout=30)
    close_all(transports)
    # What arrived in time; a peer that falls behind shows it here. A peer that
    # answers a publish only once it has written it to every subscriber slows the
    # publisher down instead: the rate it let through says so.
    return {**percentiles(samples), "published_per_s": published_per_s, "complete": complete}


def percentiles(samples: list[float], prefix: str = "") -> dict:
    """p50, p99 and max of ``samples`` (seconds) in milliseconds."""
    if not samples:
        return {f"{prefix}{k}_ms": None for k in ("p50", "p99", "max")}
    samples = sorted(samples)
    return {
        f"{prefix}p50_ms": 1000 * samples[len(samples) // 2],
        f"{prefix}p99_ms": 1000 * samples[int(len(samples) * 0.99)],
        f"{prefix}max_ms": 1000 * samples[-1],
    }


async def publish_rate(peer: Peer, in_flight: int, seconds: float, rounds: int) -> dict:
    """Publish calls/s with ``in_flight`` publishers, each waiting for its answer:
    HTTP POSTs, and for twistedpush AMP SendUpdate in alternate rounds on the same
    server; the median round of each. Each publisher has a channel of its own (Nchan
    skips messages on a channel published to more than 32,767 times in one second)
    with one WebSocket subscriber, which checks that every publication arrives."""
    channels = [f"rate.{i}" for i in range(in_flight)]
    transports, listeners, _ = await connect_all(peer, [[c] for c in channels])
    kinds = {"http": peer.http_publisher}
    if isinstance(peer, TwistedPush):
        kinds["amp"] = peer.publisher
    publishers = {kind: [await make() for _ in range(in_flight)] for kind, make in kinds.items()}
    rates: dict[str, list[float]] = {kind: [] for kind in kinds}
    sent = 0
    for _ in range(rounds):
        for kind, group in publishers.items():
            calls, elapsed = await publish_for(group, channels, seconds)
            rates[kind].append(calls / elapsed)
            sent += calls
    deadline = time.monotonic() + DRAIN_FOR
    while sum(x.count for x in listeners) < sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    arrived = sum(x.count for x in listeners)
    close_all(transports)
    return {**{f"{kind}_calls_per_s": statistics.median(r) for kind, r in rates.items()},
            "in_flight": in_flight, "published": sent, "arrived": arrived,
            "complete": arrived == sent}  # fmt: skip


async def publish_for(
    publishers: list[Callable], channels: list[str], seconds: float
) -> tuple[int, float]:
    """Publish for ``seconds``, each publisher to its channel; return the calls
    answered and the time they took."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def worker(publish: Callable, channel: str) -> None:
        nonlocal calls
        while time.perf_counter() < deadline:
            await publish(channel, body())
            calls += 1

    await asyncio.gather(*(worker(p, c) for p, c in zip(publishers, channels, strict=True)))
    return calls, time.perf_counter() - start


async def many_channels(peer: Peer, connections: int) -> dict:
    before = rss_kib(peer.pids())
    started = time.perf_counter()
    transports, listeners, _ = await connect_all(
        peer, [[f"own.{i}", "shared"] for i in range(connections)]
    )
    connect_s = time.perf_counter() - started
    await asyncio.sleep(2)
    idle_kib = (rss_kib(peer.pids()) - before) / connections
    publishers = [await peer.publisher() for _ in range(8)]
    start = time.perf_counter()
    await publish_all(publishers, ["shared"] + [f"own.{i}" for i in range(connections)])
    complete = await wait_for_counts(listeners, 2, timeout=DRAIN_FOR)
    elapsed = time.perf_counter() - start
    close_all(transports)
    return {"idle_kib_per_connection": idle_kib, "connect_s": connect_s,
            "deliveries_per_s": sum(x.count for x in listeners) / elapsed,
            "complete": complete}  # fmt: skip


async def catch_up(peer: Peer, clients: int, backlog: int) -> dict:
    if not peer.history:
        return {}
    channel = f"replay{int(time.time())}"
    since = None
    if isinstance(peer, TwistedPush):
        from twistedpush.client import PushClient

        since = PushClient(port=peer.notifier, key=KEY).current_timestamp()
    publish = await peer.publisher()
    for _ in range(backlog):
        await publish(channel, body())
    start = time.perf_counter()
    transports, listeners, _ = await connect_all(
        peer, [[channel]] * clients, since=since, replay=True, settle=0
    )
    complete = await wait_for_counts(listeners, backlog, timeout=120)
    elapsed = time.perf_counter() - start
    close_all(transports)
    return {"replayed_per_s": sum(x.count for x in listeners) / elapsed, "complete": complete}


PUBLISHER_ROUNDS = 3
"""Each publisher rate is the median of this many rounds: one round on a shared
virtual machine can be a fifth off either way."""


def django_publisher(peer: Peer, seconds: float) -> dict:
    """send_update() and its peers' equivalents, called from a synchronous Django process."""
    setup = {
        "twistedpush": f"""
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django_adapter"],
    DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}}},
    SERVERPUSH_NOTIFIER_PORT={getattr(peer, "notifier", 0)},
    SERVERPUSH_PUBLISHER_KEY="{KEY}",
)
django.setup()
from django_adapter import send_update, send_updates
single = lambda: send_update("pub", {{"n": next(n), "pad": "{PAD}"}})
batched = lambda: send_updates([("pub", {{"n": next(n), "pad": "{PAD}"}}) for _ in range(500)])
""",
        "nchan": f"""
import http.client, json
c = http.client.HTTPConnection("127.0.0.1", {peer.port})
def single():
    c.request("POST", "/pub/pub", json.dumps({{"n": next(n), "pad": "{PAD}"}}))
    c.getresponse().read()
batched = None
""",
        "channels": f"""
import os
os.environ["REDIS_URL"] = "{getattr(peer, "redis_url", "")}"
import bench.channels_app
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
send = async_to_sync(get_channel_layer().group_send)
single = lambda: send("pub", {{"type": "push", "text": "x"}})
batched = None
""",
    }[peer.name.split("-")[0]]
    code = f"""
import itertools, statistics, time
n = itertools.count()
{setup}
def rate(call, per_call):
    rates = []
    for _ in range({PUBLISHER_ROUNDS}):
        calls = 0
        end = time.perf_counter() + {seconds}
        while time.perf_counter() < end:
            call()
            calls += 1
        rates.append(calls * per_call / {seconds})
    return statistics.median(rates)
print(rate(single, 1), rate(batched, 500) if batched else "nan")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=seconds * PUBLISHER_ROUNDS * 4 + 60,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"publisher for {peer.name} failed:\n{out.stderr[-2000:]}")
    single, batched = out.stdout.split()
    return {"single_per_s": float(single), "batched_per_s": float(batched)}


# The run


SIZES = {
    "full": {"fan_subs": 1000, "fan_publishes": 300, "lat_subs": 1000, "lat_rate": 200,
             "lat_low_rate": 20, "lat_seconds": 10, "many": 10000, "catch_clients": 1000,
             "catch_backlog": 100, "pub_seconds": 5, "rate_seconds": 3},
    "smoke": {"fan_subs": 20, "fan_publishes": 20, "lat_subs": 20, "lat_rate": 50,
              "lat_low_rate": 10, "lat_seconds": 1, "many": 50, "catch_clients": 10,
              "catch_backlog": 10, "pub_seconds": 0.5, "rate_seconds": 0.3},
}  # fmt: skip
"""fan_publishes is per 4 in flight (at 32 in flight: 8 times as many); rate_seconds is
one round of the publish scenario (PUBLISHER_ROUNDS of them for each kind)."""

RATE_IN_FLIGHT = 32  # publishes in flight in the publish scenario, HTTP and AMP alike


async def settle(peer: Peer, timeout: float = 120) -> None:
    """Wait until the server is idle (a burst of closed connections may keep it busy)."""
    deadline = time.monotonic() + timeout
    used = cpu_seconds(peer.pids())
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = cpu_seconds(peer.pids())
        if now - used < 0.05:
            return
        used = now


async def run_peer(peer: Peer, size: dict, only: list[str] | None = None) -> dict:
    """Every scenario against one freshly started server; many channels (and with
    it idle memory) first, so that no earlier phase's freed memory is reused. A
    scenario that fails is recorded as such and the next one runs."""
    scenarios: list[tuple[str, Callable[[], Awaitable[dict]]]] = [
        ("many", lambda: many_channels(peer, size["many"])),
        *(
            (f"fanout_{n}", lambda n=n: fan_out(
                peer, size["fan_subs"], size["fan_publishes"] * max(1, n // 4), n))
            for n in (1, 8, 32)
        ),
        *(  # right after the WebSocket fan-out they are set against, on the same server
            (f"{kind}_fanout_32", lambda kind=kind: fan_out(
                peer, size["fan_subs"], size["fan_publishes"] * 8, 32, kind))
            for kind in ("wamp", "sse")
        ),
        ("latency", lambda: latency(peer, size["lat_subs"], size["lat_rate"], size["lat_seconds"])),
        # A rate twistedpush and Nchan keep up with: latency without a queue.
        ("latency_low", lambda: latency(
            peer, size["lat_subs"], size["lat_low_rate"], size["lat_seconds"])),
        ("catch_up", lambda: catch_up(peer, size["catch_clients"], size["catch_backlog"])),
        ("publisher", lambda: asyncio.to_thread(django_publisher, peer, size["pub_seconds"])),
        ("publish_32", lambda: publish_rate(
            peer, RATE_IN_FLIGHT, size["rate_seconds"], PUBLISHER_ROUNDS)),
    ]  # fmt: skip
    if peer.scenarios is not None:
        scenarios = [(name, run) for name, run in scenarios if name in peer.scenarios]
    if only is not None:
        scenarios = [(name, run) for name, run in scenarios if name in only]
    results: dict = {}
    for name, run in scenarios:
        print(f"[{peer.name}] {name}", flush=True)
        await settle(peer)
        try:
            results[name] = await run()
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {e}", "complete": False}
        print(f"[{peer.name}]   {results[name]}", flush=True)
    return results


def versions() -> dict:
    import autobahn

    import twisted

    out = {"python": platform.python_version(), "twisted": twisted.__version__,
           "autobahn": autobahn.__version__}  # fmt: skip
    for package in ("channels", "daphne", "channels_redis", "picows"):
        try:
            out[package] = __import__(package).__version__
        except Exception:
            out[package] = "?"
    nginx = _output(["nginx", "-v"])
    out["nginx"] = nginx.split("/")[-1] if nginx else "?"
    out["nchan"] = _output(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-nchan"]) or "?"
    crossbar = _output([str(CROSSBAR_VENV / "bin" / "python"), "-c", "import crossbar, twisted; "
                        "print(crossbar.__version__, twisted.__version__)"]).split()  # fmt: skip
    if len(crossbar) == 2:
        out["crossbar"] = f"{crossbar[0]} (on Twisted {crossbar[1]})"
    return out


def _output(command: list[str]) -> str:
    """What ``command`` printed (nginx -v writes to stderr), or "" when it is not installed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        return ""
    return "" if done.returncode else (done.stdout or done.stderr).strip()


class Row(NamedTuple):
    label: str
    get: Callable[[dict], float]
    within: bool = False
    """A ratio between two of one server's own figures: no twistedpush / peer columns."""


def _per(scenario: str, key: str, reference: str, reference_key: str) -> Callable[[dict], float]:
    return lambda r: r[scenario][key] / r[reference][reference_key]


# Each row's ratio is twistedpush / peer: above 1 is better for rates, below 1 for
# times, CPU and memory.
ROWS = [
    Row("fan-out, 1 in flight: deliveries/s", lambda r: r["fanout_1"]["deliveries_per_s"]),
    Row("fan-out, 8 in flight: deliveries/s", lambda r: r["fanout_8"]["deliveries_per_s"]),
    Row("fan-out, 32 in flight: deliveries/s", lambda r: r["fanout_32"]["deliveries_per_s"]),
    Row("fan-out, 32 in flight: server CPU %", lambda r: r["fanout_32"]["cpu_percent"]),
    Row("WAMP fan-out, 32 in flight: deliveries/s",
        lambda r: r["wamp_fanout_32"]["deliveries_per_s"]),
    Row("WAMP fan-out / WebSocket fan-out, 32 in flight",
        _per("wamp_fanout_32", "deliveries_per_s", "fanout_32", "deliveries_per_s"), True),
    Row("SSE fan-out, 32 in flight: deliveries/s",
        lambda r: r["sse_fanout_32"]["deliveries_per_s"]),
    Row("SSE fan-out / WebSocket fan-out, 32 in flight",
        _per("sse_fanout_32", "deliveries_per_s", "fanout_32", "deliveries_per_s"), True),
    *(Row(f"latency at {rate}: {key} ms", lambda r, s=scenario, k=key: r[s][f"{k}_ms"])
      for scenario, rate in (("latency", "200/s"), ("latency_low", "20/s"))
      for key in ("p50", "p99", "max")),
    Row("latency at 200/s: publishes/s let through", lambda r: r["latency"]["published_per_s"]),
    Row("many channels: deliveries/s", lambda r: r["many"]["deliveries_per_s"]),
    Row("many channels: connect all (s)", lambda r: r["many"]["connect_s"]),
    Row("idle RSS per WebSocket (KiB)", lambda r: r["many"]["idle_kib_per_connection"]),
    Row("catch-up: replayed/s", lambda r: r["catch_up"]["replayed_per_s"]),
    Row("publisher from Django: calls/s", lambda r: r["publisher"]["single_per_s"]),
    Row("publisher from Django: batched updates/s", lambda r: r["publisher"]["batched_per_s"]),
    Row(f"HTTP publish, {RATE_IN_FLIGHT} in flight: calls/s",
        lambda r: r["publish_32"]["http_calls_per_s"]),
    Row(f"AMP publish (SendUpdate), {RATE_IN_FLIGHT} in flight: calls/s",
        lambda r: r["publish_32"]["amp_calls_per_s"]),
    Row(f"HTTP publish / AMP publish, {RATE_IN_FLIGHT} in flight",
        _per("publish_32", "http_calls_per_s", "publish_32", "amp_calls_per_s"), True),
]  # fmt: skip


def fmt(value: float | None, ratio: bool = False) -> str:
    if value is None or value != value:
        return "n/a"
    if ratio:
        return f"{value:.2f}x"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def sizes_note(size: dict) -> str:
    """What the report's figures are of: subscribers, publishes, publishes in flight."""
    fan = size["fan_publishes"]
    return (
        f"Sizes: fan-out (WebSocket, WAMP, SSE) {size['fan_subs']:,} subscribers on one "
        f"channel, {fan:,} / {fan * 2:,} / {fan * 8:,} publishes at 1 / 8 / 32 in flight (WAMP "
        f"and SSE: 32 in flight only; twistedpush publishes over AMP for every kind of "
        f"subscriber, Crossbar.io with WAMP PUBLISH and acknowledge, the others with HTTP "
        f"POSTs); latency {size['lat_subs']:,} subscribers at {size['lat_rate']} and at "
        f"{size['lat_low_rate']} publishes/s "
        f"for {size['lat_seconds']} s; many channels {size['many']:,} connections; catch-up "
        f"{size['catch_clients']:,} clients each replaying {size['catch_backlog']} updates; "
        f"publisher from Django: one call at a time, median of {PUBLISHER_ROUNDS} rounds of "
        f"{size['pub_seconds']} s; HTTP and AMP publish: {RATE_IN_FLIGHT} in flight for both, "
        f"each waiting for its answer, median of {PUBLISHER_ROUNDS} alternating rounds of "
        f"{size['rate_seconds']} s."
    )


SMOKE_NOTE = (
    "Smoke sizes: these figures only show that the harness works. They are not comparable "
    "with each other or with the README's table, so no ratios are given."
)


def report(all_results: dict, size_name: str, elapsed: float) -> str:
    names = list(all_results)
    ours = [n for n in names if n.startswith("twistedpush")]
    peers = [n for n in names if not n.startswith("twistedpush")]
    smoke = size_name == "smoke"
    # Smoke sizes (20 subscribers, a second of load) say nothing of the servers: a
    # ratio printed from them would contradict the README's table.
    pairs = [] if smoke else [(o, p) for o in ours[:1] for p in peers]
    columns = names + [f"{o} / {p}" for o, p in pairs]
    lines = [
        "# Benchmarks",
        "",
        f"Command: `bash bench/run.sh{' --smoke' if smoke else ''}` ({size_name} sizes, "
        f"{elapsed / 60:.1f} min) on {platform.node()}: {os.cpu_count()} cores, "
        f"Linux {platform.release()}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".",
        "",
    ]
    lines += [sizes_note(SIZES[size_name]), ""]
    if smoke:
        lines += [SMOKE_NOTE, ""]
    lines += ["| scenario | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
    for row in ROWS:
        if smoke and row.within:
            continue  # a ratio too
        values = {}
        for name in names:
            try:
                values[name] = row.get(all_results[name])
            except (KeyError, TypeError, ZeroDivisionError):
                values[name] = None
        ratios = []
        for ours_name, peer in pairs:
            a, b = values.get(ours_name), values.get(peer)
            if row.within:
                ratios.append("")
            else:
                ratios.append(f"{a / b:.2f}x" if a and b and b == b and a == a else "n/a")
        lines.append(f"| {row.label} | " + " | ".join(fmt(values[n], row.within) for n in names)
                     + "".join(f" | {r}" for r in ratios) + " |")  # fmt: skip
    failed = [f"{name} {scenario} ({result['error']})" for name, scenarios in all_results.items()
              for scenario, result in scenarios.items() if "error" in result]  # fmt: skip
    incomplete = [f"{name} {scenario}" for name, scenario in _incomplete(all_results)]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed) + "."]
    if incomplete:
        lines += ["", "Not every update arrived within the time bound in: "
                  + ", ".join(incomplete) + " (`complete: false` below)."]  # fmt: skip
    lines += ["", "Raw results:", "", "```json", json.dumps(all_results, indent=1), "```"]
    return "\n".join(lines) + "\n"


def chart(all_results: dict, path: Path) -> None:
    """One bar panel per scenario; a log scale where the servers are orders apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(all_results)
    shown = [row for row in ROWS if not row.within and "max ms" not in row.label
             and "p50" not in row.label and "connect all" not in row.label
             and "CPU" not in row.label]  # fmt: skip
    figure, axes = plt.subplots(3, 5, figsize=(20, 10.5))
    for axis in axes.flat[len(shown) :]:
        axis.set_visible(False)
    for axis, (label, get, _) in zip(axes.flat, shown, strict=False):
        values = []
        for name in names:
            try:
                value = get(all_results[name])
            except (KeyError, TypeError, ZeroDivisionError):
                value = None
            values.append(value if value is not None and value == value else 0)
        axis.bar(names, values, color=["#2a7" if n.startswith("twistedpush") else "#888"
                                       for n in names])  # fmt: skip
        present = [v for v in values if v > 0]
        if present and max(present) / min(present) > 50:
            axis.set_yscale("log")
        axis.set_title(label, fontsize=9)
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the harness")
    parser.add_argument("--only", nargs="*", help="peers to run (default: all)")
    parser.add_argument("--scenarios", nargs="*", help="scenarios to run (default: all)")
    args = parser.parse_args()
    size_name = "smoke" if args.smoke else "full"
    size = SIZES[size_name]
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis = Redis(workdir)
        peers: list[Peer] = [
            TwistedPush("twistedpush"),
            TwistedPush("twistedpush-redis", redis.url),
            TwistedPushShards("twistedpush-shards", redis.url),
            Nchan("nchan"),
            Channels("channels", redis.url),
            Crossbar("crossbar"),
        ]
        if args.only:
            peers = [p for p in peers if p.name in args.only]
        results = {}
        try:
            for peer in peers:
                print(f"== {peer.name}", flush=True)
                try:
                    peer.start(workdir)
                except PeerUnavailable as e:  # the report says why; the others still count
                    print(f"[{peer.name}]   could not run: {e}", flush=True)
                    results[peer.name] = {"start": {"error": f"could not run: {e}"}}
                    continue
                except Exception as e:
                    peer.stop()
                    results[peer.name] = {"start": {"error": f"{type(e).__name__}: {e}",
                                                    "complete": False}}  # fmt: skip
                    continue
                try:
                    results[peer.name] = uvloop.run(run_peer(peer, size, args.scenarios))
                finally:
                    peer.stop()
                RESULTS.mkdir(exist_ok=True)
                (RESULTS / f"partial-{size_name}.json").write_text(json.dumps(results))
        finally:
            redis.stop()
    RESULTS.mkdir(exist_ok=True)
    # A run of some peers or scenarios must not overwrite the full run's report.
    suffix = ("-smoke" if args.smoke else "") + ("-partial" if args.only or args.scenarios else "")
    text = report(results, size_name, time.monotonic() - began)
    (RESULTS / f"results{suffix}.md").write_text(text)
    chart(results, RESULTS / f"bench{suffix}.png")
    print(text.split("\nRaw results:")[0])
    print(f"written to {RESULTS}/results{suffix}.md and bench{suffix}.png")
    if not results:
        sys.exit(1)
    if args.smoke:
        incomplete = [f"{peer} {scenario}" for peer, scenario in _incomplete(results)]
        if incomplete:
            sys.exit("smoke run: not every update arrived in " + ", ".join(incomplete))


def _incomplete(results: dict) -> Iterator[tuple[str, str]]:
    """(peer, scenario) for every scenario whose updates did not all arrive."""
    for peer, scenarios in results.items():
        for scenario, result in scenarios.items():
            if result.get("complete") is False:
                yield peer, scenario


if __name__ == "__main__":
    main()

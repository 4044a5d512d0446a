"""twistedpush side by side with Nchan and Django Channels, on this machine, in one run.

    bash bench/run.sh            # installs the peers, then: python bench/bench.py
    python bench/bench.py --smoke   # tiny sizes, seconds: keeps the harness working (CI)

Every server runs on loopback and is driven by the same load generator: one
process, asyncio + uvloop + picows WebSocket clients, about 100 bytes of JSON per
update. Publishers keep 1, 8 or 32 publishes in flight (HTTP keep-alive for the
peers, AMP for twistedpush). Results: bench/results/results.md and bench.png.
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvloop
from picows import WSListener, WSMsgType, ws_connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twistedpush.commands import SendUpdate  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PAD = "x" * 60  # about 100 bytes of JSON per update with the timestamp


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


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


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

    # Publishing
    async def publisher(self) -> Callable:
        raise NotImplementedError


class HTTPPublisher:
    """HTTP/1.1 keep-alive POSTs, one request at a time on one connection."""

    def __init__(self, port: int, path: str) -> None:
        self.port = port
        self.path = path

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
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
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
    """SendUpdate over asyncio, the same command definition the server uses."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tag = 0

    async def open(self) -> AMPPublisher:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __call__(self, channel: str, body: bytes) -> None:
        self.tag += 1
        box = SendUpdate.makeArguments({"channel": channel, "data": body, "name": None}, None)
        box[b"_command"] = b"SendUpdate"
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
    def __init__(self, name: str, *redis_urls: str) -> None:
        super().__init__(name)
        self.notifier = free_port()
        self.redis_urls = redis_urls

    def start(self, workdir: Path) -> None:
        twistd = shutil.which("twistd", path=str(Path(sys.executable).parent)) or "twistd"
        args = [twistd, "--pidfile=", "-n", "serverpush", "--public", "*",
                "--port", f"tcp:{self.port}:interface=127.0.0.1:backlog=4096",
                "--notifier", f"tcp:{self.notifier}:interface=127.0.0.1",
                "--max-connections", "30000", "--max-connections-per-ip", "30000",
                "--max-pending-bytes", str(64 * 1024 * 1024)]  # fmt: skip
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

    async def publisher(self) -> Callable:
        return await AMPPublisher(self.notifier).open()


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
    def start(self, workdir: Path) -> None:
        prefix = workdir / "nchan"
        prefix.mkdir(exist_ok=True)
        template = (ROOT / "bench" / "nchan.conf.template").read_text()
        conf = prefix / "nginx.conf"
        conf.write_text(template.format(prefix=prefix, port=self.port))
        self.process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(prefix)],
            stdout=subprocess.DEVNULL, stderr=open(prefix / "stderr.log", "wb"),
        )  # fmt: skip
        wait_port(self.port)

    def ws_url(self, channels: list[str], replay: bool = False) -> str:
        if replay:
            return f"ws://127.0.0.1:{self.port}/replay/{channels[0]}"
        kind = "sub2" if len(channels) == 2 else "sub"
        return f"ws://127.0.0.1:{self.port}/{kind}/{'/'.join(channels)}"

    async def publisher(self) -> Callable:
        return await HTTPPublisher(self.port, "/pub/").open()


class Channels(Peer):
    def __init__(self, name: str, redis_url: str) -> None:
        super().__init__(name, history=False)
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


async def fan_out(peer: Peer, subscribers: int, publishes: int, in_flight: int) -> dict:
    transports, listeners, _ = await connect_all(peer, [["fan"]] * subscribers)
    publishers = [await peer.publisher() for _ in range(in_flight)]
    cpu0 = cpu_seconds(peer.pids())
    start = time.perf_counter()
    sent = await publish_all(publishers, ["fan"] * publishes)
    complete = await wait_for_counts(listeners, sent, timeout=DRAIN_FOR)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(peer.pids()) - cpu0
    delivered = sum(listener.count for listener in listeners)
    close_all(transports)
    return {"deliveries_per_s": delivered / elapsed, "cpu_percent": 100 * cpu / elapsed,
            "published": sent, "complete": complete}  # fmt: skip


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
    complete = await wait_for_counts(listeners, count, timeout=30)
    close_all(transports)
    samples.sort()  # what arrived in time; a peer that falls behind shows it here
    return {
        "p50_ms": 1000 * samples[len(samples) // 2],
        "p99_ms": 1000 * samples[int(len(samples) * 0.99)],
        "max_ms": 1000 * samples[-1],
        "complete": complete,
    }


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

        since = PushClient(port=peer.notifier).current_timestamp()
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
             "lat_seconds": 10, "many": 10000, "catch_clients": 1000, "catch_backlog": 100,
             "pub_seconds": 5},
    "smoke": {"fan_subs": 20, "fan_publishes": 20, "lat_subs": 20, "lat_rate": 50,
              "lat_seconds": 1, "many": 50, "catch_clients": 10, "catch_backlog": 10,
              "pub_seconds": 0.5},
}  # fmt: skip


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


async def run_peer(peer: Peer, size: dict) -> dict:
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
        ("latency", lambda: latency(peer, size["lat_subs"], size["lat_rate"], size["lat_seconds"])),
        ("catch_up", lambda: catch_up(peer, size["catch_clients"], size["catch_backlog"])),
        ("publisher", lambda: asyncio.to_thread(django_publisher, peer, size["pub_seconds"])),
    ]  # fmt: skip
    if peer.scenarios is not None:
        scenarios = [(name, run) for name, run in scenarios if name in peer.scenarios]
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
    return out


def _output(command: list[str]) -> str:
    """What ``command`` printed (nginx -v writes to stderr), or "" when it is not installed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        return ""
    return (done.stdout or done.stderr).strip()


# Each row's ratio is twistedpush / peer: above 1 is better for rates, below 1 for
# times, CPU and memory.
ROWS = [
    ("fan-out, 1 in flight: deliveries/s", lambda r: r["fanout_1"]["deliveries_per_s"]),
    ("fan-out, 8 in flight: deliveries/s", lambda r: r["fanout_8"]["deliveries_per_s"]),
    ("fan-out, 32 in flight: deliveries/s", lambda r: r["fanout_32"]["deliveries_per_s"]),
    ("fan-out, 32 in flight: server CPU %", lambda r: r["fanout_32"]["cpu_percent"]),
    ("latency at 200/s: p50 ms", lambda r: r["latency"]["p50_ms"]),
    ("latency at 200/s: p99 ms", lambda r: r["latency"]["p99_ms"]),
    ("latency at 200/s: max ms", lambda r: r["latency"]["max_ms"]),
    ("many channels: deliveries/s", lambda r: r["many"]["deliveries_per_s"]),
    ("many channels: connect all (s)", lambda r: r["many"]["connect_s"]),
    ("idle RSS per WebSocket (KiB)", lambda r: r["many"]["idle_kib_per_connection"]),
    ("catch-up: replayed/s", lambda r: r["catch_up"]["replayed_per_s"]),
    ("publisher from Django: calls/s", lambda r: r["publisher"]["single_per_s"]),
    ("publisher from Django: batched updates/s", lambda r: r["publisher"]["batched_per_s"]),
]


def fmt(value: float | None) -> str:
    if value is None or value != value:
        return "n/a"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


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
    if smoke:
        lines += [SMOKE_NOTE, ""]
    lines += ["| scenario | " + " | ".join(columns) + " |", "|---" * (1 + len(columns)) + "|"]
    for label, get in ROWS:
        values = {}
        for name in names:
            try:
                values[name] = get(all_results[name])
            except (KeyError, TypeError):
                values[name] = None
        ratios = []
        for ours_name, peer in pairs:
            a, b = values.get(ours_name), values.get(peer)
            ratios.append(f"{a / b:.2f}x" if a and b and b == b and a == a else "n/a")
        lines.append(f"| {label} | " + " | ".join(fmt(values[n]) for n in names)
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
    shown = [ROWS[i] for i in (0, 2, 5, 7, 9, 10, 11, 12)]
    figure, axes = plt.subplots(2, 4, figsize=(16, 7))
    for axis, (label, get) in zip(axes.flat, shown, strict=True):
        values = []
        for name in names:
            try:
                value = get(all_results[name])
            except (KeyError, TypeError):
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
        ]
        if args.only:
            peers = [p for p in peers if p.name in args.only]
        results = {}
        try:
            for peer in peers:
                print(f"== {peer.name}", flush=True)
                peer.start(workdir)
                try:
                    results[peer.name] = uvloop.run(run_peer(peer, size))
                finally:
                    peer.stop()
                RESULTS.mkdir(exist_ok=True)
                (RESULTS / f"partial-{size_name}.json").write_text(json.dumps(results))
        finally:
            redis.stop()
    RESULTS.mkdir(exist_ok=True)
    suffix = "-smoke" if args.smoke else ""
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

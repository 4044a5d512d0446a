"""A crowd on one server process: many idle subscribed WebSockets, a few busy ones.

    ulimit -n "$(ulimit -Hn)"; .venv/bin/python bench/crowd.py   # 50,000 connections
    .venv/bin/python bench/crowd.py --connections 19000          # what fits a 20,000-fd limit
    .venv/bin/python bench/crowd.py --smoke                      # 200 connections, 3 s (CI)

For twistedpush (memory mode, as bench.py starts it) and then Nchan, each alone on
the machine: N WebSockets each subscribe to a channel of their own, spread over
several load-generator processes (each under its own file limit, each from its own
source address 127.0.0.x, x >= 2, so that none runs out of ephemeral ports). Once
all are subscribed and the server has settled, 1% of them (the active ones) get
--rate publishes/s between them for --seconds, through the peer's own publisher
(AMP for twistedpush, HTTP POST for Nchan), while a probe asks the server how it
is every 100 ms (twistedpush: GET /health; Nchan: GET of an active channel on its
publisher location, which answers the channel's info) on a new connection each time.

It reports the server's RSS growth per connection, the time to connect and
subscribe all N, delivery latency (p50/p99/max; each body carries its
time.monotonic() send time, a clock every process on the machine shares), whether
every update arrived exactly once, the probe's response times, and the server's CPU
while publishing; with ratios twistedpush / Nchan. Results: bench/results/crowd.md
(crowd-smoke.md for --smoke, crowd-partial.md for --only).

One process holds N connections plus its listening sockets, logs and probes: if the
file limit allows fewer, the run stops before connecting anyone and says how many fit.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from picows import WSListener, WSMsgType, ws_connect

from bench import (  # bench/bench.py, beside this script
    RESULTS,
    Nchan,
    Peer,
    TwistedPush,
    body,
    cpu_seconds,
    percentiles,
    rss_kib,
    settle,
)

MARGIN = 1000
"""File descriptors a server needs besides the N WebSockets: listening sockets,
publishers, probes, logs, shared memory; and room for a reconnect."""

PER_PROCESS = 5000
"""WebSockets per load-generator process at most. Each process has a source address
of its own, 127.0.0.2 on: the 28,000 ephemeral ports of one address are never the
limit, and none is taken on 127.0.0.1, where the servers listen."""

ACTIVE_SHARE = 0.01  # of the connections, the ones that get the publishes
PROBE_EVERY = 0.1  # seconds between two probes' starts (the next waits for the last)
PROBE_TIMEOUT = 10.0
CONNECT_FOR = 300.0  # seconds at most to connect and subscribe everyone
DRAIN_FOR = 30.0  # seconds at most, after the last publish, for every delivery

SIZES = {
    "full": {"connections": 50_000, "seconds": 60.0, "rate": 100.0},
    "smoke": {"connections": 200, "seconds": 3.0, "rate": 100.0},
}


# The servers: bench.py's, with room for N connections


class CrowdTwistedPush(TwistedPush):
    """bench.py's twistedpush in memory mode, its connection caps (30,000 there)
    raised to N + MARGIN."""

    def __init__(self, connections: int) -> None:
        super().__init__("twistedpush")
        self.cap = connections + MARGIN


class CrowdNchan(Nchan):
    """bench.py's Nchan (bench/nchan.conf.template), its worker allowed N + MARGIN
    files and twice as many connection slots (30,000 and 25,000 there): nginx starts
    closing idle connections, subscribers included, once fewer than 1/16 of its
    worker_connections are free ("worker_connections are not enough, reusing
    connections")."""

    def __init__(self, connections: int) -> None:
        super().__init__("nchan")
        self.files = connections + MARGIN

    def template(self) -> str:
        template = super().template()
        for directive, value in (
            ("worker_rlimit_nofile", self.files),
            ("worker_connections", 2 * self.files),
        ):
            template, found = re.subn(rf"\b{directive} \d+;", f"{directive} {value};", template)
            if found != 1:
                raise RuntimeError(f"bench/nchan.conf.template has no single {directive} line")
        return template


def probe_path(peer: Peer, channel: str) -> str:
    """What the probe asks: /health, or for Nchan (which has none) the channel's info."""
    return "/health" if isinstance(peer, TwistedPush) else f"/pub/{channel}"


# File limits


def open_files_limit(pid: int) -> int:
    """The soft limit on open files of process ``pid`` (from /proc/<pid>/limits)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return sys.maxsize if soft == "unlimited" else int(soft)
    raise RuntimeError(f"no open-files limit in /proc/{pid}/limits")


def check_room(limit: int, connections: int, whose: str) -> None:
    """Stop, before anyone connects, when ``limit`` open files cannot hold the crowd."""
    if limit < connections + MARGIN:
        fits = max(0, limit - MARGIN)
        sys.exit(
            f"{whose} may open {limit:,} files, and {connections:,} connections need "
            f"{connections + MARGIN:,}: this machine allows at most {fits} connections per "
            f"process: run with --connections {fits} (or raise the hard limit, `ulimit -Hn`)"
        )


def raise_own_limit() -> int:
    """Raise this process's soft open-files limit to the hard one, for the servers
    (and load generators) it starts; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# Load generators: `crowd.py --worker SPEC` connects a slice of the crowd


class Subscriber(WSListener):
    """One WebSocket of the crowd: notes its subscription and each update's latency."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.subscribed = generator.confirm is None  # Nchan: subscribed once connected
        self.count = 0

    def on_ws_frame(self, transport, frame) -> None:  # type: ignore[no-untyped-def]
        if frame.msg_type != WSMsgType.TEXT:
            return
        now = time.monotonic()
        raw = frame.get_payload_as_bytes()
        if self.generator.confirm and raw.startswith(self.generator.confirm):
            self.subscribed = True
            return
        message = json.loads(raw)
        if self.generator.unwrap:
            if message.get("type") != "update":
                return
            message = message[self.generator.unwrap]
        self.count += 1
        self.generator.latencies.append(now - message["t"])

    def on_ws_disconnected(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.generator.lost += 1  # an idle one too: the server must keep the crowd


class Generator:
    """A slice of the crowd in one process: channels crowd.<first> on, one each."""

    def __init__(self, spec: dict) -> None:
        self.url: str = spec["url"]  # with {channel} where the channel goes
        self.frames: list[str] = spec["frames"]  # subscribe frames, likewise
        self.confirm = spec["confirm"].encode() if spec["confirm"] else None
        self.unwrap: str | None = spec["unwrap"]  # the key the published body is under
        self.source: str = spec["source"]
        self.indices = range(spec["first"], spec["first"] + spec["count"])
        self.latencies: list[float] = []
        self.subscribers: dict[int, Subscriber] = {}
        self.transports: list = []
        self.lost = 0  # connections the server closed before the end

    async def connect(self) -> None:
        semaphore = asyncio.Semaphore(200)

        async def one(index: int) -> None:
            channel = f"crowd.{index}"
            async with semaphore:
                transport, listener = await ws_connect(
                    lambda: Subscriber(self), self.url.replace("{channel}", channel),
                    websocket_handshake_timeout=60, local_addr=(self.source, 0),
                )  # fmt: skip
                if listener is None:  # picows lets go of it once the connection is lost
                    raise RuntimeError(f"the server closed {channel}'s WebSocket at once")
                for frame in self.frames:
                    transport.send(WSMsgType.TEXT, frame.replace("{channel}", channel).encode())
            self.transports.append(transport)
            self.subscribers[index] = listener

        await asyncio.gather(*(one(i) for i in self.indices))
        deadline = time.monotonic() + CONNECT_FOR
        while not all(s.subscribed for s in self.subscribers.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("not every subscription was confirmed")
            await asyncio.sleep(0.05)

    async def drain(self, expected: dict[int, int]) -> dict:
        """Wait until each connection got what was published to it; report."""
        deadline = time.monotonic() + DRAIN_FOR
        while time.monotonic() < deadline and any(
            self.subscribers[i].count < n for i, n in expected.items()
        ):
            await asyncio.sleep(0.05)
        wrong = sum(s.count != expected.get(i, 0) for i, s in self.subscribers.items())
        return {"latencies": self.latencies, "wrong": wrong, "lost": self.lost,
                "delivered": sum(s.count for s in self.subscribers.values())}  # fmt: skip


async def generate(spec: dict) -> None:
    """The load generator's side of the conversation: one JSON line each way per step."""
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=16 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    def say(message: dict) -> None:
        print(json.dumps(message), flush=True)

    generator = Generator(spec)
    say({"ready": True})
    await stdin.readline()  # go
    try:
        await generator.connect()
    except Exception as e:
        say({"error": f"{type(e).__name__}: {e}"})
        return
    say({"connected": len(generator.transports), "at": time.monotonic()})
    expected = json.loads(await stdin.readline())
    say(await generator.drain({int(i): n for i, n in expected.items()}))
    await stdin.readline()  # close
    for transport in generator.transports:
        transport.disconnect()


class Worker:
    """The lead process's handle on one load generator."""

    def __init__(self, process: asyncio.subprocess.Process, spec: dict) -> None:
        self.process = process
        self.spec = spec

    @classmethod
    async def start(cls, spec: dict) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--worker", json.dumps(spec),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, limit=16 * 1024 * 1024,
        )  # fmt: skip
        return cls(process, spec)

    def send(self, message: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")

    async def answer(self, timeout: float) -> dict:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"load generator {self.spec['source']} ended")
        message = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"load generator {self.spec['source']}: {message['error']}")
        return message

    def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


# The scenario


async def probe(port: int, path: str) -> float:
    """One GET on a new connection, as a load balancer's health check: seconds to the answer."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"GET {path}: {answer[:80]!r}")
    return time.monotonic() - start


async def probe_until(port: int, path: str, stop: asyncio.Event) -> tuple[list[float], int]:
    """Probe every PROBE_EVERY seconds until ``stop``: response times, and failures
    (an error or no answer within PROBE_TIMEOUT)."""
    times: list[float] = []
    failures = 0
    start = time.monotonic()
    while not stop.is_set():
        try:
            times.append(await asyncio.wait_for(probe(port, path), PROBE_TIMEOUT))
        except (OSError, RuntimeError, TimeoutError):
            failures += 1
        next_at = start + (len(times) + failures) * PROBE_EVERY
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        except TimeoutError:
            pass
    return times, failures


def slices(connections: int, per_process: int) -> list[tuple[int, int]]:
    """(first, count) of each load generator: at least two, each under per_process."""
    workers = min(connections, max(2, math.ceil(connections / per_process)))
    bounds = [k * connections // workers for k in range(workers + 1)]
    return [(a, b - a) for a, b in itertools.pairwise(bounds)]


async def crowd(peer: Peer, connections: int, rate: float, seconds: float) -> dict:
    holders = peer.pids()[1:] or peer.pids()  # nginx: its worker holds the connections
    check_room(min(open_files_limit(pid) for pid in holders), connections, peer.name)
    active = [k * connections // max(1, round(connections * ACTIVE_SHARE))
              for k in range(max(1, round(connections * ACTIVE_SHARE)))]  # fmt: skip
    template = {
        "url": peer.ws_url(["{channel}"]),
        "frames": [f.decode() for f in peer.subscribe_frames(["{channel}"])],
        "confirm": '{"type":"subscribed"' if isinstance(peer, TwistedPush) else None,
        "unwrap": "data" if isinstance(peer, TwistedPush) else None,
    }
    own_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    per_process = min(PER_PROCESS, own_limit - 100)
    await settle(peer)
    rss_before = rss_kib(peer.pids())
    workers = [
        await Worker.start({**template, "first": first, "count": count,
                            "source": f"127.0.0.{n + 2}"})
        for n, (first, count) in enumerate(slices(connections, per_process))
    ]  # fmt: skip
    try:
        for worker in workers:
            await worker.answer(60)  # ready: imports done
        began = time.monotonic()
        for worker in workers:
            worker.send("go")
        done = [await worker.answer(CONNECT_FOR + 60) for worker in workers]
        connect_s = max(d["at"] for d in done) - began
        print(f"[{peer.name}]   {connections:,} connected in {connect_s:.1f} s", flush=True)
        await settle(peer)
        rss_kib_per_connection = (rss_kib(peer.pids()) - rss_before) / connections

        publish = await peer.publisher()
        stop = asyncio.Event()
        prober = asyncio.create_task(
            probe_until(peer.port, probe_path(peer, f"crowd.{active[0]}"), stop)
        )
        expected = dict.fromkeys(active, 0)
        cpu0 = cpu_seconds(peer.pids())
        start = time.monotonic()
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif time.monotonic() - start > 2 * seconds:
                break  # the server cannot take this rate: measure what it took
            channel = active[n % len(active)]
            await publish(f"crowd.{channel}", body(time.monotonic()))
            expected[channel] += 1
        elapsed = time.monotonic() - start
        cpu_percent = 100 * (cpu_seconds(peer.pids()) - cpu0) / elapsed
        stop.set()
        probe_times, probe_failures = await prober

        for worker in workers:
            mine = range(worker.spec["first"], worker.spec["first"] + worker.spec["count"])
            worker.send({i: n for i, n in expected.items() if i in mine})
        reports = [await worker.answer(DRAIN_FOR + 60) for worker in workers]
        for worker in workers:
            worker.send("close")
        for worker in workers:
            await asyncio.wait_for(worker.process.wait(), 60)
    finally:
        for worker in workers:
            worker.stop()
    published = sum(expected.values())
    delivered = sum(r["delivered"] for r in reports)
    return {
        "connections": connections,
        "load_generators": len(workers),
        "connect_s": connect_s,
        "rss_kib_per_connection": rss_kib_per_connection,
        "published": published,
        "publishes_per_s": published / elapsed,
        "delivered": delivered,
        **percentiles([t for r in reports for t in r["latencies"]], "delivery_"),
        # Every update once, no connection of the crowd lost, every probe answered.
        "complete": delivered == published
        and not any(r["wrong"] or r["lost"] for r in reports)
        and not probe_failures,
        "lost": sum(r["lost"] for r in reports),
        **percentiles(probe_times, "probe_"),
        "probes": len(probe_times),
        "probe_failures": probe_failures,
        "cpu_percent": cpu_percent,
    }


# The report

ROWS = [
    ("RSS growth per connection (KiB)", "rss_kib_per_connection"),
    ("connect and subscribe all (s)", "connect_s"),
    ("publishes/s reached", "publishes_per_s"),
    ("delivery p50 (ms)", "delivery_p50_ms"),
    ("delivery p99 (ms)", "delivery_p99_ms"),
    ("delivery max (ms)", "delivery_max_ms"),
    ("probe p50 (ms)", "probe_p50_ms"),
    ("probe p99 (ms)", "probe_p99_ms"),
    ("probe max (ms)", "probe_max_ms"),
    ("server CPU while publishing (%)", "cpu_percent"),
]


def cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return (
            f"{value:,.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
        )
    return "n/a" if value is None else f"{value:,}" if isinstance(value, int) else str(value)


def report(results: dict, args: argparse.Namespace, command: str, load: tuple) -> str:
    names = list(results)
    ratio = "twistedpush" in results and "nchan" in results and not args.smoke
    header = names + (["twistedpush / nchan"] if ratio else [])
    lines = [
        "# A crowd on one server process",
        "",
        f"Command: `{command}` on {platform.node()}: {os.cpu_count()} cores, Linux "
        f"{platform.release()}; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
        "(1 / 5 / 15 min) when it began.",
        "",
        f"{args.connections:,} WebSockets, each subscribed to a channel of its own; then "
        f"{args.rate:g} publishes/s for {args.seconds:g} s spread over the "
        f"{max(1, round(args.connections * ACTIVE_SHARE)):,} active ones (1%), through AMP "
        f"(twistedpush) and HTTP POST (Nchan). RSS growth is the server's, after everyone "
        f"subscribed and it settled, divided by the connections. Delivery latency is from "
        f"just before the publish call to the subscriber's receipt. The probe is a GET on a "
        f"new connection every {PROBE_EVERY * 1000:g} ms while publishing: /health for "
        f"twistedpush, the active channel's info on Nchan's publisher location (Nchan has "
        f"no health endpoint).",
        "",
        "| | " + " | ".join(header) + " |",
        "|---" * (1 + len(header)) + "|",
    ]
    for label, key in ROWS:
        values = [results[n].get(key) for n in names]
        row = [cell(v) for v in values]
        if ratio:
            ours, theirs = results["twistedpush"].get(key), results["nchan"].get(key)
            row.append(f"{ours / theirs:.2f}x" if ours and theirs else "n/a")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    for label, get in (
        ("complete: every update once, none lost, probes answered", lambda r: r.get("complete")),
        ("connections lost", lambda r: r.get("lost")),
        ("probes answered / failed", lambda r: f"{r.get('probes')} / {r.get('probe_failures')}"),
    ):
        lines.append(f"| {label} | " + " | ".join(cell(get(results[n])) for n in names)
                     + (" | |" if ratio else " |"))  # fmt: skip
    failed = [f"{name}: {r['error']}" for name, r in results.items() if "error" in r]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed) + "."]
    lines += ["", "Raw results:", "", "```json", json.dumps(results, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="200 connections for 3 s (CI)")
    parser.add_argument("--connections", type=int, help="WebSockets (default 50,000)")
    parser.add_argument("--seconds", type=float, help="publishing time (default 60)")
    parser.add_argument("--rate", type=float, help="publishes/s (default 100)")
    parser.add_argument("--only", nargs="*", choices=("twistedpush", "nchan"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a load generator's slice
    args = parser.parse_args()
    if args.worker:
        uvloop.run(generate(json.loads(args.worker)))
        return
    for key, default in SIZES["smoke" if args.smoke else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.connections < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--connections, --rate and --seconds must be positive")
    check_room(raise_own_limit(), args.connections, "a process on this machine")
    command = " ".join(["python bench/crowd.py", *sys.argv[1:]])
    load = os.getloadavg()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for make in (CrowdTwistedPush, CrowdNchan):
            peer = make(args.connections)  # its free port picked now, not minutes ago
            if args.only and peer.name not in args.only:
                continue
            print(f"== {peer.name}", flush=True)
            try:
                peer.start(Path(tmp))
                results[peer.name] = uvloop.run(
                    crowd(peer, args.connections, args.rate, args.seconds)
                )
            except (RuntimeError, OSError, TimeoutError) as e:
                results[peer.name] = {"error": f"{type(e).__name__}: {e}", "complete": False}
            finally:
                peer.stop()
            print(f"[{peer.name}]   {results[peer.name]}", flush=True)
    text = report(results, args, command, load)
    RESULTS.mkdir(exist_ok=True)
    # A run of one server must not overwrite the full run's report.
    suffix = ("-smoke" if args.smoke else "") + ("-partial" if args.only else "")
    path = RESULTS / f"crowd{suffix}.md"
    path.write_text(text)
    print(text.split("\nRaw results:")[0])
    print(f"written to {path}")
    incomplete = [name for name, r in results.items() if not r.get("complete")]
    if incomplete:
        sys.exit("not every update arrived (or the run failed) for " + ", ".join(incomplete))


if __name__ == "__main__":
    main()

"""Soak: many idle-ish WebSocket connections and a steady publisher; is the server's RSS flat?

    .venv/bin/python bench/soak.py --connections 10000 --rate 100 --minutes 10

Starts its own push server (memory history) on free ports, opens the
connections (each on one of --channels channels), publishes --rate updates per
second spread over the channels, samples the server's RSS every --every
seconds, checks every client got its updates in order, and writes
bench/results/soak.md. Loopback only; it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import free_port, rss_kib  # noqa: E402 (bench/bench.py, beside this script)
from twistedpush.client import PushClient  # noqa: E402


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return json.load(response)


def rss_mib(pid: int) -> float:
    return rss_kib([pid]) / 1024


class Subscriber:
    def __init__(self) -> None:
        self.received = 0
        self.last_ts = 0
        self.out_of_order = 0


async def subscriber(url: str, channel: str, state: Subscriber) -> None:
    """Reads until cancelled (no per-message timeouts: 10,000 timers would be the bench)."""
    async with connect(url, max_size=None, open_timeout=60, ping_interval=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        async for frame in ws:
            message = json.loads(frame)
            if message["type"] == "update":
                if message["ts"] <= state.last_ts:
                    state.out_of_order += 1
                state.last_ts = message["ts"]
                state.received += 1


def publisher(port: int, rate: float, channels: int, stop: Any, sent: Any) -> None:
    """In a process of its own, so the clients' event loop cannot slow it down."""
    client = PushClient(port=port)
    interval = 1 / rate
    start = time.monotonic()
    n = 0
    while not stop.is_set():
        client.send_update(f"soak.{n % channels}", {"n": n, "pad": "x" * 80})
        n += 1
        sent.value = n
        delay = start + n * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)


async def main(args: argparse.Namespace) -> None:
    port, notifier = free_port(), free_port()
    twistd = shutil.which("twistd", path=str(Path(sys.executable).parent)) or "twistd"
    server = subprocess.Popen(
        [twistd, "--pidfile=", "-n", "serverpush", "--public", "*",
         "--port", f"tcp:{port}:interface=127.0.0.1:backlog=4096",
         "--notifier", f"tcp:{notifier}:interface=127.0.0.1",
         "--max-connections", str(args.connections + 100),
         "--max-connections-per-ip", str(args.connections + 100)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        idle_rss = rss_mib(server.pid)
        url = f"ws://127.0.0.1:{port}/ws"
        states = [Subscriber() for _ in range(args.connections)]
        tasks = []
        for i, state in enumerate(states):
            tasks.append(asyncio.create_task(
                subscriber(url, f"soak.{i % args.channels}", state)
            ))  # fmt: skip
            if i % 500 == 499:
                await asyncio.sleep(0.2)
        for _ in range(120):  # every client connected and subscribed, then measure
            await asyncio.sleep(1)
            if health(port)["subscriptions"] >= args.connections:
                break
        connected_rss = rss_mib(server.pid)
        opened = health(port)["connections"]["websocket"]
        failed = sum(1 for t in tasks if t.done() and t.exception() is not None)
        print(f"server sees {opened} WebSocket connections; {failed} clients failed", flush=True)
        print(f"{args.connections} connections: server RSS {connected_rss:.1f} MiB "
              f"(idle {idle_rss:.1f} MiB)", flush=True)  # fmt: skip
        halt = multiprocessing.Event()
        sent = multiprocessing.Value("q", 0)
        process = multiprocessing.Process(
            target=publisher, args=(notifier, args.rate, args.channels, halt, sent)
        )
        process.start()
        samples = []
        began = time.monotonic()
        while time.monotonic() - began < args.minutes * 60:
            await asyncio.sleep(args.every)
            elapsed = time.monotonic() - began
            received = sum(s.received for s in states)
            samples.append((elapsed, rss_mib(server.pid), sent.value, received))
            print(f"t={elapsed:6.0f}s rss={samples[-1][1]:7.1f} MiB published={sent.value} "
                  f"delivered={received}", flush=True)  # fmt: skip
        halt.set()
        process.join(10)
        await asyncio.sleep(3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        total = sent.value
        final = health(port)
        expected = total * (args.connections // args.channels)
        delivered = sum(s.received for s in states)
        disorder = sum(s.out_of_order for s in states)
        first = samples[0][1]
        last = samples[-1][1]
        lines = [
            "# Soak",
            "",
            f"Command: `python bench/soak.py --connections {args.connections} "
            f"--rate {args.rate} --minutes {args.minutes}` on {os.cpu_count()} cores.",
            "",
            f"- connections: {args.connections} on {args.channels} channels; "
            f"{args.rate} publishes/s for {args.minutes} min ({total} updates)",
            f"- server RSS: idle {idle_rss:.1f} MiB, connected {connected_rss:.1f} MiB "
            f"({(connected_rss - idle_rss) * 1024 / args.connections:.1f} KiB per connection), "
            f"first sample {first:.1f} MiB, last {last:.1f} MiB "
            f"(change {last - first:+.1f} MiB)",
            f"- delivered {delivered} of {expected} expected; out of order: {disorder}; "
            f"server saw {opened} connections open, dropped {final['slow_client_drops']} "
            f"slow clients; {failed} clients failed to connect",
            "",
            "| t (s) | RSS (MiB) | published | delivered |",
            "|---:|---:|---:|---:|",
            *[f"| {t:.0f} | {r:.1f} | {p} | {d} |" for t, r, p, d in samples],
        ]
        out = ROOT / "bench" / "results" / "soak.md"
        out.write_text("\n".join(lines) + "\n")
        print("\n".join(lines[4:7]))
        print(f"written to {out}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--every", type=float, default=30)
    asyncio.run(main(parser.parse_args()))

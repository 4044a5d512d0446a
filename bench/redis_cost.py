"""What Redis history costs a publisher, side by side with memory history, in one run.

    .venv/bin/python bench/redis_cost.py     # about 30 s; needs redis-server

Starts a redis-server and two nodes (memory, Redis) on loopback, then publishes
from this process with ``PushClient``, single calls and batches of 500, in
alternating rounds (so that both see the same machine, however busy it is), and
prints for each: the rate (median of the rounds), and the CPU time per update of
the node, of Redis and of this client, read from /proc; then what Redis says one
single-update publishing script took (``INFO commandstats``).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench import KEY, PAD, Redis, TwistedPush, cpu_seconds  # noqa: E402
from twistedpush.client import PushClient  # noqa: E402

ROUNDS = 5
CALLS = {"single": 1500, "batch": 30}  # per round; a batch is 500 updates


def redis_command(port: int, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True)
    return done.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis = Redis(workdir)
        nodes = {"memory": TwistedPush("memory"), "redis": TwistedPush("redis", redis.url)}
        try:
            for node in nodes.values():
                node.start(workdir)
            clients = {
                name: PushClient(port=node.notifier, key=KEY) for name, node in nodes.items()
            }
            for client in clients.values():
                client.send_update("warm", 0)
            rates: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[list[float]]] = {}
            for _ in range(ROUNDS):
                for mode, calls in CALLS.items():
                    for name, client in clients.items():
                        pids = [nodes[name].pids()[0], redis.process.pid]
                        before = [cpu_seconds([pid]) for pid in pids] + [time.process_time()]
                        started = time.perf_counter()
                        for n in range(calls):
                            if mode == "single":
                                client.send_update("pub", {"n": n, "pad": PAD})
                            else:
                                client.send_updates(
                                    [("pub", {"n": i, "pad": PAD}) for i in range(500)]
                                )
                        elapsed = time.perf_counter() - started
                        after = [cpu_seconds([pid]) for pid in pids] + [time.process_time()]
                        updates = calls * (1 if mode == "single" else 500)
                        rates.setdefault((name, mode), []).append(updates / elapsed)
                        spent = [
                            (b - a) * 1e6 / updates for a, b in zip(before, after, strict=True)
                        ]
                        cpu.setdefault((name, mode), []).append(spent)
            for mode in CALLS:
                memory = statistics.median(rates[("memory", mode)])
                for name in nodes:
                    rate = statistics.median(rates[(name, mode)])
                    node, server, publisher = (
                        statistics.median(c[i] for c in cpu[(name, mode)]) for i in range(3)
                    )
                    print(f"{mode:6} {name:6} {rate:9,.0f} updates/s ({rate / memory:.2f}x memory)"
                          f"  CPU per update: node {node:5.1f} us, Redis {server:5.1f} us,"
                          f" client {publisher:5.1f} us")  # fmt: skip
            redis_command(redis.port, "CONFIG", "RESETSTAT")
            for n in range(1000):
                clients["redis"].send_update("pub", {"n": n, "pad": PAD})
            for line in redis_command(redis.port, "INFO", "commandstats").splitlines():
                if line.startswith("cmdstat_evalsha"):
                    print("Redis, one single-update publishing script:", line.split(",")[2])
        finally:
            for node in nodes.values():
                node.stop()
            redis.stop()


if __name__ == "__main__":
    main()

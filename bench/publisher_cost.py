"""The publisher path's own cost, in process: microseconds of Python per call or update.

No sockets and no second process: the notifier is fed AMP bytes through a
StringTransport, the client's encoding is timed alone, so the figures say what
the code costs apart from the round trip (docs/benchmarks.md). Best of 5 runs.

    .venv/bin/python bench/publisher_cost.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.testing import StringTransport

from twistedpush.access import AccessPolicy, check_channel, check_name
from twistedpush.client import _batches, encode_data
from twistedpush.commands import SendUpdate, pack_box, pack_pairs, update_box
from twistedpush.history import MemoryHistory
from twistedpush.hub import Hub
from twistedpush.notifier import NotifierProtocol

PAD = "x" * 60  # about 100 bytes of JSON per update, as in bench.py
BATCH = 500


def best(run: Callable[[], None], repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def notifier() -> tuple[NotifierProtocol, StringTransport]:
    hub = Hub(MemoryHistory(reactor), AccessPolicy(None, ("*",)), reactor)
    hub.start()
    protocol = NotifierProtocol(hub)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def request(command: bytes, tag: int, arguments: bytes) -> bytes:
    return pack_pairs([(b"_command", command), (b"_ask", b"%x" % tag)]) + arguments


def server_per_call(command: bytes, arguments: Callable[[int], bytes], calls: int) -> float:
    protocol, transport = notifier()
    requests = [request(command, i, arguments(i)) for i in range(calls)]

    def run() -> None:
        transport.clear()
        for data in requests:
            protocol.dataReceived(data)

    return best(run) / calls * 1e6


def one_update(n: int) -> bytes:
    return update_box("pub", encode_data({"n": n, "pad": PAD}), None)


def client_batch() -> None:
    updates = [("pub", {"n": n, "pad": PAD}) for n in range(BATCH)]
    boxes = [update_box(check_channel(u[0]), encode_data(u[1]), check_name(None)) for u in updates]
    for batch in _batches(boxes):
        pack_box([(b"updates", b"".join(batch))])


def amp_generic_box() -> None:
    for n in range(BATCH):
        arguments = {"channel": "pub", "data": encode_data({"n": n, "pad": PAD}), "name": None}
        SendUpdate.makeArguments(arguments, None).serialize()


def main() -> None:
    batch = pack_box([(b"updates", b"".join(one_update(n) for n in range(BATCH)))])
    rows = [
        ("server: SendUpdate, per call", server_per_call(b"SendUpdate", one_update, 20_000)),
        ("server: CurrentTimestamp, per call",
         server_per_call(b"CurrentTimestamp", lambda n: b"\0\0", 20_000)),
        ("server: SendUpdates of 500, per update",
         server_per_call(b"SendUpdates", lambda n: batch, 100) / BATCH),
        ("client: send_updates encoding, per update", best(client_batch) / BATCH * 1e6),
        ("client: AMP's generic encoding, per SendUpdate box",
         best(amp_generic_box) / BATCH * 1e6),
    ]  # fmt: skip
    print("| what | µs |\n|---|---:|")
    for label, micros in rows:
        print(f"| {label} | {micros:.1f} |")


if __name__ == "__main__":
    main()

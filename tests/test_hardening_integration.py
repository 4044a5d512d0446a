"""Hardening against real processes and sockets: shutdown, slow and hostile clients, limits."""

import base64
import json
import os
import re
import signal
import socket
import struct
import threading
import time
import urllib.request

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from twistedpush.client import PushClient

pytestmark = pytest.mark.integration


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_websocket(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A WebSocket handshake by hand, for clients that misbehave on purpose."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert b" 101 " in response.split(b"\r\n")[0], response
    return sock


def frame(payload: bytes, opcode: int = 1, length: int | None = None) -> bytes:
    """A masked client frame; ``length`` may claim more than is sent (a truncated frame)."""
    size = len(payload) if length is None else length
    header = bytes([0x80 | opcode])
    if size < 126:
        header += bytes([0x80 | size])
    elif size < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", size)
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_sigterm_sends_clients_elsewhere_and_exits(push_server):
    server = push_server("--public", "*")
    publisher = PushClient(port=server.notifier_port)
    answer = {}
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": "s"}))
        json.loads(ws.recv(timeout=5))
        body = json.dumps({"subscriptions": [{"channel": "p"}], "timeout": 60}).encode()
        request = urllib.request.Request(f"{server.url}/poll", data=body, method="POST")
        waiter = threading.Thread(
            target=lambda: answer.update(r=urllib.request.urlopen(request, timeout=30).read())
        )
        waiter.start()
        server.wait_for(lambda h: h["connections"]["longpoll"] == 1, "the held poll")
        acked = publisher.send_update("s", "last words")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert json.loads(ws.recv(timeout=5))["ts"] == acked  # in-flight work finished
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1001
    waiter.join(10)
    assert json.loads(answer["r"])["messages"] == []
    # twistd ends by re-raising the signal it stopped for, as a SIGTERMed process should.
    assert server.process.wait(10) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10


def test_slow_client_is_dropped_and_memory_stays_bounded(push_server):
    server = push_server("--public", "*", "--max-pending-bytes", "262144")
    publisher = PushClient(port=server.notifier_port)
    stalled = raw_websocket(server.port, rcvbuf=4096)
    stalled.sendall(frame(json.dumps({"type": "subscribe", "channel": "big"}).encode()))
    server.wait_for(lambda h: h["subscriptions"] == 1, "the stalled subscription")
    with connect(server.ws_url, max_size=None) as reader:
        reader.send(json.dumps({"type": "subscribe", "channel": "big"}))
        reader.recv(timeout=5)
        before = rss_kib(server.process.pid)
        chunk = "x" * 60_000
        for i in range(300):  # 18 MB for a client that reads nothing
            publisher.send_update("big", [i, chunk])
            assert json.loads(reader.recv(timeout=10))["data"][0] == i
        server.wait_for(lambda h: h["slow_client_drops"] == 1, "the slow client's drop")
        grown = rss_kib(server.process.pid) - before
    assert grown < 20_000, f"server grew {grown} KiB for one stalled client"
    stalled.close()


def test_hostile_bytes_then_a_normal_client_works_and_memory_comes_back(push_server):
    server = push_server("--public", "*")
    baseline = rss_kib(server.process.pid)
    # A 10 MB frame: refused as it arrives (close 1009), never buffered whole.
    big = raw_websocket(server.port)
    big.sendall(frame(b"", length=10 * 1024 * 1024)[:14])
    try:
        for _ in range(160):
            big.sendall(b"\x00" * 65536)
    except OSError:
        pass  # the server hung up, as it should
    big.close()
    # Truncated frames, binary frames, slowloris headers.
    truncated = raw_websocket(server.port)
    truncated.sendall(frame(b'{"type":"subscribe"', length=500)[:30])
    binary = raw_websocket(server.port)
    binary.sendall(frame(b"\x00\x01", opcode=2))
    slow = []
    for _ in range(50):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(sock)
    publisher = PushClient(port=server.notifier_port)
    with connect(server.ws_url) as ws:
        ws.send(json.dumps({"type": "subscribe", "channel": "ok"}))
        json.loads(ws.recv(timeout=5))
        publisher.send_update("ok", "still fine")
        assert json.loads(ws.recv(timeout=5))["data"] == "still fine"
    for sock in [*slow, truncated, binary]:
        sock.close()
    assert rss_kib(server.process.pid) - baseline < 20_000


def test_connection_cap_per_address_and_metrics(push_server):
    server = push_server("--public", "*", "--max-connections-per-ip", "3")
    with connect(server.ws_url), connect(server.ws_url):
        idle = socket.create_connection(("127.0.0.1", server.port))  # counted from accept
        # Accepted after the idle one (same listen queue), refused before its request.
        answer = http_exchange(server.port, b"")
        assert answer.startswith(b"HTTP/1.1 503") and b"per client address" in answer
        idle.close()
        server.wait_for(lambda h: h["connections"]["http"] == 1, "the idle socket's release")
        with urllib.request.urlopen(f"{server.url}/metrics") as response:
            text = response.read().decode()
    assert 'twistedpush_connections{transport="websocket"} 2' in text
    assert 'twistedpush_connections{transport="http"} 1' in text  # this request
    assert 'twistedpush_refused_total{reason="limit"} 1' in text
    assert "# TYPE twistedpush_updates_in_total counter" in text
    assert 'twistedpush_gc_collections_total{generation="2"}' in text
    # What start-up made is out of the collector's reach: full collections are shorter.
    frozen = re.search(r"^twistedpush_gc_frozen_objects (\d+)$", text, re.M)
    assert frozen and int(frozen.group(1)) > 10_000


def http_exchange(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Send ``request`` on a fresh socket; everything answered until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_slowloris_sockets_are_counted_and_cut_off_at_the_request_deadline(push_server):
    server = push_server(
        "--public", "*", "--max-connections", "10", "--request-timeout", "2"
    )  # fmt: skip
    slow = []
    for _ in range(10):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        slow.append(sock)
    # All ten slots are taken by sockets still sending headers: the next ones (accepted
    # after them, from the same listen queue) are refused as they are accepted.
    refused = [http_exchange(server.port, b"") for _ in range(3)]
    assert all(answer.startswith(b"HTTP/1.1 503") for answer in refused), refused
    assert all(b'"limit"' in answer for answer in refused)
    for sock in slow:
        sock.settimeout(10)
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        sock.close()
    server.wait_for(lambda h: h["connections"]["http"] == 1, "the cut-off sockets' release")


def test_declared_oversize_body_is_refused_at_once_and_root_names_endpoints(push_server):
    server = push_server("--public", "*")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = sock.recv(65536)  # no byte of the body sent: answered anyway
    assert answer.startswith(b"HTTP/1.1 413")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["messages"][0]["code"] == "too_large"
    with urllib.request.urlopen(f"{server.url}/") as response:
        text = response.read().decode()
    assert "/ws" in text and "/poll" in text and "/health" in text


def test_close_codes_for_oversize_and_invalid_utf8_reach_the_client(push_server):
    server = push_server("--public", "*")
    with connect(server.ws_url, max_size=None) as ws:
        ws.send("x" * 100_000)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    sock = raw_websocket(server.port)
    sock.sendall(frame(b'{"type":"subscribe","channel":"\xff"}'))
    sock.settimeout(5)
    answer = sock.recv(64)
    assert answer[0] == 0x88 and struct.unpack("!H", answer[2:4])[0] == 1007
    sock.close()
    with connect(server.ws_url) as ws:  # and the server still serves
        ws.send("[" * 1000 + "]" * 1000)
        assert json.loads(ws.recv(timeout=5))["code"] == "bad_request"
        ws.send(json.dumps({"type": "subscribe", "channel": "ok"}))
        assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"


def test_a_notifier_peer_that_does_not_read_its_answers_is_not_read_either(push_server):
    """Unauthenticated commands are each answered UNAUTHORIZED (an answer bigger than
    the command): a peer that never reads them must not grow the server's memory."""
    from twistedpush.commands import CurrentTimestamp, pack_box, pack_pairs

    server = push_server("--public", "*", "--publisher-key", "k")
    baseline = rss_kib(server.process.pid)
    box = pack_pairs([(b"_command", CurrentTimestamp.commandName), (b"_ask", b"1")]) + pack_box(())
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.notifier_port))
    sock.setblocking(False)
    chunk = box * 2000
    sent = 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)  # the server stopped reading: as it should
    grown = rss_kib(server.process.pid) - baseline
    sock.close()
    # Measured here: about 0.7 MB with the server not reading such a peer, 11 MB
    # in 3 s (and growing) when it buffered every answer.
    assert grown < 6_000, f"server grew {grown} KiB for a peer that reads nothing ({sent} sent)"
    with PushClient(port=server.notifier_port, key="k") as publisher:
        assert publisher.current_timestamp() > 0  # and serves others meanwhile


def test_ws_is_no_open_redirect(push_server):
    """Autobahn's status page answered GET /ws?redirect=URL with a 303 to any URL."""
    server = push_server("--public", "*")
    answer = http_exchange(
        server.port,
        b"GET /ws?redirect=http://evil.example/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 426") and b"evil.example" not in answer

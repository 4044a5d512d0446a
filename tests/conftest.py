"""Fixtures that start real push server processes on free ports."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run (the kernel may reuse one)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def twistd() -> str:
    found = shutil.which("twistd", path=str(Path(sys.executable).parent)) or shutil.which("twistd")
    assert found, "twistd is not installed next to this Python"
    return found


class PushServer:
    """``twistd -n serverpush`` in a child process, on ports of its own."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.args = list(args)
        self.port = free_port()
        self.notifier_port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = workdir / f"serverpush-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> PushServer:
        command = [
            twistd(), "--pidfile=", "-n", "serverpush",
            "--port", f"tcp:{self.port}:interface=127.0.0.1",
            "--notifier", f"tcp:{self.notifier_port}:interface=127.0.0.1",
            *self.args,
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"push server exited: {self.log.read_text()}")
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"push server did not come up: {self.log.read_text()}")

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
            return json.load(response)

    def wait_for(self, predicate, what: str, timeout: float = 10) -> None:
        """Wait until /health satisfies ``predicate`` (readiness, not timing)."""
        deadline = time.monotonic() + timeout
        health: dict = {}
        while time.monotonic() < deadline:
            try:
                health = self.health()
            except urllib.error.HTTPError as e:  # 503 while the store is away
                health = json.load(e)
            if predicate(health):
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}: {health}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def push_server(tmp_path: Path) -> Iterator:
    """A factory: ``push_server(*options)`` starts a server, stopped after the test."""
    servers: list[PushServer] = []

    def start(*args: str) -> PushServer:
        server = PushServer(tmp_path, *args).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class RedisServer:
    """A real ``redis-server`` of the test's own, on a free port; ``env`` is added to its
    environment (a preloaded library, say)."""

    def __init__(
        self, workdir: Path, persist: bool = True, env: dict | None = None, args: tuple = ()
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        self.binary = binary
        self.workdir = workdir
        self.persist = persist
        self.env = {**os.environ, **(env or {})}
        self.args = list(args)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else [
            "--appendonly", "no"
        ]  # fmt: skip
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.workdir), *persistence, *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def command(self, *args: str) -> Any:
        """One command over a plain socket: tests look at the keys without the code under test."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request.encode())
            with sock.makefile("rb") as reply:
                return _read_reply(reply)


def _read_reply(reply: BinaryIO) -> Any:
    """A RESP2 reply: simple string, error (raised), integer, bulk string or array."""
    line = reply.readline()
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(f"Redis error: {rest}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        return None if rest == "-1" else reply.read(int(rest) + 2)[:-2].decode()
    if kind == b"*":
        return None if rest == "-1" else [_read_reply(reply) for _ in range(int(rest))]
    raise RuntimeError(f"not a Redis reply: {line!r}")


@pytest.fixture
def push(push_server: Callable[..., PushServer], settings: Any) -> Iterator[PushServer]:
    """A real push server (every channel public), with Django's settings pointing at
    it; the thread's notifier connection is closed after."""
    from django_adapter.client import get_client

    server = push_server("--public", "*")
    settings.SERVERPUSH_NOTIFIER_PORT = server.notifier_port
    settings.SERVERPUSH_PORT = server.port
    yield server
    get_client().close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop(signal.SIGKILL)


@pytest.fixture
def redis_shards(tmp_path: Path) -> Iterator[list[RedisServer]]:
    """Two redis-servers, each with a directory of its own: the shards of one history."""
    servers = []
    for number in range(2):
        workdir = tmp_path / f"shard-{number}"
        workdir.mkdir()
        servers.append(RedisServer(workdir).start())
    yield servers
    for server in servers:
        server.stop(signal.SIGKILL)


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

# Debian's redis-server allocates through libjemalloc, and libfaketime, preloaded,
# deadlocks it at start-up (jemalloc's initialisation reads the clock that
# libfaketime is still setting up, which allocates). Preloaded ahead of both, this
# sends every allocation to glibc's own allocator, which needs no clock.
GLIBC_MALLOC_SHIM = r"""
#include <errno.h>
#include <stddef.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);
void *malloc(size_t n) { return __libc_malloc(n); }
void *calloc(size_t n, size_t s) { return __libc_calloc(n, s); }
void *realloc(void *p, size_t n) { return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t a, size_t n) { return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { return __libc_memalign(a, n); }
void *valloc(size_t n) { return __libc_memalign(4096, n); }
int posix_memalign(void **out, size_t a, size_t n) {
  void *p = __libc_memalign(a, n);
  if (!p) return ENOMEM;
  *out = p;
  return 0;
}
/* glibc's chunk header: the size word before the block (flags in its low bits;
   an mmapped chunk, flag 2, has two header words). */
size_t malloc_usable_size(void *p) {
  if (!p) return 0;
  size_t word = ((size_t *)p)[-1];
  return (word & ~(size_t)7) - sizeof(size_t) * ((word & 2) ? 2 : 1);
}
"""


@pytest.fixture(scope="session")
def faketime_preload(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``LD_PRELOAD`` that runs redis-server under libfaketime: the shim above, compiled
    now with gcc, then libfaketime. Fails (never skips) when either is missing."""
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} is missing (apt-get install -y faketime)")
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is not installed (apt-get install -y gcc)")
    workdir = tmp_path_factory.mktemp("faketime")
    (workdir / "shim.c").write_text(GLIBC_MALLOC_SHIM)
    shim = workdir / "glibc_malloc.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(shim), str(workdir / "shim.c")], check=True
    )
    return f"{shim}:{LIBFAKETIME}"


class ReactorThread:
    """The global reactor, running in a thread of its own, for tests that need real I/O
    in-process (a store talking to a real redis-server) while staying plain functions.

    ``call`` runs a function in the reactor thread and waits, bounded, for its result
    (a Deferred's too), raising its exception in the test. pytest-twisted is not
    installed, and trial's TestCase does not take pytest's fixtures and parameters;
    the global reactor cannot be restarted, hence one for the whole session.
    """

    def __init__(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self._thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )

    def start(self) -> ReactorThread:
        running = threading.Event()
        self.reactor.callWhenRunning(running.set)
        self._thread.start()
        if not running.wait(10):
            raise RuntimeError("the reactor did not start")
        return self

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = 10) -> Any:
        answers: queue.Queue = queue.Queue()
        self.reactor.callFromThread(lambda: maybeDeferred(function, *args).addBoth(answers.put))
        try:
            answer = answers.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{function!r} did not answer within {timeout} s") from None
        if isinstance(answer, Failure):
            answer.raiseException()
        return answer

    def stop(self) -> None:
        self.reactor.callFromThread(self.reactor.stop)
        self._thread.join(10)


@pytest.fixture(scope="session")
def reactor_thread() -> Iterator[ReactorThread]:
    thread = ReactorThread().start()
    yield thread
    thread.stop()

"""Test helpers: publications recorded instead of sent, and a real push server for
end-to-end tests (docs/django.md, "Testing").

- :func:`capture_updates` records every ``send_update``, ``send_updates`` and
  ``<view>_update`` publication made while it is active, as Django's
  ``mail.outbox`` records mail: nothing reaches a push server (pages and
  queries answer locally meanwhile), nothing is logged.
- ``SERVERPUSH_ENABLED = False`` (test settings) keeps Django from contacting the
  push server at all; see ``django_adapter.client.local_position``.
- :class:`LivePushServer` and :class:`LivePushServerTestCase` run a real push
  server in this process, for tests with a browser or a WebSocket client.

The pytest fixtures ``pushed_updates`` and ``live_push_server`` are in
``django_adapter.pytest_plugin``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from django.contrib.staticfiles.testing import StaticLiveServerTestCase
from django.db import connections
from django.test import override_settings

from django_adapter import client
from twistedpush.commands import parse_boxes, read_update

__all__ = ["LivePushServer", "LivePushServerTestCase", "PushedUpdate", "capture_updates"]

log = logging.getLogger("django_adapter")


@dataclass(frozen=True)
class PushedUpdate:
    """One publication as browsers would get it: ``data`` is the JSON sent, decoded
    (dates as strings, as Django's encoder writes them); ``user`` is the user a
    ``<view>_update`` record was serialized for (AnonymousUser for anonymous
    visitors' pages), None for ``send_update``."""

    channel: str
    data: Any
    name: str | None = None
    user: Any = None


def _decoded(box: bytes, user: Any) -> PushedUpdate:
    update = read_update(parse_boxes(box)[0])
    return PushedUpdate(update["channel"], json.loads(update["data"]), update["name"], user)


_recorders_lock = threading.Lock()


@contextmanager
def _recording() -> Iterator[list[PushedUpdate]]:
    """Record every publication made while the block runs, from any thread, in
    the order they are made; on_commit callbacks are left as they are."""
    records: list[PushedUpdate] = []

    def record(boxes: list[bytes], users: Sequence[Any]) -> None:
        owners = list(users) or [None] * len(boxes)
        records.extend([_decoded(box, user) for box, user in zip(boxes, owners, strict=True)])

    with _recorders_lock:
        client.recorders.append(record)
    try:
        yield records
    finally:
        with _recorders_lock:
            client.recorders.remove(record)


@contextmanager
def capture_updates() -> Iterator[list[PushedUpdate]]:
    """Record the block's publications in the list it gives, instead of sending them.

    Publications made outside any transaction, or inside a test case's own
    (``TestCase``, pytest-django's ``db``), are recorded at once; those waiting
    for your own ``transaction.atomic()`` to commit are recorded when it commits,
    or, in a ``TestCase`` (whose transaction never commits), when the block
    ends: then, as ``captureOnCommitCallbacks(execute=True)`` does, every
    on_commit callback registered in the block runs (yours too), once, and is
    taken off the transaction's list so that it never runs a second time.
    Nested blocks each record what is made while they are active; so does a
    block for publications made by other threads (a live server's) meanwhile.
    While any block records, nothing contacts the push server: page positions
    come from this process's clock and presence() and history() answer 0 and
    ([], 0), as under SERVERPUSH_ENABLED = False.
    """
    marks = {alias: len(connections[alias].run_on_commit) for alias in connections}
    with _recording() as records:
        yield records
        for alias, start in marks.items():
            _run_on_commit(connections[alias].run_on_commit, start)


def _run_on_commit(pending: list[tuple[Any, Callable[[], Any], bool]], start: int) -> None:
    """Run the callbacks after ``start`` (and those they add), each taken off first."""
    while len(pending) > start:
        _savepoints, callback, robust = pending.pop(start)
        if not robust:
            callback()
            continue
        try:
            callback()
        except Exception:
            log.exception("on_commit callback %r failed", callback)


# A real push server in this process


_reactor_lock = threading.Lock()


def _running_reactor() -> Any:
    """The global Twisted reactor, running: started on first use in a daemon thread
    of its own and left running (a reactor cannot run twice in a process); one
    already running in another thread is used as it is."""
    from twisted.internet import reactor
    from twisted.python import threadable

    with _reactor_lock:
        if reactor.running:
            if threadable.isInIOThread():
                raise RuntimeError(
                    "LivePushServer cannot start from the Twisted reactor's own thread "
                    "(trial, pytest-twisted): it waits for the reactor"
                )
            return reactor
        if getattr(reactor, "_startedBefore", False):
            raise RuntimeError("this process's Twisted reactor has stopped and cannot run again")
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="twistedpush reactor",
            daemon=True,
        ).start()
        if not started.wait(30):
            raise RuntimeError("the Twisted reactor did not start")
        return reactor


def _in_reactor(reactor: Any, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` run in the reactor's thread; its result (a Deferred's too)."""
    from twisted.internet.defer import maybeDeferred
    from twisted.python.failure import Failure

    answers: queue.Queue[Any] = queue.Queue()
    reactor.callFromThread(lambda: maybeDeferred(function, *args).addBoth(answers.put))
    try:
        answer = answers.get(timeout=30)
    except queue.Empty:
        raise RuntimeError(f"the Twisted reactor did not run {function.__name__} in 30 s") from None
    if isinstance(answer, Failure):
        answer.raiseException()
    return answer


def _arguments() -> list[str]:
    """runserverpush's options from the settings, with memory history and
    ports of its own on loopback."""
    from django_adapter.management.commands.runserverpush import server_arguments

    argv = server_arguments(redis=False)
    return [*argv, "--port", "tcp:0:interface=127.0.0.1", "--notifier", "tcp:0:interface=127.0.0.1"]


def _start(options: Any, reactor: Any) -> Any:
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.defer import gatherResults

    from twistedpush.tap import build_service

    service = build_service(options, reactor)
    service.startService()
    listeners: list[Any] = [s for s in service if isinstance(s, StreamServerEndpointService)]
    waiting = gatherResults([listener._waitingForPort for listener in listeners])
    return waiting.addCallback(lambda ports: (service, [p.getHost().port for p in ports]))


def _stop(service: Any, ports: set[int], reactor: Any) -> Any:
    """Stop the service, then drop the connections it leaves open (the notifier's
    from Django's threads, clients that did not answer the WebSocket close)."""
    from twisted.internet import tcp
    from twisted.internet.defer import maybeDeferred

    def drop(_: object) -> None:
        for selectable in {*reactor.getReaders(), *reactor.getWriters()}:
            if isinstance(selectable, tcp.Server) and selectable.getHost().port in ports:
                selectable.abortConnection()

    return maybeDeferred(service.stopService).addCallback(drop)


class LivePushServer:
    """A real push server in this process, as ``runserverpush`` configures it from
    the SERVERPUSH_* settings (secret, public channels, publisher key, origins),
    but with memory history and free ports on 127.0.0.1.

    As a context manager it starts, points Django's settings at itself
    (SERVERPUSH_ENABLED, the notifier's host and port, SERVERPUSH_PORT,
    SERVERPUSH_URL) for the block, then stops and closes its ports and
    connections. It runs in Twisted's global reactor, which is started in a
    daemon thread on first use and left running for the rest of the process.
    """

    def __init__(self) -> None:
        self.port = 0
        self.notifier_port = 0
        self._reactor: Any = None
        self._service: Any = None
        self._settings: Any = None

    @property
    def url(self) -> str:
        """The push server as browsers reach it (SERVERPUSH_URL while it runs)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self) -> None:
        with warnings.catch_warnings():
            # Twisted's own static module still builds its deprecated error pages.
            warnings.filterwarnings("ignore", "twisted.web.resource._Unsafe", DeprecationWarning)
            from twistedpush.tap import Options

        options = Options()
        options.parseOptions(_arguments())
        self._reactor = _running_reactor()
        self._service, (self.port, self.notifier_port) = _in_reactor(
            self._reactor, _start, options, self._reactor
        )

    def stop(self) -> None:
        if self._service is not None:
            service, self._service = self._service, None
            ports = {self.port, self.notifier_port}
            _in_reactor(self._reactor, _stop, service, ports, self._reactor)

    def __enter__(self) -> LivePushServer:
        self.start()
        self._settings = override_settings(
            SERVERPUSH_ENABLED=True,
            SERVERPUSH_NOTIFIER_HOST="127.0.0.1",
            SERVERPUSH_NOTIFIER_PORT=self.notifier_port,
            SERVERPUSH_PORT=self.port,
            SERVERPUSH_URL=self.url,
        )
        self._settings.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._settings.disable()
        finally:
            self.stop()


class LivePushServerTestCase(StaticLiveServerTestCase):
    """``StaticLiveServerTestCase`` (the site and its static files, serverpush.js
    included, at ``live_server_url``) with a :class:`LivePushServer` for the class,
    ``self.push_server``: the SERVERPUSH_* settings point at it during its tests.
    Like the live server, it is one per class: history lasts across its tests."""

    push_server: ClassVar[LivePushServer]

    @classmethod
    def setUpClass(cls) -> None:
        cls.push_server = cls.enterClassContext(LivePushServer())
        super().setUpClass()

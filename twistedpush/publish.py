"""HTTP publishing: ``POST /publish/<channel>`` and ``POST /publish`` (a batch), for
publishers that are not Python (curl, Node, Go, cron jobs) or cannot reach the
notifier. Only with ``--publisher-key``: a key in the ``Authorization`` header is
all that stands between the public port and every channel."""

from __future__ import annotations

import hmac
import json
from typing import Any

from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twistedpush.errors import PushError, Unauthorized
from twistedpush.httputil import bearer, channel_of, finish, query, refuse
from twistedpush.hub import MAX_DATA, Hub
from twistedpush.wire import history_failed, parse_publish_batch

PUBLISH_BODY = MAX_DATA + 65536
"""The largest body /publish reads: 1 MiB of data, and room for a batch's JSON around it."""


class PublishResource(Resource):
    """Checks the key, turns the body into publications and answers their positions."""

    isLeaf = True

    def __init__(self, hub: Hub, key: str) -> None:
        super().__init__()
        self.hub = hub
        self.key = key.encode()

    def authorized(self, request: Request) -> bool:
        """``Authorization: Bearer <key>``, compared in constant time."""
        given = bearer(request)
        return given is not None and hmac.compare_digest(given, self.key)

    def render_POST(self, request: Request) -> int | bytes:
        if not self.authorized(request):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="twistedpush"')
            return refuse(request, Unauthorized("a missing or wrong publisher key"))
        assert request.content is not None
        body = request.content.read(PUBLISH_BODY + 1)
        items: list[tuple[Any, Any, bytes | str]]
        if request.postpath:
            name = query(request, b"name")  # empty or absent: no name
            items = [(channel_of(request), name.decode("utf-8", "replace") if name else None, body)]
        else:
            try:
                items = parse_publish_batch(body, PUBLISH_BODY)
            except PushError as e:
                return refuse(request, e)
            if not items:  # nothing to store: no store (or shard) is asked
                request.setHeader(b"Content-Type", b"application/json")
                return b'{"ts": []}'
        self.hub.publish(items).addCallbacks(
            self._published,
            self._failed,
            callbackArgs=(request, bool(request.postpath)),
            errbackArgs=(request,),
        )
        return NOT_DONE_YET

    @staticmethod
    def _published(stamps: list[int], request: Request, single: bool) -> None:
        body = json.dumps({"ts": stamps[0] if single else stamps}).encode()
        _answer(request, body)

    @staticmethod
    def _failed(failure: Failure, request: Request) -> None:
        _answer(request, refuse(request, history_failed(failure, "an HTTP publication")))


def _answer(request: Request, body: bytes) -> None:
    if request.finished or request._disconnected:
        return  # the publisher went away: the updates are published all the same
    request.setHeader(b"Content-Type", b"application/json")
    finish(request, body)


class PublishingOff(Resource):
    """``/publish`` on a server without ``--publisher-key``: 404, saying why."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"HTTP publishing is off: start the push server with --publisher-key\n"

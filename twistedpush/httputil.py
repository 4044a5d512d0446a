"""What the plain HTTP endpoints (SSE, publishing, push-relay) share: the channel in
the path, query values, and refusals as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from twistedpush.errors import PushError, Unavailable
from twistedpush.wire import http_error

log = Logger()

STATUS = {
    "bad_request": 400,
    "bad_channel": 400,
    "bad_data": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "too_large": 413,
}
"""HTTP status of a refusal by its code; anything else (limit, unavailable) is 503."""


def channel_of(request: Request) -> str:
    """The channel named by the rest of the path (a channel name may hold ``/``)."""
    return b"/".join(request.postpath or ()).decode("utf-8", "replace")


def query(request: Request, name: bytes) -> bytes | None:
    """The first value of query argument ``name``, if given."""
    values = (request.args or {}).get(name)
    return values[0] if values else None


def refuse(request: Request, error: PushError) -> bytes:
    """Set up the answer to a refused request and return its body."""
    request.setResponseCode(STATUS.get(error.code, 503))
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return http_error(error)


def failure_error(failure: Failure, what: str) -> PushError:
    """A refusal keeps its code; anything else (the history store failed) is logged
    and shown as ``unavailable``, to be retried."""
    if isinstance(failure.value, PushError):
        return failure.value
    log.failure("{what} failed", failure, what=what)
    return Unavailable("history is unavailable; try again")

"""What the plain HTTP endpoints (SSE, publishing, push-relay) share: the channel in
the path, query values, and refusals as ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from twisted.web.server import Request

from twistedpush.errors import PushError
from twistedpush.wire import http_error

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


def query_text(request: Request, name: bytes) -> str | None:
    """The first value of query argument ``name`` as text (a token), if given."""
    value = query(request, name)
    return None if value is None else value.decode("utf-8", "replace")


def bearer(request: Request) -> bytes | None:
    """The credentials of an ``Authorization: Bearer`` header, if the request has one."""
    scheme, _, credentials = (request.getHeader(b"authorization") or b"").partition(b" ")
    return credentials.strip() if scheme.lower() == b"bearer" else None


def finish(request: Request, body: bytes) -> None:
    """Answer with ``body`` whole, with its Content-Length (not chunked: simpler clients)."""
    request.setHeader(b"Content-Length", b"%d" % len(body))
    request.write(body)
    request.finish()

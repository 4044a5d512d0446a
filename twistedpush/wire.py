"""The JSON messages of WebSocket and long-poll, parsed and encoded without I/O."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from twistedpush.errors import BadData, BadRequest, Limit, PushError, TooLarge, Unavailable
from twistedpush.hub import STRICT_JSON

log = Logger()

MAX_POLL_TIMEOUT = 60
DEFAULT_POLL_TIMEOUT = 25


@dataclass(frozen=True, slots=True)
class Subscription:
    """One requested subscription; ``channel``, ``since`` and ``token`` are checked by the hub."""

    channel: Any
    since: Any = None
    token: Any = None


def _object(payload: bytes, max_size: int, what: str) -> dict:
    if len(payload) > max_size:
        raise TooLarge(f"{what} is {len(payload)} bytes; at most {max_size} are accepted")
    try:
        value = STRICT_JSON.decode(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"{what} is not JSON: {e}") from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def parse_client_message(payload: bytes, max_size: int) -> tuple[str, Subscription]:
    """Parse a WebSocket text frame into ``("subscribe"|"unsubscribe", Subscription)``."""
    message = _object(payload, max_size, "message")
    kind = message.get("type")
    if kind not in ("subscribe", "unsubscribe"):
        raise BadRequest(f"type must be 'subscribe' or 'unsubscribe', got {kind!r}")
    if "channel" not in message:
        raise BadRequest(f"{kind} needs a channel")
    return kind, Subscription(message["channel"], message.get("since"), message.get("token"))


def parse_poll_body(
    body: bytes, max_size: int, max_subscriptions: int
) -> tuple[list[Subscription], float]:
    """Parse a long-poll body into its subscriptions and its timeout in seconds."""
    request = _object(body, max_size, "body")
    subscriptions = request.get("subscriptions")
    if not isinstance(subscriptions, list) or not subscriptions:
        raise BadRequest("subscriptions must be a non-empty list")
    if len(subscriptions) > max_subscriptions:
        raise Limit(f"at most {max_subscriptions} subscriptions per request")
    parsed = []
    for item in subscriptions:
        if not isinstance(item, dict) or "channel" not in item:
            raise BadRequest("each subscription must be an object with a channel")
        parsed.append(Subscription(item["channel"], item.get("since"), item.get("token")))
    timeout = request.get("timeout", DEFAULT_POLL_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 <= timeout < math.inf
    ):
        raise BadRequest("timeout must be a finite, non-negative number of seconds")
    return parsed, float(min(timeout, MAX_POLL_TIMEOUT))  # (a huge integer has no float)


def encode(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def reset_message(channel: str, now: int) -> bytes:
    """``channel`` is a validated name (no character JSON escapes): put together as
    Update.create does, once per subscriber and reconnect."""
    return b'{"type":"reset","channel":"%s","ts":%d}' % (channel.encode(), now)


def subscribed_message(channel: str, now: int) -> bytes:
    """As :func:`reset_message`: every subscription gets one, so no JSON encoder."""
    return b'{"type":"subscribed","channel":"%s","ts":%d}' % (channel.encode(), now)


def error_message(error: PushError, channel: Any = None) -> dict:
    return {
        "type": "error",
        "channel": channel if isinstance(channel, str) else None,
        "code": error.code,
        "message": error.message,
    }


def history_failed(failure: Failure, what: str) -> PushError:
    """The error for a request whose history read failed: a refusal keeps its code;
    anything else (the history store is away) is logged here and shown as
    ``unavailable``, to be retried."""
    if isinstance(failure.value, PushError):
        return failure.value
    log.failure("{what} failed", failure, what=what)
    return Unavailable("history is unavailable; try again")


def failed_subscription(failure: Failure, channel: str) -> dict:
    """The error message for a subscription whose replay failed."""
    return error_message(history_failed(failure, f"replay of {channel}"), channel)


def http_error(error: PushError) -> bytes:
    """The JSON body of a refused plain HTTP request (SSE, publishing, push-relay)."""
    return encode({"error": {"code": error.code, "message": error.message}})


SSE_PREAMBLE = b": twistedpush\nretry: 3000\n\n"
"""The start of every event stream: a comment line, then the reconnection delay (ms)."""

SSE_KEEPALIVE = b": keep-alive\n\n"


def sse_event(event: str | None, ts: int, message: bytes) -> bytes:
    """One Server-Sent Event: ``id`` the position, ``event`` its type (none for an
    update without a name: a plain ``message``), ``data`` the v1 message on one line.

    A publisher's JSON may hold line breaks between its tokens (never inside a
    string, where JSON escapes them); they would end the ``data:`` line, so they
    become spaces, which leaves the same JSON value.
    """
    if b"\n" in message or b"\r" in message:
        message = message.replace(b"\r", b" ").replace(b"\n", b" ")
    if event is None:
        return b"id: %d\ndata: %s\n\n" % (ts, message)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (ts, event.encode(), message)


def parse_position(text: bytes | None, what: str) -> int | None:
    """A position given as text (a query's ``since``, SSE's ``Last-Event-ID``): ASCII
    digits, or nothing at all (from now on)."""
    if not text:
        return None
    if not text.isdigit() or len(text) > 20:
        raise BadRequest(f"{what} must be a position (ASCII digits), got {text[:40]!r}")
    return int(text)


def parse_publish_batch(body: bytes, max_size: int) -> list[tuple[Any, Any, bytes | str]]:
    """``{"updates": [{"channel", "data", "name"?}, ...]}`` as the hub's publications;
    each ``data`` is a JSON value, encoded again as compact JSON text."""
    request = _object(body, max_size, "body")
    updates = request.get("updates")
    if not isinstance(updates, list):
        raise BadRequest("updates must be a list of {channel, data, name} objects")
    items: list[tuple[Any, Any, bytes | str]] = []
    for index, item in enumerate(updates):
        if not isinstance(item, dict) or "channel" not in item or "data" not in item:
            raise BadRequest(f"updates[{index}] must be an object with a channel and data")
        try:
            data = json.dumps(item["data"], separators=(",", ":"), ensure_ascii=False)
        except RecursionError:
            raise BadData(f"updates[{index}].data is nested too deeply") from None
        items.append((item["channel"], item.get("name"), data))
    return items

"""WAMP v2 on /ws (Basic Profile, a broker's subscriber side), for AutobahnJS,
autobahn-python and other WAMP clients: a session is a thin transport over the
same :class:`~twistedpush.hub.Hub` as the v1 messages, without I/O of its own.

Client messages are checked by Autobahn's own message classes, and the answers
are built with them and Autobahn's JSON serializer, except EVENT.
An update's data is JSON text already, so its EVENT is spliced together around
it once and shared by every session subscribed to the channel: the node gives
each channel one subscription id (WAMP leaves router-scope ids to the router),
so one EVENT frame per update serves them all.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from autobahn.wamp import message
from autobahn.wamp.exception import ProtocolError
from autobahn.wamp.serializer import JsonObjectSerializer, JsonSerializer
from twisted.python.failure import Failure

from twistedpush.errors import PushError
from twistedpush.history import Update
from twistedpush.hub import STRICT_JSON, Hub
from twistedpush.wire import history_failed
from twistedpush.writes import Outbox, encoded_once

SUBPROTOCOL = "wamp.2.json"

JSON = JsonObjectSerializer()
MESSAGE_TYPES: dict[int, Any] = JsonSerializer.MESSAGE_TYPE_MAP

WELCOME_DETAILS = {
    "roles": {"broker": {"features": {}}},
    "authrole": "anonymous",
    "authmethod": "anonymous",
}

URIS = {
    "bad_channel": "wamp.error.invalid_uri",
    "forbidden": "wamp.error.not_authorized",
    "bad_request": "wamp.error.invalid_argument",
}
"""The hub's error codes as WAMP error URIs; any other code is ``serverpush.error.<code>``."""

PROTOCOL_VIOLATION = "wamp.error.protocol_violation"
NOT_AUTHORIZED = "wamp.error.not_authorized"

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009


def error_uri(error: PushError) -> str:
    return URIS.get(error.code, f"serverpush.error.{error.code}")


def event_message(subscription: int, update: Update) -> bytes:
    """``[EVENT, Subscription, Publication, {}, [data], {"name": N} or {}]``, with the
    update's JSON text spliced in (names need no escaping: they are validated)."""
    kwargs = "{}" if update.name is None else f'{{"name":"{update.name}"}}'
    return f"[36,{subscription},{update.ts},{{}},[{update.data}],{kwargs}]".encode()


def parse(payload: bytes, binary: bool) -> tuple[list, Any]:
    """One client message as sent and as Autobahn's class for it; raise ProtocolError.

    Both, because Autobahn's SUBSCRIBE keeps only the options it knows, not
    ``_token`` and ``_since``.
    """
    if binary:
        raise ProtocolError("wamp.2.json is sent in text frames")
    try:
        # The C reader v1 uses: Autobahn's builds a scanner in Python for every
        # message, 20 times slower, which a client could make the server pay for.
        raw = STRICT_JSON.decode(payload.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(raw, list) or not raw or type(raw[0]) is not int:
        raise ProtocolError("a WAMP message is a JSON array that starts with its type")
    kind = MESSAGE_TYPES.get(raw[0])
    if kind is None:
        raise ProtocolError(f"unknown message type {raw[0]}")
    try:
        return raw, _checked(kind, raw)
    except ProtocolError:
        if kind is message.Subscribe and len(raw) == 4 and isinstance(raw[3], str):
            # A topic that is not even a URI: well formed otherwise, it is a bad
            # channel, which the hub refuses with an answer.
            return raw, _checked(kind, [*raw[:3], "topic"])
        raise


def _checked(kind: Any, raw: list) -> Any:
    """``kind.parse(raw)``; Autobahn checks some fields with assertions and
    constructors, whose errors are protocol errors here too."""
    try:
        return kind.parse(raw)
    except ProtocolError:
        raise
    except Exception as e:
        raise ProtocolError(f"malformed {kind.__name__.upper()}: {e}") from None


class Broker:
    """The node's WAMP side, shared by its sessions: the realm, and one subscription
    id per channel followed over WAMP, so that each update's EVENT is made once."""

    def __init__(
        self, hub: Hub, realm: str, max_message_size: int, frame: Callable[[bytes], bytes]
    ) -> None:
        self.hub = hub
        self.realm = realm
        self.max_message_size = max_message_size
        self.frame = frame
        self._ids: dict[str, int] = {}
        self._channels: dict[int, str] = {}
        self._users: dict[str, int] = {}
        self._next_id = 0
        self.event = encoded_once(self.replay_event)
        """The EVENT frame of a live update, for every session."""

    def acquire(self, channel: str) -> None:
        """Give ``channel`` a subscription id, kept until every session releases it."""
        if channel not in self._ids:
            self._next_id += 1
            self._ids[channel] = self._next_id
            self._channels[self._next_id] = channel
        self._users[channel] = self._users.get(channel, 0) + 1

    def release(self, channel: str) -> None:
        self._users[channel] -= 1
        if not self._users[channel]:
            del self._users[channel], self._channels[self._ids.pop(channel)]

    def subscription(self, channel: str) -> int:
        return self._ids[channel]

    def channel(self, subscription: int) -> str | None:
        return self._channels.get(subscription)

    def replay_event(self, update: Update) -> bytes:
        return self.frame(event_message(self._ids[update.channel], update))

    def message(self, raw: list) -> bytes:
        return self.frame(JSON.serialize(raw))


class Connection(Protocol):
    """What a session needs of its WebSocket (``websocket.PushWebSocketProtocol``):
    its outbox, with the same slow-client bound and replays framed as it reads."""

    outbox: Outbox

    @property
    def cookie(self) -> str | None: ...

    def close(self, code: int, reason: str) -> None: ...


class WampSession:
    """One WAMP session on one WebSocket; the hub's subscriber for it.

    ``channels`` are the channels subscribed in the hub, ``pending`` those whose
    SUBSCRIBE requests await SUBSCRIBED (sent once the replay has been read, so
    that a refused ``_since`` or an unreadable history is still that request's
    ERROR). A second SUBSCRIBE to a channel the session has gets the same
    subscription, as WAMP brokers do, and its options are not looked at: each
    EVENT reaches a subscription once, whatever handlers the client put on it.
    """

    lasting = True

    def __init__(self, broker: Broker, connection: Connection) -> None:
        self.broker = broker
        self.connection = connection
        self.outbox = connection.outbox
        self.id: int | None = None
        self.ended = False
        self.channels: set[str] = set()
        self.pending: dict[str, list[int]] = {}
        # The hub hands a replay over just before send_subscribed (in one call):
        # it goes out after SUBSCRIBED.
        self._replay: Sequence[Update] = ()
        self._reset: int | None = None

    @property
    def cookie(self) -> str | None:
        return self.connection.cookie

    # Input

    def received(self, payload: bytes, binary: bool) -> None:
        if self.ended:
            return
        if len(payload) > self.broker.max_message_size:
            self._abort(
                "serverpush.error.too_large",
                f"message is {len(payload)} bytes; at most "
                f"{self.broker.max_message_size} are accepted",
                CLOSE_TOO_BIG,
            )
            return
        try:
            raw, msg = parse(payload, binary)
        except ProtocolError as e:
            self._abort(PROTOCOL_VIOLATION, str(e), CLOSE_PROTOCOL_ERROR)
            return
        if isinstance(msg, message.Abort):
            self._end(CLOSE_NORMAL, "aborted")
        elif self.id is None:
            if isinstance(msg, message.Hello):
                self._hello(msg)
            else:
                self._abort(PROTOCOL_VIOLATION, "HELLO first", CLOSE_PROTOCOL_ERROR)
        elif isinstance(msg, message.Subscribe):
            self._subscribe(msg.request, raw[2], raw[3])
        elif isinstance(msg, message.Unsubscribe):
            self._unsubscribe(msg.request, msg.subscription)
        elif isinstance(msg, message.Publish):
            if msg.acknowledge:  # else WAMP answers nothing: real clients leave on an ERROR
                self._send(message.Error(msg.MESSAGE_TYPE, msg.request, NOT_AUTHORIZED))
        elif isinstance(msg, (message.Call, message.Register)):
            self._send(message.Error(msg.MESSAGE_TYPE, msg.request, NOT_AUTHORIZED))
        elif isinstance(msg, message.Unregister):
            uri = "wamp.error.no_such_registration"
            self._send(message.Error(msg.MESSAGE_TYPE, msg.request, uri))
        elif isinstance(msg, message.Cancel):
            pass  # its CALL was answered already
        elif isinstance(msg, message.Goodbye):
            self._send(message.Goodbye("wamp.close.goodbye_and_out"))
            self._end(CLOSE_NORMAL, "goodbye")
        else:
            name = type(msg).__name__.upper()
            self._abort(PROTOCOL_VIOLATION, f"{name} is not for a broker", CLOSE_PROTOCOL_ERROR)

    def _hello(self, msg: message.Hello) -> None:
        if msg.realm != self.broker.realm:
            self._abort("wamp.error.no_such_realm", f"no realm {msg.realm!r}", CLOSE_NORMAL)
            return
        self.id = secrets.randbelow(2**53) + 1
        self._send_raw([message.Welcome.MESSAGE_TYPE, self.id, WELCOME_DETAILS])

    def _subscribe(self, request: int, options: dict, channel: str) -> None:
        if channel in self.channels:
            if channel in self.pending:
                self.pending[channel].append(request)
            else:
                subscription = self.broker.subscription(channel)
                self._send(message.Subscribed(request, subscription))
            return
        # Registered first: a replay read at once is sent within hub.subscribe.
        requests = self.pending[channel] = [request]
        self.channels.add(channel)
        self.broker.acquire(channel)
        try:
            done = self.broker.hub.subscribe(
                self, channel, options.get("_since"), options.get("_token")
            )
        except PushError as e:
            self._forget(channel)
            self._send(message.Error(message.Subscribe.MESSAGE_TYPE, request, error_uri(e)))
            return
        done.addErrback(self._subscribe_failed, requests)

    def _subscribe_failed(self, failure: Failure, requests: list[int]) -> None:
        """The replay could not be read or ``_since`` is past the server's position;
        the hub has ended the subscription already."""
        error = history_failed(failure, "replay for a WAMP subscription")
        for request in requests:
            self._send(message.Error(message.Subscribe.MESSAGE_TYPE, request, error_uri(error)))

    def _unsubscribe(self, request: int, subscription: int) -> None:
        channel = self.broker.channel(subscription)
        if channel is None or channel not in self.channels or channel in self.pending:
            uri = "wamp.error.no_such_subscription"
            self._send(message.Error(message.Unsubscribe.MESSAGE_TYPE, request, uri))
            return
        self.broker.hub.unsubscribe(self, channel)
        self._send(message.Unsubscribed(request))

    # Output (the hub's Subscriber protocol)

    def send_update(self, update: Update) -> None:
        self.outbox.send(self.broker.event(update))

    def send_replay(self, updates: Sequence[Update]) -> None:
        self._replay = updates

    def send_reset(self, channel: str, now: int) -> None:
        if channel in self.pending:
            self._reset = now
        else:  # a live subscription whose updates were lost in transit
            self._send_reset(channel, now)

    def send_subscribed(self, channel: str, now: int) -> None:
        requests = self.pending.pop(channel, None)
        if requests is None:
            return  # after a live reset: the subscription stands
        subscription = self.broker.subscription(channel)
        for request in requests:
            self._send(message.Subscribed(request, subscription))
        replay, self._replay = self._replay, ()
        if replay:
            self.outbox.replay(replay, self.broker.replay_event)
        reset, self._reset = self._reset, None
        if reset is not None:
            self._send_reset(channel, reset)

    def discard(self, channel: str) -> None:
        """The hub ended the subscription (UNSUBSCRIBE, a failed replay, the end)."""
        self.outbox.discard(channel)
        self._forget(channel)

    def going_away(self) -> None:
        """The server is stopping. No GOODBYE: AutobahnJS stops reconnecting after
        one; a close with 1001 sends it (and other clients) to try again."""
        self.connection.close(CLOSE_GOING_AWAY, "server going away: reconnect")

    def _send_reset(self, channel: str, now: int) -> None:
        subscription = self.broker.subscription(channel)
        self._send(message.Event(subscription, now, args=[], kwargs={"reset": True}))

    def _forget(self, channel: str) -> None:
        if channel in self.channels:
            self.channels.remove(channel)
            self.pending.pop(channel, None)
            self.broker.release(channel)

    def _send(self, msg: Any) -> None:
        self._send_raw(msg.marshal())

    def _send_raw(self, raw: list) -> None:
        self.outbox.send(self.broker.message(raw))

    def _abort(self, reason: str, text: str, code: int) -> None:
        self._send(message.Abort(reason, text))
        self._end(code, text)

    def _end(self, code: int, reason: str) -> None:
        """Leave every subscription now (nothing more is sent) and close."""
        self.ended = True
        self.broker.hub.drop(self)
        self.connection.close(code, reason)

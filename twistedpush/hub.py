"""The protocol core: channels, subscribers, catch-up and fan-out, free of I/O.

Transports (WebSocket, long-poll, AMP) translate their wire formats into calls
on :class:`Hub` and implement :class:`Subscriber` to be told what to send.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from twistedpush.access import AccessPolicy, check_channel, check_name
from twistedpush.errors import BadData, BadRequest, Limit, PushError, TooLarge
from twistedpush.history import (
    HISTORY_LIMIT,
    IHistoryStore,
    Publication,
    Replay,
    Update,
    check_history_query,
)

MAX_DATA = 1024 * 1024


class Subscriber(Protocol):
    """Whatever receives a channel's messages: a WebSocket, a long-poll request.

    ``lasting`` subscribers (WebSockets) stay until they leave, so presence
    listeners hear of them, and they carry the browser's ``cookie``; a long-poll
    request is one answer long and does not.
    """

    lasting: bool

    def send_update(self, update: Update) -> None: ...

    def send_replay(self, updates: Sequence[Update]) -> None:
        """A channel's catch-up, in order: a transport may send it as its client reads."""

    def discard(self, channel: str) -> None:
        """The subscription to ``channel`` ended: what is queued for it need not be sent."""

    def send_reset(self, channel: str, now: int) -> None: ...

    def send_subscribed(self, channel: str, now: int) -> None: ...

    def going_away(self) -> None: ...


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)
"""One decoder for every update and client message: ``json.loads`` with an option
builds one per call, and Python's extensions NaN and Infinity are not JSON."""


def check_data(data: bytes | str) -> str:
    """Return ``data`` as text if it is at most 1 MiB of UTF-8 JSON, else raise."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_DATA:
        raise TooLarge(f"data is {len(raw)} bytes; at most {MAX_DATA} are accepted")
    try:
        text = raw.decode("utf-8").strip(" \t\n\r")  # JSON's white space only
        end = STRICT_JSON.raw_decode(text)[1]
    except (UnicodeDecodeError, ValueError) as e:
        raise BadData(f"data is not UTF-8 JSON text: {e}") from None
    except RecursionError:
        raise BadData("data is nested too deeply") from None
    if end != len(text):
        raise BadData(f"data is not UTF-8 JSON text: more after the value, from character {end}")
    return text


def check_since(since: object) -> int | None:
    if since is None:
        return None
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        raise BadRequest(f"since must be null or a non-negative integer, got {since!r}")
    return since


class _Channel:
    """Local subscribers of one channel.

    ``live`` maps each caught-up subscriber to the position it joined at (it has
    every update up to there) and ``newest_join`` is the greatest of those;
    ``pending`` buffers live updates for those still reading their replay;
    ``resyncing`` buffers them for everyone while the channel is re-read after
    the store lost updates in transit; every live subscriber has every update
    up to ``delivered``.
    """

    __slots__ = ("delivered", "live", "newest_join", "pending", "resyncing")

    def __init__(self) -> None:
        self.live: dict[Subscriber, int] = {}
        self.pending: dict[Subscriber, list[Update]] = {}
        self.resyncing: list[Update] | None = None
        self.delivered = 0
        self.newest_join = 0

    def __len__(self) -> int:
        """Its local subscribers, those still catching up included."""
        return len(self.live) + len(self.pending)

    def join(self, subscriber: Subscriber, position: int) -> None:
        self.live[subscriber] = position
        self.newest_join = max(self.newest_join, position)


class PresenceListener(Protocol):
    """Told when a lasting subscriber joins or leaves a channel (Django's signals)."""

    def joined(self, subscriber: Subscriber, channel: str) -> None: ...

    def left(self, subscriber: Subscriber, channel: str) -> None: ...


class Hub:
    """Subscriptions and fan-out for one node, over one history store."""

    def __init__(
        self,
        store: IHistoryStore,
        access: AccessPolicy,
        clock: IReactorTime,
        max_subscriptions: int = 100,
    ) -> None:
        self.store = store
        self.access = access
        self.clock = clock
        self.max_subscriptions = max_subscriptions
        self._channels: dict[str, _Channel] = {}
        self._subscriptions: dict[Subscriber, set[str]] = {}
        self.subscription_count = 0
        """Kept as they come and go: /health and /stats ask every second or so, and a
        sum over every connection was a tenth of an idle node's time at 19,000."""
        self.updates_in = 0
        self.updates_out = 0
        self.replays = 0
        self.resets = 0
        self.publish_errors = 0
        self.in_flight = 0
        self.presence: list[PresenceListener] = []

    def start(self) -> Deferred:
        return self.store.start(self.deliver, self.resync)

    def stop(self) -> Deferred:
        return self.store.stop()

    # Publishing

    def publish(self, items: Sequence[tuple[object, object, bytes | str]]) -> Deferred:
        """Validate every item, then store them all; fire with their positions."""
        try:
            checked: list[Publication] = [
                (check_channel(channel), check_name(name), check_data(data))
                for channel, name, data in items
            ]
        except PushError:
            self.publish_errors += 1
            return fail()
        self.in_flight += 1
        return self.store.publish(checked).addBoth(self._published, len(checked))

    def _published(self, result: Any, count: int) -> Any:
        self.in_flight -= 1
        if isinstance(result, Failure):
            self.publish_errors += 1
        else:
            self.updates_in += count
        return result

    def drain(self, timeout: float) -> Deferred:
        """Fire once no publication is in flight, or after ``timeout`` seconds."""
        done: Deferred = Deferred()
        deadline = self.clock.seconds() + timeout

        def check() -> None:
            if self.in_flight == 0 or self.clock.seconds() >= deadline:
                done.callback(self.in_flight)
            else:
                self.clock.callLater(0.05, check)

        check()
        return done

    def going_away(self) -> None:
        """Tell every subscriber to go elsewhere (the node is shutting down)."""
        for subscriber in list(self._subscriptions):
            subscriber.going_away()

    def now(self) -> Deferred:
        return self.store.now()

    # Queries (AMP Presence and History)

    def subscribers(self, channel: str) -> int:
        """This node's subscribers of ``channel``, on every transport, those still
        catching up included (a long-poll client counts while its request is held)."""
        state = self._channels.get(channel)
        return 0 if state is None else len(state)

    def presence_count(self, channel: object) -> Deferred:
        """Fire with the subscribers of ``channel`` on every node sharing the store."""
        name = check_channel(channel)
        return self.store.presence(name, self.subscribers(name))

    def history(self, channel: object, since: object = None, limit: object = None) -> Deferred:
        """Fire with the channel's :class:`~twistedpush.history.History` after ``since``;
        ``limit`` None: HISTORY_LIMIT, as the AMP argument left out means."""
        name = check_channel(channel)
        limit = HISTORY_LIMIT if limit is None else limit
        checked_since, checked_limit = check_history_query(since, limit)
        return self.store.history(name, checked_since, checked_limit)

    def deliver(self, update: Update) -> None:
        """Fan ``update`` out to this node's subscribers of its channel.

        A store's live deliveries (Redis pub/sub) may arrive after a replay that
        already held them: they are older than ``delivered``, or than the
        position a subscriber joined at, and are not sent again.
        """
        channel = self._channels.get(update.channel)
        if channel is None or update.ts <= channel.delivered:
            return
        for buffered in channel.pending.values():
            buffered.append(update)
        if channel.resyncing is not None:
            channel.resyncing.append(update)
            return
        channel.delivered = update.ts
        if update.ts > channel.newest_join:
            for subscriber in channel.live:
                subscriber.send_update(update)
            self.updates_out += len(channel.live)
            return
        for subscriber, joined in channel.live.items():
            if update.ts > joined:
                subscriber.send_update(update)
                self.updates_out += 1

    # Subscribing

    def subscribe(
        self, subscriber: Subscriber, channel: object, since: object = None, token: object = None
    ) -> Deferred:
        """Subscribe to live updates first, then replay after ``since`` and merge.

        Raises PushError at once for a bad or forbidden request; the Deferred
        fires once the replay (or reset) and ``subscribed`` have been sent.
        """
        name = check_channel(channel)
        since = check_since(since)
        self.access.check(name, token, self.clock.seconds())
        channels = self._subscriptions.setdefault(subscriber, set())
        if name in channels:
            self._leave(subscriber, name)
        elif len(channels) >= self.max_subscriptions:
            raise Limit(f"at most {self.max_subscriptions} subscriptions per connection")
        channels.add(name)
        state = self._channels.get(name)
        if state is None:
            state = self._channels[name] = _Channel()
            self.store.watch(name)
        buffered: list[Update] = []
        state.pending[subscriber] = buffered
        self.subscription_count += 1
        self.store.report(name, len(state))
        if self.presence and subscriber.lasting:
            for listener in self.presence:
                listener.joined(subscriber, name)
        return self.store.replay(name, since).addCallbacks(
            self._replayed,
            self._replay_failed,
            callbackArgs=(subscriber, name, state, buffered, since),
            errbackArgs=(subscriber, name, state, buffered),
        )

    def _replayed(
        self,
        replay: Replay,
        subscriber: Subscriber,
        name: str,
        state: _Channel,
        buffered: list[Update],
        since: int | None,
    ) -> None:
        if state.pending.get(subscriber) is not buffered:
            return  # unsubscribed (or subscribed anew) while the replay was read
        if since is not None and since > replay.now:
            # Not a position this store handed out: replaying from it would wait
            # for updates that already went by, so say so rather than stay silent.
            self.unsubscribe(subscriber, name)
            raise BadRequest(f"since {since} is after the server's current position {replay.now}")
        del state.pending[subscriber]
        if since is not None:
            self.replays += 1
        subscriber.send_replay(replay.updates)
        if replay.reset:
            self.resets += 1
            subscriber.send_reset(name, replay.now)
        subscriber.send_subscribed(name, replay.now)
        after = max(replay.now, since or 0)
        live = [update for update in buffered if update.ts > after]
        for update in live:
            subscriber.send_update(update)
        self.updates_out += len(replay.updates) + len(live)
        state.join(subscriber, live[-1].ts if live else after)

    # Recovering from updates the store lost in transit (Redis pub/sub reconnects)

    RESYNC_RETRIES = 40
    RESYNC_DELAY = 0.25

    def resync(self, name: str) -> None:
        """Re-read ``name`` from history and give each live subscriber what it missed."""
        state = self._channels.get(name)
        if state is None or not state.live or state.resyncing is not None:
            return
        state.resyncing = []
        self._resync_read(name, state, 0)

    def _resync_read(self, name: str, state: _Channel, attempt: int) -> None:
        if self._channels.get(name) is not state:
            return  # everyone left meanwhile
        since = max(state.delivered, min(state.live.values(), default=state.delivered))
        self.store.replay(name, since).addCallbacks(
            self._resynced,
            self._resync_failed,
            callbackArgs=(name, state),
            errbackArgs=(name, state, attempt),
        )

    def _resynced(self, replay: Replay, name: str, state: _Channel) -> None:
        buffered, state.resyncing = state.resyncing or [], None
        if replay.reset:
            self._reset_live(name, state, replay.now)
            missed = [u for u in buffered if u.ts > replay.now]
        else:
            missed = [*replay.updates, *(u for u in buffered if u.ts > replay.now)]
        # Each subscriber gets what is newer than what it has: one that joined
        # during the resync already has the updates up to its own position.
        for update in missed:
            for subscriber, joined in state.live.items():
                if update.ts > joined:
                    subscriber.send_update(update)
                    self.updates_out += 1
        # Every live subscriber now has everything up to the snapshot and beyond.
        state.delivered = max(state.delivered, replay.now, *(u.ts for u in missed))

    def _resync_failed(self, failure: Any, name: str, state: _Channel, attempt: int) -> None:
        """Try again for a while (Redis's connections come back one by one); if history
        stays unreadable, say so with a reset rather than leave a gap."""
        if attempt < self.RESYNC_RETRIES:
            self.clock.callLater(self.RESYNC_DELAY, self._resync_read, name, state, attempt + 1)
            return
        buffered, state.resyncing = state.resyncing or [], None
        now = max([state.delivered, *(u.ts for u in buffered)])
        self._reset_live(name, state, now)

    def _reset_live(self, name: str, state: _Channel, now: int) -> None:
        self.resets += len(state.live)
        for subscriber in list(state.live):
            subscriber.send_reset(name, now)
            subscriber.send_subscribed(name, now)
            state.join(subscriber, now)
        state.delivered = max(state.delivered, now)

    def _replay_failed(
        self,
        failure: Any,
        subscriber: Subscriber,
        name: str,
        state: _Channel,
        buffered: list[Update],
    ) -> Any:
        if state.pending.get(subscriber) is not buffered:
            return None  # superseded by a new subscription (or left): nothing to report
        self.unsubscribe(subscriber, name)
        return failure

    def unsubscribe(self, subscriber: Subscriber, channel: object) -> None:
        name = check_channel(channel)
        channels = self._subscriptions.get(subscriber)
        if channels is None or name not in channels:
            return
        self._leave(subscriber, name)
        channels.discard(name)
        if not channels:
            del self._subscriptions[subscriber]

    def drop(self, subscriber: Subscriber) -> None:
        """Forget every subscription of a subscriber that went away."""
        for name in self._subscriptions.pop(subscriber, ()):
            self._leave(subscriber, name)

    def _leave(self, subscriber: Subscriber, name: str) -> None:
        subscriber.discard(name)
        if self.presence and subscriber.lasting:
            for listener in self.presence:
                listener.left(subscriber, name)
        state = self._channels[name]
        if state.pending.pop(subscriber, None) is None:
            del state.live[subscriber]
        self.subscription_count -= 1
        count = len(state)
        if not count:
            del self._channels[name]
            self.store.unwatch(name)
        self.store.report(name, count)

    def busiest(self, count: int) -> list[tuple[str, int]]:
        """The ``count`` channels with the most local subscribers (those still
        catching up included), most first, ties by name: for the operator's /stats."""
        sizes = ((name, len(c)) for name, c in self._channels.items())
        return heapq.nsmallest(count, sizes, key=lambda item: (-item[1], item[0]))

    def stats(self) -> dict:
        return {
            "channels": len(self._channels),
            "subscriptions": self.subscription_count,
            "updates_in": self.updates_in,
            "updates_out": self.updates_out,
            "replays": self.replays,
            "resets": self.resets,
            "publish_errors": self.publish_errors,
            **self.store.stats(),
        }

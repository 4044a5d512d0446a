"""Property tests of the core: any interleaving gives exactly-once in-order delivery, or a reset."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import Recorder, SlowReplayStore, make_clock
from twistedpush.access import AccessPolicy
from twistedpush.hub import Hub

CHANNELS = ("a", "b")

operation = st.one_of(
    st.tuples(st.just("publish"), st.integers(1, 3), st.sampled_from(CHANNELS)),
    st.tuples(st.just("subscribe"), st.integers(0, 3), st.sampled_from(CHANNELS)),
    st.tuples(st.just("reconnect"), st.integers(0, 3), st.sampled_from(CHANNELS)),
    st.tuples(st.just("disconnect"), st.integers(0, 3), st.just("")),
    st.tuples(st.just("release"), st.just(0), st.just("")),
    st.tuples(st.just("tick"), st.integers(0, 2000), st.just("")),
)


class Session:
    """One subscription as a client sees it: what it asked from, what it got."""

    def __init__(self, channel, since):
        self.channel = channel
        self.since = since
        self.recorder = Recorder()

    def last_position(self):
        """Where a reconnecting client resumes: its last update, reset or subscribed ts."""
        stamps = [m["ts"] for m in self.recorder.messages]
        return max(stamps) if stamps else self.since


@settings(max_examples=300, deadline=None)
@given(
    program=st.lists(operation, max_size=60),
    late=st.booleans(),
    size=st.integers(1, 6),
)
def test_exactly_once_in_order_or_reset(program, late, size):
    clock = make_clock()
    store = SlowReplayStore(clock, size=size, ttl=1.5, late=late)
    hub = Hub(store, AccessPolicy(None, ["*"]), clock)
    hub.start()
    published = {c: [] for c in CHANNELS}
    sessions = []
    current = {}  # (client, channel) -> Session
    counter = 0
    for kind, arg, channel in program:
        if kind == "publish":
            for _ in range(arg):
                counter += 1
                out = []
                hub.publish([(channel, None, json.dumps(counter))]).addCallback(out.append)
                published[channel].append((out[0][0], counter))
        elif kind in ("subscribe", "reconnect"):
            previous = current.get((arg, channel))
            since = previous.last_position() if previous and kind == "reconnect" else None
            if previous:
                hub.unsubscribe(previous.recorder, channel)
            session = Session(channel, since)
            hub.subscribe(session.recorder, channel, since)
            current[(arg, channel)] = session
            sessions.append(session)
        elif kind == "disconnect":
            for key in [k for k in current if k[0] == arg]:
                hub.drop(current.pop(key).recorder)
        elif kind == "release":
            store.release()
        else:
            clock.advance(arg / 1000)
    store.release()
    for session in sessions:
        messages = session.recorder.messages
        if not messages:
            continue  # left before its replay was read: nothing was promised
        stream = published[session.channel]
        position = session.since
        for message in messages:
            if message["type"] == "reset":
                position = message["ts"]
                assert session.since is not None and session.since < message["ts"]
                continue
            if message["type"] == "subscribed":
                # Everything up to NOW has been sent: nothing published in between is left.
                if position is not None:
                    skipped = [ts for ts, _ in stream if position < ts <= message["ts"]]
                    assert skipped == [], f"replay skipped {skipped}"
                position = message["ts"] if position is None else max(position, message["ts"])
                continue
            # Every update is the next one published after the client's position.
            later = [(ts, value) for ts, value in stream if position is None or ts > position]
            assert later, f"update {message} was never published after {position}"
            assert (message["ts"], message["data"]) == later[0], (
                f"expected {later[0]}, got {message['ts'], message['data']}: gap or duplicate"
            )
            position = message["ts"]
        live = any(s is session for s in current.values())
        if live and position is not None:
            # A live subscription has everything published after its position.
            rest = [ts for ts, _ in stream if ts > position]
            assert rest == [], f"live subscriber is missing {rest}"

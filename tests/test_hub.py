"""The hub: catch-up, merge of replay and live, reset, limits, publishing rules."""

import json

import pytest

from tests.helpers import Recorder, SlowReplayStore, make_clock, make_hub
from twistedpush.access import AccessPolicy, sign_token
from twistedpush.errors import BadChannel, BadData, BadRequest, Forbidden, Limit, TooLarge
from twistedpush.hub import MAX_DATA, Hub


def fired(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


def publish(hub, channel, *values, name=None):
    return fired(hub.publish([(channel, name, json.dumps(v)) for v in values]))


def test_live_updates_reach_subscribers_in_order():
    hub = make_hub()
    a, b = Recorder(), Recorder()
    hub.subscribe(a, "room")
    hub.subscribe(b, "room")
    publish(hub, "room", 1, 2, 3, name="tick")
    assert a.data() == b.data() == [1, 2, 3]
    assert a.messages[0]["type"] == "subscribed"
    assert {m["name"] for m in a.messages[1:]} == {"tick"}


def test_catch_up_from_since_then_live_once_each():
    hub = make_hub()
    ts = publish(hub, "room", 1, 2, 3)
    sub = Recorder()
    hub.subscribe(sub, "room", since=ts[0])
    publish(hub, "room", 4)
    assert sub.types() == ["update", "update", "subscribed", "update"]
    assert sub.data() == [2, 3, 4]
    assert sub.messages[2]["ts"] >= ts[2]


def test_updates_published_while_replay_is_read_are_delivered_once_in_order():
    clock = make_clock()
    store = SlowReplayStore(clock)
    hub = Hub(store, AccessPolicy(None, ["*"]), clock)
    hub.start()
    ts = publish(hub, "room", 1, 2)
    sub = Recorder()
    hub.subscribe(sub, "room", since=ts[0])
    publish(hub, "room", 3, 4)  # after the replay snapshot, before it reaches us
    store.release()
    publish(hub, "room", 5)
    assert sub.data() == [2, 3, 4, 5]
    stamps = [m["ts"] for m in sub.messages if m["type"] == "update"]
    assert stamps == sorted(set(stamps))


def test_live_update_already_in_the_replay_is_not_sent_twice():
    clock = make_clock()
    store = SlowReplayStore(clock, late=True)
    hub = Hub(store, AccessPolicy(None, ["*"]), clock)
    hub.start()
    ts = publish(hub, "room", 1)
    sub = Recorder()
    hub.subscribe(sub, "room", since=ts[0])
    publish(hub, "room", 2)  # seen live, and in the snapshot taken afterwards
    store.release()
    publish(hub, "room", 3)
    assert sub.data() == [2, 3]


def test_reset_when_since_is_older_than_the_horizon():
    hub = make_hub(size=2)
    ts = publish(hub, "room", 1, 2, 3)
    sub = Recorder()
    hub.subscribe(sub, "room", since=ts[0] - 1)
    assert sub.types() == ["reset", "subscribed"]
    publish(hub, "room", 4)
    assert sub.data() == [4]


def test_since_from_before_the_server_started_resets():
    clock = make_clock()
    hub = make_hub(clock)
    sub = Recorder()
    hub.subscribe(sub, "room", since=int(clock.seconds() * 1e6) - 5_000_000)
    assert sub.types() == ["reset", "subscribed"]


def test_subscribed_now_is_a_safe_next_since():
    hub = make_hub()
    sub = Recorder()
    hub.subscribe(sub, "room")
    now = sub.messages[0]["ts"]
    ts = publish(hub, "room", 1)
    assert ts[0] > now


def test_unsubscribe_and_drop_stop_delivery():
    hub = make_hub()
    a, b = Recorder(), Recorder()
    hub.subscribe(a, "room")
    hub.subscribe(b, "room")
    hub.unsubscribe(a, "room")
    hub.drop(b)
    publish(hub, "room", 1)
    assert a.data() == b.data() == []
    assert hub.stats()["channels"] == 0 and hub.stats()["subscriptions"] == 0


def test_unsubscribe_during_replay_sends_nothing():
    clock = make_clock()
    store = SlowReplayStore(clock)
    hub = Hub(store, AccessPolicy(None, ["*"]), clock)
    hub.start()
    sub = Recorder()
    hub.subscribe(sub, "room", since=None)
    hub.unsubscribe(sub, "room")
    store.release()
    publish(hub, "room", 1)
    assert sub.messages == []


def test_subscribing_again_replaces_the_subscription():
    hub = make_hub()
    ts = publish(hub, "room", 1, 2)
    sub = Recorder()
    hub.subscribe(sub, "room")
    hub.subscribe(sub, "room", since=ts[0])
    publish(hub, "room", 3)
    assert sub.data() == [2, 3]
    assert hub.stats()["subscriptions"] == 1


def test_subscription_limit():
    hub = make_hub(max_subscriptions=2)
    sub = Recorder()
    hub.subscribe(sub, "a")
    hub.subscribe(sub, "b")
    with pytest.raises(Limit, match="at most 2"):
        hub.subscribe(sub, "c")
    hub.subscribe(sub, "a")  # resubscribing is not a new subscription


@pytest.mark.parametrize(
    ("channel", "since", "error"),
    [
        ("bad channel", None, BadChannel),
        ("ok", -1, BadRequest),
        ("ok", "12", BadRequest),
        ("ok", True, BadRequest),
        ("ok", 1.5, BadRequest),
    ],
)
def test_bad_subscriptions(channel, since, error):
    with pytest.raises(error):
        make_hub().subscribe(Recorder(), channel, since)


def test_private_channels_need_a_valid_token():
    clock = make_clock()
    hub = make_hub(clock, secret="k", public=("pub.*",))
    sub = Recorder()
    hub.subscribe(sub, "pub.x")
    with pytest.raises(Forbidden):
        hub.subscribe(sub, "user:1")
    with pytest.raises(Forbidden):
        hub.subscribe(sub, "user:1", token=sign_token("k", "user:2", int(clock.seconds()) + 60))
    hub.subscribe(sub, "user:1", token=sign_token("k", "user:1", int(clock.seconds()) + 60))


def test_publish_validates_everything_before_storing_anything():
    hub = make_hub()
    for items, error in [
        ([("ok", None, "1"), ("bad channel", None, "2")], BadChannel),
        ([("ok", None, "1"), ("ok", None, "{nope")], BadData),
        ([("ok", None, "1"), ("ok", "bad name!", "2")], BadData),
        ([("ok", None, b"\xff")], BadData),
        ([("ok", None, "NaN")], BadData),
        ([("ok", None, '"' + "x" * MAX_DATA + '"')], TooLarge),
    ]:
        failure = fired(hub.publish(items))
        assert failure.check(error), failure
    assert hub.store.stats()["history_updates"] == 0
    sub = Recorder()
    hub.subscribe(sub, "ok", since=0 + hub.store.positions.now() - 1)
    assert sub.data() == []


def test_exactly_one_mebibyte_is_accepted():
    hub = make_hub()
    data = '"' + "x" * (MAX_DATA - 2) + '"'
    assert len(fired(hub.publish([("ok", None, data)]))) == 1


class LossyStore(SlowReplayStore):
    """A store whose deliveries can be dropped in transit, as Redis pub/sub's are on a reconnect."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dropping = False

    def start(self, on_update, on_resync=None):
        self.resync = on_resync
        return super().start(lambda u: None if self.dropping else on_update(u))


def lossy_hub():
    clock = make_clock()
    store = LossyStore(clock, size=5)
    hub = Hub(store, AccessPolicy(None, ["*"]), clock)
    hub.start()
    return hub, store


def test_resync_fills_the_gap_of_lost_deliveries_once():
    hub, store = lossy_hub()
    early, late = Recorder(), Recorder()
    hub.subscribe(early, "room")
    store.release()
    publish(hub, "room", 1)
    store.dropping = True
    publish(hub, "room", 2)  # lost in transit for both
    hub.subscribe(late, "room")  # its replay will hold 2 already
    store.release()
    publish(hub, "room", 3)  # lost too
    store.dropping = False
    store.resync("room")
    publish(hub, "room", 4)  # arrives live while the resync reads history
    store.release()
    publish(hub, "room", 5)
    assert early.data() == [1, 2, 3, 4, 5]
    assert late.data() == [3, 4, 5]


def test_resync_past_the_horizon_resets_live_subscribers():
    hub, store = lossy_hub()
    sub = Recorder()
    hub.subscribe(sub, "room")
    store.release()
    store.dropping = True
    publish(hub, "room", *range(10))  # more than the history keeps
    store.dropping = False
    store.resync("room")
    store.release()
    publish(hub, "room", "after")
    assert sub.types() == ["subscribed", "reset", "subscribed", "update"]
    assert sub.data() == ["after"]


def test_resync_that_cannot_read_history_resets():
    from twisted.internet.defer import fail

    from twistedpush.errors import Unavailable

    hub, store = lossy_hub()
    sub = Recorder()
    hub.subscribe(sub, "room")
    store.release()
    store.replay = lambda channel, since: fail(Unavailable("down"))
    store.resync("room")
    for _ in range(hub.RESYNC_RETRIES - 1):
        hub.clock.advance(hub.RESYNC_DELAY)
    assert sub.types() == ["subscribed"]  # still trying
    hub.clock.advance(hub.RESYNC_DELAY)
    assert sub.types() == ["subscribed", "reset", "subscribed"]


def test_resync_retries_until_history_can_be_read():
    from twisted.internet.defer import fail

    from twistedpush.errors import Unavailable

    hub, store = lossy_hub()
    sub = Recorder()
    hub.subscribe(sub, "room")
    store.release()
    store.dropping = True
    publish(hub, "room", 1)
    store.dropping = False
    working = store.replay
    store.replay = lambda channel, since: fail(Unavailable("commands not back yet"))
    store.resync("room")
    publish(hub, "room", 2)  # held back while history is being re-read
    store.replay = working
    hub.clock.advance(hub.RESYNC_DELAY)
    store.release()
    assert sub.data() == [1, 2]


def test_presence_hears_lasting_subscribers_join_and_leave():
    hub = make_hub()
    events = []

    class Listener:
        def joined(self, subscriber, channel):
            events.append(("joined", channel))

        def left(self, subscriber, channel):
            events.append(("left", channel))

    hub.presence.append(Listener())
    socket, poll = Recorder(), Recorder()
    poll.lasting = False
    hub.subscribe(socket, "room")
    hub.subscribe(poll, "room")
    hub.unsubscribe(socket, "room")
    hub.subscribe(socket, "a")
    hub.drop(socket)
    hub.drop(poll)
    assert events == [("joined", "room"), ("left", "room"), ("joined", "a"), ("left", "a")]


def test_subscriber_joining_during_a_resync_gets_nothing_twice():
    hub, store = lossy_hub()
    early, joiner = Recorder(), Recorder()
    hub.subscribe(early, "room")
    store.release()
    store.dropping = True
    publish(hub, "room", 1)  # lost in transit
    store.dropping = False
    store.resync("room")  # its replay waits in the store
    hub.subscribe(joiner, "room")  # joins meanwhile; its replay waits too
    publish(hub, "room", 2)  # live: held for the resync, buffered for the joiner
    store.release()
    publish(hub, "room", 3)
    assert early.data() == [1, 2, 3]
    assert joiner.data() == [2, 3]


def test_late_live_copies_of_replayed_updates_are_not_sent_again():
    """Redis pub/sub and the replay travel on different connections: a live copy of an
    update may arrive after the replay that held it."""
    clock = make_clock()
    store = SlowReplayStore(clock, late=True)
    late_copies = []
    hub = Hub(store, AccessPolicy(None, ["*"]), clock)
    store.start(late_copies.append)  # the store delivers nothing by itself...
    early, joiner = Recorder(), Recorder()
    hub.subscribe(early, "room")
    store.release()
    publish(hub, "room", 1)
    hub.subscribe(joiner, "room", since=late_copies[0].ts - 1)
    store.release()  # joiner's replay holds update 1
    hub.deliver(late_copies[0])  # ...the hub hears of it now, late
    hub.deliver(late_copies[0])  # and a second copy changes nothing
    assert early.data() == [1]
    assert joiner.data() == [1]


def test_the_subscription_count_follows_subscribes_resubscribes_and_leaves():
    hub = make_hub(make_clock(), public=("*",))
    a, b = Recorder(), Recorder()
    hub.subscribe(a, "x")
    hub.subscribe(a, "y")
    hub.subscribe(a, "x")  # again: replaces, still one
    hub.subscribe(b, "x")
    assert hub.stats()["subscriptions"] == 3
    hub.unsubscribe(a, "y")
    hub.unsubscribe(a, "y")  # not subscribed any more: nothing
    assert hub.stats()["subscriptions"] == 2
    hub.drop(a)
    hub.drop(b)
    assert hub.stats()["subscriptions"] == 0 and hub.stats()["channels"] == 0

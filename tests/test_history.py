"""MemoryHistory and Positions, driven by a task.Clock."""

from twisted.internet.task import Clock

from tests.helpers import START, make_clock
from twistedpush.history import MemoryHistory, Positions


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    return out[0]


def publish(store, channel, *values):
    return result(store.publish([(channel, None, str(v)) for v in values]))


def test_positions_are_microseconds_and_strictly_increasing():
    clock = make_clock()
    positions = Positions(clock)
    first = positions.allocate(1)[0]
    assert first == int(START * 1_000_000)
    assert positions.allocate(1)[0] == first + 1  # same instant: tie broken by +1
    clock.advance(0.5)
    assert positions.allocate(1)[0] == first + 500_000


def test_positions_for_a_batch_follow_each_other():
    clock = make_clock()
    positions = Positions(clock)
    first = positions.allocate(1)[0]
    batch = positions.allocate(3)
    assert list(batch) == [first + 1, first + 2, first + 3]
    assert positions.now() == first + 3
    assert positions.allocate(1)[0] == first + 4


def test_positions_keep_increasing_when_the_clock_steps_back():
    clock = make_clock()
    positions = Positions(clock)
    a = positions.allocate(1)[0]
    clock.rightNow -= 60  # wall clock stepped back a minute
    b = positions.allocate(1)[0]
    now = positions.now()
    c = positions.allocate(1)[0]
    assert a < b <= now < c


def test_now_is_below_every_later_position():
    positions = Positions(make_clock())
    now = positions.now()
    assert positions.allocate(1)[0] > now
    assert positions.now() >= now


def test_size_bound_trims_oldest_and_moves_horizon():
    store = MemoryHistory(make_clock(), size=3)
    ts = publish(store, "c", 1, 2, 3, 4, 5)
    replay = result(store.replay("c", ts[1]))
    assert not replay.reset
    assert [u.data for u in replay.updates] == ["3", "4", "5"]
    # since before the newest dropped update: a partial replay would skip 2
    assert result(store.replay("c", ts[0])).reset
    assert result(store.replay("c", ts[1] - 1)).reset


def test_ttl_drops_old_updates_without_a_timer_per_update():
    clock = make_clock()
    store = MemoryHistory(clock, size=100, ttl=10, sweep_interval=5)
    store.start(lambda u: None)
    old = publish(store, "c", "old")
    clock.advance(6)
    new = publish(store, "c", "new")
    assert len(clock.getDelayedCalls()) == 1  # the one sweep, whatever was published
    clock.advance(5)  # "old" is now 11 s old
    replay = result(store.replay("c", old[0]))
    assert [u.data for u in replay.updates] == ["new"]
    before_old = old[0] - 1
    assert result(store.replay("c", before_old)).reset
    assert new[0] > old[0]


def test_sweep_forgets_expired_channels_but_not_their_horizon():
    clock = make_clock()
    store = MemoryHistory(clock, ttl=10, sweep_interval=5)
    store.start(lambda u: None)
    ts = publish(store, "idle", 1)
    clock.advance(15)
    assert store.stats()["history_channels"] == 0
    assert result(store.replay("idle", ts[0] - 1)).reset
    assert not result(store.replay("idle", ts[0])).reset
    store.stop()
    assert clock.getDelayedCalls() == []


def test_since_before_the_store_started_is_a_reset():
    clock = make_clock()
    store = MemoryHistory(clock)
    started = int(START * 1_000_000)
    assert result(store.replay("new", started - 1)).reset
    assert not result(store.replay("new", started)).reset


def test_since_none_replays_nothing_and_gives_now():
    store = MemoryHistory(make_clock())
    ts = publish(store, "c", 1)
    replay = result(store.replay("c", None))
    assert replay.updates == () and not replay.reset and replay.now >= ts[0]


def test_update_message_is_the_contract_json():
    import json

    store = MemoryHistory(Clock())
    seen = []
    store.start(seen.append)
    store.watch("room")
    publish(store, "room", '{"x": [1, "é"]}')
    message = json.loads(seen[0].message)
    assert message == {
        "type": "update",
        "channel": "room",
        "ts": seen[0].ts,
        "name": None,
        "data": {"x": [1, "é"]},
    }

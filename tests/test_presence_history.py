"""AMP ``Presence`` and ``History`` over in-memory connections (iosim, StringTransport),
the hub's counts behind them, and Redis presence reports driven by a Clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient

from tests.helpers import Recorder, SlowReplayStore, make_clock, make_hub
from tests.test_shards import FakeRedis, connected, script_call
from twistedpush.access import AccessPolicy
from twistedpush.commands import (
    CHUNK,
    MAX_HISTORY_ANSWER,
    History,
    Presence,
    SendUpdate,
    parse_boxes,
)
from twistedpush.errors import BadChannel, BadData, TooLarge, Unavailable
from twistedpush.history import MemoryHistory
from twistedpush.hub import Hub
from twistedpush.notifier import NotifierProtocol
from twistedpush.redis_history import _PRESENCE, _REPORT, PRESENCE_REFRESH


class Poll(Recorder):
    """A subscriber held one answer long, as a long-poll or push-relay request is."""

    lasting = False


def wire(hub: Hub) -> tuple[amp.AMP, Any]:
    client, _server, pump = connectedServerAndClient(
        lambda: NotifierProtocol(hub), lambda: amp.AMP()
    )
    return client, pump


def call(hub: Hub, command: type[amp.Command], **arguments: Any) -> Any:
    """``command``'s answer (a dict), or the Failure a Twisted AMP client gets."""
    client, pump = wire(hub)
    out: list[Any] = []
    client.callRemote(command, **arguments).addBoth(out.append)
    pump.flush()
    assert out, "no answer"
    return out[0]


def ask(hub: Hub, key: str | None = None, **box: bytes) -> dict[bytes, bytes]:
    """One box as written by hand (``_ask`` 1); the one box answered."""
    protocol = NotifierProtocol(hub, key)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(amp.AmpBox(_ask=b"1", **box).serialize())
    (answer,) = parse_boxes(transport.value())
    return answer


def publish(hub: Hub, channel: str, *values: Any, name: str | None = None) -> list[int]:
    out: list[Any] = []
    items = [(channel, name, json.dumps(v, ensure_ascii=False)) for v in values]
    hub.publish(items).addBoth(out.append)
    return out[0]


# Presence


def test_presence_counts_every_subscriber_of_the_channel_lasting_or_held():
    hub = make_hub()
    socket, sse, poll, elsewhere = Recorder(), Recorder(), Poll(), Recorder()
    for subscriber in (socket, sse, poll):
        hub.subscribe(subscriber, "room")
    hub.subscribe(elsewhere, "hall")
    assert call(hub, Presence, channel="room") == {"count": 3}
    hub.unsubscribe(socket, "room")
    hub.drop(poll)  # the poll answered
    assert call(hub, Presence, channel="room") == {"count": 1}
    hub.drop(sse)
    assert call(hub, Presence, channel="room") == {"count": 0}
    assert call(hub, Presence, channel="hall") == {"count": 1}


def test_presence_counts_a_subscriber_still_catching_up():
    clock = make_clock()
    store = SlowReplayStore(clock)
    hub = Hub(store, AccessPolicy(None, ("*",)), clock)
    hub.start()
    hub.subscribe(Recorder(), "room", since=0)
    assert call(hub, Presence, channel="room") == {"count": 1}
    store.release()
    assert call(hub, Presence, channel="room") == {"count": 1}


def test_a_subscriber_that_subscribes_again_counts_once():
    hub = make_hub()
    page = Recorder()
    for _ in range(3):
        hub.subscribe(page, "room")
    assert call(hub, Presence, channel="room") == {"count": 1}


def test_the_hub_reports_each_change_of_a_channels_count_to_the_store():
    reports: list[tuple[str, int]] = []

    class Recording(MemoryHistory):
        def report(self, channel: str, subscribers: int) -> None:
            reports.append((channel, subscribers))

    clock = make_clock()
    hub = Hub(Recording(clock), AccessPolicy(None, ("*",)), clock)
    hub.start()
    first, second = Recorder(), Poll()
    hub.subscribe(first, "room")
    hub.subscribe(second, "room")
    hub.unsubscribe(first, "room")
    hub.drop(second)
    assert reports == [("room", 1), ("room", 2), ("room", 1), ("room", 0)]


# History


def test_history_answers_the_first_limit_updates_after_since_and_the_horizon():
    hub = make_hub(size=5)
    stamps = publish(hub, "room", *range(8), name="n")
    answer = call(hub, History, channel="room")
    assert [(u["ts"], u["name"], u["data"]) for u in answer["updates"]] == [
        (ts, "n", b"%d" % i) for i, ts in enumerate(stamps) if i >= 3
    ]
    assert answer["horizon"] == stamps[2]  # the newest dropped: since below it missed some
    answer = call(hub, History, channel="room", since=stamps[4], limit=2)
    assert [u["ts"] for u in answer["updates"]] == stamps[5:7]
    assert call(hub, History, channel="room", since=stamps[-1])["updates"] == []
    assert call(hub, History, channel="room", limit=0) == {"updates": [], "horizon": stamps[2]}


def test_history_gives_100_by_default_and_at_most_what_the_channel_holds():
    hub = make_hub(size=150)
    stamps = publish(hub, "room", *range(150))
    assert [u["ts"] for u in call(hub, History, channel="room")["updates"]] == stamps[:100]
    big = call(hub, History, channel="room", limit=1_000_000)
    assert [u["ts"] for u in big["updates"]] == stamps


def test_history_of_a_channel_never_published_is_empty():
    hub = make_hub()
    start = call(hub, History, channel="never")
    assert start["updates"] == [] and start["horizon"] > 0


def test_a_small_history_answer_is_what_amps_own_amplist_reads():
    hub = make_hub()
    stamps = publish(hub, "room", {"a": "é"}, [1, 2], name=None)
    publish(hub, "room", "named", name="greet")
    answer = ask(hub, _command=b"History", channel=b"room")
    plain = amp.AmpList(
        [(b"ts", amp.Integer()), (b"name", amp.Unicode(optional=True)), (b"data", amp.Unicode())]
    )
    assert plain.fromStringProto(answer[b"updates"], None) == [
        {"ts": stamps[0], "name": None, "data": '{"a": "é"}'},
        {"ts": stamps[1], "name": None, "data": "[1, 2]"},
        {"ts": stamps[1] + 1, "name": "greet", "data": '"named"'},
    ]


def test_a_history_over_64k_travels_in_chunks_and_is_joined():
    hub = make_hub()
    texts = ["é" * 100_000, "x" * 70_000, "small"]  # a chunk border inside a character
    publish(hub, "room", *texts)
    answer = ask(hub, _command=b"History", channel=b"room")
    assert {b"updates", b"updates.2", b"updates.3", b"updates.4"} <= set(answer)
    assert all(len(value) <= CHUNK for value in answer.values())
    got = call(hub, History, channel="room")["updates"]
    assert [json.loads(u["data"]) for u in got] == texts


def test_a_history_answer_over_its_bound_is_too_large_and_fewer_fit():
    hub = make_hub()
    megabyte = "x" * (1024 * 1024 - 10)
    count = MAX_HISTORY_ANSWER // len(megabyte) + 1
    publish(hub, "room", *[megabyte] * count)
    refused = call(hub, History, channel="room")
    assert refused.check(TooLarge) and "ask for fewer" in refused.getErrorMessage()
    fitting = call(hub, History, channel="room", limit=count - 2)
    assert len(fitting["updates"]) == count - 2


# Errors


@pytest.mark.parametrize(
    ("box", "code"),
    [
        ({"_command": b"Presence", "channel": b"bad channel"}, b"BAD_CHANNEL"),
        ({"_command": b"Presence", "channel": b"\xff"}, b"BAD_CHANNEL"),
        ({"_command": b"Presence"}, b"BAD_CHANNEL"),
        ({"_command": b"History", "channel": b"x" * 201}, b"BAD_CHANNEL"),
        ({"_command": b"History"}, b"BAD_CHANNEL"),
        ({"_command": b"History", "channel": b"room", "since": b"-1"}, b"BAD_DATA"),
        ({"_command": b"History", "channel": b"room", "since": b"soon"}, b"BAD_DATA"),
        ({"_command": b"History", "channel": b"room", "limit": b"-1"}, b"BAD_DATA"),
        ({"_command": b"History", "channel": b"room", "limit": b"1000001"}, b"BAD_DATA"),
        ({"_command": b"History", "channel": b"room", "limit": b"9" * 5000}, b"BAD_DATA"),
        ({"_command": b"History", "channel": b"room", "limit": b"ten"}, b"BAD_DATA"),
    ],
)
def test_bad_arguments_get_the_contracts_codes_with_a_reason(box, code):
    answer = ask(make_hub(), **box)
    assert answer[b"_error_code"] == code
    assert len(answer[b"_error_description"]) > 10


def test_errors_arrive_as_the_named_exceptions_for_twisted_clients():
    hub = make_hub()
    assert call(hub, Presence, channel="a b").check(BadChannel)
    limit = call(hub, History, channel="room", limit=-5)
    assert limit.check(BadData) and "limit must be an integer from 0" in limit.getErrorMessage()
    assert call(hub, History, channel="room", since=-1).check(BadData)


def test_a_store_that_cannot_be_reached_is_unavailable():
    class Away(MemoryHistory):
        def presence(self, channel: str, local: int) -> Deferred:
            return fail(Unavailable("Redis 127.0.0.1:1/0 is not connected"))

        def history(self, channel: str, since: int | None, limit: int) -> Deferred:
            return fail(Unavailable("Redis 127.0.0.1:1/0 is not connected"))

    clock = make_clock()
    hub = Hub(Away(clock), AccessPolicy(None, ("*",)), clock)
    for command in (Presence, History):
        answer = ask(hub, _command=command.commandName, channel=b"room")
        assert answer[b"_error_code"] == b"UNAVAILABLE"
        assert b"not connected" in answer[b"_error_description"]


@pytest.mark.parametrize("command", [b"Presence", b"History"])
def test_with_a_publisher_key_queries_need_authenticate_first(command):
    hub = make_hub()
    publish(hub, "room", 1)
    protocol = NotifierProtocol(hub, "sesame")
    transport = StringTransport()
    protocol.makeConnection(transport)

    def send(**box: bytes) -> dict[bytes, bytes]:
        transport.clear()
        protocol.dataReceived(amp.AmpBox(_ask=b"1", **box).serialize())
        (answer,) = parse_boxes(transport.value())
        return answer

    assert send(_command=command, channel=b"room")[b"_error_code"] == b"UNAUTHORIZED"
    assert send(_command=b"Authenticate", key=b"sesame") == {b"_answer": b"1"}
    assert b"_answer" in send(_command=command, channel=b"room")


def test_publishing_still_answers_on_the_fast_path_beside_the_queries():
    hub = make_hub()
    client, pump = wire(hub)
    out: list[Any] = []
    client.callRemote(SendUpdate, channel="room", data=b"1").addBoth(out.append)
    client.callRemote(History, channel="room").addBoth(out.append)
    pump.flush()
    assert out[1]["updates"][0]["ts"] == out[0]["ts"]


# Redis presence reports (a fake command connection, a Clock)


def reports(redis: FakeRedis) -> list[tuple[list[str], list[str]]]:
    """The presence reports asked for so far (keys, arguments), each answered "live"."""
    sent = []
    while redis.asked:
        sha, keys, args = script_call(redis.answer(1))
        assert sha == _REPORT.sha
        sent.append((keys, args))
    return sent


def test_redis_reports_every_count_first_then_only_changes_every_interval():
    clock = make_clock()
    store, redis = connected(clock, presence_interval=1)
    store.start(lambda update: None)  # connects for real only once the reactor runs
    store.report("a", 2)
    store.report("b", 1)
    clock.advance(1)
    [(keys, args)] = reports(redis)
    tag = "{twistedpush:0}:"
    assert keys[0] == tag + "nodes" and sorted(keys[1:]) == [tag + "p:a", tag + "p:b"]
    node, life, keep, whole, *counts = args
    assert (node, life, whole) == (store.node, "3000000", "1")
    assert int(keep) >= 60_000
    assert dict(zip(keys[1:], counts, strict=True)) == {tag + "p:a": "2", tag + "p:b": "1"}
    store.report("a", 0)
    clock.advance(1)
    assert reports(redis) == [([tag + "nodes", tag + "p:a"], [node, life, keep, "0", "0"])]
    clock.advance(1)  # nothing changed: the node's entry is renewed all the same
    assert reports(redis) == [([tag + "nodes"], [node, life, keep, "0"])]
    sent = []
    for _ in range(PRESENCE_REFRESH):
        clock.advance(1)
        sent += reports(redis)
    wholes = [(keys, args) for keys, args in sent if args[3] == "1"]
    assert wholes == [([tag + "nodes", tag + "p:b"], [node, life, keep, "1", "1"])]
    store.stop()


def test_redis_node_found_not_live_reports_every_count_at_once():
    clock = make_clock()
    store, redis = connected(clock, presence_interval=1)
    store.start(lambda update: None)
    store.report("a", 2)
    clock.advance(1)
    reports(redis)
    store.report("b", 1)
    clock.advance(1)
    _sha, keys, args = script_call(redis.answer(0))  # Redis lost this node's entry
    assert args[3] == "0"
    clock.advance(0)
    [(keys, args)] = reports(redis)
    assert args[3] == "1" and len(keys) == 3  # a and b again, as a whole report
    store.stop()


def test_redis_report_that_failed_is_sent_with_the_next():
    clock = make_clock()
    store, redis = connected(clock, presence_interval=1)
    store.start(lambda update: None)
    clock.advance(1)
    reports(redis)
    store.report("a", 2)
    clock.advance(1)
    redis.answer(ConnectionError("lost"))
    clock.advance(1)
    [(keys, args)] = reports(redis)
    assert keys[1:] == ["{twistedpush:0}:p:a"] and args[4:] == ["2"]
    store.stop()


def test_redis_presence_adds_the_local_count_to_what_other_nodes_reported():
    clock = make_clock()
    store, redis = connected(clock)
    got: list[Any] = []
    store.presence("room", 2).addBoth(got.append)
    sha, keys, args = script_call(redis.answer(5))
    assert sha == _PRESENCE.sha
    assert keys == ["{twistedpush:0}:nodes", "{twistedpush:0}:p:room"]
    assert args == [store.node]  # its own count is the exact one given, not its last report
    assert got == [7]

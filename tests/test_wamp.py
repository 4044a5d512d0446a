"""WAMP v2 on /ws: every message of the contract, over iosim with Autobahn's WebSocket
client offering ``wamp.2.json``, on a Clock (deterministic)."""

from __future__ import annotations

import json

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory
from autobahn.wamp import message
from autobahn.wamp.exception import ProtocolError
from twisted.internet.defer import fail
from twisted.test.iosim import connectedServerAndClient

from tests.helpers import SlowReplayStore, make_clock, make_hub
from tests.test_websocket import Client
from twistedpush import wamp, websocket
from twistedpush.access import AccessPolicy, sign_token
from twistedpush.history import MemoryHistory
from twistedpush.hub import Hub
from twistedpush.limits import Admission, Limits
from twistedpush.tap import Options
from twistedpush.web import make_site

HELLO = [1, "serverpush", {"roles": {"subscriber": {}}}]


class WampClient(Client):
    """Sends WAMP messages as JSON lists and keeps what the server sends, parsed."""

    def onConnect(self, response):
        super().onConnect(response)
        self.subprotocol = response.protocol

    def send(self, *msg):
        self.send_json(list(msg))

    def take(self):
        received, self.received = self.received, []
        return received


def connect(site, clock, protocols=("wamp.2.json",), origin=None, client=WampClient):
    factory = WebSocketClientFactory(
        "ws://localhost/ws", protocols=list(protocols), reactor=clock, origin=origin
    )
    factory.protocol = client
    client, server, pump = connectedServerAndClient(
        lambda: site.buildProtocol(None), lambda: factory.buildProtocol(None), clock=clock
    )
    pump.flush()
    return client, pump


def joined(site, clock, **kwargs):
    """A connection whose session has been welcomed."""
    client, pump = connect(site, clock, **kwargs)
    client.send(*HELLO)
    pump.flush()
    [welcome] = client.take()
    assert welcome[0] == 2
    return client, pump


def publish(hub, channel, value, name=None):
    out = []
    hub.publish([(channel, name, json.dumps(value))]).addCallback(out.append)
    return out[0][0]


def setup(size=100, realm="serverpush", **limits):
    clock = make_clock()
    hub = make_hub(clock, size=size, secret="k", public=("pub.*",))
    site = make_site(hub, clock, Admission(Limits(**limits)), 512, wamp_realm=realm)
    return hub, clock, site


@pytest.fixture
def ws():
    hub, clock, site = setup()
    client, pump = joined(site, clock)
    return hub, clock, site, client, pump


def broker(site):
    return site.resource.children[b"ws"]._factory.broker


def server_protocol(pump):
    return pump.serverIO.protocol


# Sessions


def test_wamp_is_chosen_by_subprotocol_and_welcomed():
    hub, clock, site = setup()
    client, pump = connect(site, clock, protocols=("wamp.2.msgpack", "wamp.2.json"))
    assert client.subprotocol == "wamp.2.json"
    client.send(*HELLO)
    pump.flush()
    [[kind, session, details]] = client.take()
    assert kind == 2 and 1 <= session <= 2**53
    assert details == {
        "roles": {"broker": {"features": {}}},
        "authrole": "anonymous",
        "authmethod": "anonymous",
    }
    assert message.Welcome.parse([kind, session, details]).session == session  # Autobahn reads it


def test_session_ids_are_random():
    hub, clock, site = setup()
    sessions = set()
    for _ in range(5):
        client, pump = connect(site, clock)
        client.send(*HELLO)
        pump.flush()
        sessions.add(client.take()[0][1])
    assert len(sessions) == 5


@pytest.mark.parametrize("protocols", [(), ("chat",)])
def test_without_wamp_the_connection_speaks_v1(protocols):
    hub, clock, site = setup()
    client, pump = connect(site, clock, protocols=protocols, client=Client)
    client.send_json({"type": "subscribe", "channel": "pub.a"})
    pump.flush()
    assert client.received[0]["type"] == "subscribed"
    assert server_protocol(pump).wamp is None


def test_hello_for_another_realm_is_aborted():
    hub, clock, site = setup()
    client, pump = connect(site, clock)
    client.send(1, "elsewhere", {"roles": {"subscriber": {}}})
    pump.flush()
    [[kind, details, reason]] = client.take()
    assert (kind, reason) == (3, "wamp.error.no_such_realm")
    assert "elsewhere" in details["message"]
    assert client.closed == 1000


def test_the_realm_is_the_servers_option():
    hub, clock, site = setup(realm="example.realm")
    client, pump = connect(site, clock)
    client.send(1, "example.realm", {"roles": {"subscriber": {}}})
    pump.flush()
    assert client.take()[0][0] == 2


def test_wamp_realm_option(capsys):
    options = Options()
    options.parseOptions([])
    assert options["wamp-realm"] == "serverpush"
    options = Options()
    options.parseOptions(["--wamp-realm", "com.example.live"])
    assert options["wamp-realm"] == "com.example.live"
    with pytest.raises(SystemExit) as exit_info:
        Options().parseOptions(["--wamp-realm", "has space"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("serverpush: error: --wamp-realm")


def test_goodbye_is_answered_and_the_connection_closed(ws):
    hub, clock, site, client, pump = ws
    client.send(32, 1, {}, "pub.a")
    pump.flush()
    client.take()
    client.send(6, {}, "wamp.close.close_realm")
    pump.flush()
    assert client.take() == [[6, {}, "wamp.close.goodbye_and_out"]]
    assert client.closed == 1000
    assert hub.stats()["subscriptions"] == 0
    assert not broker(site)._ids


def test_client_abort_closes_without_answer(ws):
    hub, clock, site, client, pump = ws
    client.send(3, {}, "wamp.error.cannot_authenticate")
    pump.flush()
    assert client.take() == [] and client.closed == 1000


# Subscribing


def test_subscribe_replays_after_since_then_live(ws):
    hub, clock, site, client, pump = ws
    first = publish(hub, "pub.a", 1)
    second = publish(hub, "pub.a", {"two": 2}, name="n")
    client.send(32, 7, {"_since": first}, "pub.a")
    pump.flush()
    third = publish(hub, "pub.a", 3)
    pump.flush()
    [subscribed, replayed, live] = client.take()
    assert subscribed[:2] == [33, 7]
    subscription = subscribed[2]
    assert replayed == [36, subscription, second, {}, [{"two": 2}], {"name": "n"}]
    assert live == [36, subscription, third, {}, [3], {}]


def test_subscribe_without_since_gets_live_updates_only(ws):
    hub, clock, site, client, pump = ws
    publish(hub, "pub.a", 1)
    client.send(32, 1, {"match": "exact", "other": True}, "pub.a")  # other options: ignored
    pump.flush()
    ts = publish(hub, "pub.a", 2)
    pump.flush()
    [subscribed, event] = client.take()
    assert subscribed[:2] == [33, 1] and event[2:] == [ts, {}, [2], {}]


def test_since_older_than_the_horizon_is_a_reset_event():
    hub, clock, site = setup(size=2)
    client, pump = joined(site, clock)
    first = publish(hub, "pub.a", 1)
    for n in range(3):
        publish(hub, "pub.a", n)
    client.send(32, 1, {"_since": first}, "pub.a")
    pump.flush()
    live = publish(hub, "pub.a", "after")
    pump.flush()
    [subscribed, reset, event] = client.take()
    subscription = subscribed[2]
    assert reset[:2] == [36, subscription] and reset[3:] == [{}, [], {"reset": True}]
    assert live > reset[2] > first
    assert event[2:4] == [live, {}]


def test_token_opens_a_private_channel(ws):
    hub, clock, site, client, pump = ws
    token = sign_token("k", "user:1", int(clock.seconds()) + 60)
    client.send(32, 1, {}, "user:1")
    client.send(32, 2, {"_token": "0.bad"}, "user:1")
    client.send(32, 3, {"_token": token}, "user:1")
    pump.flush()
    assert client.take()[:2] == [
        [8, 32, 1, {}, "wamp.error.not_authorized"],
        [8, 32, 2, {}, "wamp.error.not_authorized"],
    ]
    assert hub.stats()["subscriptions"] == 1


@pytest.mark.parametrize(
    ("options", "topic", "uri"),
    [
        ({}, "no good", "wamp.error.invalid_uri"),  # no URI at all
        ({}, "a#b", "wamp.error.invalid_uri"),
        ({}, "a$b", "wamp.error.invalid_uri"),  # a URI, not a channel
        ({}, "x" * 201, "wamp.error.invalid_uri"),
        ({}, "user:1", "wamp.error.not_authorized"),
        ({"_token": 42}, "user:1", "wamp.error.not_authorized"),
        ({"_since": "yesterday"}, "pub.a", "wamp.error.invalid_argument"),
        ({"_since": -1}, "pub.a", "wamp.error.invalid_argument"),
        ({"_since": True}, "pub.a", "wamp.error.invalid_argument"),
        ({"_since": 1.5}, "pub.a", "wamp.error.invalid_argument"),
        ({"_since": 10**17}, "pub.a", "wamp.error.invalid_argument"),  # after now: answered late
    ],
)
def test_refused_subscriptions_get_their_error_uri(ws, options, topic, uri):
    hub, clock, site, client, pump = ws
    client.send(32, 5, options, topic)
    client.send(32, 6, {}, "pub.ok")
    pump.flush()
    [error, subscribed] = client.take()
    assert error == [8, 32, 5, {}, uri]
    assert subscribed[:2] == [33, 6]  # the session goes on
    assert hub.stats()["subscriptions"] == 1
    assert list(broker(site)._ids) == ["pub.ok"]


def test_subscription_limit_is_serverpush_error_limit(ws):
    hub, clock, site, client, pump = ws
    hub.max_subscriptions = 2
    for request, topic in enumerate(("pub.1", "pub.2", "pub.3"), 1):
        client.send(32, request, {}, topic)
    pump.flush()
    assert [m[0] for m in client.received[:2]] == [33, 33]
    assert client.received[2] == [8, 32, 3, {}, "serverpush.error.limit"]


class BrokenStore(MemoryHistory):
    broken = False

    def replay(self, channel, since):
        return (
            fail(ConnectionError("history is down"))
            if self.broken
            else super().replay(channel, since)
        )


def broken_setup():
    clock = make_clock()
    store = BrokenStore(clock, 100, 3600)
    hub = Hub(store, AccessPolicy(None, ("*",)), clock)
    hub.start()
    site = make_site(hub, clock)
    return hub, clock, site, store


def test_unreadable_history_is_serverpush_error_unavailable():
    hub, clock, site, store = broken_setup()
    client, pump = joined(site, clock)
    store.broken = True
    client.send(32, 1, {"_since": 0}, "room")
    pump.flush()
    assert client.take() == [[8, 32, 1, {}, "serverpush.error.unavailable"]]
    assert hub.stats()["subscriptions"] == 0


def test_a_live_subscription_whose_history_is_lost_gets_a_reset_event():
    hub, clock, site, store = broken_setup()
    client, pump = joined(site, clock)
    client.send(32, 1, {}, "room")
    pump.flush()
    subscription = client.take()[0][2]
    store.broken = True
    hub.resync("room")  # the store lost updates in transit and cannot be read
    for _ in range(Hub.RESYNC_RETRIES + 1):
        clock.advance(Hub.RESYNC_DELAY)
    pump.flush()
    [reset] = client.take()  # and no second SUBSCRIBED
    assert reset[:2] == [36, subscription] and reset[3:] == [{}, [], {"reset": True}]
    ts = publish(hub, "room", 1)
    pump.flush()
    assert client.take()[0][:3] == [36, subscription, ts]


def test_a_second_subscribe_to_a_topic_gets_the_same_subscription(ws):
    hub, clock, site, client, pump = ws
    first = publish(hub, "pub.a", 1)
    publish(hub, "pub.a", 2)
    client.send(32, 1, {"_since": first}, "pub.a")
    client.send(32, 2, {"_since": 0}, "pub.a")  # its options are not looked at
    pump.flush()
    publish(hub, "pub.a", 3)
    pump.flush()
    received = client.take()
    subscription = received[0][2]
    assert [m[:2] for m in received] == [[33, 1], [36, subscription], [33, 2], [36, subscription]]
    assert received[2][2] == subscription
    assert [m[4] for m in received if m[0] == 36] == [[2], [3]]  # each event once
    client.send(32, 3, {}, "pub.a")
    pump.flush()
    assert client.take() == [[33, 3, subscription]]


def test_a_second_subscribe_while_the_first_replay_is_read_is_answered_with_it():
    clock = make_clock()
    store = SlowReplayStore(clock, 100, 3600)
    hub = Hub(store, AccessPolicy(None, ("*",)), clock)
    hub.start()
    site = make_site(hub, clock)
    client, pump = joined(site, clock)
    client.send(32, 1, {}, "room")
    client.send(32, 2, {}, "room")
    pump.flush()
    assert client.take() == []
    store.release()
    pump.flush()
    [one, two] = client.take()
    assert one[:2] == [33, 1] and two[:2] == [33, 2] and one[2] == two[2]


def test_subscription_ids_are_shared_by_channel_and_released():
    hub, clock, site = setup()
    (a, pump_a), (b, pump_b) = joined(site, clock), joined(site, clock)
    for client, pump in ((a, pump_a), (b, pump_b)):
        client.send(32, 1, {}, "pub.x")
        client.send(32, 2, {}, "pub.y")
        pump.flush()
    [(x, y)] = {(c.received[0][2], c.received[1][2]) for c in (a, b)}
    assert x != y
    for client, pump in ((a, pump_a), (b, pump_b)):
        client.send(34, 3, x)
        pump.flush()
        assert client.received[-1] == [35, 3]
    assert set(broker(site)._ids) == {"pub.y"}
    a.send(32, 4, {}, "pub.x")
    pump_a.flush()
    assert a.received[-1][:2] == [33, 4] and a.received[-1][2] not in (x, y)


# Unsubscribing


def test_unsubscribe(ws):
    hub, clock, site, client, pump = ws
    client.send(32, 1, {}, "pub.a")
    pump.flush()
    subscription = client.take()[0][2]
    client.send(34, 2, subscription)
    pump.flush()
    publish(hub, "pub.a", 1)
    pump.flush()
    assert client.take() == [[35, 2]]
    assert hub.stats()["subscriptions"] == 0
    client.send(34, 3, subscription)
    client.send(34, 4, 12345)
    pump.flush()
    assert client.take() == [
        [8, 34, 3, {}, "wamp.error.no_such_subscription"],
        [8, 34, 4, {}, "wamp.error.no_such_subscription"],
    ]


def test_another_sessions_subscription_cannot_be_unsubscribed():
    hub, clock, site = setup()
    (a, pump_a), (b, pump_b) = joined(site, clock), joined(site, clock)
    a.send(32, 1, {}, "pub.a")
    pump_a.flush()
    b.send(34, 1, a.take()[0][2])
    pump_b.flush()
    assert b.take() == [[8, 34, 1, {}, "wamp.error.no_such_subscription"]]
    assert hub.stats()["subscriptions"] == 1


# What a broker of subscribers only refuses


def test_calls_registrations_and_acknowledged_publications_are_not_authorized(ws):
    hub, clock, site, client, pump = ws
    client.send(48, 1, {}, "com.example.add", [1, 2])
    client.send(64, 2, {}, "com.example.add")
    client.send(16, 3, {"acknowledge": True}, "pub.a", [1])
    client.send(66, 4, 99)
    client.send(49, 1, {})  # CANCEL of the call answered above: nothing to say
    pump.flush()
    assert client.take() == [
        [8, 48, 1, {}, "wamp.error.not_authorized"],
        [8, 64, 2, {}, "wamp.error.not_authorized"],
        [8, 16, 3, {}, "wamp.error.not_authorized"],
        [8, 66, 4, {}, "wamp.error.no_such_registration"],
    ]


def test_a_publish_without_acknowledge_is_dropped_silently(ws):
    hub, clock, site, client, pump = ws
    client.send(32, 1, {}, "pub.a")
    client.send(16, 2, {}, "pub.a", ["not published"])
    client.send(16, 3, {"acknowledge": False}, "pub.a", ["nor this"])
    client.send(34, 4, 12345)  # answered: nothing came before it but SUBSCRIBED
    pump.flush()
    received = client.take()
    assert [m[0] for m in received] == [33, 8] and received[1][2] == 4
    assert hub.stats()["updates_in"] == 0


# Malformed messages


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b'[32, 1, {"_since": NaN}, "pub.a"]',  # not JSON, as browsers read it
        b'{"type": "subscribe"}',
        b"[]",
        b'["32", 1, {}, "pub.a"]',
        b"[999, 1]",
        b"[32, 1, {}]",  # SUBSCRIBE without a topic
        b'[32, 1, [], "pub.a"]',  # options not a dict
        b'[32, "one", {}, "pub.a"]',
        b"[32, 1, {}, 42]",  # topic not a string
        b'[32, 1, {"match": "sometimes"}, "pub.a"]',
        b"[34, 1]",
        b'[1, "serverpush", {"roles": {"subscriber": {}}}]',  # HELLO again
        b'[2, 1, {"roles": {"broker": {}}}]',  # WELCOME, from a client
        b"[36, 1, 2, {}]",  # EVENT, from a client
        b"[33, 1, 2]",  # SUBSCRIBED
        b"[70, 1, {}]",  # YIELD: nothing was invoked
        b'[5, "signature", {}]',  # AUTHENTICATE: nothing was challenged
        b"[" * 5000,
    ],
)
def test_malformed_messages_abort_with_protocol_violation(ws, payload):
    hub, clock, site, client, pump = ws
    client.send(32, 1, {}, "pub.a")
    pump.flush()
    client.take()
    client.sendMessage(payload[:500])
    pump.flush()
    [[kind, details, reason]] = client.take()
    assert (kind, reason) == (3, "wamp.error.protocol_violation")
    assert details["message"]
    assert client.closed == 1002
    assert hub.stats()["subscriptions"] == 0


def test_json_nested_too_deeply_is_a_protocol_violation():
    with pytest.raises(ProtocolError, match="not JSON"):
        wamp.parse(b"[" * 100_000 + b"]" * 100_000, False)


@pytest.mark.parametrize(
    "hello",
    [
        [1, "serverpush", {}],  # no roles
        [1, "serverpush", {"roles": {"king": {}}}],
        [1, "serverpush", {"roles": {"subscriber": {"features": {"subscription_revocation": 7}}}}],
        [1, 5, {"roles": {"subscriber": {}}}],
    ],
)
def test_malformed_hello_is_a_protocol_violation(hello):
    hub, clock, site = setup()
    client, pump = connect(site, clock)
    client.send(*hello)
    pump.flush()
    assert client.take()[0][2] == "wamp.error.protocol_violation"


@pytest.mark.parametrize(
    "first", [[32, 1, {}, "pub.a"], [6, {}, "wamp.close.close_realm"], [16, 1, {}, "pub.a"]]
)
def test_anything_before_hello_is_a_protocol_violation(first):
    hub, clock, site = setup()
    client, pump = connect(site, clock)
    client.send(*first)
    pump.flush()
    assert client.take() == [[3, {"message": "HELLO first"}, "wamp.error.protocol_violation"]]
    assert hub.stats()["subscriptions"] == 0


def test_a_binary_frame_is_a_protocol_violation(ws):
    hub, clock, site, client, pump = ws
    client.sendMessage(b'[32, 1, {}, "pub.a"]', isBinary=True)
    pump.flush()
    assert client.take()[0][2] == "wamp.error.protocol_violation"
    assert client.closed == 1002


def test_a_message_over_the_size_limit_is_aborted(ws):
    hub, clock, site, client, pump = ws
    client.send(32, 1, {"_token": "x" * 600}, "pub.a")
    pump.flush()
    [[kind, details, reason]] = client.take()
    assert (kind, reason) == (3, "serverpush.error.too_large")
    assert "512" in details["message"]
    assert client.closed == 1009


def test_nothing_is_read_after_the_session_ended(ws):
    hub, clock, site, client, pump = ws
    session = server_protocol(pump).wamp
    client.send(6, {}, "wamp.close.close_realm")
    pump.flush()
    session.received(json.dumps([32, 1, {}, "pub.a"]).encode(), False)  # already on its way
    assert hub.stats()["subscriptions"] == 0


# Catch-up racing with publications


@pytest.mark.parametrize("late", [False, True])
def test_subscribe_racing_with_publishes_gets_each_update_once_in_order(late):
    clock = make_clock()
    store = SlowReplayStore(clock, 100, 3600, late=late)
    hub = Hub(store, AccessPolicy(None, ("*",)), clock)
    hub.start()
    site = make_site(hub, clock)
    client, pump = joined(site, clock)
    since = publish(hub, "room", 0)
    before = [publish(hub, "room", n) for n in (1, 2)]
    client.send(32, 1, {"_since": since}, "room")
    pump.flush()
    during = [publish(hub, "room", n) for n in (3, 4)]  # while history is being read
    store.release()
    after = [publish(hub, "room", n) for n in (5, 6)]
    pump.flush()
    [subscribed, *events] = client.take()
    assert subscribed[:2] == [33, 1]
    assert [e[2] for e in events] == before + during + after
    assert [e[4] for e in events] == [[1], [2], [3], [4], [5], [6]]
    assert {e[1] for e in events} == {subscribed[2]}


# Fan-out and the outbox shared with v1


def test_each_update_is_framed_once_for_every_wamp_subscriber(monkeypatch):
    hub, clock, site = setup()
    sessions = [joined(site, clock) for _ in range(3)]
    for client, pump in sessions:
        client.send(32, 1, {}, "pub.room")
        pump.flush()
        client.take()
    v1, v1_pump = connect(site, clock, protocols=(), client=Client)
    v1.send_json({"type": "subscribe", "channel": "pub.room"})
    v1_pump.flush()
    framed, spliced = [], []
    original_frame, original_event = websocket.text_frame, wamp.event_message
    monkeypatch.setattr(websocket, "text_frame", lambda p: framed.append(p) or original_frame(p))
    monkeypatch.setattr(broker(site), "frame", websocket.text_frame)
    monkeypatch.setattr(
        wamp, "event_message", lambda s, u: spliced.append(u) or original_event(s, u)
    )
    ts = publish(hub, "pub.room", {"x": 1}, name="tick")
    subscription = broker(site).subscription("pub.room")
    for client, pump in sessions:
        pump.flush()
        assert client.take() == [[36, subscription, ts, {}, [{"x": 1}], {"name": "tick"}]]
    v1_pump.flush()
    assert v1.received[-1]["data"] == {"x": 1}
    assert len(spliced) == 1 and len(framed) == 2  # one EVENT, one v1 message


@pytest.mark.parametrize("name", [None, "tick"])
def test_spliced_events_are_autobahns_own(name):
    hub, clock, site = setup()
    client, pump = joined(site, clock)
    client.send(32, 1, {}, "pub.a")
    pump.flush()
    subscription = client.take()[0][2]
    data = {"text": 'é " \\ \u2028', "n": [1.5, None, True]}
    ts = publish(hub, "pub.a", data, name=name)
    pump.flush()
    [raw] = client.take()
    event = message.Event.parse(raw)
    assert (event.subscription, event.publication, event.args) == (subscription, ts, [data])
    assert event.kwargs == ({} if name is None else {"name": name})
    # As Autobahn writes it, but for the kwargs it leaves out when empty (the contract has them).
    own = message.Event(subscription, ts, args=[data], kwargs={"name": name} if name else None)
    assert raw[:5] == wamp.JSON.unserialize(wamp.JSON.serialize(own.marshal()))[0][:5]


def test_a_slow_wamp_client_is_dropped_like_a_v1_one():
    hub, clock, site = setup(max_pending_bytes=100_000)
    client, pump = joined(site, clock)
    client.send(32, 1, {}, "pub.room")
    pump.flush()
    server_protocol(pump).pauseProducing()  # what TCP does when the client stops reading
    for _ in range(3):
        publish(hub, "pub.room", "x" * 40_000)
    assert site.resource.children[b"ws"]._factory.slow_drops == 1
    pump.flush()
    assert hub.stats()["subscriptions"] == 0 and not broker(site)._ids


def test_a_wamp_replay_is_framed_as_the_client_reads():
    hub, clock, site = setup(max_pending_bytes=200_000)
    big = "x" * 100_000
    first = publish(hub, "pub.room", "first")
    for i in range(30):  # 3 MB of history, past the bound
        publish(hub, "pub.room", [i, big])
    client, pump = joined(site, clock)
    protocol = server_protocol(pump)
    protocol.pauseProducing()
    client.send(32, 1, {"_since": first}, "pub.room")
    pump.flush()
    assert protocol.outbox.queued < 1_000  # SUBSCRIBED; the replay waits unframed
    protocol.resumeProducing()
    for _ in range(200):
        pump.flush()
    [subscribed, *events] = client.take()
    assert subscribed[:2] == [33, 1]
    assert [e[4][0][0] for e in events] == list(range(30))
    assert site.resource.children[b"ws"]._factory.slow_drops == 0


def test_unsubscribing_discards_the_unsent_replay(ws):
    hub, clock, site, client, pump = ws
    first = publish(hub, "pub.room", "first")
    for i in range(30):
        publish(hub, "pub.room", [i, "x" * 10_000])
    protocol = server_protocol(pump)
    protocol.pauseProducing()
    client.send(32, 1, {"_since": first}, "pub.room")
    pump.flush()
    session = protocol.wamp
    subscription = broker(site).subscription("pub.room")
    session.received(json.dumps([34, 2, subscription]).encode(), False)
    protocol.resumeProducing()
    pump.flush()
    assert [m[0] for m in client.take()] == [33, 35]


def test_going_away_closes_with_1001_and_no_goodbye(ws):
    hub, clock, site, client, pump = ws
    client.send(32, 1, {}, "pub.a")
    pump.flush()
    client.take()
    hub.going_away()
    pump.flush()
    assert client.take() == []  # a GOODBYE would stop AutobahnJS from reconnecting
    assert client.closed == 1001


def test_origin_policy_applies_to_wamp():
    hub, clock, site = setup(allowed_origins=("http://good.example",))
    bad, _ = connect(site, clock, origin="http://evil.example")
    good, _ = connect(site, clock, origin="http://good.example")
    assert bad.state != bad.STATE_OPEN and good.state == good.STATE_OPEN
    assert "[403]" in bad.close_reason


def test_connection_caps_apply_to_wamp():
    hub, clock, site = setup(max_connections_per_ip=1)
    first, _ = connect(site, clock)
    second, _ = connect(site, clock)
    assert first.state == first.STATE_OPEN and second.state != second.STATE_OPEN
    assert "[503]" in second.close_reason


def test_sessions_count_as_websockets_and_carry_the_cookie_to_presence():
    hub, clock, site = setup()
    seen = []

    class Presence:
        def joined(self, subscriber, channel):
            seen.append(("joined", subscriber.cookie, channel))

        def left(self, subscriber, channel):
            seen.append(("left", subscriber.cookie, channel))

    hub.presence.append(Presence())
    factory = WebSocketClientFactory(
        "ws://localhost/ws", protocols=["wamp.2.json"], reactor=clock, headers={"Cookie": "s=1"}
    )
    factory.protocol = WampClient
    client, server, pump = connectedServerAndClient(
        lambda: site.buildProtocol(None), lambda: factory.buildProtocol(None), clock=clock
    )
    pump.flush()
    assert site.admission.by_transport["websocket"] == 1
    client.send(*HELLO)
    client.send(32, 1, {}, "pub.a")
    pump.flush()
    client.sendClose(1000)
    pump.flush()
    assert seen == [("joined", "s=1", "pub.a"), ("left", "s=1", "pub.a")]
    assert site.admission.by_transport["websocket"] == 0

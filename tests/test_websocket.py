"""The WebSocket transport: the real Site and Autobahn client over iosim, on a Clock."""

import json

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.test.iosim import connectedServerAndClient

from tests.helpers import make_clock, make_hub
from twistedpush.access import sign_token
from twistedpush.web import make_site


class Client(WebSocketClientProtocol):
    def onConnect(self, response):
        self.received = []
        self.closed = None

    def onMessage(self, payload, isBinary):
        self.received.append(json.loads(payload))

    def onClose(self, wasClean, code, reason):
        self.closed = code
        self.close_reason = reason or self.wasNotCleanReason

    def send_json(self, message):
        self.sendMessage(json.dumps(message).encode())


def connect(site, clock):
    factory = WebSocketClientFactory("ws://localhost/ws", reactor=clock)
    factory.protocol = Client
    client, server, pump = connectedServerAndClient(
        lambda: site.buildProtocol(None), lambda: factory.buildProtocol(None), clock=clock
    )
    pump.flush()
    assert client.state == client.STATE_OPEN
    return client, server, pump


@pytest.fixture
def ws():
    clock = make_clock()
    hub = make_hub(clock, secret="k", public=("pub.*",))
    site = make_site(hub, clock, max_message_size=512)
    client, server, pump = connect(site, clock)
    return hub, clock, client, pump


def publish(hub, channel, value, name=None):
    out = []
    hub.publish([(channel, name, json.dumps(value))]).addCallback(out.append)
    return out[0][0]


def test_subscribe_replay_then_live(ws):
    hub, clock, client, pump = ws
    first = publish(hub, "pub.a", 1)
    publish(hub, "pub.a", 2)
    client.send_json({"type": "subscribe", "channel": "pub.a", "since": first, "token": None})
    pump.flush()
    publish(hub, "pub.a", 3, name="n")
    pump.flush()
    types = [m["type"] for m in client.received]
    assert types == ["update", "subscribed", "update"]
    assert [m.get("data") for m in client.received] == [2, None, 3]
    assert client.received[2]["name"] == "n"


def test_fan_out_frames_each_update_once(monkeypatch):
    clock = make_clock()
    hub = make_hub(clock)
    site = make_site(hub, clock)
    connections = [connect(site, clock) for _ in range(3)]
    for client, server, pump in connections:
        client.send_json({"type": "subscribe", "channel": "room"})
        pump.flush()
    from twistedpush import websocket

    framed = []
    original = websocket.text_frame
    monkeypatch.setattr(websocket, "text_frame", lambda p: framed.append(p) or original(p))
    publish(hub, "room", {"x": 1})
    for client, server, pump in connections:
        pump.flush()
        assert client.received[-1]["data"] == {"x": 1}
    assert len(framed) == 1


def test_unsubscribe(ws):
    hub, clock, client, pump = ws
    client.send_json({"type": "subscribe", "channel": "pub.a"})
    client.send_json({"type": "unsubscribe", "channel": "pub.a"})
    pump.flush()
    publish(hub, "pub.a", 1)
    pump.flush()
    assert [m["type"] for m in client.received] == ["subscribed"]


def test_token_required_for_private_channels(ws):
    hub, clock, client, pump = ws
    client.send_json({"type": "subscribe", "channel": "user:1", "since": None, "token": None})
    token = sign_token("k", "user:1", int(clock.seconds()) + 60)
    client.send_json({"type": "subscribe", "channel": "user:1", "token": token})
    pump.flush()
    assert client.received[0]["type"] == "error"
    assert client.received[0]["code"] == "forbidden"
    assert client.received[0]["channel"] == "user:1"
    assert client.received[1]["type"] == "subscribed"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"not json", "bad_request"),
        (b"[1,2]", "bad_request"),
        (b'{"type":"dance"}', "bad_request"),
        (b'{"type":"subscribe"}', "bad_request"),
        (b'{"type":"subscribe","channel":"no good"}', "bad_channel"),
        (b'{"type":"subscribe","channel":"pub.a","since":"yesterday"}', "bad_request"),
        (b'{"type":"subscribe","channel":"pub.a","pad":"' + b"x" * 600 + b'"}', "too_large"),
    ],
)
def test_bad_messages_get_an_error_and_the_connection_stays(ws, frame, code):
    hub, clock, client, pump = ws
    client.sendMessage(frame)
    client.send_json({"type": "subscribe", "channel": "pub.ok"})
    pump.flush()
    assert client.received[0]["type"] == "error"
    assert client.received[0]["code"] == code
    assert client.received[0]["message"]
    assert client.received[1] == {
        "type": "subscribed",
        "channel": "pub.ok",
        "ts": client.received[1]["ts"],
    }


def test_subscription_limit_error(ws):
    hub, clock, client, pump = ws
    hub.max_subscriptions = 2
    for name in ("pub.1", "pub.2", "pub.3"):
        client.send_json({"type": "subscribe", "channel": name})
    pump.flush()
    assert [m.get("code") for m in client.received] == [None, None, "limit"]


def test_binary_frame_closes_with_1003(ws):
    hub, clock, client, pump = ws
    client.sendMessage(b"\x00\x01", isBinary=True)
    pump.flush()
    assert client.closed == 1003


def test_closing_forgets_the_subscriptions(ws):
    hub, clock, client, pump = ws
    client.send_json({"type": "subscribe", "channel": "pub.a"})
    pump.flush()
    assert hub.stats()["subscriptions"] == 1
    client.sendClose(1000)
    pump.flush()
    assert hub.stats()["subscriptions"] == 0
    publish(hub, "pub.a", 1)


def test_messages_of_one_turn_go_out_in_one_write_in_order():
    clock = make_clock()
    hub = make_hub(clock)
    site = make_site(hub, clock)
    client, server, pump = connect(site, clock)
    client.send_json({"type": "subscribe", "channel": "room"})
    pump.flush()
    writes = []
    transport = pump.serverIO
    original = transport.write
    transport.write = lambda data: writes.append(data) or original(data)
    for n in range(5):
        publish(hub, "room", n)
    client.send_json({"type": "subscribe", "channel": "bad name"})
    pump.flush()
    assert [m.get("data") for m in client.received[1:6]] == [0, 1, 2, 3, 4]
    assert client.received[6]["code"] == "bad_channel"
    assert len(writes) == 2  # the five updates together; the error in its own turn


def test_text_frames_of_every_length_class():
    from twistedpush.websocket import text_frame

    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame(b"x" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")


def test_connections_share_the_factory_options_and_keep_autobahns_debug_text():
    import pprint

    import txaio
    from autobahn.websocket import protocol as autobahn_protocol
    from twisted.internet.testing import StringTransport
    from twisted.logger import formatEvent, globalLogPublisher

    from twistedpush.limits import Admission
    from twistedpush.websocket import PushWebSocketFactory

    clock = make_clock()
    factory = PushWebSocketFactory(make_hub(clock), Admission(), reactor=clock)
    events = []
    globalLogPublisher.addObserver(events.append)
    level = txaio.get_global_log_level()
    txaio.set_global_log_level("debug")
    try:
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        transport.registerProducer(object(), True)  # as twisted.web's channel leaves it
        protocol.makeConnection(transport)
    finally:
        txaio.set_global_log_level(level)
        globalLogPublisher.removeObserver(events.append)
    options = protocol.CONFIG_ATTRS
    assert not set(options) & set(vars(protocol)), "options copied into the connection"
    assert protocol.maxFramePayloadSize == 65536 and protocol.autoPingInterval == 0  # Pinger
    assert protocol.perMessageCompressionAccept(["offer"]) is None
    assert autobahn_protocol.pformat is pprint.pformat
    [debug] = [e for e in events if "attrs" in e]
    settings = [(name, getattr(protocol, name), "PushWebSocketProtocol") for name in options]
    assert formatEvent(debug) == "\n" + pprint.pformat(settings)


def test_an_open_connection_keeps_only_what_it_uses_of_the_handshake():
    """Autobahn keeps the raw request, the response and every header for the life of
    a connection: about 2 KiB of each idle WebSocket's memory, dropped once open.
    The cookie and origin stay (presence signals read them)."""
    clock = make_clock()
    site = make_site(make_hub(clock, public=("*",)), clock)
    factory = WebSocketClientFactory(
        "ws://localhost/ws",
        reactor=clock,
        origin="http://page.example",
        headers={"Cookie": "sessionid=abc", "X-Other": "x" * 500},
    )
    factory.protocol = Client
    client, server, pump = connectedServerAndClient(
        lambda: site.buildProtocol(None), lambda: factory.buildProtocol(None), clock=clock
    )
    pump.flush()
    ws = pump.serverIO.protocol
    assert not hasattr(ws, "http_request_data") and not hasattr(ws, "http_response_data")
    assert ws.http_headers == {"cookie": "sessionid=abc", "origin": "http://page.example"}
    assert ws.cookie == "sessionid=abc"
    client.send_json({"type": "subscribe", "channel": "a"})
    pump.flush()
    assert client.received[-1]["type"] == "subscribed"


class Mute(Client):
    """A client that never answers a ping (a dead peer, seen from the server)."""

    def sendPong(self, payload=None):
        pass


def open_client(site, clock, protocol):
    factory = WebSocketClientFactory("ws://localhost/ws", reactor=clock)
    factory.protocol = protocol
    client, server, pump = connectedServerAndClient(
        lambda: site.buildProtocol(None), lambda: factory.buildProtocol(None), clock=clock
    )
    pump.flush()
    return client, pump


def advance(clock, pump, seconds, step=1.0):
    for _ in range(int(seconds / step)):
        clock.advance(step)
        pump.flush()


def test_a_client_that_answers_pings_stays_and_one_that_does_not_is_dropped():
    from twistedpush.websocket import PING_INTERVAL

    clock = make_clock()
    site = make_site(make_hub(clock, public=("*",)), clock)
    alive, alive_pump = open_client(site, clock, Client)
    mute, mute_pump = open_client(site, clock, Mute)

    def both(seconds):
        for _ in range(int(seconds)):
            for _ in range(4):  # the pinger's quarter-second ticks, on time
                clock.advance(0.25)
                alive_pump.flush()
                mute_pump.flush()

    waited = 0
    while mute.closed is None and waited < 3 * PING_INTERVAL:
        both(1)
        waited += 1
    # Pinged within its first interval, then dropped at the next ping: a whole
    # interval to answer, at most two.
    assert PING_INTERVAL <= waited <= 2 * PING_INTERVAL + 1
    assert mute.closed == 1006 and alive.closed is None  # dropped, no closing handshake
    both(3 * PING_INTERVAL)
    assert alive.closed is None


def test_the_pinger_stops_when_the_last_connection_closes():
    clock = make_clock()
    site = make_site(make_hub(clock, public=("*",)), clock)
    client, pump = open_client(site, clock, Client)
    assert [c for c in clock.getDelayedCalls() if "withCount" in repr(c)]  # the pinger
    client.sendClose()
    pump.flush()
    advance(clock, pump, 5)
    assert not [c for c in clock.getDelayedCalls() if "withCount" in repr(c)]  # the pinger


def test_after_a_late_reactor_turn_every_due_group_is_pinged_and_none_dropped():
    """A reactor busy for longer than a tick: the groups whose turn passed are all
    pinged at once, but no one is dropped then, since their pongs may be waiting
    unread; the next turn on time judges."""
    from twistedpush.websocket import PING_INTERVAL

    clock = make_clock()
    site = make_site(make_hub(clock, public=("*",)), clock)
    mute, pump = open_client(site, clock, Mute)
    pings = []
    server = pump.serverIO.protocol
    send_ping = server.sendPing
    server.sendPing = lambda *a: (pings.append(clock.seconds()), send_ping(*a))
    while not pings:  # turns on time until its first ping
        clock.advance(0.25)
        pump.flush()
    clock.advance(PING_INTERVAL * 2.5)  # then one late turn: 300 ticks gone by
    pump.flush()
    assert len(pings) == 2 and mute.closed is None  # pinged again, not judged
    advance(clock, pump, 2 * PING_INTERVAL, step=0.25)
    assert mute.closed == 1006  # turns on time: no answer, dropped


class Silent(Client):
    """A client that never answers the server's closing handshake."""

    def sendCloseFrame(self, *args, **kwargs):
        pass


def test_the_opening_handshake_timer_runs_on_the_nodes_clock_and_is_cancelled():
    """Autobahn's opening timer is a reactor call, cancelled once the connection is
    open (txaio's batched timer cancelled by a linear search per connection)."""
    clock = make_clock()
    site = make_site(make_hub(clock, public=("*",)), clock)
    factory = site.resource.children[b"ws"]._factory
    armed = []
    call_later = factory._batched_timer.call_later

    def recorded(*args, **kwargs):
        armed.append(call_later(*args, **kwargs))
        return armed[-1]

    factory._batched_timer.call_later = recorded
    clients = [open_client(site, clock, Client) for _ in range(3)]
    assert all(client.state == client.STATE_OPEN for client, _ in clients)
    assert len(armed) == 3 and not any(call.active() for call in armed)
    assert not set(armed) & set(clock.getDelayedCalls())


def test_a_client_that_does_not_answer_the_close_is_dropped_on_the_nodes_clock():
    """The closing handshake's timeout runs on the node's reactor (here the test's
    clock), not on a timer of Autobahn's own."""
    clock = make_clock()
    site = make_site(make_hub(clock, public=("*",)), clock)
    silent, pump = open_client(site, clock, Silent)
    server = pump.serverIO.protocol
    server.going_away()
    pump.flush()
    assert silent.closed is None and not pump.serverIO.disconnected
    clock.advance(server.closeHandshakeTimeout + 0.1)
    pump.flush()
    assert pump.serverIO.disconnected and silent.closed is not None

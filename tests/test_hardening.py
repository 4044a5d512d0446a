"""Limits, slow clients, origins, shutdown and metrics: deterministic, with iosim and Clock."""

import json
from io import BytesIO
from ipaddress import ip_network

import pytest
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.web.server import NOT_DONE_YET

from tests.helpers import PollRequest, make_clock, make_hub
from tests.test_websocket import Client
from twistedpush.errors import Forbidden, Limit
from twistedpush.limits import Admission, Limits
from twistedpush.longpoll import PollResource
from twistedpush.web import make_site, prometheus


def connect(site, clock, origin=None):
    factory = WebSocketClientFactory("ws://localhost/ws", reactor=clock, origin=origin)
    factory.protocol = Client
    client, server, pump = connectedServerAndClient(
        lambda: site.buildProtocol(None), lambda: factory.buildProtocol(None), clock=clock
    )
    pump.flush()
    return client, server, pump


def setup(**limits):
    clock = make_clock()
    hub = make_hub(clock)
    admission = Admission(Limits(**limits))
    return hub, clock, admission, make_site(hub, clock, admission)


def publish(hub, channel, value):
    out = []
    hub.publish([(channel, None, json.dumps(value))]).addBoth(out.append)
    return out[0]


# Admission


def test_admission_counts_from_accept_caps_and_releases():
    admission = Admission(Limits(max_connections=3, max_connections_per_ip=2, max_polls=1))
    a1 = admission.accept("a")
    a2 = admission.accept("a")
    with pytest.raises(Limit, match="per client address"):
        admission.accept("a")
    admission.use(a1, "websocket")
    admission.use(a2, "longpoll")
    b1 = admission.accept("b")
    with pytest.raises(Limit, match="long-poll"):
        admission.use(b1, "longpoll")
    with pytest.raises(Limit, match="limit of 3"):
        admission.accept("c")
    assert dict(admission.by_transport) == {"websocket": 1, "longpoll": 1, "http": 1}
    admission.close(a1)
    admission.close(a1)  # once only
    admission.accept("c")
    assert admission.refused["limit"] == 3
    assert dict(admission.by_ip) == {"a": 1, "b": 1, "c": 1}


def test_trusted_proxy_connections_count_the_forwarded_client():
    proxies = (ip_network("10.0.0.0/8"), ip_network("192.0.2.7/32"))
    admission = Admission(Limits(max_connections_per_ip=2, trusted_proxies=proxies))
    # The rightmost entry that is not a trusted proxy; what the client wrote to its left is not.
    assert admission.client_address("10.1.1.1", "6.6.6.6, 198.51.100.9, 192.0.2.7") == (
        "198.51.100.9"
    )
    assert admission.client_address("10.1.1.1", None) == "10.1.1.1"
    assert admission.client_address("203.0.113.5", "1.2.3.4") == "203.0.113.5"  # not a proxy
    tickets = [admission.accept("10.1.1.1") for _ in range(5)]  # a proxy: no per-address cap
    assert admission.identify(tickets[0], "198.51.100.9") == "198.51.100.9"
    admission.identify(tickets[1], "198.51.100.9")
    with pytest.raises(Limit, match="per client address"):
        admission.identify(tickets[2], "198.51.100.9")
    admission.identify(tickets[2], "198.51.100.10")
    # A keep-alive connection from the proxy carries another client's request next.
    admission.identify(tickets[1], "198.51.100.11")
    assert dict(admission.by_ip) == {"198.51.100.9": 1, "198.51.100.10": 1, "198.51.100.11": 1}
    for ticket in tickets:
        admission.close(ticket)
    assert not admission.by_ip and admission.open == 0


def test_origin_policy():
    Admission().check_origin("http://anything.example")  # default: any origin
    admission = Admission(Limits(allowed_origins=("https://*.example.com",)))
    admission.check_origin("https://www.example.com")
    admission.check_origin(None)  # not a browser page
    with pytest.raises(Forbidden):
        admission.check_origin("https://evil.example")


# WebSocket


def test_websocket_beyond_the_address_cap_is_refused_with_503():
    hub, clock, admission, site = setup(max_connections_per_ip=1)
    first, _, _ = connect(site, clock)
    second, _, _ = connect(site, clock)
    assert first.state == first.STATE_OPEN
    assert second.state != second.STATE_OPEN
    assert "[503]" in second.close_reason  # refused as it was accepted, before its request
    assert admission.by_transport["websocket"] == 1
    first.sendClose(1000)
    assert admission.refused["limit"] == 1


def test_websocket_from_a_refused_origin_gets_403():
    hub, clock, admission, site = setup(allowed_origins=("http://good.example",))
    bad, _, _ = connect(site, clock, origin="http://evil.example")
    good, _, _ = connect(site, clock, origin="http://good.example")
    assert bad.state != bad.STATE_OPEN and good.state == good.STATE_OPEN
    assert "[403]: origin 'http://evil.example' is not allowed" in bad.close_reason
    assert admission.refused["origin"] == 1


def ws_protocol(pump):
    """The server side of an upgraded connection (the HTTP channel handed it the transport)."""
    return pump.serverIO.protocol


def test_slow_client_is_dropped_and_forgotten():
    hub, clock, admission, site = setup(max_pending_bytes=100_000)
    client, server, pump = connect(site, clock)
    client.send_json({"type": "subscribe", "channel": "room"})
    pump.flush()
    protocol = ws_protocol(pump)
    protocol.pauseProducing()  # what TCP does when the client stops reading
    for _ in range(3):
        publish(hub, "room", "x" * 40_000)
    assert site.resource.children[b"ws"]._factory.slow_drops == 1
    pump.flush()
    assert hub.stats()["subscriptions"] == 0
    assert admission.by_transport["websocket"] == 0


def test_a_client_that_catches_up_is_kept():
    hub, clock, admission, site = setup(max_pending_bytes=100_000)
    client, server, pump = connect(site, clock)
    client.send_json({"type": "subscribe", "channel": "room"})
    pump.flush()
    protocol = ws_protocol(pump)
    for _ in range(3):
        protocol.pauseProducing()
        publish(hub, "room", "x" * 60_000)
        protocol.resumeProducing()  # its buffer drained
    pump.flush()
    assert [len(m["data"]) for m in client.received if m["type"] == "update"] == [60_000] * 3
    assert site.resource.children[b"ws"]._factory.slow_drops == 0


def test_going_away_closes_websockets_with_1001():
    hub, clock, admission, site = setup()
    client, server, pump = connect(site, clock)
    client.send_json({"type": "subscribe", "channel": "room"})
    pump.flush()
    hub.going_away()
    pump.flush()
    assert client.closed == 1001


# Long-poll


def post(resource, body, origin=None, ip="10.0.0.1"):
    request = PollRequest(resource.admission, ip)
    request.method = b"POST"
    if origin:
        request.requestHeaders.setRawHeaders(b"origin", [origin.encode()])
    request.content = BytesIO(json.dumps(body).encode())
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def test_long_poll_limits_and_origins():
    clock = make_clock()
    hub = make_hub(clock)
    admission = Admission(Limits(max_polls=1, allowed_origins=("http://good.example",)))
    resource = PollResource(hub, clock, admission)
    body = {"subscriptions": [{"channel": "room"}]}
    held = post(resource, body, origin="http://good.example")
    assert not held.finished
    assert held.responseHeaders.getRawHeaders(b"access-control-allow-origin") == [
        b"http://good.example"
    ]
    refused = post(resource, body)
    assert refused.responseCode == 503
    assert json.loads(b"".join(refused.written))["messages"][0]["code"] == "limit"
    evil = post(resource, body, origin="http://evil.example")
    assert evil.responseCode == 403
    assert evil.responseHeaders.getRawHeaders(b"access-control-allow-origin") is None
    held.processingFailed(Failure(ConnectionDone()))
    assert admission.by_transport["longpoll"] == 0


def test_going_away_answers_held_polls():
    clock = make_clock()
    hub = make_hub(clock)
    resource = PollResource(hub, clock, Admission())
    held = post(resource, {"subscriptions": [{"channel": "room"}]})
    hub.going_away()
    assert held.finished
    assert json.loads(b"".join(held.written))["messages"] == []


# Shutdown and metrics


def test_drain_waits_for_in_flight_publications_within_a_bound():
    from twisted.internet.defer import Deferred

    clock = make_clock()
    hub = make_hub(clock)
    pending = Deferred()
    hub.store.publish = lambda items: pending
    hub.publish([("room", None, "1")])
    drained = []
    hub.drain(5).addCallback(drained.append)
    clock.advance(1)
    assert drained == []
    pending.callback([1])
    clock.advance(0.05)
    assert drained == [0]
    hub.store.publish = lambda items: Deferred()  # never answers
    hub.publish([("room", None, "2")])
    stuck = []
    hub.drain(5).addCallback(stuck.append)
    for _ in range(110):
        clock.advance(0.05)
    assert stuck == [1]  # gave up after the bound with one still in flight


def test_prometheus_text():
    text = prometheus(
        {"connections": {"websocket": 2, "longpoll": 1}, "subscriptions": 3,
         "updates_in": 5, "refused": {"limit": 1}, "uptime": 1.5}
    )  # fmt: skip
    assert "# TYPE twistedpush_connections gauge" in text
    assert 'twistedpush_connections{transport="websocket"} 2' in text
    assert "twistedpush_updates_in_total 5" in text
    assert 'twistedpush_refused_total{reason="limit"} 1' in text

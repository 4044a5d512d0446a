"""The defects an outside review found in the push server's transports and core, each
held here: bad input answered clearly, limits that count everything. Deterministic:
the real Site over iosim, on a Clock."""

import json
from io import BytesIO

import pytest
from twisted.web.server import NOT_DONE_YET

from tests.helpers import PollRequest, Recorder, SlowReplayStore, make_clock, make_hub, raw_connect
from tests.test_websocket import connect
from twistedpush.access import AccessPolicy, _valid, check_channel, sign_token
from twistedpush.errors import BadRequest, Forbidden
from twistedpush.hub import Hub
from twistedpush.limits import Admission, Limits
from twistedpush.longpoll import PollResource
from twistedpush.web import make_site


def publish(hub, channel, value):
    out = []
    hub.publish([(channel, None, json.dumps(value))]).addBoth(out.append)
    return out[0]


def setup(**limits):
    clock = make_clock()
    hub = make_hub(clock)
    admission = Admission(Limits(**limits))
    return hub, clock, admission, make_site(hub, clock, admission)


def ws_connect(site, clock):
    client, _, pump = connect(site, clock)
    return client, pump


def status_and_body(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


# Bad input that gets a clear answer, and leaves the connection usable


def test_deeply_nested_json_over_websocket_is_a_bad_request_and_the_connection_stays():
    hub, clock, admission, site = setup()
    client, pump = ws_connect(site, clock)
    client.sendMessage(b"[" * 1000 + b"]" * 1000)
    pump.flush()
    assert client.received[-1]["type"] == "error"
    assert client.received[-1]["code"] == "bad_request"
    assert "nested too deeply" in client.received[-1]["message"]
    client.send_json({"type": "subscribe", "channel": "room"})
    pump.flush()
    assert client.received[-1]["type"] == "subscribed"
    assert client.state == client.STATE_OPEN


def poll(resource, body):
    request = PollRequest(resource.admission)
    request.method = b"POST"
    request.content = BytesIO(body)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"subscriptions":' + b"[" * 30_000 + b"]" * 30_000 + b"}", "nested too deeply"),
        (b'{"subscriptions":[{"channel":"a"}],"timeout":NaN}', "NaN is not JSON"),
        (b'{"subscriptions":[{"channel":"a"}],"timeout":Infinity}', "Infinity is not JSON"),
        (b'{"subscriptions":[{"channel":"a"}],"timeout":1e400}', "finite"),
    ],
)
def test_poll_bodies_python_would_choke_on_are_400_json(body, why):
    clock = make_clock()
    hub = make_hub(clock)
    resource = PollResource(hub, clock, Admission(), max_body=1_000_000)
    request = poll(resource, body)
    assert request.finished and request.responseCode == 400
    answer = json.loads(b"".join(request.written))
    assert answer["ts"] is None
    assert answer["messages"][0]["code"] == "bad_request"
    assert why in answer["messages"][0]["message"]


@pytest.mark.parametrize("token", ["².abc", "١٢٣.abc", "+12.abc", " 12.abc", "99999999999999.x"])
def test_odd_tokens_are_forbidden_not_a_crash(token):
    policy = AccessPolicy("secret")
    with pytest.raises(Forbidden, match="malformed"):
        policy.check("private", token, 0)


def test_a_good_token_still_opens_its_channel():
    AccessPolicy("secret").check("private", sign_token("secret", "private", 2_000_000_000), 0)


def test_since_after_the_current_position_is_a_bad_request():
    clock = make_clock()
    hub = make_hub(clock)
    now = hub.store.positions.now()
    recorder = Recorder()
    failures = []
    hub.subscribe(recorder, "room", since=now + 10_000_000).addErrback(failures.append)
    assert failures and failures[0].check(BadRequest)
    assert "after the server's current position" in failures[0].value.message
    assert recorder.messages == []
    assert hub.stats()["subscriptions"] == 0 and hub.stats()["channels"] == 0
    # The channel's fan-out is not pinned: a later subscriber gets live updates.
    other = Recorder()
    hub.subscribe(other, "room", since=now)
    publish(hub, "room", 1)
    assert other.data() == [1]


def test_since_in_the_future_over_websocket_and_long_poll():
    hub, clock, admission, site = setup()
    future = hub.store.positions.now() + 3_600_000_000
    client, pump = ws_connect(site, clock)
    client.send_json({"type": "subscribe", "channel": "room", "since": future})
    pump.flush()
    assert client.received == [
        {
            "type": "error",
            "channel": "room",
            "code": "bad_request",
            "message": client.received[0]["message"],
        }
    ]
    resource = PollResource(hub, clock, admission)
    body = {"subscriptions": [{"channel": "room", "since": future}], "timeout": 5}
    request = poll(resource, json.dumps(body).encode())
    clock.advance(0)
    answer = json.loads(b"".join(request.written))
    assert [m["code"] for m in answer["messages"]] == ["bad_request"]


def test_a_superseded_subscription_whose_replay_fails_reports_nothing():
    clock = make_clock()
    store = SlowReplayStore(clock)
    hub = Hub(store, AccessPolicy(None, ("*",)), clock)
    hub.start()
    recorder = Recorder()
    first_errors, second_errors = [], []
    hub.subscribe(recorder, "room", since=None).addErrback(first_errors.append)
    hub.subscribe(recorder, "room", since=None).addErrback(second_errors.append)
    (_, _, _, first), (_, _, snapshot, second) = store.waiting
    first.errback(RuntimeError("Redis went away"))  # the superseded one's replay
    snapshot.chainDeferred(second)
    assert first_errors == [] and second_errors == []
    assert recorder.types() == ["subscribed"]


def test_invalid_long_names_are_not_remembered():
    _valid.cache_clear()
    for i in range(50):
        with pytest.raises(Exception, match="channel must be"):
            check_channel(f"{i}" + "x" * 60_000)
    assert _valid.cache_info().currsize == 0


def test_get_root_names_the_endpoints():
    hub, clock, admission, site = setup()
    client, server, pump = raw_connect(site, clock)
    client.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    pump.flush()
    status, body = status_and_body(client.received)
    assert status == 200
    assert b"/ws" in body and b"/poll" in body and b"/health" in body


def test_declared_content_length_over_the_limit_is_413_before_the_body():
    hub, clock, admission, site = setup()
    client, server, pump = raw_connect(site, clock)
    client.transport.write(
        b"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 50000000\r\n\r\n"
    )
    pump.flush()
    status, body = status_and_body(client.received)
    assert status == 413  # no byte of the body was sent
    assert not client.received.startswith(b"HTTP/1.1 100")
    answer = json.loads(body)
    assert answer["messages"][0]["code"] == "too_large"
    assert "50000000" in answer["messages"][0]["message"]
    client.transport.write(b"x" * 100_000)  # the client goes on sending: read into nothing
    pump.flush()
    assert client.lost
    assert admission.open == 0


def test_oversize_and_invalid_utf8_messages_get_real_close_codes():
    hub, clock, admission, site = setup()
    client, pump = ws_connect(site, clock)
    client.sendMessage(b'{"type":"subscribe","channel":"' + b"a" * 70_000 + b'"}')
    pump.flush()
    assert client.closed == 1009
    client, pump = ws_connect(site, clock)
    client.sendMessage(b'{"type":"subscribe","channel":"\xff\xfe"}')
    pump.flush()
    assert client.closed == 1007
    clock.advance(10)
    pump.flush()
    assert admission.open == 0


# Limits that count everything


def test_connections_count_from_accept_and_a_slow_request_is_timed_out():
    hub, clock, admission, site = setup(max_connections=2, request_timeout=30)
    slow = [raw_connect(site, clock) for _ in range(2)]
    for client, _, pump in slow:
        client.transport.write(b"GET /health HTTP/1.1\r\n")  # headers, never finished
        pump.flush()
    assert admission.by_transport["http"] == 2
    third, _, pump = raw_connect(site, clock)
    pump.flush()
    status, body = status_and_body(third.received)
    assert status == 503 and json.loads(body)["error"]["code"] == "limit"
    assert third.lost
    for _ in range(29):
        clock.advance(1)
        for client, _, pump in slow:
            client.transport.write(b"X-Slow: 1\r\n")  # a byte now and then keeps idle timers off
            pump.flush()
    assert not any(client.received for client, _, _ in slow)
    clock.advance(1)
    for client, _, pump in slow:
        pump.flush()
        status, body = status_and_body(client.received)
        assert status == 408 and b"30 s" in body
    clock.advance(20)  # a client that does not close is cut off after the abort timeout
    for client, _, pump in slow:
        pump.flush()
        assert client.lost
    assert admission.open == 0 and not admission.by_ip


def test_a_request_that_arrives_in_time_is_not_cut_off():
    hub, clock, admission, site = setup(request_timeout=30)
    client, _, pump = raw_connect(site, clock)
    for _ in range(3):  # keep-alive: each request has its own deadline
        clock.advance(20)
        client.transport.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        pump.flush()
    assert client.received.count(b"HTTP/1.1 200") == 3 and not client.lost


def test_replays_wait_for_a_stalled_reader_and_live_updates_past_the_bound_drop_it():
    hub, clock, admission, site = setup(max_pending_bytes=200_000)
    big = "x" * 100_000
    first = publish(hub, "room", "first")[0]
    for _ in range(30):  # 3 MB of history
        publish(hub, "room", big)
    client, pump = ws_connect(site, clock)
    protocol = pump.serverIO.protocol
    protocol.pauseProducing()  # what TCP does when the client stops reading
    client.send_json({"type": "subscribe", "channel": "room", "since": first})
    pump.flush()
    assert protocol.outbox.queued < 1_000  # the replay is not framed while nobody reads
    assert site.resource.children[b"ws"]._factory.slow_drops == 0
    publish(hub, "room", big)
    publish(hub, "room", big)  # 200 KB of live updates queued behind it: past the bound
    assert site.resource.children[b"ws"]._factory.slow_drops == 1
    pump.flush()
    assert hub.stats()["subscriptions"] == 0 and admission.open == 0


def test_a_slow_reader_gets_its_whole_replay_as_it_reads():
    hub, clock, admission, site = setup(max_pending_bytes=200_000)
    big = "x" * 100_000
    first = publish(hub, "room", "first")[0]
    for i in range(30):
        publish(hub, "room", [i, big])
    client, pump = ws_connect(site, clock)
    client.send_json({"type": "subscribe", "channel": "room", "since": first})
    for _ in range(200):
        pump.flush()
    got = [m["data"][0] for m in client.received if m["type"] == "update"]
    assert got == list(range(30))
    assert client.received[-1]["type"] == "subscribed"
    assert site.resource.children[b"ws"]._factory.slow_drops == 0


def test_a_poll_stays_counted_until_its_answer_has_left():
    hub, clock, admission, site = setup()
    client, server, pump = raw_connect(site, clock)
    body = json.dumps({"subscriptions": [{"channel": "room", "since": None}]}).encode()
    client.transport.write(
        b"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    pump.flush()
    assert admission.by_transport["longpoll"] == 1
    channel = server
    channel.pauseProducing()  # the client stopped reading: the send buffer is full
    publish(hub, "room", "x" * 1000)
    clock.advance(0)
    assert admission.by_transport["longpoll"] == 1  # answered, but not sent
    channel.resumeProducing()
    assert admission.by_transport["longpoll"] == 0
    pump.flush()
    assert b'"data":"' in client.received


def test_trusted_proxy_clients_are_counted_and_logged_by_their_own_address():
    from ipaddress import ip_network

    hub, clock, admission, site = setup(
        max_connections_per_ip=1, trusted_proxies=(ip_network("192.168.0.0/16"),)
    )
    answers = []
    for client_ip in ("198.51.100.1", "198.51.100.2", "198.51.100.1"):
        client, server, pump = raw_connect(site, clock, peer="192.168.1.1")
        client.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"X-Forwarded-For: 6.6.6.6, %s\r\n\r\n" % client_ip.encode()
        )
        pump.flush()
        answers.append(status_and_body(client.received)[0])
    assert answers == [101, 101, 503]
    assert dict(admission.by_ip) == {"198.51.100.1": 1, "198.51.100.2": 1}
    assert admission.by_transport["websocket"] == 2


def test_autobahns_own_queued_writes_work_on_our_connections():
    """Our protocol once defined ``_send``, Autobahn's queued-write method:
    ``sendMessage(sync=True)`` raised TypeError."""
    hub, clock, admission, site = setup()
    client, pump = ws_connect(site, clock)
    pump.serverIO.protocol.sendMessage(b'{"type":"hello"}', sync=True)
    pump.flush()
    clock.advance(0)
    pump.flush()
    assert client.received == [{"type": "hello"}]


def test_the_access_log_names_the_client_behind_a_trusted_proxy():
    from ipaddress import ip_network

    hub, clock, admission, site = setup(trusted_proxies=(ip_network("192.168.0.0/16"),))
    lines = []
    site._logFile = type("Log", (), {"write": staticmethod(lines.append)})()
    client, server, pump = raw_connect(site, clock, peer="192.168.1.1")
    client.transport.write(
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n"
    )
    pump.flush()
    assert lines and lines[0].startswith('"198.51.100.7"'), lines


# Found in review of the fixes above


def test_a_client_that_reads_is_not_dropped_for_a_big_turn():
    hub, clock, admission, site = setup()  # --max-pending-bytes 1 MiB
    client, pump = ws_connect(site, clock)
    client.send_json({"type": "subscribe", "channel": "room"})
    pump.flush()
    hub.publish([("room", None, json.dumps("x" * 30_000))] * 40)  # 1.2 MB in one turn
    publish(hub, "room", "y" * (1024 * 1024 - 100))  # one update of almost 1 MiB
    pump.flush()
    assert site.resource.children[b"ws"]._factory.slow_drops == 0
    assert len([m for m in client.received if m["type"] == "update"]) == 41


def test_a_stalled_reader_with_a_replay_waiting_is_dropped_and_resubscribing_adds_nothing():
    hub, clock, admission, site = setup()
    first = publish(hub, "room", "first")[0]
    for _ in range(30):
        publish(hub, "room", "x" * 100_000)
    client, pump = ws_connect(site, clock)
    protocol = pump.serverIO.protocol
    protocol.pauseProducing()
    for _ in range(50):  # each subscribe replaces the last one's unsent replay
        client.send_json({"type": "subscribe", "channel": "room", "since": first})
        pump.flush()
    assert protocol.outbox.replays == 1
    clock.advance(14)
    assert site.resource.children[b"ws"]._factory.slow_drops == 0
    clock.advance(1)  # STALL_TIMEOUT with something waiting and nothing read
    assert site.resource.children[b"ws"]._factory.slow_drops == 1
    pump.flush()
    assert hub.stats()["subscriptions"] == 0


def test_a_refused_resubscribe_keeps_the_replay_of_the_subscription_that_stays():
    clock = make_clock()
    hub = make_hub(clock, secret="k", public=("pub.*",))
    site = make_site(hub, clock)
    first = publish(hub, "pub.a", "first")[0]
    for i in range(30):
        publish(hub, "pub.a", [i, "x" * 100_000])
    client, pump = ws_connect(site, clock)
    client.send_json({"type": "subscribe", "channel": "pub.a", "since": first})
    client.send_json({"type": "subscribe", "channel": "pub.a", "since": "bad"})
    for _ in range(100):
        pump.flush()
    assert [m["data"][0] for m in client.received if m["type"] == "update"] == list(range(30))


def test_pipelined_polls_are_counted_and_not_cut_off_by_the_deadline():
    hub, clock, admission, site = setup(max_polls=1, request_timeout=30)
    client, server, pump = raw_connect(site, clock)
    body = json.dumps({"subscriptions": [{"channel": "room"}], "timeout": 60}).encode()
    poll_request = b"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    client.transport.write(poll_request * 2)  # the second waits behind the first
    pump.flush()
    publish(hub, "room", 1)  # answers the first; the second is held from here
    clock.advance(0)
    pump.flush()
    assert client.received.count(b"HTTP/1.1 200") == 1
    assert admission.by_transport["longpoll"] == 1 and admission.by_transport["http"] == 0
    clock.advance(45)  # past the request deadline: a held poll is not a late request
    pump.flush()
    assert b"408" not in client.received
    publish(hub, "room", 2)
    clock.advance(0)
    pump.flush()
    assert client.received.count(b"HTTP/1.1 200") == 2
    assert admission.by_transport["longpoll"] == 0


def test_a_huge_integer_timeout_is_capped_not_a_500():
    clock = make_clock()
    hub = make_hub(clock)
    resource = PollResource(hub, clock, Admission())
    request = poll(resource, b'{"subscriptions":[{"channel":"a"}],"timeout":1' + b"0" * 400 + b"}")
    assert not request.finished  # held, for the longest a poll is held
    clock.advance(60)
    assert request.finished
    assert json.loads(b"".join(request.written))["messages"] == []

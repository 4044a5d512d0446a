"""Server-Sent Events (``GET /sse/<channel>``) through the real site over iosim, on a Clock:
catch-up, resume, live, keep-alive, refusals before the stream, slow readers, shutdown."""

from __future__ import annotations

import json

import pytest
from twisted.internet.defer import fail

from tests.helpers import SlowReplayStore, make_clock, make_hub
from tests.helpers import raw_connect as connect  # also for other HTTP tests
from twistedpush.access import AccessPolicy, sign_token
from twistedpush.errors import Unavailable
from twistedpush.hub import Hub
from twistedpush.limits import Admission, Limits
from twistedpush.sse import KEEPALIVE_INTERVAL
from twistedpush.web import make_site
from twistedpush.writes import STALL_TIMEOUT


class Answer:
    """An HTTP/1.1 answer as received so far: status, headers, and the body with its
    chunked framing taken off (checked as it is)."""

    def __init__(self, raw: bytes) -> None:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            self.headers[name.lower()] = value
        self.complete = False
        if self.headers.get("transfer-encoding") != "chunked":
            self.body = rest
            return
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                self.complete = True
                break
            assert rest[size : size + 2] == b"\r\n", "a chunk must end with CRLF"
            body += rest[:size]
            rest = rest[size + 2 :]
        self.body = body

    def json(self):
        return json.loads(self.body)

    def events(self) -> list[dict]:
        """The events an EventSource would dispatch (comments and retry left out)."""
        events = []
        for block in self.body.decode().split("\n\n"):
            fields = {}
            for line in block.split("\n"):
                if line and not line.startswith(":"):
                    name, _, value = line.partition(": ")
                    fields[name] = value
            if "data" in fields:
                fields["message"] = json.loads(fields["data"])
                events.append(fields)
        return events


def setup(**limits):
    clock = make_clock()
    hub = make_hub(clock, secret="s3cret", public=("pub.*",))
    admission = Admission(Limits(**limits))
    return hub, clock, admission, make_site(hub, clock, admission)


def get(site, clock, target: str, *headers: str, version: str = "1.1"):
    client, server, pump = connect(site, clock)
    extra = "".join(f"{h}\r\n" for h in headers)
    client.transport.write(f"GET {target} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode())
    pump.flush()
    return client, server, pump


def publish(hub, channel, value, name=None):
    out = []
    hub.publish([(channel, name, json.dumps(value))]).addCallback(out.append)
    return out[0][0]


def test_stream_catches_up_from_since_then_goes_live():
    hub, clock, admission, site = setup()
    first = publish(hub, "pub.a", 1)
    second = publish(hub, "pub.a", 2, name="tick")
    client, server, pump = get(site, clock, f"/sse/pub.a?since={first}")
    answer = Answer(client.received)
    assert answer.status == 200
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.headers["x-accel-buffering"] == "no"
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.body.startswith(b": twistedpush\nretry: 3000\n\n")  # a comment, then retry
    replayed, subscribed = answer.events()
    assert replayed == {
        "id": str(second),
        "event": "tick",
        "data": f'{{"type":"update","channel":"pub.a","ts":{second},"name":"tick","data":2}}',
        "message": {"type": "update", "channel": "pub.a", "ts": second, "name": "tick", "data": 2},
    }
    assert subscribed["event"] == "subscribed"
    assert subscribed["message"] == {
        "type": "subscribed",
        "channel": "pub.a",
        "ts": int(subscribed["id"]),
    }
    live = publish(hub, "pub.a", {"x": 3})
    pump.flush()
    event = Answer(client.received).events()[-1]
    assert "event" not in event  # no name: a plain "message" event
    assert event["id"] == str(live) and event["message"]["data"] == {"x": 3}
    assert admission.by_transport["sse"] == 1
    assert hub.stats()["subscriptions"] == 1


def test_last_event_id_is_the_position_whatever_the_query_says():
    hub, clock, admission, site = setup()
    first = publish(hub, "pub.a", 1)
    publish(hub, "pub.a", 2)
    client, server, pump = get(site, clock, "/sse/pub.a?since=0", f"Last-Event-ID: {first}")
    events = Answer(client.received).events()
    assert [e["message"]["type"] for e in events] == ["update", "subscribed"]
    assert events[0]["message"]["data"] == 2


def test_without_a_position_the_stream_starts_now():
    hub, clock, admission, site = setup()
    publish(hub, "pub.a", 1)
    client, server, pump = get(site, clock, "/sse/pub.a")
    assert [e["event"] for e in Answer(client.received).events()] == ["subscribed"]


def test_a_position_older_than_history_gets_a_reset_event():
    clock = make_clock()
    hub = make_hub(clock, size=1, public=("*",))
    site = make_site(hub, clock, Admission())
    first = publish(hub, "room", 1)
    publish(hub, "room", 2)
    publish(hub, "room", 3)  # the second is gone too: history holds one
    client, server, pump = get(site, clock, f"/sse/room?since={first}")
    reset, subscribed = Answer(client.received).events()
    assert reset["event"] == "reset" and reset["message"]["type"] == "reset"
    assert reset["id"] == str(reset["message"]["ts"]) == subscribed["id"]


def test_private_channel_with_its_token_and_a_channel_name_with_a_slash():
    hub, clock, admission, site = setup()
    token = sign_token("s3cret", "user/42", int(clock.seconds()) + 60)
    client, server, pump = get(site, clock, f"/sse/user/42?token={token}")
    assert Answer(client.received).events()[0]["message"]["channel"] == "user/42"


@pytest.mark.parametrize(
    ("target", "headers", "status", "code"),
    [
        ("/sse/bad%20channel", (), 400, "bad_channel"),
        ("/sse/", (), 400, "bad_channel"),
        ("/sse/pub.a?since=yesterday", (), 400, "bad_request"),
        ("/sse/pub.a", ("Last-Event-ID: -1",), 400, "bad_request"),
        ("/sse/private", (), 403, "forbidden"),
        ("/sse/private?token=123.abc", (), 403, "forbidden"),
    ],
)
def test_refusals_are_answered_before_any_event(target, headers, status, code):
    hub, clock, admission, site = setup()
    client, server, pump = get(site, clock, target, *headers)
    answer = Answer(client.received)
    assert answer.status == status
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["code"] == code
    assert admission.by_transport["sse"] == 0 and hub.stats()["subscriptions"] == 0


def test_a_position_ahead_of_the_server_is_refused_once_history_is_read():
    hub, clock, admission, site = setup()
    client, server, pump = get(site, clock, f"/sse/pub.a?since={10**17}")
    answer = Answer(client.received)
    assert answer.status == 400
    assert "after the server's current position" in answer.json()["error"]["message"]
    assert admission.by_transport["sse"] == 0 and hub.stats()["subscriptions"] == 0


def test_history_unavailable_is_503_unavailable():
    hub, clock, admission, site = setup()
    hub.store.replay = lambda channel, since: fail(Unavailable("Redis is down"))
    client, server, pump = get(site, clock, "/sse/pub.a?since=1")
    answer = Answer(client.received)
    assert (answer.status, answer.json()["error"]["code"]) == (503, "unavailable")


def test_past_the_connection_caps_the_answer_is_503_limit():
    hub, clock, admission, site = setup(max_connections_per_ip=1)
    get(site, clock, "/sse/pub.a")
    client, server, pump = get(site, clock, "/sse/pub.b")
    answer = Answer(client.received)
    assert (answer.status, answer.json()["error"]["code"]) == (503, "limit")


def test_a_refused_origin_gets_403_and_no_cors_headers():
    hub, clock, admission, site = setup(allowed_origins=("http://good.example",))
    client, server, pump = get(site, clock, "/sse/pub.a", "Origin: http://evil.example")
    answer = Answer(client.received)
    assert answer.status == 403 and "access-control-allow-origin" not in answer.headers
    client, server, pump = get(site, clock, "/sse/pub.a", "Origin: http://good.example")
    answer = Answer(client.received)
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == "http://good.example"


def test_cross_origin_preflight():
    hub, clock, admission, site = setup()
    client, server, pump = connect(site, clock)
    client.transport.write(
        b"OPTIONS /sse/pub.a HTTP/1.1\r\nHost: x\r\nOrigin: http://page.example\r\n"
        b"Access-Control-Request-Headers: last-event-id\r\n\r\n"
    )
    pump.flush()
    answer = Answer(client.received)
    assert answer.status == 204
    assert "Last-Event-ID" in answer.headers["access-control-allow-headers"]
    assert "GET" in answer.headers["access-control-allow-methods"]


def test_a_comment_keeps_every_stream_alive_within_25_seconds():
    hub, clock, admission, site = setup()
    client, server, pump = get(site, clock, "/sse/pub.a")
    before = Answer(client.received).body
    assert KEEPALIVE_INTERVAL < 25
    clock.advance(KEEPALIVE_INTERVAL)
    pump.flush()
    assert Answer(client.received).body == before + b": keep-alive\n\n"


def test_a_keep_alive_while_history_is_read_leaves_a_refusal_a_plain_400():
    """The keep-alive tick once started a stream whose history was still being read,
    so a refusal found then came as an empty stream left open instead of a 400."""
    clock = make_clock()
    store = SlowReplayStore(clock, 100, 3600)
    hub = Hub(store, AccessPolicy(None, ("*",)), clock)
    hub.start()
    site = make_site(hub, clock, Admission())
    get(site, clock, "/sse/other")  # a stream that is on: the keep-alive timer runs
    store.release()
    client, server, pump = get(site, clock, f"/sse/room?since={10**17}")
    clock.advance(KEEPALIVE_INTERVAL)  # its history is still being read
    pump.flush()
    store.release()
    pump.flush()
    answer = Answer(client.received)
    assert answer.status == 400
    assert "after the server's current position" in answer.json()["error"]["message"]
    assert hub.stats()["subscriptions"] == 1  # the other stream's


def test_line_breaks_between_json_tokens_stay_on_one_data_line():
    hub, clock, admission, site = setup()
    client, server, pump = get(site, clock, "/sse/pub.a")
    hub.publish([("pub.a", None, '{"a":\r\n [1,\n2]}')])
    pump.flush()
    event = Answer(client.received).events()[-1]
    assert event["message"]["data"] == {"a": [1, 2]}


def test_a_client_that_leaves_is_forgotten():
    hub, clock, admission, site = setup()
    client, server, pump = get(site, clock, "/sse/pub.a")
    assert hub.stats()["subscriptions"] == 1
    client.transport.loseConnection()
    pump.flush()
    assert hub.stats()["subscriptions"] == 0
    assert admission.open == 0


def test_a_long_replay_is_written_as_the_client_reads_in_order():
    clock = make_clock()
    hub = make_hub(clock, size=1000)
    site = make_site(hub, clock, Admission())
    since = publish(hub, "room", 0)
    for n in range(1, 600):
        publish(hub, "room", {"n": n, "pad": "x" * 300})
    client, server, pump = get(site, clock, f"/sse/room?since={since}")
    events = Answer(client.received).events()
    assert [e["message"]["data"]["n"] for e in events[:-1]] == list(range(1, 600))
    assert events[-1]["event"] == "subscribed"


def test_a_client_that_does_not_read_is_dropped_past_max_pending_bytes():
    hub, clock, admission, site = setup(max_pending_bytes=100_000)
    client, server, pump = get(site, clock, "/sse/pub.a")
    server.pauseProducing()  # what TCP does when the client stops reading
    publish(hub, "pub.a", "x" * 40_000)
    publish(hub, "pub.a", "x" * 40_000)
    assert not client.lost
    publish(hub, "pub.a", "x" * 40_000)
    pump.flush()
    assert client.lost
    assert site.resource.children[b"sse"].slow_drops == 1
    assert hub.stats()["subscriptions"] == 0 and admission.open == 0
    assert (
        json.loads(site.resource.children[b"health"].render_GET(_dummy()))["slow_client_drops"] == 1
    )


def test_a_client_that_reads_is_never_dropped_for_a_big_turn():
    hub, clock, admission, site = setup(max_pending_bytes=100_000)
    client, server, pump = get(site, clock, "/sse/pub.a")
    for _ in range(3):
        publish(hub, "pub.a", "x" * 60_000)  # all in one turn
    pump.flush()
    assert [len(e["message"]["data"]) for e in Answer(client.received).events()[1:]] == [60_000] * 3
    assert not client.lost


def test_a_stalled_reader_is_dropped_after_the_stall_timeout():
    hub, clock, admission, site = setup()
    client, server, pump = get(site, clock, "/sse/pub.a")
    server.pauseProducing()
    publish(hub, "pub.a", "waiting")
    clock.advance(STALL_TIMEOUT - 1)
    pump.flush()
    assert not client.lost
    server.resumeProducing()  # it read after all: what waited goes out
    pump.flush()
    assert Answer(client.received).events()[-1]["message"]["data"] == "waiting"
    server.pauseProducing()
    publish(hub, "pub.a", "never read")
    clock.advance(STALL_TIMEOUT)
    pump.flush()
    assert client.lost


def test_shutdown_ends_the_stream_so_the_browser_reconnects_elsewhere():
    hub, clock, admission, site = setup()
    client, server, pump = get(site, clock, "/sse/pub.a")
    hub.going_away()
    pump.flush()
    assert Answer(client.received).complete  # the last chunk: the stream ended cleanly
    assert hub.stats()["subscriptions"] == 0


def test_http_1_0_streams_without_chunks():
    hub, clock, admission, site = setup()
    client, server, pump = get(site, clock, "/sse/pub.a", version="1.0")
    publish(hub, "pub.a", "hi")
    pump.flush()
    answer = Answer(client.received)
    assert "transfer-encoding" not in answer.headers
    assert [e.get("event") for e in answer.events()] == ["subscribed", None]


def test_streams_are_counted_in_health_and_metrics_and_tell_presence():
    hub, clock, admission, site = setup()
    seen = []

    class Listener:
        def joined(self, subscriber, channel):
            seen.append(("joined", channel, subscriber.cookie, subscriber.http_headers))

        def left(self, subscriber, channel):
            seen.append(("left", channel))

    hub.presence.append(Listener())
    client, server, pump = get(
        site, clock, "/sse/pub.a", "Cookie: sessionid=abc", "Origin: http://site.example"
    )
    report = json.loads(site.resource.children[b"health"].render_GET(_dummy()))
    assert report["connections"]["sse"] == 1
    metrics = site.resource.children[b"metrics"].render_GET(_dummy()).decode()
    assert 'twistedpush_connections{transport="sse"} 1' in metrics
    client.transport.loseConnection()
    pump.flush()
    assert seen == [
        ("joined", "pub.a", "sessionid=abc", {"origin": "http://site.example"}),
        ("left", "pub.a"),
    ]


def _dummy():
    from twisted.web.test.requesthelper import DummyRequest

    return DummyRequest([b""])


def test_head_gets_the_headers_and_no_stream():
    hub, clock, admission, site = setup()
    client, server, pump = connect(site, clock)
    client.transport.write(b"HEAD /sse/pub.a HTTP/1.1\r\nHost: x\r\n\r\n")
    pump.flush()
    head, _, body = client.received.partition(b"\r\n\r\n")
    assert b"text/event-stream" in head and body == b""
    assert hub.stats()["subscriptions"] == 0

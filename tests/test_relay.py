"""The push-relay long-poll (``GET /updates/<channel>``) through the real site over iosim:
positions in Last-Modified + Etag, one update per answer, hold, 408, reset, CORS."""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime

import pytest
from twisted.internet.defer import fail

from tests.helpers import SlowReplayStore, make_clock, make_hub
from tests.test_sse import Answer, connect
from twistedpush.access import AccessPolicy, sign_token
from twistedpush.errors import Unavailable
from twistedpush.hub import Hub
from twistedpush.limits import Admission, Limits
from twistedpush.relay import HOLD, position_headers
from twistedpush.web import make_site

EPOCH = "Thu, 1 Jan 1970 00:00:00 GMT"  # as django-pushserver's client starts


def setup(size=100, **limits):
    clock = make_clock()
    hub = make_hub(clock, size=size, secret="s3cret", public=("pub.*",))
    admission = Admission(Limits(**limits))
    return hub, clock, admission, make_site(hub, clock, admission)


def publish(hub, channel, value):
    out = []
    hub.publish([(channel, None, json.dumps(value))]).addCallback(out.append)
    return out[0][0]


class Client:
    """A push-relay subscriber: sends back the position of each answer it gets."""

    def __init__(self, site, clock, channel="pub.a", *headers):
        self.site, self.clock, self.channel = site, clock, channel
        self.headers = list(headers)
        self.last_modified: str | None = None
        self.etag: str | None = None

    def ask(self):
        headers = [*self.headers]
        if self.last_modified is not None:
            headers += [f"If-Modified-Since: {self.last_modified}", f"If-None-Match: {self.etag}"]
        client, server, pump = connect(self.site, self.clock)
        extra = "".join(f"{h}\r\n" for h in headers)
        client.transport.write(
            f"GET /updates/{self.channel} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()
        )
        pump.flush()
        self.client, self.pump = client, pump
        return self.answer()

    def answer(self) -> Answer | None:
        self.pump.flush()
        if b"\r\n\r\n" not in self.client.received:
            return None  # held
        answer = Answer(self.client.received)
        if answer.status == 200:
            self.last_modified = answer.headers["last-modified"]
            self.etag = answer.headers["etag"]
        return answer


def position(answer: Answer) -> int:
    seconds = int(parsedate_to_datetime(answer.headers["last-modified"]).timestamp())
    return seconds * 10**6 + int(answer.headers["etag"])


def test_from_the_oldest_update_one_per_answer_then_held_until_the_next():
    hub, clock, admission, site = setup()
    stamps = [publish(hub, "pub.a", {"n": n}) for n in range(3)]
    reader = Client(site, clock)
    for n, ts in enumerate(stamps):
        answer = reader.ask()
        assert answer.status == 200
        assert answer.json() == {"n": n}  # the update's data, as published
        assert answer.headers["content-type"] == "application/json"
        assert position(answer) == ts
        assert answer.headers["cache-control"] == f"etag={answer.headers['etag']}"
    assert reader.ask() is None  # nothing newer: held
    assert admission.by_transport["longpoll"] == 1
    clock.advance(HOLD - 1)
    live = publish(hub, "pub.a", {"n": 3})
    answer = reader.answer()
    assert answer.json() == {"n": 3} and position(answer) == live
    assert hub.stats()["subscriptions"] == 0 and admission.by_transport["longpoll"] == 0


def test_django_pushservers_first_request_gets_the_oldest_update():
    hub, clock, admission, site = setup()
    publish(hub, "pub.a", "first")
    publish(hub, "pub.a", "second")
    reader = Client(site, clock, "pub.a", f"If-Modified-Since: {EPOCH}", "If-None-Match: 0")
    assert reader.ask().json() == "first"


def test_the_oldest_is_the_oldest_still_in_history():
    hub, clock, admission, site = setup(size=2)
    for n in range(5):
        publish(hub, "pub.a", n)
    reader = Client(site, clock)
    assert [reader.ask().json() for _ in range(2)] == [3, 4]  # no reset: nothing was skipped


def test_the_oldest_of_an_empty_channel_is_the_next_one_published():
    hub, clock, admission, site = setup()
    reader = Client(site, clock)
    assert reader.ask() is None
    publish(hub, "pub.a", "first")
    publish(hub, "pub.a", "second")  # same turn: still one per answer
    assert reader.answer().json() == "first"
    assert reader.ask().json() == "second"


def test_held_for_60_seconds_then_408():
    hub, clock, admission, site = setup()
    publish(hub, "pub.a", 1)
    reader = Client(site, clock)
    reader.ask()
    assert reader.ask() is None
    clock.advance(HOLD - 0.1)
    assert reader.answer() is None
    clock.advance(0.1)
    answer = reader.answer()
    assert answer.status == 408 and answer.body == b""
    assert hub.stats()["subscriptions"] == 0 and admission.by_transport["longpoll"] == 0
    publish(hub, "pub.a", 2)
    assert reader.ask().json() == 2  # the position the client kept still works


def test_a_position_older_than_history_gets_a_reset_with_nows_headers():
    hub, clock, admission, site = setup(size=1)
    first = publish(hub, "pub.a", 1)
    publish(hub, "pub.a", 2)
    publish(hub, "pub.a", 3)
    reader = Client(site, clock)
    reader.last_modified, reader.etag = (v.decode() for v in position_headers(first))
    answer = reader.ask()
    now = position(answer)
    assert answer.json() == {"type": "reset", "channel": "pub.a", "ts": now}
    assert reader.ask() is None  # from now on: 3 was before the reset's position
    later = publish(hub, "pub.a", 4)
    assert position(reader.answer()) == later


def test_a_position_ahead_of_the_server_starts_over_with_a_reset():
    hub, clock, admission, site = setup()
    reader = Client(site, clock)
    reader.last_modified, reader.etag = (v.decode() for v in position_headers(10**17))
    answer = reader.ask()
    assert answer.status == 200 and answer.json()["type"] == "reset"
    assert position(answer) < 10**17


@pytest.mark.parametrize(
    ("channel", "headers", "status", "code"),
    [
        ("bad%20channel", (), 400, "bad_channel"),
        ("pub.a", ("If-Modified-Since: yesterday",), 400, "bad_request"),
        ("pub.a", (f"If-Modified-Since: {EPOCH}", "If-None-Match: x1"), 400, "bad_request"),
        ("pub.a", (f"If-Modified-Since: {EPOCH}", "If-None-Match: 1000000"), 400, "bad_request"),
        ("private", (), 403, "forbidden"),
        ("private?token=1.x", (f"If-Modified-Since: {EPOCH}",), 403, "forbidden"),
        ("private", ("If-Modified-Since: Tue, 14 Nov 2023 22:13:20 GMT",), 403, "forbidden"),
    ],
)
def test_refusals(channel, headers, status, code):
    hub, clock, admission, site = setup()
    answer = Client(site, clock, channel, *headers).ask()
    assert (answer.status, answer.json()["error"]["code"]) == (status, code)
    assert hub.stats()["subscriptions"] == 0 and admission.by_transport["longpoll"] == 0


def test_a_refused_channel_is_refused_before_history_is_read():
    clock = make_clock()
    store = SlowReplayStore(clock)
    hub = Hub(store, AccessPolicy("s3cret", ()), clock)
    hub.start()
    site = make_site(hub, clock, Admission())
    assert Client(site, clock, "private").ask().status == 403
    assert store.waiting == []


def test_a_private_channel_with_its_token_and_etags_in_quotes():
    hub, clock, admission, site = setup()
    token = sign_token("s3cret", "room/1", int(clock.seconds()) + 60)
    first = publish(hub, "room/1", 1)
    publish(hub, "room/1", 2)
    last_modified, etag = (v.decode() for v in position_headers(first))
    reader = Client(
        site,
        clock,
        f"room/1?token={token}&_=1700000000000",  # jQuery's cache: false adds a "_"
        f"If-Modified-Since: {last_modified}",
        f'If-None-Match: W/"{etag}"',
    )
    assert reader.ask().json() == 2


def test_cors_echoes_the_origin_with_credentials_and_exposes_the_position():
    hub, clock, admission, site = setup()
    publish(hub, "pub.a", 1)
    answer = Client(site, clock, "pub.a", "Origin: http://page.example").ask()
    assert answer.headers["access-control-allow-origin"] == "http://page.example"
    assert answer.headers["access-control-allow-credentials"] == "true"
    assert answer.headers["access-control-expose-headers"] == "Last-Modified, Etag"
    client, server, pump = connect(site, clock)
    client.transport.write(
        b"OPTIONS /updates/pub.a HTTP/1.1\r\nHost: x\r\nOrigin: http://page.example\r\n"
        b"Access-Control-Request-Headers: if-modified-since,if-none-match\r\n\r\n"
    )
    pump.flush()
    preflight = Answer(client.received)
    assert preflight.status == 204
    allowed = preflight.headers["access-control-allow-headers"]
    assert "If-Modified-Since" in allowed and "If-None-Match" in allowed
    assert preflight.headers["access-control-allow-credentials"] == "true"


def test_a_refused_origin_is_403():
    hub, clock, admission, site = setup(allowed_origins=("http://good.example",))
    answer = Client(site, clock, "pub.a", "Origin: http://evil.example").ask()
    assert answer.status == 403 and "access-control-allow-origin" not in answer.headers


def test_held_requests_count_as_polls_and_are_capped():
    hub, clock, admission, site = setup(max_polls=1)
    Client(site, clock).ask()
    answer = Client(site, clock, "pub.b").ask()
    assert (answer.status, answer.json()["error"]["code"]) == (503, "limit")


def test_a_client_that_leaves_is_forgotten():
    hub, clock, admission, site = setup()
    reader = Client(site, clock)
    reader.ask()
    assert hub.stats()["subscriptions"] == 1
    reader.client.transport.loseConnection()
    reader.pump.flush()
    assert hub.stats()["subscriptions"] == 0 and admission.open == 0


def test_shutdown_answers_held_requests_408():
    hub, clock, admission, site = setup()
    reader = Client(site, clock)
    reader.ask()
    hub.going_away()
    assert reader.answer().status == 408


def test_history_unavailable_is_503():
    hub, clock, admission, site = setup()
    hub.store.replay = lambda channel, since: fail(Unavailable("Redis is down"))
    answer = Client(site, clock).ask()
    assert (answer.status, answer.json()["error"]["code"]) == (503, "unavailable")

"""The long-poll resource with DummyRequest and a Clock: answer, hold, timeout, cancel."""

import json
from io import BytesIO

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from tests.helpers import PollRequest, make_clock, make_hub
from twistedpush.limits import Admission
from twistedpush.longpoll import PollResource


def post(resource, body):
    request = PollRequest(resource.admission)
    request.method = b"POST"
    request.content = BytesIO(body if isinstance(body, bytes) else json.dumps(body).encode())
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def answer(request):
    assert request.finished, "request still held"
    return json.loads(b"".join(request.written))


@pytest.fixture
def poll():
    clock = make_clock()
    hub = make_hub(clock, secret="k", public=("pub.*",))
    return hub, clock, PollResource(hub, clock, Admission())


def publish(hub, channel, value):
    out = []
    hub.publish([(channel, None, json.dumps(value))]).addCallback(out.append)
    return out[0][0]


def test_pending_updates_answer_at_once(poll):
    hub, clock, resource = poll
    first = publish(hub, "pub.a", 1)
    publish(hub, "pub.a", 2)
    request = post(resource, {"subscriptions": [{"channel": "pub.a", "since": first}]})
    clock.advance(0)
    body = answer(request)
    assert [m["data"] for m in body["messages"]] == [2]
    assert body["ts"] >= body["messages"][0]["ts"]
    assert request.responseHeaders.getRawHeaders(b"access-control-allow-origin") == [b"*"]


def test_hold_until_an_update_arrives(poll):
    hub, clock, resource = poll
    request = post(resource, {"subscriptions": [{"channel": "pub.a", "since": None}]})
    clock.advance(10)
    assert not request.finished
    assert resource.admission.by_transport["longpoll"] == 1
    ts = publish(hub, "pub.a", "hi")
    publish(hub, "pub.a", "there")  # same reactor turn: same answer
    clock.advance(0)
    body = answer(request)
    assert [m["data"] for m in body["messages"]] == ["hi", "there"]
    assert body["messages"][0]["ts"] == ts
    assert resource.admission.by_transport["longpoll"] == 0 and hub.stats()["subscriptions"] == 0


def test_timeout_answers_empty_with_a_usable_cursor(poll):
    hub, clock, resource = poll
    request = post(resource, {"subscriptions": [{"channel": "pub.a"}], "timeout": 5})
    clock.advance(4.9)
    assert not request.finished
    clock.advance(0.1)
    body = answer(request)
    assert body["messages"] == []
    ts = publish(hub, "pub.a", 1)
    assert ts > body["ts"]
    again = post(resource, {"subscriptions": [{"channel": "pub.a", "since": body["ts"]}]})
    clock.advance(0)
    assert [m["data"] for m in answer(again)["messages"]] == [1]


def test_timeout_is_capped_at_60_seconds(poll):
    hub, clock, resource = poll
    request = post(resource, {"subscriptions": [{"channel": "pub.a"}], "timeout": 3600})
    clock.advance(60)
    assert answer(request)["messages"] == []


def test_default_timeout_is_25_seconds(poll):
    hub, clock, resource = poll
    request = post(resource, {"subscriptions": [{"channel": "pub.a"}]})
    clock.advance(24.9)
    assert not request.finished
    clock.advance(0.1)
    assert request.finished


def test_client_gone_is_cleaned_up_at_once(poll):
    hub, clock, resource = poll
    timers = len(clock.getDelayedCalls())
    request = post(resource, {"subscriptions": [{"channel": "pub.a"}]})
    assert hub.stats()["subscriptions"] == 1
    assert len(clock.getDelayedCalls()) == timers + 1
    request.processingFailed(Failure(ConnectionDone()))
    assert hub.stats()["subscriptions"] == 0
    assert resource.admission.by_transport["longpoll"] == 0
    assert len(clock.getDelayedCalls()) == timers
    publish(hub, "pub.a", 1)  # nothing is written to the gone request
    assert request.written == []


def test_reset_and_errors_answer_at_once(poll):
    hub, clock, resource = poll
    request = post(
        resource,
        {
            "subscriptions": [
                {"channel": "pub.a", "since": 1},
                {"channel": "secret", "since": None, "token": "1.bad"},
                {"channel": "bad name"},
            ]
        },
    )
    clock.advance(0)
    messages = answer(request)["messages"]
    assert sorted((m["type"], m.get("code"), m["channel"]) for m in messages) == [
        ("error", "bad_channel", "bad name"),
        ("error", "forbidden", "secret"),
        ("reset", None, "pub.a"),
    ]


def test_cursor_is_safe_for_every_channel_without_updates(poll):
    hub, clock, resource = poll
    since = publish(hub, "pub.a", 0)
    publish(hub, "pub.b", "b1")
    request = post(
        resource,
        {
            "subscriptions": [
                {"channel": "pub.a", "since": since},
                {"channel": "pub.b", "since": since},
            ]
        },
    )
    clock.advance(0)
    body = answer(request)
    assert [m["data"] for m in body["messages"]] == ["b1"]
    later = publish(hub, "pub.a", "a2")
    assert later > body["ts"]


@pytest.mark.parametrize(
    ("body", "code", "status"),
    [
        (b"not json", "bad_request", 400),
        (b"[]", "bad_request", 400),
        (b"{}", "bad_request", 400),
        (b'{"subscriptions": []}', "bad_request", 400),
        (b'{"subscriptions": ["pub.a"]}', "bad_request", 400),
        (b'{"subscriptions": [{"channel": "pub.a"}], "timeout": "soon"}', "bad_request", 400),
        (b'{"subscriptions": [{"channel": "pub.a"}], "timeout": -1}', "bad_request", 400),
        (
            json.dumps({"subscriptions": [{"channel": f"pub.{i}"} for i in range(101)]}).encode(),
            "limit",
            400,
        ),
        (b'{"pad": "' + b"x" * 70000 + b'"}', "too_large", 413),
    ],
)
def test_malformed_bodies(poll, body, code, status):
    hub, clock, resource = poll
    request = post(resource, body)
    assert request.responseCode == status
    reply = answer(request)
    assert reply["messages"][0]["type"] == "error"
    assert reply["messages"][0]["code"] == code
    assert "ts" in reply


def test_cors_preflight(poll):
    hub, clock, resource = poll
    request = DummyRequest([b"poll"])
    request.method = b"OPTIONS"
    resource.render(request)
    assert request.responseCode == 204
    headers = request.responseHeaders
    assert headers.getRawHeaders(b"access-control-allow-origin") == [b"*"]
    assert b"POST" in headers.getRawHeaders(b"access-control-allow-methods")[0]
    assert headers.getRawHeaders(b"access-control-allow-headers") == [b"Content-Type"]

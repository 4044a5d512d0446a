"""HTTP publishing (``POST /publish/<channel>``, ``POST /publish``) through the real site
over iosim: the key, single and batch publications, and every refusal."""

from __future__ import annotations

import io
import json

import pytest
from twisted.internet.defer import fail

from tests.helpers import Recorder, make_clock, make_hub
from tests.test_sse import Answer, connect
from twistedpush.errors import Unavailable
from twistedpush.hub import MAX_DATA
from twistedpush.limits import Admission
from twistedpush.publish import PUBLISH_BODY
from twistedpush.web import make_site

KEY = "publisher-key-for-tests"


def setup(key=KEY):
    clock = make_clock()
    hub = make_hub(clock)
    site = make_site(hub, clock, Admission(), publisher_key=key)
    recorder = Recorder()
    hub.subscribe(recorder, "room")
    return hub, clock, site, recorder


def post(site, clock, target, body=b"", *headers, key=KEY, chunked=False):
    client, server, pump = connect(site, clock)
    lines = [f"POST {target} HTTP/1.1", "Host: x", *headers]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 65536]), body[i : i + 65536])
            for i in range(0, len(body), 65536)
        )
        body = framed + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    client.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    pump.flush()
    return Answer(client.received), client


def test_publish_one_update_with_a_name():
    hub, clock, site, recorder = setup()
    answer, _ = post(site, clock, "/publish/room?name=headline", b'{"title": "Hello"}')
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    ts = answer.json()["ts"]
    assert recorder.messages[-1] == {
        "type": "update", "channel": "room", "ts": ts, "name": "headline",
        "data": {"title": "Hello"},
    }  # fmt: skip


def test_publish_a_batch_all_in_order():
    hub, clock, site, recorder = setup()
    body = {"updates": [
        {"channel": "room", "data": {"n": 1}},
        {"channel": "room", "data": [2, "two"], "name": "tick"},
        {"channel": "other", "data": None, "name": None},
    ]}  # fmt: skip
    answer, _ = post(site, clock, "/publish", json.dumps(body).encode())
    assert answer.status == 200
    stamps = answer.json()["ts"]
    assert len(stamps) == 3 and stamps == sorted(stamps)
    assert recorder.data()[-2:] == [{"n": 1}, [2, "two"]]
    assert recorder.messages[-1]["name"] == "tick" and recorder.messages[-1]["ts"] == stamps[1]


def test_a_batch_is_all_or_nothing():
    hub, clock, site, recorder = setup()
    body = {"updates": [{"channel": "room", "data": 1}, {"channel": "bad channel", "data": 2}]}
    answer, _ = post(site, clock, "/publish", json.dumps(body).encode())
    assert (answer.status, answer.json()["error"]["code"]) == (400, "bad_channel")
    assert recorder.data() == [] and hub.stats()["updates_in"] == 0


@pytest.mark.parametrize(
    ("key", "headers"),
    [
        (None, ()),
        ("wrong-key", ()),
        (KEY + "x", ()),
        (None, (f"Authorization: Basic {KEY}",)),
        (None, ("Authorization: Bearer",)),
    ],
)
def test_a_missing_or_wrong_key_is_401(key, headers):
    hub, clock, site, recorder = setup()
    answer, _ = post(site, clock, "/publish/room", b"1", *headers, key=key)
    assert answer.status == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="twistedpush"'
    assert answer.json()["error"]["code"] == "unauthorized"
    assert recorder.data() == []


def test_the_scheme_is_case_insensitive():
    hub, clock, site, recorder = setup()
    answer, _ = post(site, clock, "/publish/room", b"1", f"Authorization: bearer {KEY}", key=None)
    assert answer.status == 200


def test_without_a_publisher_key_publishing_is_off_with_404():
    hub, clock, site, recorder = setup(key=None)
    for target in ("/publish/room", "/publish"):
        answer, _ = post(site, clock, target, b"1", key="anything")
        assert answer.status == 404
        assert b"--publisher-key" in answer.body
    assert recorder.data() == []


@pytest.mark.parametrize(
    ("target", "body", "status", "code"),
    [
        ("/publish/bad%20channel", b"1", 400, "bad_channel"),
        ("/publish/", b"1", 400, "bad_channel"),
        ("/publish/room", b"{not json", 400, "bad_data"),
        ("/publish/room", b"NaN", 400, "bad_data"),
        ("/publish/room", b"", 400, "bad_data"),
        ("/publish/room?name=bad%20name", b"1", 400, "bad_data"),
        ("/publish", b"[1]", 400, "bad_request"),
        ("/publish", b"{not json", 400, "bad_request"),
        ("/publish", b'{"updates": {}}', 400, "bad_request"),
        ("/publish", b'{"updates": [{"channel": "room"}]}', 400, "bad_request"),
        ("/publish", b'{"updates": [{"channel": "room", "data": NaN}]}', 400, "bad_request"),
        ("/publish/room", b'"' + b"x" * MAX_DATA + b'"', 413, "too_large"),
    ],
)
def test_refusals(target, body, status, code):
    hub, clock, site, recorder = setup()
    answer, _ = post(site, clock, target, body)
    assert (answer.status, answer.json()["error"]["code"]) == (status, code)
    assert recorder.data() == []


def test_an_empty_name_is_no_name():
    hub, clock, site, recorder = setup()
    answer, _ = post(site, clock, "/publish/room?name=", b"1")
    assert answer.status == 200 and recorder.messages[-1]["name"] is None


def test_data_of_one_mebibyte_is_accepted_chunked_or_not():
    hub, clock, site, recorder = setup()
    body = b'"' + b"x" * (MAX_DATA - 2) + b'"'
    for chunked in (False, True):
        answer, _ = post(site, clock, "/publish/room", body, chunked=chunked)
        assert answer.status == 200
    assert [len(d) for d in recorder.data()] == [MAX_DATA - 2] * 2


def test_a_chunked_body_over_the_limit_is_413():
    hub, clock, site, recorder = setup()
    answer, _ = post(site, clock, "/publish", b" " * (PUBLISH_BODY + 10), chunked=True)
    assert (answer.status, answer.json()["error"]["code"]) == (413, "too_large")


def test_a_declared_body_over_the_limit_is_413_before_it_is_sent():
    hub, clock, site, recorder = setup()
    client, server, pump = connect(site, clock)
    client.transport.write(
        b"POST /publish/room HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % (PUBLISH_BODY + 1)
    )
    pump.flush()
    answer = Answer(client.received)
    assert (answer.status, answer.json()["error"]["code"]) == (413, "too_large")
    assert not client.received.startswith(b"HTTP/1.1 100")


def test_each_path_has_its_own_body_limit():
    """/publish takes a mebibyte; /poll still stops at 64 KiB."""
    hub, clock, site, recorder = setup()
    client, server, pump = connect(site, clock)
    client.transport.write(b"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    pump.flush()
    assert Answer(client.received).status == 413
    answer, _ = post(site, clock, "/publish/room", b"[" + b"1," * 40_000 + b"1]")
    assert answer.status == 200


def test_history_unavailable_is_503():
    hub, clock, site, recorder = setup()
    hub.store.publish = lambda items: fail(Unavailable("Redis is down"))
    answer, _ = post(site, clock, "/publish/room", b"1")
    assert (answer.status, answer.json()["error"]["code"]) == (503, "unavailable")


def test_get_is_not_publishing():
    hub, clock, site, recorder = setup()
    client, server, pump = connect(site, clock)
    client.transport.write(
        f"GET /publish/room HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    )
    pump.flush()
    assert Answer(client.received).status == 405


def test_an_empty_batch_publishes_nothing():
    hub, clock, site, recorder = setup()
    answer, _ = post(site, clock, "/publish", b'{"updates": []}')
    assert (answer.status, answer.json()) == (200, {"ts": []})


def test_answers_have_a_content_length_for_keep_alive_clients():
    hub, clock, site, recorder = setup()
    answer, _ = post(site, clock, "/publish/room", b"1")
    assert int(answer.headers["content-length"]) == len(answer.body)
    assert "transfer-encoding" not in answer.headers


def test_a_form_content_type_is_not_parsed_as_a_form():
    """twisted.web parses urlencoded and multipart POST bodies into request.args unless
    told not to: publishing reads JSON only, and a malformed multipart body once got a
    bare 400 from Twisted instead of the JSON error."""
    hub, clock, site, recorder = setup()
    answer, _ = post(
        site, clock, "/publish/room", b'{"a": 1}', "Content-Type: multipart/form-data; boundary=x"
    )
    assert answer.status == 200, answer
    assert recorder.messages[-1]["data"] == {"a": 1}


@pytest.mark.parametrize("access_log", [True, False])
def test_no_access_log_turns_the_line_per_request_off(access_log):
    clock = make_clock()
    site = make_site(make_hub(clock), clock, Admission(), publisher_key=KEY, access_log=access_log)
    site._logFile = log_file = io.StringIO()  # twistd's log, set when the site starts
    answer, _ = post(site, clock, "/publish/room", b"1")
    assert answer.status == 200
    lines = [line for line in log_file.getvalue().splitlines() if "/publish/room" in line]
    assert len(lines) == (1 if access_log else 0)

"""Fuzzing every parser of outside input: it answers a clear error or a value, never crashes."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.protocols import amp

from tests.helpers import make_clock, make_hub
from twistedpush.access import AccessPolicy, sign_token
from twistedpush.commands import CHUNK, ChunkedBytes, UpdateList
from twistedpush.errors import Forbidden, PushError
from twistedpush.hub import check_data
from twistedpush.wire import parse_client_message, parse_poll_body

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
messages = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["subscribe", "unsubscribe", "x"])},
        optional={"channel": json_values, "since": json_values, "token": json_values},
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=400, deadline=None)
@given(messages)
def test_websocket_messages_parse_or_get_a_push_error(payload):
    hub = make_hub()
    try:
        kind, request = parse_client_message(payload, 4096)
        if kind == "subscribe":
            hub.subscribe(_Sink(), request.channel, request.since, request.token)
    except PushError as e:
        assert e.code in {"bad_request", "bad_channel", "forbidden", "too_large", "limit"}
        assert e.message


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.fixed_dictionaries(
            {},
            optional={
                "subscriptions": st.one_of(json_values, st.lists(json_values, max_size=3)),
                "timeout": json_values,
            },
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_poll_bodies_parse_or_get_a_push_error(body):
    try:
        subscriptions, timeout = parse_poll_body(body, 65536, 100)
        assert 0 <= timeout <= 60
    except PushError as e:
        assert e.message


@settings(max_examples=300, deadline=None)
@given(channel=st.text(max_size=50), token=st.one_of(json_values, st.text(max_size=80)))
def test_tokens_are_accepted_or_forbidden(channel, token):
    policy = AccessPolicy("secret")
    try:
        policy.check(channel, token, 1_700_000_000)
    except Forbidden:
        return
    assert token == sign_token("secret", channel, int(str(token).split(".")[0]))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3 * CHUNK + 10))
def test_chunked_data_round_trips(value):
    strings = {}
    ChunkedBytes().toBox(b"data", strings, {"data": value}, None)
    assert all(len(v) <= CHUNK for v in strings.values())
    objects = {}
    ChunkedBytes().fromBox(b"data", strings, objects, None)
    assert objects["data"] == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_amp_update_lists_parse_or_refuse(raw):
    try:
        parsed = UpdateList().fromStringProto(raw, None)
    except (ValueError, KeyError, amp.TooLong):
        return
    assert isinstance(parsed, list)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_publisher_data_is_json_or_refused(raw):
    try:
        text = check_data(raw)
    except PushError as e:
        assert e.code in {"bad_data", "too_large"}
        return
    json.loads(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([
    "--port", "--notifier", "--history-size", "--history-ttl", "--redis", "--public",
    "--max-connections", "--allowed-origin", "tcp:0", "0", "-1", "nan", "redis://x:1/0",
    "http://x", "abc", "--nope", "unix:/tmp/x", "1e400",
]), max_size=6))  # fmt: skip
def test_options_parse_or_exit_with_one_line(args):
    import contextlib
    import io

    from twistedpush.tap import Options

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            Options().parseOptions(args)
    except SystemExit as e:
        assert e.code == 2
        assert err.getvalue().count("\n") == 1
        assert err.getvalue().startswith("serverpush: error:")


class _Sink:
    lasting = False
    cookie = None

    def send_update(self, update):
        pass

    def send_replay(self, updates):
        pass

    def discard(self, channel):
        pass

    def send_reset(self, channel, now):
        pass

    def send_subscribed(self, channel, now):
        pass

    def going_away(self):
        pass


def test_sink_matches_the_subscriber_protocol():
    hub = make_hub(make_clock())
    sink = _Sink()
    hub.subscribe(sink, "room")
    assert hub.stats()["subscriptions"] == 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.binary(min_size=1, max_size=20), st.binary(max_size=300), max_size=4),
        max_size=5,
    )
)
def test_box_parser_reads_back_what_amp_writes(boxes):
    from twistedpush.commands import parse_boxes

    wire = b"".join(amp.AmpBox(box).serialize() for box in boxes)
    assert [dict(box) for box in parse_boxes(wire)] == boxes
    if wire:
        try:
            parse_boxes(wire[:-1])
        except ValueError:
            pass
        else:
            raise AssertionError("a truncated sequence was accepted")

"""The AMP notifier over an in-memory connection (twisted.test.iosim)."""

import json

import pytest
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient

from tests.helpers import Recorder, make_hub
from twistedpush.commands import CHUNK, CurrentTimestamp, SendUpdate, SendUpdates
from twistedpush.notifier import NotifierProtocol


@pytest.fixture
def wired():
    hub = make_hub()
    client, server, pump = connectedServerAndClient(
        lambda: NotifierProtocol(hub), lambda: amp.AMP()
    )
    return hub, client, pump


def call(pump, client, command, **kwargs):
    out = []
    client.callRemote(command, **kwargs).addBoth(out.append)
    pump.flush()
    assert out, "no answer"
    return out[0]


def raw(pump, client, command, **kwargs):
    """Send ``command`` and return the answer box as it came over the wire."""
    box = command.makeArguments(kwargs, client)
    box[b"_command"] = command.commandName
    box[b"_ask"] = b"t1"
    answers = []
    client.boxReceiver = type("Receiver", (), {"ampBoxReceived": staticmethod(answers.append)})()
    client.transport.write(box.serialize())
    pump.flush()
    assert len(answers) == 1
    return answers[0]


def test_send_update_answers_ts_and_delivers(wired):
    hub, client, pump = wired
    sub = Recorder()
    hub.subscribe(sub, "room")
    answer = call(pump, client, SendUpdate, channel="room", data=b'{"a":1}', name="greet")
    assert answer["ts"] > sub.messages[0]["ts"]
    assert sub.messages[-1] == {
        "type": "update",
        "channel": "room",
        "ts": answer["ts"],
        "name": "greet",
        "data": {"a": 1},
    }


def test_name_is_optional(wired):
    hub, client, pump = wired
    assert isinstance(call(pump, client, SendUpdate, channel="room", data=b"1")["ts"], int)


def test_data_over_64k_travels_in_chunks_and_is_joined(wired):
    hub, client, pump = wired
    sub = Recorder()
    hub.subscribe(sub, "room")
    text = "é" * 100_000  # 200 KB of UTF-8: chunk borders fall inside characters
    data = json.dumps(text, ensure_ascii=False).encode()
    box = SendUpdate.makeArguments({"channel": "room", "data": data, "name": None}, client)
    assert {b"data", b"data.2", b"data.3", b"data.4"} <= set(box)
    assert all(len(v) <= CHUNK for v in box.values())
    call(pump, client, SendUpdate, channel="room", data=data)
    assert sub.data() == [text]


def test_send_updates_in_order(wired):
    hub, client, pump = wired
    sub = Recorder()
    hub.subscribe(sub, "a")
    updates = [
        {"channel": "a", "data": b"1", "name": None},
        {"channel": "b", "data": b"2", "name": "x"},
        {"channel": "a", "data": b"3", "name": None},
    ]
    answer = call(pump, client, SendUpdates, updates=updates)
    assert len(answer["ts"]) == 3 and answer["ts"] == sorted(answer["ts"])
    assert sub.data() == [1, 3]


def test_current_timestamp_is_below_the_next_update(wired):
    hub, client, pump = wired
    now = call(pump, client, CurrentTimestamp)["ts"]
    assert call(pump, client, SendUpdate, channel="room", data=b"1")["ts"] > now


@pytest.mark.parametrize(
    ("channel", "data", "name", "code"),
    [
        ("bad channel", b"1", None, b"BAD_CHANNEL"),
        ("x" * 201, b"1", None, b"BAD_CHANNEL"),
        ("room", b"{not json", None, b"BAD_DATA"),
        ("room", b"\xff\xfe", None, b"BAD_DATA"),
        ("room", b"1", "bad name", b"BAD_DATA"),
        ("room", b'"' + b"x" * (1024 * 1024) + b'"', None, b"TOO_LARGE"),
    ],
)
def test_error_codes(wired, channel, data, name, code):
    hub, client, pump = wired
    answer = raw(pump, client, SendUpdate, channel=channel, data=data, name=name)
    assert answer[b"_error"] == b"t1"
    assert answer[b"_error_code"] == code
    assert answer[b"_error_description"]
    assert hub.store.stats()["history_updates"] == 0
    ok = raw(pump, client, SendUpdate, channel="room", data=b"1")  # connection still fine
    assert int(ok[b"ts"]) > 0


def test_send_updates_is_all_or_nothing(wired):
    hub, client, pump = wired
    updates = [
        {"channel": "a", "data": b"1", "name": None},
        {"channel": "a", "data": b"nope", "name": None},
    ]
    assert raw(pump, client, SendUpdates, updates=updates)[b"_error_code"] == b"BAD_DATA"
    assert hub.store.stats()["history_updates"] == 0


def test_invalid_utf8_channel_is_bad_channel(wired):
    hub, client, pump = wired
    answer = raw(pump, client, SendUpdate, channel="room", data=b"1")
    assert b"ts" in answer
    box = amp.AmpBox(_command=b"SendUpdate", _ask=b"2", channel=b"\xff", data=b"1")
    answers = []
    client.boxReceiver = type("Receiver", (), {"ampBoxReceived": staticmethod(answers.append)})()
    client.transport.write(box.serialize())
    pump.flush()
    assert answers[0][b"_error_code"] == b"BAD_CHANNEL"


def test_known_errors_arrive_as_exceptions_for_twisted_clients(wired):
    from twistedpush.errors import BadChannel

    hub, client, pump = wired
    assert call(pump, client, SendUpdate, channel="no good", data=b"1").check(BadChannel)


@pytest.mark.parametrize(
    ("box", "code"),
    [
        ({b"_command": b"SendUpdate", b"data": b"1"}, b"BAD_CHANNEL"),
        ({b"_command": b"SendUpdate", b"channel": b"room"}, b"BAD_DATA"),
        ({b"_command": b"SendUpdates", b"updates": b"\x00\x05garbage"}, b"BAD_DATA"),
        ({b"_command": b"SendUpdates"}, b"BAD_DATA"),
    ],
)
def test_missing_or_malformed_arguments_get_contract_codes(wired, box, code):
    hub, client, pump = wired
    answers = []
    client.boxReceiver = type("Receiver", (), {"ampBoxReceived": staticmethod(answers.append)})()
    client.transport.write(
        amp.AmpBox(_ask=b"9", **{k.decode(): v for k, v in box.items()}).serialize()
    )
    pump.flush()
    assert answers[0][b"_error_code"] == code
    assert answers[0][b"_error_description"]


def _connected(key=None):
    from twisted.internet.testing import StringTransport

    hub = make_hub()
    protocol = NotifierProtocol(hub, key)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return hub, protocol, transport


def test_a_box_arriving_one_byte_at_a_time_is_answered_once():
    from twistedpush.commands import parse_boxes

    hub, protocol, transport = _connected()
    box = SendUpdate.makeArguments({"channel": "room", "data": b"[1]", "name": None}, None)
    box.update({b"_command": b"SendUpdate", b"_ask": b"7"})
    wire = box.serialize()
    for index in range(len(wire)):
        assert transport.value() == b""
        protocol.dataReceived(wire[index : index + 1])
    [answer] = parse_boxes(transport.value())
    assert answer[b"_answer"] == b"7" and int(answer[b"ts"]) > 0
    assert not transport.disconnecting


def test_a_key_over_255_bytes_closes_the_connection_after_answering_what_came_before():
    from twistedpush.commands import parse_boxes

    hub, protocol, transport = _connected()
    good = amp.AmpBox(_command=b"CurrentTimestamp", _ask=b"1").serialize()
    protocol.dataReceived(good + b"\x01\x00" + b"k" * 300)
    assert [box[b"_answer"] for box in parse_boxes(transport.value())] == [b"1"]
    assert transport.disconnecting


def test_a_box_bigger_than_any_update_closes_the_connection():
    from twistedpush.notifier import MAX_BOX

    hub, protocol, transport = _connected()
    pair = b"\x00\x04data\xff\xff" + b"x" * CHUNK
    sent = 0
    while not transport.disconnecting and sent <= MAX_BOX + len(pair):
        protocol.dataReceived(pair)
        sent += len(pair)
    assert transport.disconnecting and MAX_BOX < sent <= MAX_BOX + len(pair)


def test_unknown_commands_still_get_amps_answer(wired):
    hub, client, pump = wired

    class Nope(amp.Command):
        commandName = b"Nope"

    out = []
    client.callRemote(Nope).addErrback(out.append)
    pump.flush()
    assert out[0].check(amp.UnhandledCommand)


def test_deeply_nested_data_is_bad_data_not_unknown(wired):
    hub, client, pump = wired
    data = b"[" * 1000 + b"]" * 1000
    answer = raw(pump, client, SendUpdate, channel="room", data=data)
    assert answer[b"_error_code"] == b"BAD_DATA"
    assert hub.store.stats()["history_updates"] == 0
    assert int(raw(pump, client, SendUpdate, channel="room", data=b"1")[b"ts"]) > 0


# Stray answers


@pytest.mark.parametrize(
    "stray",
    [
        {b"_answer": b"1", b"ts": b"5"},
        {b"_error": b"1", b"_error_code": b"UNKNOWN", b"_error_description": b"?"},
    ],
)
def test_a_stray_answer_is_ignored_and_the_connection_stays_usable(stray):
    from twisted.logger import capturedLogs

    from twistedpush.commands import pack_box, parse_boxes

    hub, protocol, transport = _connected()
    ask = amp.AmpBox(_command=b"CurrentTimestamp", _ask=b"2").serialize()
    with capturedLogs() as events:
        protocol.dataReceived(pack_box(stray.items()) + ask)
    [answer] = parse_boxes(transport.value())
    assert answer[b"_answer"] == b"2" and int(answer[b"ts"]) > 0
    assert not transport.disconnecting
    assert [e["log_level"].name for e in events] == ["warn"]


# Publisher key


def _ask(protocol, transport, **box):
    """Send one box (``_ask`` 1 unless given); the boxes answered."""
    from twistedpush.commands import parse_boxes

    transport.clear()
    box.setdefault("_ask", b"1")
    protocol.dataReceived(amp.AmpBox(**box).serialize())
    return parse_boxes(transport.value())


def _send_update(**extra):
    return {"_command": b"SendUpdate", "channel": b"room", "data": b"1", **extra}


@pytest.mark.parametrize(
    "box",
    [
        _send_update(),
        {"_command": b"SendUpdates", "updates": b""},
        {"_command": b"CurrentTimestamp"},
        {"_command": b"Nope"},
    ],
)
def test_with_a_key_every_command_before_authenticate_is_unauthorized(box):
    hub, protocol, transport = _connected(key="sesame")
    [answer] = _ask(protocol, transport, **box)
    assert answer[b"_error"] == b"1" and answer[b"_error_code"] == b"UNAUTHORIZED"
    assert b"Authenticate" in answer[b"_error_description"]
    assert not transport.disconnecting
    assert hub.store.stats()["history_updates"] == 0
    assert _ask(protocol, transport, _command=b"Authenticate", key=b"sesame") == [
        {b"_answer": b"1"}
    ]
    [answer] = _ask(protocol, transport, **_send_update())
    assert int(answer[b"ts"]) > 0 and hub.store.stats()["history_updates"] == 1


def test_a_command_without_ask_before_authenticate_is_dropped():
    hub, protocol, transport = _connected(key="sesame")
    protocol.dataReceived(amp.AmpBox(**_send_update()).serialize())  # no _ask
    assert transport.value() == b"" and not transport.disconnecting
    assert hub.store.stats()["history_updates"] == 0


def test_a_wrong_key_is_unauthorized_and_closes_the_connection():
    """One guess per connection: boxes after a wrong key, a right key among them,
    are not acted on."""
    hub, protocol, transport = _connected(key="sesame")
    wrong = amp.AmpBox(_command=b"Authenticate", _ask=b"1", key=b"open up").serialize()
    right = amp.AmpBox(_command=b"Authenticate", _ask=b"2", key=b"sesame").serialize()
    update = amp.AmpBox(**_send_update(_ask=b"3")).serialize()
    protocol.dataReceived(wrong + right + update)
    from twistedpush.commands import parse_boxes

    [answer] = parse_boxes(transport.value())
    assert answer[b"_error"] == b"1" and answer[b"_error_code"] == b"UNAUTHORIZED"
    assert transport.disconnecting
    assert hub.store.stats()["history_updates"] == 0


@pytest.mark.parametrize("key", [None, b"sesame2", b"", b"sesam"])
def test_a_missing_or_wrong_key_is_unauthorized(key):
    hub, protocol, transport = _connected(key="sesame")
    box = {"_command": b"Authenticate"} | ({} if key is None else {"key": key})
    [answer] = _ask(protocol, transport, **box)
    assert answer[b"_error_code"] == b"UNAUTHORIZED" and transport.disconnecting


def test_keys_are_compared_in_constant_time(monkeypatch):
    import hmac

    from twistedpush import notifier

    compared = []
    real = hmac.compare_digest

    def compare_digest(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(notifier.hmac, "compare_digest", compare_digest)
    hub, protocol, transport = _connected(key="clé")
    assert _ask(protocol, transport, _command=b"Authenticate", key="clé".encode()) == [
        {b"_answer": b"1"}
    ]
    assert compared == [("clé".encode(), "clé".encode())]


def test_without_a_key_authenticate_with_any_key_succeeds():
    hub, protocol, transport = _connected()
    [answer] = _ask(protocol, transport, **_send_update())
    assert int(answer[b"ts"]) > 0
    assert _ask(protocol, transport, _command=b"Authenticate", key=b"whatever") == [
        {b"_answer": b"1"}
    ]
    assert int(_ask(protocol, transport, **_send_update())[0][b"ts"]) > 0


def test_twisted_amp_clients_see_unauthorized_as_an_exception():
    from twistedpush.commands import Authenticate
    from twistedpush.errors import Unauthorized

    hub = make_hub()
    client, server, pump = connectedServerAndClient(
        lambda: NotifierProtocol(hub, "sesame"), lambda: amp.AMP()
    )
    assert call(pump, client, CurrentTimestamp).check(Unauthorized)
    assert call(pump, client, Authenticate, key="sesame") == {}
    assert call(pump, client, SendUpdate, channel="room", data=b"1")["ts"] > 0
    assert call(pump, client, Authenticate, key="nope").check(Unauthorized)
    assert pump.serverIO.disconnected and server.transport is None  # connection lost

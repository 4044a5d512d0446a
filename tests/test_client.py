"""The blocking publisher client against servers that misbehave, over real sockets."""

import socket
import threading

import pytest

from tests.conftest import free_port
from twistedpush.client import PIPELINE, PushClient, PushServerUnavailable
from twistedpush.commands import BoxReader, IntegerList, pack_box
from twistedpush.errors import BadChannel, BadData, Unauthorized, Unavailable


def test_bad_input_is_refused_before_anything_is_sent():
    client = PushClient(port=free_port())  # nothing listens there
    with pytest.raises(BadData, match="data is not JSON"):
        client.send_update("c", float("nan"))
    with pytest.raises(BadData, match="data is not JSON"):
        client.send_updates([("c", 1), ("c", {"x": float("inf")})])
    with pytest.raises(BadChannel):
        client.send_updates([("c", 1), ("no spaces", 2)])
    with pytest.raises(PushServerUnavailable, match="unreachable"):
        client.send_update("c", 1)


def test_a_server_that_never_answers_times_out():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # the kernel completes the connection; nobody reads
        client = PushClient(port=listener.getsockname()[1], timeout=0.2, spin=0)
        with pytest.raises(PushServerUnavailable, match=r"did not answer within 0\.2 s"):
            client.current_timestamp()


@pytest.mark.parametrize(
    "answer, message",
    [
        (b"\x00\x07_answer\x00\x011\x00\x02ts\x00\x03abc\x00\x00", "unexpected answer"),
        (b"\x00\x07_answer\x00\x011\x00\x00", "unexpected answer"),
        (b"\x01\x00" + b"k" * 256, "unreadable answer"),
        (b"", "connection broke"),
    ],
)
def test_a_garbled_answer_is_reported_and_the_connection_dropped(answer, message):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def serve():
            connection, _ = listener.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(answer)

        thread = threading.Thread(target=serve)
        thread.start()
        client = PushClient(port=listener.getsockname()[1], timeout=5)
        with pytest.raises(PushServerUnavailable, match=message):
            client.current_timestamp()
        thread.join()
        assert client._sock is None


@pytest.mark.parametrize("spin", [0, 0.0002])
def test_answers_arrive_with_and_without_spinning(push_server, spin):
    server = push_server()
    client = PushClient(port=server.notifier_port, spin=spin)
    stamps = [client.send_update("c", i) for i in range(50)]
    assert stamps == sorted(set(stamps)) and client.current_timestamp() >= stamps[-1]


class ScriptedNotifier:
    """A notifier on a real socket that records every command and answers
    Authenticate by comparing with ``key`` (wrong: UNAUTHORIZED, then it closes)."""

    def __init__(self, key: str, connections: int) -> None:
        self.key = key.encode()
        self.commands: list[list[bytes]] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, args=(connections,))
        self.thread.start()

    def serve(self, connections: int) -> None:
        with self.listener:
            for _ in range(connections):
                connection, _ = self.listener.accept()
                with connection:
                    self.converse(connection)

    def converse(self, connection: socket.socket) -> None:
        seen: list[bytes] = []
        self.commands.append(seen)
        reader = BoxReader(1 << 20)
        while data := connection.recv(65536):
            for box in reader.feed(data):
                seen.append(box[b"_command"])
                ask = box[b"_ask"]
                if box[b"_command"] != b"Authenticate":
                    connection.sendall(pack_box([(b"_answer", ask), (b"ts", b"42")]))
                elif box.get(b"key") == self.key:
                    connection.sendall(pack_box([(b"_answer", ask)]))
                else:
                    error = [(b"_error", ask), (b"_error_code", b"UNAUTHORIZED")]
                    connection.sendall(pack_box([*error, (b"_error_description", b"wrong")]))
                    return


def test_every_new_connection_begins_with_authenticate():
    server = ScriptedNotifier("sesame", connections=2)
    client = PushClient(port=server.port, key="sesame")
    assert client.current_timestamp() == 42
    assert client.current_timestamp() == 42
    client.close()  # the next call connects again, as after a dropped connection
    assert client.send_update("c", 1) == 42
    client.close()
    server.thread.join()
    assert server.commands == [
        [b"Authenticate", b"CurrentTimestamp", b"CurrentTimestamp"],
        [b"Authenticate", b"SendUpdate"],
    ]


def test_a_wrong_key_raises_unauthorized_and_drops_the_connection():
    server = ScriptedNotifier("sesame", connections=1)
    client = PushClient(port=server.port, key="open up")
    with pytest.raises(Unauthorized, match=r"refused the publisher key") as raised:
        client.current_timestamp()
    assert raised.value.code == "unauthorized"
    assert client._sock is None
    server.thread.join()
    assert server.commands == [[b"Authenticate"]]


class PipelineNotifier:
    """A notifier on a real socket that reads ``hold`` publishing commands before it
    answers any (a client that waits for each answer would never send the second),
    then answers them in order, refusing those whose index is in ``refuse``, and
    closes after ``close_after`` answers if given."""

    def __init__(self, hold: int, refuse=(), close_after=None, reverse=False) -> None:
        self.hold, self.close_after, self.reverse = hold, close_after, reverse
        self.refuse = refuse if isinstance(refuse, dict) else dict.fromkeys(refuse, b"UNAVAILABLE")
        self.batches: list[int] = []  # updates per command received, in order
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def serve(self) -> None:
        connection, _ = self.listener.accept()
        with self.listener, connection:
            reader, waiting, answered, next_ts = BoxReader(1 << 22), [], 0, 1000
            while data := connection.recv(65536):
                for box in reader.feed(data):
                    if box[b"_command"] == b"SendUpdates":
                        size = len(BoxReader(1 << 22).feed(box[b"updates"]))
                    else:
                        size = 1
                    self.batches.append(size)
                    waiting.append((box[b"_ask"], size))
                if len(self.batches) < self.hold and len(waiting) < self.hold:
                    continue
                positions = []
                for ask, size in waiting:  # positions in the order received
                    positions.append(list(range(next_ts, next_ts + size)))
                    next_ts += size
                answers = list(zip(waiting, positions, strict=True))
                for (ask, size), stamps in reversed(answers) if self.reverse else answers:
                    if answered == self.close_after:
                        return
                    index, answered = answered, answered + 1
                    if index in self.refuse:
                        error = [(b"_error", ask), (b"_error_code", self.refuse[index])]
                        connection.sendall(pack_box([*error, (b"_error_description", b"no")]))
                        continue
                    encoded = IntegerList().toString(stamps)
                    connection.sendall(pack_box([(b"_answer", ask), (b"ts", encoded)]))
                waiting = []


def batch_of(count: int) -> list[tuple[str, dict]]:
    """Updates enough for ``count`` SendUpdates commands of about 64 KiB each."""
    return [("c", {"pad": "x" * 1000}) for _ in range(60 * count)]


def test_batches_go_pipelined_and_every_update_gets_its_position():
    server = PipelineNotifier(hold=PIPELINE)
    client = PushClient(port=server.port, timeout=5)
    stamps = client.send_updates(batch_of(6))
    client.close()
    server.thread.join()
    assert len(server.batches) >= 6 and sum(server.batches) == len(stamps) == 360
    assert stamps == list(range(1000, 1360))


def test_a_refused_batch_stops_the_rest_and_says_which_updates_were_stored():
    server = PipelineNotifier(hold=PIPELINE, refuse={1})
    client = PushClient(port=server.port, timeout=5)
    updates = batch_of(8)
    with pytest.raises(Unavailable) as raised:
        client.send_updates(updates)
    client.close()
    server.thread.join()
    # The first answer made room for one more batch; after the refusal, none.
    assert len(server.batches) == PIPELINE + 1
    sizes = server.batches
    stored = raised.value.stored
    assert len(stored) == len(updates)
    refused = range(sizes[0], sizes[0] + sizes[1])
    in_flight = sum(sizes)
    assert all(stored[i] is None for i in refused)
    assert all(stored[i] is None for i in range(in_flight, len(updates)))
    kept = [s for i, s in enumerate(stored[:in_flight]) if i not in refused]
    assert None not in kept and kept == sorted(kept)


def test_a_broken_connection_says_what_was_stored_and_what_is_unknown():
    server = PipelineNotifier(hold=PIPELINE, close_after=1)
    client = PushClient(port=server.port, timeout=5)
    updates = batch_of(8)
    with pytest.raises(PushServerUnavailable) as raised:
        client.send_updates(updates)
    server.thread.join()
    first = server.batches[0]
    assert raised.value.stored[:first] == list(range(1000, 1000 + first))
    assert set(raised.value.stored[first:]) == {None}
    unknown = raised.value.unknown  # sent, never answered: what the server held, and more
    assert unknown == list(range(first, first + len(unknown)))
    assert len(unknown) >= sum(server.batches[1:])


def test_pipelined_batches_reach_a_real_server_in_order(push_server):
    server = push_server()
    client = PushClient(port=server.notifier_port)
    stamps = client.send_updates([("c", {"n": i, "pad": "x" * 200}) for i in range(3000)])
    assert stamps == sorted(set(stamps)) and len(stamps) == 3000
    updates, _ = client.history("c", since=stamps[-101], limit=1000)
    assert [u["data"]["n"] for u in updates] == list(range(2900, 3000))


def test_answers_out_of_order_are_matched_by_their_tags():
    """The notifier answers each command when it is done: batches on two Redis
    shards, or one refused at once, overtake one another. Matched by order, every
    update was once reported lost although all were stored."""
    server = PipelineNotifier(hold=PIPELINE, reverse=True)
    client = PushClient(port=server.port, timeout=5)
    stamps = client.send_updates(batch_of(4))
    assert stamps == list(range(1000, 1000 + len(stamps)))
    client.close()
    server.thread.join()


def test_the_first_refusal_is_the_one_raised():
    server = PipelineNotifier(hold=PIPELINE, refuse={0: b"BAD_DATA", 1: b"UNAVAILABLE"})
    client = PushClient(port=server.port, timeout=5)
    with pytest.raises(BadData) as raised:
        client.send_updates(batch_of(4))
    assert raised.value.stored[: server.batches[0]] == [None] * server.batches[0]
    client.close()
    server.thread.join()


def test_nothing_to_send_needs_no_server():
    assert PushClient(port=free_port()).send_encoded([]) == []

"""The blocking publisher client against servers that misbehave, over real sockets."""

import socket
import threading

import pytest

from tests.conftest import free_port
from twistedpush.client import PushClient, PushServerUnavailable
from twistedpush.commands import BoxReader, pack_box
from twistedpush.errors import BadChannel, BadData, Unauthorized


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

"""The blocking publisher client against servers that misbehave, over real sockets."""

import socket
import threading

import pytest

from tests.conftest import free_port
from twistedpush.client import PushClient, PushServerUnavailable
from twistedpush.errors import BadChannel, BadData


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

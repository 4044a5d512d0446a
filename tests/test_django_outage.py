"""A push server that is down, hung or slow, and updates that cannot be sent, must
not take the site down: calls have one deadline, an outage is skipped (and logged
once), and what fails after a commit is logged and counted, never raised."""

import datetime
import decimal
import logging
import socket
import threading
import uuid

import pytest
from demo.models import ChatMessage, Score
from django.contrib.auth.models import User
from django.db import transaction
from django.utils.translation import gettext_lazy

from django_adapter import send_update, updates
from django_adapter.client import PushServerUnavailable, get_client, outage
from tests.conftest import free_port
from tests.helpers import poll_once as poll
from twistedpush.client import PushClient
from twistedpush.commands import BoxReader, pack_box
from twistedpush.errors import BadChannel, BadData


class FakeNotifier:
    """A notifier on a real socket, served by a thread, that behaves as ``mode`` says
    when a connection is accepted: ``answer`` (every command gets ts 1, 2, 3...),
    ``hang`` (reads, never answers) or ``trickle`` (begins an answer that does not
    end, a byte every 50 ms for 5 s, then closes). ``commands`` lists each
    connection's commands."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.commands: list[list[bytes]] = []
        self.stop = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.ts = 0
        self.threads = [threading.Thread(target=self.accept)]
        self.threads[0].start()

    def accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self.serve, args=(connection, self.mode))
            self.threads.append(thread)
            thread.start()

    def serve(self, connection: socket.socket, mode: str) -> None:
        seen: list[bytes] = []
        self.commands.append(seen)
        reader = BoxReader(1 << 20)
        connection.settimeout(0.05)
        with connection:
            while not self.stop.is_set():
                try:
                    data = connection.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                for box in reader.feed(data):
                    seen.append(box[b"_command"])
                    try:
                        self.react(connection, box, mode)
                    except OSError:
                        return

    def react(self, connection: socket.socket, box: dict, mode: str) -> None:
        if mode == "answer":
            self.ts += 1
            ts = str(self.ts).encode()
            connection.sendall(pack_box([(b"_answer", box[b"_ask"]), (b"ts", ts)]))
        elif mode == "trickle":
            connection.sendall(b"\x00\x07_answer\xff\xff")  # 65,535 bytes to come
            for _ in range(100):
                if self.stop.wait(0.05):
                    return
                connection.sendall(b"1")
            connection.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop serving; connections still waiting to be accepted count too."""
        self.stop.set()
        for thread in self.threads:
            thread.join()
        if self.listener.fileno() == -1:
            return
        self.listener.setblocking(False)
        while True:
            try:
                connection, _ = self.listener.accept()
            except BlockingIOError:
                break
            connection.close()
            self.commands.append([])
        self.listener.close()


@pytest.fixture
def notifier(settings):
    """``notifier(mode)``: a FakeNotifier that Django's settings point at."""
    made = []

    def make(mode):
        fake = FakeNotifier(mode)
        made.append(fake)
        settings.SERVERPUSH_NOTIFIER_PORT = fake.port
        return fake

    yield make
    get_client().close()
    for fake in made:
        fake.close()


# One deadline per call


def test_a_trickling_answer_ends_at_the_calls_deadline():
    """Each byte comes well within the timeout; the answer never completes."""
    fake = FakeNotifier("trickle")
    try:
        client = PushClient(port=fake.port, timeout=0.5, spin=0)
        with pytest.raises(PushServerUnavailable, match=r"did not answer within 0\.5 s"):
            client.current_timestamp()
    finally:
        fake.close()


# Back-off while the push server is down


def test_a_hung_push_server_is_waited_for_once_then_skipped(notifier, settings, caplog):
    settings.SERVERPUSH_TIMEOUT = 0.2
    settings.SERVERPUSH_BACKOFF = 60
    fake = notifier("hang")
    with caplog.at_level(logging.WARNING, "django_adapter"):
        for _ in range(3):
            with pytest.raises(PushServerUnavailable) as raised:
                send_update("news", 1)
    assert "is `manage.py runserverpush` running" in str(raised.value)
    assert f"127.0.0.1:{fake.port}" in str(raised.value)
    assert "not tried again" in str(raised.value)
    fake.close()
    assert len(fake.commands) == 1  # one connection; the later calls did not wait for it
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


def test_after_the_back_off_one_call_tries_again_and_recovery_is_logged(notifier, settings, caplog):
    settings.SERVERPUSH_TIMEOUT = 0.2
    settings.SERVERPUSH_BACKOFF = 0
    fake = notifier("hang")
    with caplog.at_level(logging.WARNING, "django_adapter"):
        with pytest.raises(PushServerUnavailable):
            send_update("news", 1)
        fake.mode = "answer"
        assert send_update("news", 2) == 1
    assert ["answers again" in r.getMessage() for r in caplog.records] == [False, True]


def test_down_outside_a_transaction_says_what_to_check(settings):
    port = free_port()
    settings.SERVERPUSH_NOTIFIER_PORT = port
    with pytest.raises(PushServerUnavailable) as raised:
        send_update("news", 1)
    assert "unreachable" in str(raised.value)
    assert f"is `manage.py runserverpush` running, with its notifier on 127.0.0.1:{port}" in str(
        raised.value
    )


# send_update inside a transaction


@pytest.mark.django_db(transaction=True)
def test_a_bad_update_raises_at_the_call_inside_a_transaction(settings):
    settings.SERVERPUSH_NOTIFIER_PORT = free_port()  # never reached
    with transaction.atomic():
        with pytest.raises(BadChannel):
            send_update("no spaces allowed", 1)
        with pytest.raises(BadData, match="not JSON"):
            send_update("news", object())


@pytest.mark.django_db(transaction=True)
def test_after_commit_a_push_server_down_is_counted_not_raised(settings, caplog):
    settings.SERVERPUSH_NOTIFIER_PORT = free_port()
    settings.SERVERPUSH_BACKOFF = 60
    later = []
    unsent = outage.unsent
    with caplog.at_level(logging.WARNING, "django_adapter"), transaction.atomic():
        ChatMessage.objects.create(author="a", text="saved")
        send_update("news", 1)
        send_update("news", 2)
        transaction.on_commit(lambda: later.append("ran"))
    assert ChatMessage.objects.filter(text="saved").exists()
    assert later == ["ran"]  # hooks after ours still ran
    assert outage.unsent == unsent + 2
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_data_is_taken_when_send_update_is_called(push):
    since = get_client().current_timestamp()
    data = {"n": 1}
    with transaction.atomic():
        send_update("demo.tx", data)
        data["n"] = 2
    assert [m["data"] for m in poll(push, "demo.tx", since)] == [{"n": 1}]


@pytest.mark.integration
def test_django_values_are_sent_as_django_writes_them(push):
    since = get_client().current_timestamp()
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    send_update(
        "demo.values",
        {"when": when, "price": decimal.Decimal("9.90"), "id": key, "label": gettext_lazy("Yes")},
    )
    (message,) = poll(push, "demo.values", since)
    assert message["data"] == {
        "when": "2024-05-01T12:30:00Z",
        "price": "9.90",
        "id": "12345678-1234-5678-1234-567812345678",
        "label": "Yes",
    }


# A serializer that raises


def broken_serializer(request, obj, data):
    raise RuntimeError("this serializer is broken")


def points_serializer(request, obj, data):
    return {"points": obj.points}


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_a_broken_serializer_blocks_neither_the_delete_nor_the_other_groups(push, caplog):
    alice = User.objects.create(username="alice")
    score = Score.objects.create(user=alice, points=3)
    good, bad = (
        updates.parse_spec(
            {"name": name, "model": Score, "params": {"user": alice.pk}, "serializer": function},
            "t",
        )
        for name, function in (("good", points_serializer), ("bad", broken_serializer))
    )
    ((channel, _),) = updates.register([good], alice, 60)
    updates.register([bad], alice, 60)
    since = get_client().current_timestamp()
    with caplog.at_level(logging.ERROR, "django_adapter"):
        score.points = 4
        score.save()
        score.delete()
    assert not Score.objects.exists()
    assert [m["data"] for m in poll(push, channel, since)] == [
        {"points": 4},
        {"points": 4, "deleted": True},
    ]
    assert len([r for r in caplog.records if "serializing" in r.getMessage()]) == 2


@pytest.mark.integration
@pytest.mark.django_db
def test_a_page_renders_while_the_push_servers_redis_is_down(
    push_server, redis_server, settings, client
):
    """CurrentTimestamp answers UNAVAILABLE when Redis is away: pages render with no
    position (they reset on connect) instead of a 500."""
    from django_adapter.client import get_client

    server = push_server("--public", "demo.*", "--redis", redis_server.url)
    settings.SERVERPUSH_NOTIFIER_PORT = server.notifier_port
    redis_server.stop()
    server.wait_for(lambda h: h["status"] != "ok", "Redis to be missed")
    try:
        response = client.get("/chat/")
    finally:
        get_client().close()
    assert response.status_code == 200
    assert b'<div id="generated_timestamp" style="display:none">0</div>' in response.content

"""The publisher key end to end: a real ``twistd -n serverpush`` and the blocking
client, from Python and from Django's settings."""

import json
import urllib.request

import pytest

from django_adapter import send_update
from django_adapter.apps import check_settings
from django_adapter.client import get_client
from twistedpush.client import PushClient
from twistedpush.errors import Unauthorized

KEY = "correct horse battery staple"


def poll(server, channel, since):
    body = json.dumps({"subscriptions": [{"channel": channel, "since": since}], "timeout": 0})
    request = urllib.request.Request(f"{server.url}/poll", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return [m["data"] for m in json.load(response)["messages"] if m["type"] == "update"]


@pytest.fixture
def keyed(push_server, monkeypatch):
    monkeypatch.delenv("SERVERPUSH_PUBLISHER_KEY", raising=False)
    return push_server("--public", "*", "--publisher-key", KEY)


@pytest.mark.integration
def test_the_right_key_publishes(keyed):
    with PushClient(port=keyed.notifier_port, key=KEY) as client:
        since = client.current_timestamp()
        client.send_update("news", 1)
        client.send_updates([("news", 2), ("news", 3, "tick")])
    assert poll(keyed, "news", since) == [1, 2, 3]


@pytest.mark.integration
def test_a_wrong_key_is_refused_clearly(keyed):
    since = PushClient(port=keyed.notifier_port, key=KEY).current_timestamp()
    with PushClient(port=keyed.notifier_port, key="guess") as client:
        with pytest.raises(Unauthorized, match="refused the publisher key"):
            client.send_update("news", 1)
        with pytest.raises(Unauthorized):  # a new connection, the same answer
            client.current_timestamp()
    assert poll(keyed, "news", since) == []


@pytest.mark.integration
def test_no_key_is_refused_with_a_hint(keyed):
    with PushClient(port=keyed.notifier_port) as client:
        with pytest.raises(Unauthorized, match=r"needs a publisher key \(PushClient\(key=") as e:
            client.send_update("news", 1)
        assert e.value.code == "unauthorized"
        with pytest.raises(Unauthorized):  # the connection stays open and still refuses
            client.current_timestamp()


@pytest.mark.integration
def test_a_client_authenticates_again_after_the_server_restarts(keyed):
    with PushClient(port=keyed.notifier_port, key=KEY) as client:
        client.send_update("news", 1)
        keyed.stop()
        keyed.start()  # same ports, and the old connection is gone
        since = client.current_timestamp()
        client.send_update("news", 2)
    assert poll(keyed, "news", since) == [2]


@pytest.mark.integration
def test_the_key_can_come_from_the_environment(push_server, monkeypatch):
    monkeypatch.setenv("SERVERPUSH_PUBLISHER_KEY", KEY)
    server = push_server("--public", "*")
    with pytest.raises(Unauthorized):
        PushClient(port=server.notifier_port).current_timestamp()
    assert PushClient(port=server.notifier_port, key=KEY).current_timestamp() > 0


@pytest.mark.integration
def test_a_server_without_a_key_accepts_a_client_with_one(push_server, monkeypatch):
    monkeypatch.delenv("SERVERPUSH_PUBLISHER_KEY", raising=False)
    server = push_server("--public", "*")
    with PushClient(port=server.notifier_port, key="anything") as client:
        assert client.send_update("news", 1) > 0


# Django


@pytest.mark.integration
def test_django_publishes_with_its_setting(keyed, settings):
    settings.SERVERPUSH_NOTIFIER_PORT = keyed.notifier_port
    settings.SERVERPUSH_PORT = keyed.port
    since = PushClient(port=keyed.notifier_port, key=KEY).current_timestamp()
    try:
        with pytest.raises(Unauthorized):
            send_update("news", "no key")
        settings.SERVERPUSH_PUBLISHER_KEY = KEY
        assert get_client().key == KEY
        assert send_update("news", "with the key") > 0
    finally:
        get_client().close()
    assert poll(keyed, "news", since) == ["with the key"]


@pytest.mark.integration
@pytest.mark.django_db
def test_a_page_renders_when_the_publisher_key_does_not_match(keyed, settings, client, caplog):
    """A key rotation half done: pages still render (they reset on connect), and
    the mismatch is logged, rather than a 500 on every live page."""
    settings.SERVERPUSH_NOTIFIER_PORT = keyed.notifier_port
    settings.SERVERPUSH_PUBLISHER_KEY = "not the server's"
    try:
        response = client.get("/chat/")
    finally:
        get_client().close()
    assert response.status_code == 200
    assert b'<div id="generated_timestamp" style="display:none">0</div>' in response.content
    assert "refused SERVERPUSH_PUBLISHER_KEY" in caplog.text


def test_django_takes_the_key_from_the_environment_too(settings, monkeypatch):
    monkeypatch.setenv("SERVERPUSH_PUBLISHER_KEY", "from env")
    assert get_client().key == "from env"
    settings.SERVERPUSH_PUBLISHER_KEY = "from settings"
    assert get_client().key == "from settings"


@pytest.mark.parametrize(
    ("name", "value", "check"),
    [
        ("SERVERPUSH_PUBLISHER_KEY", "", "E011"),
        ("SERVERPUSH_PUBLISHER_KEY", 42, "E011"),
        ("SERVERPUSH_TRUSTED_PROXIES", "10.0.0.0/8", "E012"),
        ("SERVERPUSH_TRUSTED_PROXIES", ["10.0.0.0/33"], "E012"),
        ("SERVERPUSH_TRUSTED_PROXIES", ["proxy.example"], "E012"),
        ("SERVERPUSH_ALLOWED_ORIGINS", "https://example.com", "E013"),
        ("SERVERPUSH_ALLOWED_ORIGINS", [None], "E013"),
    ],
)
def test_checks_of_the_new_settings(settings, name, value, check):
    setattr(settings, name, value)
    messages = [m for m in check_settings() if m.id == f"django_adapter.{check}"]
    assert len(messages) == 1 and name in messages[0].msg


def test_good_values_of_the_new_settings_pass_the_checks(settings):
    settings.SERVERPUSH_PUBLISHER_KEY = KEY
    settings.SERVERPUSH_TRUSTED_PROXIES = ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]
    settings.SERVERPUSH_ALLOWED_ORIGINS = ["https://*.example.com"]
    assert check_settings() == []

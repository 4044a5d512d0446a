"""``{% serverpush_wamp_config %}``: what an AutobahnJS page needs, and that it works
against a real push server as a WAMP client subscribes with it."""

from __future__ import annotations

import json
import time

import pytest
from django.template import Context, Template
from websockets.sync.client import connect

from django_adapter import conf, send_update
from django_adapter.client import get_client
from twistedpush.access import AccessPolicy


def wamp_config(html: str) -> dict:
    return json.loads(html.split("SERVERPUSH_WAMP = ", 1)[1].split(";</script>", 1)[0])


def test_config_outside_a_request(settings):
    settings.SERVERPUSH_URL = "https://push.example:8443"
    html = Template('{% load serverpush %}{% serverpush_wamp_config "demo.chat" "private" %}')
    config = wamp_config(html.render(Context({})))
    assert config["url"] == "wss://push.example:8443/ws"
    assert config["realm"] == "serverpush" and config["since"] is None
    tokens = {s["topic"]: s["token"] for s in config["subscriptions"]}
    assert tokens["demo.chat"] is None  # public in the demo settings
    AccessPolicy(conf.settings.secret).check("private", tokens["private"], time.time())


def test_realm_from_settings_and_plain_http(settings):
    settings.SERVERPUSH_URL = "http://push.example:8013/"
    settings.SERVERPUSH_WAMP_REALM = "com.example.live"
    config = wamp_config(
        Template("{% load serverpush %}{% serverpush_wamp_config %}").render(Context({}))
    )
    assert config["url"] == "ws://push.example:8013/ws"
    assert config["realm"] == "com.example.live" and config["subscriptions"] == []


def test_config_escapes_html(settings):
    settings.SERVERPUSH_URL = "http://push.example:8013/</script>"
    html = Template("{% load serverpush %}{% serverpush_wamp_config %}").render(Context({}))
    assert "</script>" not in html.split("<script>", 1)[1][: -len("</script>")]


@pytest.fixture
def push(push_server, settings):
    server = push_server("--public", "demo.*")
    settings.SERVERPUSH_NOTIFIER_PORT = server.notifier_port
    settings.SERVERPUSH_PORT = server.port
    yield server
    get_client().close()


def wamp(ws, *message):
    ws.send(json.dumps(list(message)))
    return json.loads(ws.recv(timeout=10))


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)  # send_update waits for the commit
def test_a_wamp_client_catches_up_from_the_pages_config(push, client):
    page = client.get("/wamp/", HTTP_HOST="127.0.0.1")
    config = wamp_config(page.content.decode())
    assert config["url"] == f"ws://127.0.0.1:{push.port}/ws"
    assert isinstance(config["since"], int)
    ts = send_update(
        "demo.chat", {"id": 1, "author": "a", "text": "after the page"}, "chat_message"
    )
    [subscription] = config["subscriptions"]
    with connect(config["url"], subprotocols=["wamp.2.json"]) as ws:
        assert ws.subprotocol == "wamp.2.json"
        assert wamp(ws, 1, config["realm"], {"roles": {"subscriber": {}}})[0] == 2
        options = {"_since": config["since"], "_token": subscription["token"]}
        subscribed = wamp(ws, 32, 1, options, subscription["topic"])
        assert subscribed[:2] == [33, 1]
        event = json.loads(ws.recv(timeout=10))
        assert event == [
            36,
            subscribed[2],
            ts,
            {},
            [{"id": 1, "author": "a", "text": "after the page"}],
            {"name": "chat_message"},
        ]

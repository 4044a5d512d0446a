import json

import pytest
from websockets.sync.client import connect

from django_adapter import current_timestamp, send_update
from news.models import Article


@pytest.mark.django_db
def test_readers_of_an_article_get_its_new_title(client, pushed_updates):
    article = Article.objects.create(title="Draft")
    client.get(f"/news/{article.pk}/")
    article.title = "Final"
    article.save()
    assert [(u.name, u.data) for u in pushed_updates] == [("article", {"title": "Final"})]


@pytest.mark.django_db(transaction=True)
def test_a_websocket_client_gets_the_headline(live_push_server):
    with connect(live_push_server.ws_url) as ws:
        since = current_timestamp()
        ws.send(json.dumps({"type": "subscribe", "channel": "news.headlines", "since": since}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        send_update("news.headlines", {"title": "Hello"}, name="headline")
        update = json.loads(ws.recv(timeout=10))
    assert (update["name"], update["data"]) == ("headline", {"title": "Hello"})


# Beyond the docs' examples: the server stops cleanly.


def test_the_live_server_stops_closing_its_ports_and_connections():
    import socket

    from django.conf import settings
    from websockets.exceptions import ConnectionClosed

    from django_adapter.testing import LivePushServer

    with LivePushServer() as server:
        assert settings.SERVERPUSH_ENABLED and settings.SERVERPUSH_URL == server.url
        ws = connect(server.ws_url)
        send_update("news.a", {"n": 1})  # this thread's notifier connection
    assert not settings.SERVERPUSH_ENABLED  # the project's test settings again
    for port in (server.port, server.notifier_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    with ws, pytest.raises(ConnectionClosed):
        ws.recv(timeout=5)
    with LivePushServer() as again:  # the reactor, left running, serves the next one
        assert again.port != 0

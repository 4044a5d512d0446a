"""autobahn-python's own WAMP client (ApplicationSession over WampWebSocketClientFactory)
against a real ``twistd -n serverpush``, with updates published through send_update."""

from __future__ import annotations

import queue
from typing import Any

import pytest
from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import ComponentConfig, PublishOptions, SubscribeOptions
from twisted.internet import endpoints
from twisted.internet.defer import inlineCallbacks

from twistedpush.client import PushClient

pytestmark = pytest.mark.integration

WAIT = 10


class Subscriber(ApplicationSession):
    """Reports what happens to it on ``config.extra["events"]`` (a thread-safe queue)."""

    def report(self, *what: Any) -> None:
        self.config.extra["events"].put(what)

    @inlineCallbacks
    def onJoin(self, details):
        self.report("joined", details.session, details.authrole, details.authmethod)
        topic = self.config.extra.get("topic")
        if topic is not None:
            yield self.subscribe(self.on_event, topic, options=SubscribeOptions(details=True))
            self.report("subscribed")

    def on_event(self, *args, details, **kwargs):
        self.report("event", list(args), kwargs, details.publication)

    def onLeave(self, details):
        self.report("left", details.reason)
        self.disconnect()


class Client:
    """One autobahn-python session in the test's reactor thread."""

    def __init__(self, reactor_thread, server, realm="serverpush", topic=None) -> None:
        self.thread = reactor_thread
        self.events: queue.Queue = queue.Queue()
        extra = {"events": self.events, "topic": topic}

        def connect():
            self.session = Subscriber(ComponentConfig(realm, extra))
            factory = WampWebSocketClientFactory(
                lambda: self.session, url=server.ws_url, reactor=reactor_thread.reactor
            )
            endpoint = endpoints.TCP4ClientEndpoint(
                reactor_thread.reactor, "127.0.0.1", server.port
            )
            return endpoint.connect(factory)

        reactor_thread.call(connect)

    def next(self) -> tuple:
        return self.events.get(timeout=WAIT)

    def call(self, function, *args) -> Any:
        return self.thread.call(function, *args)


def test_autobahn_python_subscribes_and_receives_send_update(push_server, reactor_thread):
    server = push_server("--public", "news.*")
    client = Client(reactor_thread, server, topic="news.demo")
    joined = client.next()
    assert joined[0] == "joined" and 1 <= joined[1] <= 2**53
    assert joined[2:] == ("anonymous", "anonymous")
    assert client.next() == ("subscribed",)
    push = PushClient("127.0.0.1", server.notifier_port)
    first = push.send_update("news.demo", {"title": "Hello"}, name="headline")
    second, third = push.send_updates([("news.demo", [1, 2]), ("news.demo", "x", "tick")])
    assert client.next() == ("event", [{"title": "Hello"}], {"name": "headline"}, first)
    assert client.next() == ("event", [[1, 2]], {}, second)
    assert client.next() == ("event", ["x"], {"name": "tick"}, third)
    client.call(client.session.leave)
    assert client.next() == ("left", "wamp.close.goodbye_and_out")
    server.wait_for(lambda h: h["subscriptions"] == 0, "the session's subscription to go")


def test_autobahn_python_is_refused_calls_and_acknowledged_publishes_and_stays(
    push_server, reactor_thread
):
    server = push_server("--public", "news.*")
    client = Client(reactor_thread, server, topic="news.demo")
    assert client.next()[0] == "joined" and client.next() == ("subscribed",)
    session = client.session
    for attempt in (
        lambda: session.call("com.example.add", 1, 2),
        lambda: session.publish("news.demo", 1, options=PublishOptions(acknowledge=True)),
    ):
        with pytest.raises(ApplicationError) as refused:
            client.call(attempt)
        assert refused.value.error == "wamp.error.not_authorized"
    client.call(lambda: session.publish("news.demo", "dropped"))  # no answer, as WAMP says
    ts = PushClient("127.0.0.1", server.notifier_port).send_update("news.demo", "still here")
    assert client.next() == ("event", ["still here"], {}, ts)  # only the notifier publishes


def test_autobahn_python_in_another_realm_is_aborted(push_server, reactor_thread):
    server = push_server()
    client = Client(reactor_thread, server, realm="elsewhere")
    assert client.next() == ("left", "wamp.error.no_such_realm")


def test_the_realm_is_set_by_wamp_realm(push_server, reactor_thread):
    server = push_server("--wamp-realm", "com.example.live", "--public", "*")
    client = Client(reactor_thread, server, realm="com.example.live", topic="room")
    assert client.next()[0] == "joined" and client.next() == ("subscribed",)
    ts = PushClient("127.0.0.1", server.notifier_port).send_update("room", {"n": 1})
    assert client.next() == ("event", [{"n": 1}], {}, ts)

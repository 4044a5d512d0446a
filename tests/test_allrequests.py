"""One port (``runserverpush --allrequests``): which paths the push server keeps and which
go to Django, each path's body limit, the port and the pages' push server URL."""

from __future__ import annotations

import json

import pytest
from django.template import engines
from django.test import RequestFactory
from twisted.web.resource import Resource

from tests.helpers import make_clock, make_hub
from tests.test_sse import Answer, connect
from twistedpush.limits import Admission
from twistedpush.web import make_site


class Django(Resource):
    """Stands in for the WSGI resource: says what it was asked, as WSGI would see it."""

    isLeaf = True

    def render(self, request):
        request.setHeader(b"Content-Type", b"application/json")
        body = request.content.read()
        return json.dumps(
            {
                "script_name": "/".join(p.decode() for p in request.prepath),
                "path_info": "/".join(p.decode() for p in request.postpath),
                "query": request.uri.decode().partition("?")[2],
                "body": len(body),
            }
        ).encode()


@pytest.fixture
def site():
    clock = make_clock()
    hub = make_hub(clock)
    site = make_site(hub, clock, Admission(), django=Django())
    site.clock = clock
    return site


def request(site, head: str, body: bytes = b"") -> Answer:
    client, server, pump = connect(site, site.clock)
    client.transport.write(head.encode() + b"\r\n\r\n" + body)
    pump.flush()
    return Answer(client.received)


@pytest.mark.parametrize(
    ("path", "path_info"),
    [
        ("/", ""),
        ("/chat/", "chat/"),
        ("/accounts/login/?next=/me/", "accounts/login/"),
        ("/static/demo/demo.css", "static/demo/demo.css"),
        ("/wsx", "wsx"),
        ("/healthz", "healthz"),
    ],
)
def test_every_other_path_is_djangos_whole(site, path, path_info):
    answer = request(site, f"GET {path} HTTP/1.1\r\nHost: x")
    assert answer.status == 200
    assert answer.json()["script_name"] == ""  # WSGI's SCRIPT_NAME: Django owns the root
    assert answer.json()["path_info"] == path_info


@pytest.mark.parametrize(
    ("path", "what"),
    [
        ("/health", b'"status"'),
        ("/metrics", b"twistedpush_connections"),
        ("/publish/room", b"--publisher-key"),
    ],
)
def test_push_paths_stay_the_push_servers(site, path, what):
    answer = request(site, f"GET {path} HTTP/1.1\r\nHost: x")
    assert what in answer.body


def test_the_client_script_stays_the_push_servers_and_djangos_static_files_go_to_django(site):
    from twisted.web.static import File
    from twisted.web.test.requesthelper import DummyRequest

    def resource(path):
        request = DummyRequest(path.encode()[1:].split(b"/"))
        request.path = path.encode()
        return site.getResourceFor(request)

    assert isinstance(resource("/static/serverpush.js"), File)
    assert isinstance(resource("/static/serverpush/serverpush.js"), Django)


def test_streams_polls_and_the_relay_stay_the_push_servers(site):
    assert (
        request(site, "GET /sse/room HTTP/1.1\r\nHost: x")
        .headers["content-type"]
        .startswith("text/event-stream")
    )
    poll = b'{"subscriptions": [{"channel": "room"}], "timeout": 0}'
    answer = request(site, f"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Length: {len(poll)}", poll)
    assert answer.json()["messages"] == []
    answer = request(site, "GET /updates/bad%20channel HTTP/1.1\r\nHost: x")
    assert answer.json()["error"]["code"] == "bad_channel"


def test_django_takes_uploads_the_push_endpoints_would_refuse(site):
    body = b"x" * 300_000
    head = f"POST /upload/ HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
    assert request(site, head, body).json()["body"] == len(body)
    head = f"POST /poll HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}"
    assert request(site, head).status == 413


def test_without_django_every_path_is_the_push_servers():
    clock = make_clock()
    site = make_site(make_hub(clock), clock, Admission())
    client, server, pump = connect(site, clock)
    client.transport.write(b"GET /chat/ HTTP/1.1\r\nHost: x\r\n\r\n")
    pump.flush()
    assert Answer(client.received).status == 404


def test_allrequests_listens_on_port_8000_unless_told(settings):
    from django_adapter.management.commands.runserverpush import command_arguments
    from twistedpush.tap import Options

    def port(**options):
        parsed = Options()
        parsed.parseOptions(command_arguments(options))
        return parsed["port"]

    settings.SERVERPUSH_PORT = 9013
    assert port() == "tcp:9013"
    assert port(allrequests=True) == "tcp:8000"
    assert port(allrequests=True, port="tcp:8080:interface=127.0.0.1") == (
        "tcp:8080:interface=127.0.0.1"
    )


def test_pages_served_on_one_port_find_the_push_server_at_their_own_origin(settings):
    from django_adapter.templatetags.serverpush import ONE_PORT, push_url

    settings.SERVERPUSH_URL = None
    settings.SERVERPUSH_PORT = 8013
    settings.ALLOWED_HOSTS = ["example.com"]
    factory = RequestFactory()
    assert push_url(factory.get("/", HTTP_HOST="example.com:8000")) == "http://example.com:8013"
    one_port = factory.get("/", HTTP_HOST="example.com:8000", **{ONE_PORT: True})
    assert push_url(one_port) == "http://example.com:8000"
    secure = factory.get("/", HTTP_HOST="example.com", secure=True, **{ONE_PORT: True})
    assert push_url(secure) == "https://example.com"
    settings.SERVERPUSH_URL = "https://push.example.com"
    assert push_url(one_port) == "https://push.example.com"  # the setting wins


def test_the_client_configuration_names_the_pages_origin(settings):
    from django_adapter.templatetags.serverpush import ONE_PORT

    settings.SERVERPUSH_URL = None
    page = engines["django"].from_string("{% load serverpush %}{% serverpush_js 'demo.x' %}")
    request = RequestFactory().get("/", HTTP_HOST="127.0.0.1:8000", **{ONE_PORT: True})
    assert '"url": "http://127.0.0.1:8000"' in page.render({"request": request})


def test_a_form_post_reaches_django_whole(site):
    """The site does not parse form bodies itself (publishing reads JSON): Django gets
    the body as sent, urlencoded or multipart."""
    body = b"title=hi&text=" + b"y" * 5000
    head = (
        "POST /write/?next=/x HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}"
    )
    answer = request(site, head, body).json()
    assert answer["body"] == len(body) and answer["query"] == "next=/x"


def test_a_multipart_post_reaches_django_whole(site):
    body = (
        b'--B\r\nContent-Disposition: form-data; name="f"; filename="a.txt"\r\n\r\n'
        + b"z" * 1000
        + b"\r\n--B--\r\n"
    )
    head = (
        "POST /upload/ HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {len(body)}"
    )
    assert request(site, head, body).json()["body"] == len(body)

"""``{% load pushserver %}{% channel_url %}``: the subscriber URL a django-pushserver
template puts in its page, token included for private channels (only on 2xx pages).

The views below are this module's URLconf (``ROOT_URLCONF = __name__``).
"""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from django.http import HttpResponse
from django.template import engines
from django.test import RequestFactory
from django.urls import path

from django_adapter import conf
from twistedpush.access import AccessPolicy
from twistedpush.errors import Forbidden

PAGE = engines["django"].from_string(
    '{% load pushserver %}<a id="main" href="{% channel_url channel %}">'
    '</a><a id="news" href="{% channel_url "demo.news" %}"></a>'
)


# django-pushserver's documented usage: the URL in a JavaScript string, through escapejs.
SCRIPT = engines["django"].from_string(
    "{% load pushserver %}<script>var url = "
    "'{% filter escapejs %}{% channel_url \"private.answers\" %}{% endfilter %}';</script>"
)


def page(request, channel="private.answers", status=200):
    return HttpResponse(PAGE.render({"channel": channel}, request), status=status)


def script_page(request):
    return HttpResponse(SCRIPT.render({}, request))


def forbidden_page(request):
    return page(request, status=403)


urlpatterns = [
    path("page/", page),
    path("forbidden/", forbidden_page),
    path("script/", script_page),
]


@pytest.fixture
def site(settings):
    settings.ROOT_URLCONF = __name__
    settings.SERVERPUSH_URL = None
    settings.SERVERPUSH_PORT = 8013
    settings.SERVERPUSH_PUBLIC = ["demo.*"]


def links(html: str) -> dict[str, str]:
    return {
        part.split('"', 1)[0]: part.split('href="', 1)[1].split('"', 1)[0]
        for part in html.split('<a id="')[1:]
    }


def opens(url: str, channel: str) -> bool:
    token = parse_qs(urlsplit(url).query).get("token", [None])[0]
    try:
        AccessPolicy(conf.settings.secret, ()).check(channel, token, time.time())
    except Forbidden:
        return False
    return True


@pytest.mark.django_db
def test_the_full_subscriber_url_with_a_token_for_a_private_channel(site, client):
    html = client.get("/page/", HTTP_HOST="127.0.0.1:8000").content.decode()
    urls = links(html)
    assert urls["news"] == "http://127.0.0.1:8013/updates/demo.news"  # public: no token
    main = urlsplit(urls["main"])
    assert (main.scheme, main.netloc, main.path) == (
        "http",
        "127.0.0.1:8013",
        "/updates/private.answers",
    )
    assert opens(urls["main"], "private.answers")


@pytest.mark.django_db
def test_a_page_that_is_not_2xx_hands_out_no_token(site, client):
    urls = links(client.get("/forbidden/").content.decode())
    assert urls["main"].endswith("/updates/private.answers?token=")
    assert not opens(urls["main"], "private.answers")


def test_a_channel_name_stays_as_it_is_and_serverpush_url_wins(site, settings):
    settings.SERVERPUSH_URL = "https://push.example.com/prefix/"
    request = RequestFactory().get("/")
    html = PAGE.render({"channel": "user:42/inbox@x=1+2", "request": request})
    url = links(html)["main"]
    assert url.startswith("https://push.example.com/prefix/updates/user:42/inbox@x=1+2?token=")
    assert opens(url.replace("&amp;", "&"), "user:42/inbox@x=1+2")


@pytest.mark.django_db
def test_the_token_survives_escapejs(site, client):
    """The page's token stand-in (made real once the page is known to be 2xx) must read
    the same after escapejs, which escapes "-": it used to stay a stand-in there."""
    html = client.get("/script/").content.decode()
    literal = html.split("var url = '", 1)[1].split("';", 1)[0]
    url = json.loads(f'"{literal}"')  # as the browser reads the JavaScript string
    assert opens(url, "private.answers")

"""Pages as a user gets them: what a response hands out, and when it asks the push server.

The views below are this module's URLconf (``ROOT_URLCONF = __name__``).
"""

import json
import time

import pytest
from demo.models import Counter, Score
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpResponse
from django.template import engines
from django.urls import path

from django_adapter import conf, page_position, send_update
from django_adapter.client import get_client
from django_adapter.models import PageGroup
from tests.test_django_outage import FakeNotifier
from twistedpush.access import AccessPolicy
from twistedpush.errors import Forbidden

PAGE = engines["django"].from_string(
    "{% load serverpush %}<p>{{ shown }}</p>{% serverpush_js %}{% serverpush_js %}"
)


def user(name):
    return User.objects.get_or_create(username=name)[0]


def render(request, shown="", status=200):
    return HttpResponse(PAGE.render({"shown": shown}, request), status=status)


def serialize_score(request, score, data):
    return {"points": score.points, "for": request.user.username}


def score(request, username):
    """A user's score, shown to that user only: anyone else gets a 403 page."""
    if request.user.username != username:
        return render(request, "not yours", status=403)
    return render(request, Score.objects.get(user__username=username).points)


def score_update(request, username):
    return [
        {
            "name": "score",
            "model": Score,
            "params": {"user__username": username},
            "serializer": serialize_score,
        }
    ]


def hidden_score(request, username):
    """The same, refused by raising PermissionDenied (the 403 handler renders the tag)."""
    if request.user.username != username:
        raise PermissionDenied
    return render(request, Score.objects.get(user__username=username).points)


hidden_score_update = score_update


def denied(request, exception):
    return render(request, "denied", status=403)


handler403 = denied


def counter(request, pk):
    """A view with URL arguments (its ``<view>_update`` takes them too) that
    publishes as it starts: whatever the push server hears first came before."""
    send_update("audit", pk)
    return render(request, Counter.objects.get(pk=pk).value)


def counter_update(request, pk):
    return [
        {
            "name": "counter",
            "model": Counter,
            "params": {"pk": pk},
            "data": {"value": "object.value"},
        }
    ]


def profile(request):
    return render(request, request.user.username)


def profile_update(request):
    """A spec that says nothing of what to send."""
    return [{"name": "me", "model": User, "params": {"pk": request.user.pk}}]


def plain(request):
    """A page with nothing live, like the admin's."""
    return HttpResponse("nothing live here")


def news(request):
    """A page following a channel of its own: it takes its position before it
    reads (here: publishes) anything."""
    page_position(request)
    send_update("audit", "news")
    return render(request, "headlines")


urlpatterns = [
    path("score/<str:username>/", score),
    path("hidden/<str:username>/", hidden_score),
    path("counter/<int:pk>/", counter),
    path("profile/", profile),
    path("plain/", plain),
    path("news/", news),
]


@pytest.fixture
def site(settings):
    settings.ROOT_URLCONF = __name__
    settings.SERVERPUSH_URL = "http://push.example"


def config(response):
    """The SERVERPUSH_CONFIG a page gives its script (the first one)."""
    html = response.content.decode()
    return json.loads(html.split("SERVERPUSH_CONFIG = ", 1)[1].split(";</script>", 1)[0])


def tokens(response):
    return {s["channel"]: s["token"] for s in config(response)["subscriptions"]}


def opens(channel, token):
    try:
        AccessPolicy(conf.settings.secret).check(channel, token, time.time())
    except Forbidden:
        return False
    return True


@pytest.fixture
def answering(settings):
    fake = FakeNotifier("answer")
    settings.SERVERPUSH_NOTIFIER_PORT = fake.port
    yield fake
    get_client().close()
    fake.close()


# Only a successful page hands out its tokens


@pytest.mark.django_db
@pytest.mark.parametrize("view", ["score", "hidden"])
def test_a_refused_page_hands_out_no_token(site, answering, client, view):
    alice, bob = (user(name) for name in ("alice", "bob"))
    Score.objects.create(user=alice, points=5)
    client.force_login(bob)
    refused = client.get(f"/{view}/alice/")
    assert refused.status_code == 403
    ((channel, token),) = tokens(refused).items()
    assert not opens(channel, token)
    client.force_login(alice)
    shown = client.get(f"/{view}/alice/")
    assert shown.status_code == 200 and "<p>5</p>" in shown.content.decode()
    ((channel_for_alice, token),) = tokens(shown).items()
    assert opens(channel_for_alice, token)
    expires = dict(PageGroup.objects.values_list("channel", "expires"))
    assert expires[channel].timestamp() < time.time() + 3600  # bob's: gone soon
    assert expires[channel_for_alice].timestamp() > time.time() + 3600  # kept for her pages


# The position: asked for only when a page needs it, once


@pytest.mark.django_db
def test_a_page_with_nothing_live_does_not_ask_the_push_server(site, settings, client):
    hung = FakeNotifier("hang")
    settings.SERVERPUSH_NOTIFIER_PORT = hung.port
    try:
        assert client.get("/plain/").content == b"nothing live here"
    finally:
        hung.close()
    assert hung.commands == []


@pytest.mark.django_db(transaction=True)
def test_a_view_with_specs_takes_its_position_before_it_runs_and_once(site, answering, client):
    Counter.objects.create(pk=3, value=7)
    page = client.get("/counter/3/")
    assert '<div id="generated_timestamp" style="display:none">1</div>' in page.content.decode()
    assert answering.commands == [[b"CurrentTimestamp", b"SendUpdate"]]
    assert config(page)["since"] == 1


@pytest.mark.django_db(transaction=True)
def test_page_position_takes_it_where_the_view_says(site, answering, client):
    page = client.get("/news/")
    assert config(page)["since"] == 1
    assert answering.commands == [[b"CurrentTimestamp", b"SendUpdate"]]


@pytest.mark.django_db
def test_a_hung_push_server_costs_one_timeout_not_one_per_page(site, settings, client):
    settings.SERVERPUSH_TIMEOUT = 0.2
    settings.SERVERPUSH_BACKOFF = 60
    alice = user("alice")
    Score.objects.create(user=alice, points=5)
    client.force_login(alice)
    hung = FakeNotifier("hang")
    settings.SERVERPUSH_NOTIFIER_PORT = hung.port
    try:
        pages = [client.get("/score/alice/") for _ in range(3)]
    finally:
        get_client().close()
        hung.close()
    assert [(p.status_code, config(p)["since"]) for p in pages] == [(200, 0)] * 3
    assert len(hung.commands) == 1


# <view>_update gets the view's arguments


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_an_update_function_gets_the_views_url_arguments(site, push_server, settings, client):
    server = push_server("--secret", conf.settings.secret, "--public", "audit")
    settings.SERVERPUSH_NOTIFIER_PORT = server.notifier_port
    Counter.objects.create(pk=3, value=7)
    page = client.get("/counter/3/")
    assert page.status_code == 200
    counter = Counter.objects.get(pk=3)
    counter.value = 8
    counter.save()
    get_client().close()
    assert [m["data"] for m in poll_with_token(server, page)] == [{"value": 8}]


def poll_with_token(server, page):
    import urllib.request

    subscriptions = [dict(s, since=config(page)["since"]) for s in config(page)["subscriptions"]]
    body = json.dumps({"subscriptions": subscriptions, "timeout": 0})
    request = urllib.request.Request(f"{server.url}/poll", data=body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)["messages"]


# A spec that does not say what to send is refused


@pytest.mark.django_db
def test_a_spec_without_data_or_serializer_is_refused_naming_it(site, answering, client):
    client.force_login(user("alice"))
    with pytest.raises(ImproperlyConfigured) as raised:
        client.get("/profile/")
    assert f"{__name__}.profile_update: spec 'me' has neither 'data' nor 'serializer'" in str(
        raised.value
    )
    assert not PageGroup.objects.exists()

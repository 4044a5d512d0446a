"""The Django adapter: specs, matching, serialization, tokens, transactions, positions."""

import json
import time

import pytest
from demo.models import ChatMessage, Counter, Score
from demo.views import score_for_page
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.template import Context, Template
from django.test import RequestFactory

from django_adapter import conf, send_update, send_updates, updates
from django_adapter.apps import check_settings
from django_adapter.client import PushServerUnavailable, get_client
from django_adapter.middleware import ServerPushMiddleware
from django_adapter.models import PageGroup
from tests.helpers import poll_once as poll
from twistedpush.access import AccessPolicy, sign_token

TTL = 60


def user(name):
    return User.objects.get_or_create(username=name)[0]


def module_level_serializer(request, obj, data):
    return {"text": obj.text, "viewer": request.user.username, "extra": data}


def site_update(request):
    """A SERVERPUSH_GLOBALS function: every page hears of counter changes."""
    return [
        {
            "name": "site_counter",
            "model": Counter,
            "params": {"pk": 1},
            "data": {"v": "object.value"},
        }
    ]


def me(request):
    """A view of a user's own score (the demo's ``me``, with its ``me_update``)."""


def plain(request):
    """A view without ``<view>_update``."""


def me_update(request):
    return [
        {
            "name": "score",
            "model": Score,
            "params": {"user": request.user.pk},
            "serializer": score_for_page,
        }
    ]


# Specs


def test_parse_spec_accepts_the_seed_forms():
    spec = updates.parse_spec(
        {
            "name": "username_change",
            "model": User,
            "params": {"pk": 3},
            "data": {"username": "object.username"},
        },
        "here",
    )
    assert (spec.label, spec.params, spec.serializer) == ("auth.user", {"pk": 3}, "")
    by_function = updates.parse_spec(
        {"name": "s", "model": Score, "serializer": score_for_page}, "here"
    )
    assert by_function.serializer == "demo.views.score_for_page"
    assert updates.parse_spec(
        {"name": "v", "model": Score, "serializer": "me"}, "x"
    ).serializer == ("view:me")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("nope", "must be a dict"),
        ({"name": "bad name", "model": User}, "'name'"),
        ({"name": "x", "model": "auth.User"}, "model class"),
        ({"name": "x", "model": User, "params": [1]}, "'params'"),
        ({"name": "x", "model": User, "params": {"pk": object()}}, "plain values"),
        ({"name": "x", "model": User, "serializer": lambda r, o, d: 1}, "module level"),
        ({"name": "x", "model": User, "colour": "red"}, "unknown spec keys"),
        ({"name": "x", "model": User}, "spec 'x' has neither 'data' nor 'serializer'"),
    ],
)
def test_bad_specs_are_explained(raw, words):
    with pytest.raises(ImproperlyConfigured, match=words):
        updates.parse_spec(raw, "demo.views.x_update")


# Matching


@pytest.mark.django_db
def test_python_matching_of_plain_lookups_and_database_matching_of_the_rest():
    alice = user("alice")
    score = Score.objects.create(user=alice, points=5)
    assert updates._python_match(score, {"user": alice.pk}) is True
    assert updates._python_match(score, {"user": str(alice.pk)}) is True
    assert updates._python_match(score, {"pk": score.pk + 1}) is False
    assert updates._python_match(score, {"points__gte": 3}) is None
    page = RequestFactory().get("/")
    page.user = alice
    for params, expected in [
        ({"user": alice.pk}, True),
        ({"points__gte": 3}, True),
        ({"points__gte": 6}, False),
        ({"user__username": "bob"}, False),
    ]:
        PageGroup.objects.all().delete()
        spec = updates.parse_spec({"name": "s", "model": Score, "params": params, "data": {}}, "t")
        updates.register([spec], alice, TTL)
        assert bool(updates.matching_groups(score)) is expected, params


@pytest.mark.django_db
def test_one_group_per_user_and_spec():
    alice, bob = user("alice"), user("bob")
    spec = updates.parse_spec(
        {"name": "counter", "model": Counter, "params": {"pk": 1}, "data": {}}, "t"
    )
    a1 = updates.register([spec], alice, TTL)
    a2 = updates.register([spec], alice, TTL)
    b = updates.register([spec], bob, TTL)
    anonymous = updates.register([spec], AnonymousUser(), TTL)
    assert a1 == a2 and a1 != b and anonymous not in (a1, b)
    assert PageGroup.objects.count() == 3


# Serialization: each group's data for its own user only


@pytest.mark.django_db
def test_each_user_gets_data_serialized_for_them():
    alice, bob = user("alice"), user("bob")
    message = ChatMessage.objects.create(author="carol", text="hi")
    spec = updates.parse_spec(
        {
            "name": "m",
            "model": ChatMessage,
            "params": {},
            "serializer": module_level_serializer,
            "data": {"t": "object.text", "k": 1},
        },
        "t",
    )
    updates.register([spec], alice, TTL)
    updates.register([spec], bob, TTL)
    items = [item for item, _ in updates.serialized(message, updates.matching_groups(message))]
    viewers = {data["viewer"]: channel for channel, data, name in items}
    assert set(viewers) == {"alice", "bob"} and viewers["alice"] != viewers["bob"]
    assert items[0][1]["extra"] == {"t": "hi", "k": 1}


@pytest.mark.django_db
def test_data_paths():
    counter = Counter.objects.create(pk=1, value=7)
    group = PageGroup(data={"v": "object.value", "label": "visits"}, serializer="")
    assert updates.serialize(group, counter, AnonymousUser()) == {"v": 7, "label": "visits"}


def test_group_channels_cannot_be_named_without_the_secret(settings):
    """Spec and user are public; the channel is not, so no token, no channel."""
    spec = updates.parse_spec({"name": "score", "model": Score, "data": {}}, "t")
    settings.SERVERPUSH_SECRET = "one"
    first = updates.group_channel(spec, "1")
    settings.SERVERPUSH_SECRET = "two"
    assert updates.group_channel(spec, "1") != first
    assert first.startswith("sp.score.")


# Tokens and the template tags


def test_serverpush_js_outside_a_request_renders_working_tokens(settings):
    """Rendered without a request (an e-mail, say): tokens are signed at once."""
    settings.SERVERPUSH_URL = "http://push.example:8013"
    html = Template('{% load serverpush %}{% serverpush_js "demo.chat" "private" %}').render(
        Context({})
    )
    config = json.loads(html.split("SERVERPUSH_CONFIG = ", 1)[1].split(";</script>", 1)[0])
    assert config["url"] == "http://push.example:8013"
    tokens = {s["channel"]: s["token"] for s in config["subscriptions"]}
    assert tokens["demo.chat"] is None  # public in the demo settings
    AccessPolicy(conf.settings.secret).check("private", tokens["private"], time.time())


def test_serverpush_token_tag_and_secret_from_settings(settings):
    settings.SERVERPUSH_SECRET = "explicit"
    token = Template('{% load serverpush %}{% serverpush_token "room" %}').render(Context({}))
    expires = int(token.split(".")[0])
    assert token == sign_token("explicit", "room", expires)
    assert expires > time.time() + 3600


# System checks


def test_checks_catch_misconfiguration(settings, monkeypatch):
    assert check_settings() == []
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if "ServerPush" not in m]
    settings.SERVERPUSH_GLOBALS = ["no.such.module"]
    settings.SERVERPUSH_PORT = "8013"
    settings.SERVERPUSH_REDIS_URL = "http://x"
    monkeypatch.setitem(settings.DATABASES["default"], "ATOMIC_REQUESTS", True)
    ids = {message.id for message in check_settings()}
    assert ids == {
        "django_adapter.E001",
        "django_adapter.E006",
        "django_adapter.E007",
        "django_adapter.E008",
        "django_adapter.W001",
    }


@pytest.mark.parametrize(
    "name, value",
    [("SERVERPUSH_TIMEOUT", 0), ("SERVERPUSH_TIMEOUT", "5"), ("SERVERPUSH_TIMEOUT", float("inf")),
     ("SERVERPUSH_SPIN", -1), ("SERVERPUSH_SPIN", 1), ("SERVERPUSH_SPIN", float("nan"))],
)  # fmt: skip
def test_check_timeouts(settings, name, value):
    setattr(settings, name, value)
    messages = [m for m in check_settings() if m.id == "django_adapter.E010"]
    assert len(messages) == 1 and name in messages[0].msg


def test_spin_setting_reaches_the_client(settings):
    from django_adapter.client import get_client

    settings.SERVERPUSH_SPIN = 0
    assert get_client().spin == 0
    settings.SERVERPUSH_SPIN = 0.001
    assert get_client().spin == 0.001


def test_check_context_processor(settings):
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "OPTIONS": {"context_processors": []}}]
    ids = {message.id for message in check_settings()}
    # Only the request processor is needed by the tags; ours gives template variables.
    assert {"django_adapter.W003", "django_adapter.E004"} <= ids
    assert "django_adapter.E003" not in ids


def test_check_warns_when_nothing_serves_the_client_script(settings):
    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if "staticfiles" not in a]
    ids = {message.id for message in check_settings()}
    assert "django_adapter.W004" in ids
    settings.SERVERPUSH_JS_FROM_PUSH_SERVER = True
    assert "django_adapter.W004" not in {message.id for message in check_settings()}


def test_a_data_path_naming_no_attribute_is_refused_at_registration():
    from django.contrib.auth.models import User
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=r"'name'.*User has no 'usernme'"):
        updates.parse_spec(
            {"name": "n", "model": User, "params": {"pk": 1}, "data": {"name": "object.usernme"}},
            "demo.views.typo_update",
        )


# Against a real push server


@pytest.mark.integration
def test_send_update_and_batches(push):
    since = get_client().current_timestamp()
    ts = send_update("demo.news", {"a": 1}, name="headline")
    stamps = send_updates([("demo.news", i) for i in range(3)])
    assert stamps[0] > ts > since
    assert [m["data"] for m in poll(push, "demo.news", since)] == [{"a": 1}, 0, 1, 2]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_inside_atomic_sent_on_commit_and_never_on_rollback(push):
    since = get_client().current_timestamp()
    with transaction.atomic():
        assert send_update("demo.tx", "committed") is None
        assert poll(push, "demo.tx", since) == []
    with pytest.raises(RuntimeError), transaction.atomic():
        send_update("demo.tx", "rolled back")
        raise RuntimeError
    assert [m["data"] for m in poll(push, "demo.tx", since)] == ["committed"]


@pytest.mark.integration
def test_push_server_down_is_a_clear_error(settings):
    from tests.conftest import free_port

    settings.SERVERPUSH_NOTIFIER_PORT = free_port()
    with pytest.raises(PushServerUnavailable, match="unreachable"):
        send_update("demo.x", 1)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_model_save_reaches_matching_pages_after_commit(push):
    request = RequestFactory().get("/")
    request.user = user("alice")

    ServerPushMiddleware(lambda r: None).process_view(request, me, (), {})
    channel = request.serverpush.channels[0][0]
    since = request.serverpush.since
    Score.objects.create(user=request.user, points=41)
    bob_score = Score.objects.create(user=user("bob"), points=1)
    bob_score.points = 2
    bob_score.save()
    messages = poll(push, channel, since)
    assert [(m["name"], m["data"]) for m in messages] == [("score", {"points": 41, "for": "alice"})]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("skew", [-2.0, 2.0])
def test_page_position_comes_from_the_push_server_not_django_clock(push, monkeypatch, skew):
    """With Django's clock 2 s off, nothing published after the request began is missed."""
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)
    request = RequestFactory().get("/")
    request.user = user("alice")

    before = send_update("demo.skew", "before the request")
    ServerPushMiddleware(lambda r: None).process_view(request, me, (), {})
    after = send_update("demo.skew", "after the request began")
    assert before <= request.serverpush.since < after
    assert [m["data"] for m in poll(push, "demo.skew", request.serverpush.since)] == [
        "after the request began"
    ]


# Presence signals


@pytest.mark.django_db
def test_presence_signals_carry_the_browsers_user(client):
    from django.conf import settings as django_settings
    from twisted.internet.defer import succeed
    from twisted.internet.task import Clock

    from django_adapter.signals import DjangoPresence, channel_subscribe, channel_unsubscribe

    heard = []

    def receiver(sender, user, channel, **kwargs):
        heard.append((user.username or "anonymous", channel))

    channel_subscribe.connect(receiver)
    channel_unsubscribe.connect(receiver)
    try:
        user("alice").set_password("demo")
        client.login(username="alice", password="demo")
        cookie = f"{django_settings.SESSION_COOKIE_NAME}={client.cookies['sessionid'].value}"
        clock = Clock()
        presence = DjangoPresence(clock, lambda f, *args: succeed(f(*args)))
        browser = type("Browser", (), {"cookie": cookie, "lasting": True})()
        stranger = type("Browser", (), {"cookie": "sessionid=forged", "lasting": True})()
        presence.joined(browser, "room")
        clock.advance(1)
        presence.left(browser, "room")
        presence.joined(stranger, "room")
        clock.advance(1)
        assert heard == [("alice", "room"), ("alice", "room"), ("anonymous", "room")]
    finally:
        channel_subscribe.disconnect(receiver)
        channel_unsubscribe.disconnect(receiver)


def test_presence_sends_one_batch_at_a_time_coalescing_what_waits():
    """A connection re-subscribing in a loop queues nothing; batches go one at a
    time, at most one per PRESENCE_INTERVAL."""
    from twisted.internet.defer import Deferred
    from twisted.internet.task import Clock

    from django_adapter.signals import (
        PRESENCE_INTERVAL,
        DjangoPresence,
        channel_subscribe,
    )

    def receiver(**kwargs):
        pass

    batches = []
    sending = []

    def defer_to_thread(function, batch):
        batches.append([(s is channel_subscribe, cookie, channel) for s, cookie, channel in batch])
        sending.append(Deferred())
        return sending[-1]

    channel_subscribe.connect(receiver)
    try:
        clock = Clock()
        presence = DjangoPresence(clock, defer_to_thread)
        a, b = (type("Browser", (), {"cookie": name, "http_headers": {}})() for name in "ab")
        presence.joined(a, "room")
        clock.advance(0)
        for _ in range(3000):  # while the first batch is being sent
            presence.left(a, "room")
            presence.joined(a, "room")
        presence.joined(b, "room")
        presence.joined(b, "other")
        presence.left(b, "other")
        clock.advance(10)
        assert batches == [[(True, "a", "room")]]  # one at a time
        sending[0].callback(None)
        clock.advance(PRESENCE_INTERVAL)
        assert batches[1:] == [[(True, "b", "room")]]
    finally:
        channel_subscribe.disconnect(receiver)


@pytest.mark.integration
def test_async_views_publish_with_asend_update(push):
    import asyncio

    from django_adapter import asend_update, asend_updates

    async def view_work():
        first = await asend_update("demo.async", {"n": 1}, name="tick")
        rest = await asend_updates([("demo.async", {"n": 2})])
        return [first, *rest]

    since = get_client().current_timestamp()
    stamps = asyncio.run(view_work())
    messages = poll(push, "demo.async", since)
    assert [(m["ts"], m["data"]) for m in messages] == list(
        zip(stamps, [{"n": 1}, {"n": 2}], strict=True)
    )


@pytest.mark.django_db
def test_view_name_serializer(settings):
    settings.ROOT_URLCONF = "tests.urls_view_serializer"
    counter = Counter.objects.create(pk=1, value=9)
    spec = updates.parse_spec(
        {"name": "c", "model": Counter, "params": {"pk": 1}, "serializer": "counter_json"}, "t"
    )
    updates.register([spec], user("alice"), TTL)
    ((item, _),) = updates.serialized(counter, updates.matching_groups(counter))
    assert item[1:] == ({"value": 9, "viewer": "alice"}, "c")


@pytest.mark.django_db
def test_globals_add_specs_to_every_page_that_takes_a_position(settings):
    settings.SERVERPUSH_GLOBALS = [f"{__name__}.site_update"]
    request = RequestFactory().get("/")
    request.user = user("alice")
    middleware = ServerPushMiddleware(lambda r: None)
    middleware.process_view(request, plain, (), {})
    assert [name for _, name in request.serverpush.channels] == ["site_counter"]
    middleware.process_view(request, me, (), {})
    assert [name for _, name in request.serverpush.channels] == ["score", "site_counter"]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_deleted_rows_reach_pages_marked_deleted(push):
    alice = user("alice")
    score = Score.objects.create(user=alice, points=3)
    request = RequestFactory().get("/")
    request.user = alice

    ServerPushMiddleware(lambda r: None).process_view(request, me, (), {})
    score.delete()
    messages = poll(push, request.serverpush.channels[0][0], request.serverpush.since)
    assert [m["data"] for m in messages] == [{"points": 3, "for": "alice", "deleted": True}]

"""``manage.py check`` finds the mistakes that would leave a dead page or open data,
each with an id of its own."""

import pytest
from django.core.checks import run_checks

from django_adapter.middleware import ServerPushMiddleware


class SiteMiddleware(ServerPushMiddleware):
    """A project's own subclass of the middleware."""


def serverpush_messages():
    return [m for m in run_checks(tags=["serverpush"]) if m.id.startswith("django_adapter.")]


def test_the_demo_settings_pass():
    assert serverpush_messages() == []


@pytest.mark.parametrize(
    ("url", "hint"),
    [
        ("ws://127.0.0.1:8013", "the client turns it into ws://"),
        ("/push", "Give the scheme and host"),
        ("push.example.com:8013", "Give the scheme and host"),
        ("http://", "Give the scheme and host"),
        (8013, "Give the scheme and host"),
    ],
)
def test_a_wrong_push_server_url_is_refused_with_a_hint(settings, url, hint):
    settings.SERVERPUSH_URL = url
    (message,) = serverpush_messages()
    assert message.id == "django_adapter.E016" and repr(url) in message.msg
    assert hint in message.hint


@pytest.mark.parametrize("url", ["https://push.example.com", "http://127.0.0.1:8013/push/"])
def test_push_server_urls_pass(settings, url):
    settings.SERVERPUSH_URL = url
    assert serverpush_messages() == []


def test_a_subclass_of_the_middleware_is_accepted(settings):
    settings.MIDDLEWARE = [
        f"{__name__}.SiteMiddleware" if m.endswith("ServerPushMiddleware") else m
        for m in settings.MIDDLEWARE
    ]
    assert serverpush_messages() == []
    settings.MIDDLEWARE = [settings.MIDDLEWARE[-1], *settings.MIDDLEWARE[:-1]]
    assert [m.id for m in serverpush_messages()] == ["django_adapter.E002"]


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("SERVERPUSH_GLOBALS", ["no.such.module"], "E006"),
        ("SERVERPUSH_GLOBALS", ["django_adapter.conf.DEFAULTS"], "E014"),
        ("SERVERPUSH_PORT", 0, "E007"),
        ("SERVERPUSH_NOTIFIER_PORT", 8013, "E015"),
        ("SERVERPUSH_BACKOFF", -1, "E010"),
    ],
)
def test_each_problem_has_an_id_of_its_own(settings, setting, value, expected):
    setattr(settings, setting, value)
    assert [m.id for m in serverpush_messages()] == [f"django_adapter.{expected}"]


@pytest.mark.parametrize("glob", ["*", "sp.*", "s*", "*.*", "*:*", "sp.score.?*"])
def test_public_globs_that_open_page_groups_are_refused(settings, glob):
    settings.SERVERPUSH_PUBLIC = ["news.*", glob]
    (message,) = serverpush_messages()
    assert message.id == "django_adapter.E017" and repr(glob) in message.msg


@pytest.mark.parametrize("glob", ["news.*", "demo.*", "*.news", "room:[0-9]*", "sp.?"])
def test_public_globs_of_other_channels_pass(settings, glob):
    settings.SERVERPUSH_PUBLIC = [glob]
    assert serverpush_messages() == []


def deploy_messages():
    return [
        m
        for m in run_checks(tags=["serverpush"], include_deployment_checks=True)
        if m.id.startswith("django_adapter.")
    ]


def test_deploy_warns_of_serverpush_disabled_without_debug(settings):
    """SERVERPUSH_ENABLED = False is a test setting: in production no page goes live."""
    settings.SERVERPUSH_ENABLED, settings.DEBUG = False, False
    (message,) = deploy_messages()
    assert message.id == "django_adapter.W005" and "SERVERPUSH_ENABLED" in message.msg
    assert serverpush_messages() == []  # a --deploy check only: tests run with it


@pytest.mark.parametrize(("enabled", "debug"), [(True, False), (False, True), (True, True)])
def test_deploy_accepts_serverpush_enabled_or_debug(settings, enabled, debug):
    settings.SERVERPUSH_ENABLED, settings.DEBUG = enabled, debug
    assert deploy_messages() == []

"""App config: model signals for the ``<view>_update`` convention, and system checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig, apps
from django.conf import settings as django_settings
from django.core import checks
from django.db.models import signals
from django.utils.module_loading import import_string

from django_adapter.conf import settings

MIDDLEWARE = "django_adapter.middleware.ServerPushMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
CONTEXT_PROCESSOR = "django_adapter.context_processors.serverpush"


class DjangoAdapterConfig(AppConfig):
    name = "django_adapter"
    verbose_name = "twistedpush"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_adapter import updates

        signals.post_save.connect(updates.instance_saved, dispatch_uid="serverpush_saved")
        signals.pre_delete.connect(updates.instance_deleting, dispatch_uid="serverpush_deleting")
        signals.post_delete.connect(updates.instance_deleted, dispatch_uid="serverpush_deleted")


Messages = list[checks.CheckMessage]
CHECKS: list[Callable[..., Messages]] = []


def _as_check(function: Callable[[], Messages]) -> Callable[..., Messages]:
    """``function`` with the arguments Django passes to a check."""

    def check(app_configs: Any = None, **kwargs: Any) -> Messages:
        return function()

    check.__name__ = check.__qualname__ = function.__name__  # as Django lists it
    check.__doc__ = function.__doc__
    return check


def _check(function: Callable[[], Messages]) -> Callable[..., Messages]:
    """Register ``function`` as a Django system check (tag ``serverpush``)."""
    check = _as_check(function)
    CHECKS.append(check)
    return checks.register(check, "serverpush")


def _deploy_check(function: Callable[[], Messages]) -> Callable[..., Messages]:
    """Register ``function`` as a ``manage.py check --deploy`` check only (tag
    ``serverpush``; not in CHECKS): it looks for settings fine in development."""
    return checks.register(_as_check(function), "serverpush", deploy=True)


def check_settings(app_configs: Any = None, **kwargs: Any) -> Messages:
    """Every twistedpush check at once, as ``manage.py check --tag serverpush`` runs them."""
    return [message for check in CHECKS for message in check(app_configs)]


def _error(message: str, hint: str, id: str) -> checks.Error:
    return checks.Error(message, hint=hint, id=f"django_adapter.{id}")


def _index_of(paths: list[str], base: str) -> int | None:
    """The index of the first entry of ``paths`` that is ``base`` or a subclass of it."""
    wanted = import_string(base)
    for index, path in enumerate(paths):
        try:
            found = import_string(path)
        except ImportError:
            continue  # Django itself reports a middleware that cannot be imported
        if isinstance(found, type) and issubclass(found, wanted):
            return index
    return None


@_check
def check_middleware() -> Messages:
    """E001: ServerPushMiddleware (or a subclass) installed; E002: after authentication."""
    middleware = [str(path) for path in getattr(django_settings, "MIDDLEWARE", [])]
    ours = _index_of(middleware, MIDDLEWARE)
    if ours is None:
        return [
            _error(
                f"{MIDDLEWARE} (or a subclass) is not in MIDDLEWARE.",
                "Add it after AuthenticationMiddleware.",
                "E001",
            )
        ]
    auth = _index_of(middleware, AUTH_MIDDLEWARE)
    if auth is not None and auth > ours:
        return [
            _error(
                f"{middleware[ours]} comes before {middleware[auth]}.",
                "Move it after AuthenticationMiddleware: specs read request.user.",
                "E002",
            )
        ]
    return []


@_check
def check_context_processors() -> Messages:
    """W003: our context processor (for the template variables); E004: the request
    one, which the tags need."""
    processors = [
        p
        for backend in getattr(django_settings, "TEMPLATES", [])
        if backend.get("BACKEND") == "django.template.backends.django.DjangoTemplates"
        for p in backend.get("OPTIONS", {}).get("context_processors", [])
    ]
    errors: Messages = []
    if CONTEXT_PROCESSOR not in processors:
        errors.append(
            checks.Warning(
                f"{CONTEXT_PROCESSOR} is not a context processor: templates cannot use "
                "{{ generated_timestamp }} or {{ serverpush }}.",
                hint="Add it to TEMPLATES[...]['OPTIONS']['context_processors'] "
                "({% serverpush_js %} works without it).",
                id="django_adapter.W003",
            )
        )
    if "django.template.context_processors.request" not in processors:
        errors.append(
            _error(
                "The request context processor is missing.",
                "Add django.template.context_processors.request: "
                "{% serverpush_js %} needs the request.",
                "E004",
            )
        )
    return errors


@_check
def check_globals() -> Messages:
    """E005: SERVERPUSH_GLOBALS a list; E006: each entry importable; E014: callable."""
    globals_ = settings.GLOBALS
    if not isinstance(globals_, list | tuple):
        return [
            _error(
                "SERVERPUSH_GLOBALS must be a list of dotted paths.",
                "For example ['myapp.updates.site_update'].",
                "E005",
            )
        ]
    errors = []
    for path in globals_:
        try:
            found = import_string(path)
        except ImportError as e:
            errors.append(
                _error(
                    f"SERVERPUSH_GLOBALS entry {path!r} cannot be imported: {e}",
                    "Give the dotted path of a function f(request) returning specs.",
                    "E006",
                )
            )
            continue
        if not callable(found):
            errors.append(
                _error(
                    f"SERVERPUSH_GLOBALS entry {path!r} is not callable.",
                    "Give a function f(request) returning specs.",
                    "E014",
                )
            )
    return errors


@_check
def check_ports() -> Messages:
    """E007: port numbers; E015: two different ports."""
    errors = []
    ports = {"SERVERPUSH_PORT": settings.PORT, "SERVERPUSH_NOTIFIER_PORT": settings.NOTIFIER_PORT}
    for name, value in ports.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            errors.append(
                _error(
                    f"{name} must be a port number (1-65535), got {value!r}.",
                    "Use an integer.",
                    "E007",
                )
            )
    if settings.PORT == settings.NOTIFIER_PORT:
        errors.append(
            _error(
                "SERVERPUSH_PORT and SERVERPUSH_NOTIFIER_PORT are the same port.",
                "The notifier needs a port of its own.",
                "E015",
            )
        )
    return errors


@_check
def check_url() -> Messages:
    """E016: SERVERPUSH_URL, if set, is an http(s) URL with a host, as browsers see it."""
    url = settings.URL
    if url is None:
        return []
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is not None and parts.scheme in ("http", "https") and parts.hostname:
        if not parts.query and not parts.fragment:
            return []
    if parts is not None and parts.scheme in ("ws", "wss"):
        hint = "Give the http:// or https:// URL: the client turns it into ws:// or wss:// itself."
    else:
        hint = (
            "Give the scheme and host, e.g. 'https://push.example.com' or 'http://127.0.0.1:8013'."
        )
    return [_error(f"SERVERPUSH_URL {url!r} is not the push server's http(s) URL.", hint, "E016")]


@_check
def check_public() -> Messages:
    """E017: SERVERPUSH_PUBLIC globs, none matching page-group channels."""
    from django_adapter.updates import glob_opens_groups

    public = settings.PUBLIC
    hint = "Name your public channels, e.g. ['news.*']: page groups are opened by their tokens."
    if not isinstance(public, list | tuple) or not all(isinstance(g, str) for g in public):
        return [_error(f"SERVERPUSH_PUBLIC must be a list of globs, got {public!r}.", hint, "E017")]
    return [
        _error(
            f"SERVERPUSH_PUBLIC glob {glob!r} matches page-group channels (sp.<name>.<digest>): "
            "it would open every user's <view>_update data to anyone.",
            hint,
            "E017",
        )
        for glob in public
        if glob_opens_groups(glob)
    ]


@_check
def check_timeouts() -> Messages:
    """E010: SERVERPUSH_TIMEOUT, SERVERPUSH_SPIN and SERVERPUSH_BACKOFF in range."""
    errors = []
    for name, value, rule, fits in (
        ("SERVERPUSH_TIMEOUT", settings.TIMEOUT, "over 0", lambda v: 0 < v < math.inf),
        ("SERVERPUSH_SPIN", settings.SPIN, "from 0 to 0.01", lambda v: 0 <= v <= 0.01),
        ("SERVERPUSH_BACKOFF", settings.BACKOFF, "from 0", lambda v: 0 <= v < math.inf),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not fits(value):
            errors.append(
                _error(
                    f"{name} must be a number of seconds {rule}, got {value!r}.",
                    "Use a number.",
                    "E010",
                )
            )
    return errors


@_check
def check_redis() -> Messages:
    """E008: SERVERPUSH_REDIS_URL (one URL or several), as the push server parses it."""
    from twistedpush.tap import parse_redis_url

    errors = []
    for url in settings.redis_urls:
        try:
            parse_redis_url(url)
        except ValueError as e:
            errors.append(_error(f"SERVERPUSH_REDIS_URL: {e}", "redis://host:port/db", "E008"))
    return errors


@_check
def check_publisher_key() -> Messages:
    """E011: SERVERPUSH_PUBLISHER_KEY a non-empty string or None."""
    key = settings.PUBLISHER_KEY
    if key is not None and (not isinstance(key, str) or not key):
        return [
            _error(
                f"SERVERPUSH_PUBLISHER_KEY must be a non-empty string or None, got {key!r}.",
                "Use a long random string, the same for Django and the push server.",
                "E011",
            )
        ]
    return []


@_check
def check_trusted_proxies() -> Messages:
    """E012: SERVERPUSH_TRUSTED_PROXIES a list of addresses or CIDRs, as the server parses them."""
    from twistedpush.tap import parse_network

    proxies = settings.TRUSTED_PROXIES
    hint = "A list of addresses or CIDRs, e.g. ['10.0.0.0/8']."
    if not isinstance(proxies, list | tuple):
        return [
            _error(f"SERVERPUSH_TRUSTED_PROXIES must be a list, got {proxies!r}.", hint, "E012")
        ]
    errors = []
    for proxy in proxies:
        try:
            parse_network(proxy)
        except ValueError as e:
            errors.append(_error(f"SERVERPUSH_TRUSTED_PROXIES: {e}", hint, "E012"))
    return errors


@_check
def check_allowed_origins() -> Messages:
    """E013: SERVERPUSH_ALLOWED_ORIGINS a list of globs."""
    origins = settings.ALLOWED_ORIGINS
    if not isinstance(origins, list | tuple) or not all(isinstance(o, str) for o in origins):
        return [
            _error(
                f"SERVERPUSH_ALLOWED_ORIGINS must be a list of globs, got {origins!r}.",
                "For example ['https://*.example.com'].",
                "E013",
            )
        ]
    return []


@_check
def check_auth_installed() -> Messages:
    """E009: django.contrib.auth, as groups are serialized per user."""
    if apps.is_installed("django.contrib.auth"):
        return []
    return [
        _error("django.contrib.auth is not installed.", "Specs are serialized per user.", "E009")
    ]


@_check
def check_staticfiles() -> Messages:
    """W004: {% serverpush_js %} loads the client through staticfiles: without it the
    page renders and never goes live, with nothing but a 404 in the log."""
    if apps.is_installed("django.contrib.staticfiles") or settings.JS_FROM_PUSH_SERVER:
        return []
    return [
        checks.Warning(
            "django.contrib.staticfiles is not installed: {% serverpush_js %} loads "
            "the browser client from STATIC_URL, which nothing serves then.",
            hint="Add django.contrib.staticfiles to INSTALLED_APPS, or set "
            "SERVERPUSH_JS_FROM_PUSH_SERVER = True to load it from the push server.",
            id="django_adapter.W004",
        )
    ]


@_check
def check_atomic_requests() -> Messages:
    """W001: ATOMIC_REQUESTS, under which a view's page_position() and the tag's
    registration run inside the request's transaction."""
    return [
        checks.Warning(
            f"DATABASES[{alias!r}] has ATOMIC_REQUESTS: a page that takes its position "
            "inside its view (page_position(), {% serverpush_js %}, SERVERPUSH_GLOBALS) "
            "registers its groups inside the request's transaction, so changes committed "
            "meanwhile may not reach it.",
            hint="Turn ATOMIC_REQUESTS off, or use transaction.atomic in views.",
            id="django_adapter.W001",
        )
        for alias, database in getattr(django_settings, "DATABASES", {}).items()
        if database.get("ATOMIC_REQUESTS")
    ]


@_deploy_check
def check_enabled() -> Messages:
    """W005: SERVERPUSH_ENABLED = False without DEBUG, most likely a test setting
    left in production: no page would go live and every update would be dropped."""
    if settings.ENABLED or django_settings.DEBUG:
        return []
    return [
        checks.Warning(
            "SERVERPUSH_ENABLED is False: Django never contacts the push server, so "
            "pages never go live and every update is dropped.",
            hint="It is meant for test settings: remove it from production settings.",
            id="django_adapter.W005",
        )
    ]

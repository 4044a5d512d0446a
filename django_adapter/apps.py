"""App config: model signals for the ``<view>_update`` convention, and system checks."""

from __future__ import annotations

import math
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings as django_settings
from django.core import checks
from django.db.models import signals
from django.utils.module_loading import import_string

from django_adapter.conf import settings

MIDDLEWARE = "django_adapter.middleware.ServerPushMiddleware"
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


def _error(message: str, hint: str, id: str) -> checks.Error:
    return checks.Error(message, hint=hint, id=f"django_adapter.{id}")


def _check_server_options() -> list[checks.CheckMessage]:
    """The settings runserverpush passes on as options, checked as the server
    would (where it would stop with a usage error)."""
    from twistedpush.tap import parse_network

    errors = []
    key = settings.PUBLISHER_KEY
    if key is not None and (not isinstance(key, str) or not key):
        errors.append(
            _error(
                f"SERVERPUSH_PUBLISHER_KEY must be a non-empty string or None, got {key!r}.",
                "Use a long random string, the same for Django and the push server.",
                "E011",
            )
        )
    proxies = settings.TRUSTED_PROXIES
    hint = "A list of addresses or CIDRs, e.g. ['10.0.0.0/8']."
    if not isinstance(proxies, list | tuple):
        errors.append(
            _error(f"SERVERPUSH_TRUSTED_PROXIES must be a list, got {proxies!r}.", hint, "E012")
        )
    else:
        for proxy in proxies:
            try:
                parse_network(proxy)
            except ValueError as e:
                errors.append(_error(f"SERVERPUSH_TRUSTED_PROXIES: {e}", hint, "E012"))
    origins = settings.ALLOWED_ORIGINS
    if not isinstance(origins, list | tuple) or not all(isinstance(o, str) for o in origins):
        errors.append(
            _error(
                f"SERVERPUSH_ALLOWED_ORIGINS must be a list of globs, got {origins!r}.",
                "For example ['https://*.example.com'].",
                "E013",
            )
        )
    return errors


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    middleware = list(getattr(django_settings, "MIDDLEWARE", []))
    if MIDDLEWARE not in middleware:
        errors.append(
            _error(
                f"{MIDDLEWARE} is not in MIDDLEWARE.",
                "Add it after AuthenticationMiddleware.",
                "E001",
            )
        )
    else:
        auth = "django.contrib.auth.middleware.AuthenticationMiddleware"
        if auth in middleware and middleware.index(auth) > middleware.index(MIDDLEWARE):
            errors.append(
                _error(
                    f"{MIDDLEWARE} comes before {auth}.",
                    "Move it after AuthenticationMiddleware: specs read request.user.",
                    "E002",
                )
            )
    processors = [
        p
        for backend in getattr(django_settings, "TEMPLATES", [])
        if backend.get("BACKEND") == "django.template.backends.django.DjangoTemplates"
        for p in backend.get("OPTIONS", {}).get("context_processors", [])
    ]
    if CONTEXT_PROCESSOR not in processors:
        errors.append(
            _error(
                f"{CONTEXT_PROCESSOR} is not a context processor.",
                "Add it to TEMPLATES[...]['OPTIONS']['context_processors'].",
                "E003",
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
    globals_ = settings.GLOBALS
    if not isinstance(globals_, list | tuple):
        errors.append(
            _error(
                "SERVERPUSH_GLOBALS must be a list of dotted paths.",
                "For example ['myapp.updates.site_update'].",
                "E005",
            )
        )
    else:
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
                        "E006",
                    )
                )
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
                "E007",
            )
        )
    for name, value, rule, fits in (
        ("SERVERPUSH_TIMEOUT", settings.TIMEOUT, "over 0", lambda v: 0 < v < math.inf),
        ("SERVERPUSH_SPIN", settings.SPIN, "from 0 to 0.01", lambda v: 0 <= v <= 0.01),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not fits(value):
            errors.append(
                _error(
                    f"{name} must be a number of seconds {rule}, got {value!r}.",
                    "Use a number.",
                    "E010",
                )
            )
    if settings.REDIS_URL:
        from twistedpush.tap import parse_redis_url

        try:
            parse_redis_url(settings.REDIS_URL)
        except ValueError as e:
            errors.append(_error(f"SERVERPUSH_REDIS_URL: {e}", "redis://host:port/db", "E008"))
    errors += _check_server_options()
    for alias, database in getattr(django_settings, "DATABASES", {}).items():
        if database.get("ATOMIC_REQUESTS"):
            errors.append(
                checks.Warning(
                    f"DATABASES[{alias!r}] has ATOMIC_REQUESTS: pages register their "
                    "<view>_update specs inside the request's transaction, so changes "
                    "committed while the page renders may not reach it.",
                    hint="Turn ATOMIC_REQUESTS off, or use transaction.atomic in views.",
                    id="django_adapter.W001",
                )
            )
    if not apps.is_installed("django.contrib.auth"):
        errors.append(
            _error(
                "django.contrib.auth is not installed.", "Specs are serialized per user.", "E009"
            )
        )
    return errors

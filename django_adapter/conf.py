"""twistedpush settings for Django, with their defaults, in one place.

Read them as ``conf.settings.PORT`` and so on: each value is looked up in
Django's settings (``SERVERPUSH_PORT``) when first used, then kept, because
``send_update`` reads three of them on every call; ``override_settings`` (and
pytest-django's ``settings``) clear what was kept through ``setting_changed``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    "ENABLED": True,  # False in test settings: Django never contacts the push server
    "PORT": 8013,
    "NOTIFIER_PORT": 8014,
    "NOTIFIER_HOST": "127.0.0.1",
    "URL": None,
    "SECRET": None,
    "PUBLIC": [],
    "GLOBALS": [],
    "HISTORY_SIZE": 100,
    "HISTORY_TTL": 3600,
    "REDIS_URL": None,
    "TIMEOUT": 5.0,
    "BACKOFF": 2.0,
    "SPIN": 0.0002,
    "TOKEN_TTL": 24 * 3600,
    "PUBLISHER_KEY": None,
    "TRUSTED_PROXIES": [],
    "ALLOWED_ORIGINS": [],
    "JS_FROM_PUSH_SERVER": False,
    "WAMP_REALM": "serverpush",
    "STATS_KEY": None,
}


class Settings:
    """``SERVERPUSH_<NAME>`` from Django's settings, or its default."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"no twistedpush setting {name!r}")
        value = self.__dict__[name] = getattr(django_settings, f"SERVERPUSH_{name}", DEFAULTS[name])
        return value

    def reload(self) -> None:
        """Forget the values kept, so that the next reads see Django's settings."""
        self.__dict__.clear()

    @property
    def secret(self) -> str:
        """The token key: SERVERPUSH_SECRET, or one derived from SECRET_KEY.

        The push server must be given the same key; runserverpush does that.
        """
        if self.SECRET:
            return str(self.SECRET)
        key = str(django_settings.SECRET_KEY).encode()
        return hmac.new(key, b"twistedpush.secret", hashlib.sha256).hexdigest()

    @property
    def redis_urls(self) -> list[str]:
        """SERVERPUSH_REDIS_URL as a list: one URL, or several (one Redis shard each,
        in the same order on every node)."""
        value = self.REDIS_URL
        return [value] if isinstance(value, str) else list(value or [])

    @property
    def publisher_key(self) -> str | None:
        """The notifier's publisher key: SERVERPUSH_PUBLISHER_KEY from Django's
        settings, else from the environment, as ``twistd serverpush`` reads it,
        so that a key given to both processes' environment works on both sides."""
        return self.PUBLISHER_KEY or os.environ.get("SERVERPUSH_PUBLISHER_KEY") or None


settings = Settings()


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("SERVERPUSH_"):
        settings.reload()


setting_changed.connect(_reload)

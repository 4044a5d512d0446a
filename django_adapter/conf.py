"""twistedpush settings for Django, with their defaults, in one place.

Read them as ``conf.settings.PORT`` and so on: every value is looked up in
Django's settings (``SERVERPUSH_PORT``) at the moment it is used, so tests can
override them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from django.conf import settings as django_settings

DEFAULTS: dict[str, Any] = {
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
    "TOKEN_TTL": 24 * 3600,
}


class Settings:
    """``SERVERPUSH_<NAME>`` from Django's settings, or its default."""

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"no twistedpush setting {name!r}")
        return getattr(django_settings, f"SERVERPUSH_{name}", DEFAULTS[name])

    @property
    def secret(self) -> str:
        """The token key: SERVERPUSH_SECRET, or one derived from SECRET_KEY.

        The push server must be given the same key; runserverpush does that.
        """
        if self.SECRET:
            return str(self.SECRET)
        key = str(django_settings.SECRET_KEY).encode()
        return hmac.new(key, b"twistedpush.secret", hashlib.sha256).hexdigest()


settings = Settings()

"""Demo settings: SQLite, memory history, everything on 127.0.0.1.

DEMO_DB, DEMO_PUSH_PORT and DEMO_NOTIFIER_PORT let the tests run it on their own
file and free ports. scripts/demo.sh binds the push server's public port to
127.0.0.1 (runserverpush listens on every interface unless told otherwise).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DEMO_SECRET_KEY", "demo-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # serves serverpush.js and the demo's CSS
    "django_adapter",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django_adapter.middleware.ServerPushMiddleware",
]

ROOT_URLCONF = "demo_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django_adapter.context_processors.serverpush",
            ],
        },
    },
]

WSGI_APPLICATION = "demo_site.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DEMO_DB", BASE_DIR / "db.sqlite3"),
        "OPTIONS": {"timeout": 20},
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/me/"
STATIC_URL = "/static/"
# AutobahnJS for /wamp/: the npm package autobahn-browser, which scripts/demo.sh and
# scripts/test.sh install with `npm ci` at the repository root.
STATICFILES_DIRS = [("autobahn", BASE_DIR.parent / "node_modules" / "autobahn-browser")]

SERVERPUSH_PORT = int(os.environ.get("DEMO_PUSH_PORT", 8013))
SERVERPUSH_NOTIFIER_PORT = int(os.environ.get("DEMO_NOTIFIER_PORT", 8014))
SERVERPUSH_PUBLIC = ["demo.*"]
SERVERPUSH_HISTORY_SIZE = int(os.environ.get("DEMO_HISTORY_SIZE", 100))
SERVERPUSH_REDIS_URL = os.environ.get("DEMO_REDIS_URL") or None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,  # keep runserver's request lines (django.server)
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_adapter": {"handlers": ["console"], "level": "INFO"}},
}

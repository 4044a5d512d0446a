"""``python manage.py runserverpush``: the push server, configured from SERVERPUSH_* settings."""

from __future__ import annotations

import os
import sys
from typing import Any

from django.core.management.base import BaseCommand

from django_adapter.conf import settings
from twistedpush.tap import Options


def server_arguments() -> list[str]:
    """``twistd serverpush`` options equivalent to this project's settings."""
    args = [
        "--port", f"tcp:{settings.PORT}",
        "--notifier", f"tcp:{settings.NOTIFIER_PORT}:interface={settings.NOTIFIER_HOST}",
        "--history-size", str(settings.HISTORY_SIZE),
        "--history-ttl", str(settings.HISTORY_TTL),
    ]  # fmt: skip
    for glob in settings.PUBLIC:
        args += ["--public", glob]
    if settings.REDIS_URL:
        args += ["--redis", settings.REDIS_URL]
    return args


class Command(BaseCommand):
    help = (
        "Run the twistedpush push server configured from SERVERPUSH_* settings. "
        "Options given here override the settings."
    )
    requires_system_checks: list = []

    def add_arguments(self, parser: Any) -> None:
        for name, _short, _default, doc in Options.optParameters:
            parser.add_argument(f"--{name}", dest=name, metavar=name.upper(), help=doc)
        parser.add_argument("--public", action="append", default=[], help="Public channel glob.")

    def handle(self, *args: Any, **options: Any) -> None:
        argv = server_arguments()
        for name, *_ in Options.optParameters:
            if options.get(name) is not None:
                argv += [f"--{name}", str(options[name])]
        for glob in options["public"]:
            argv += ["--public", glob]
        # The secret goes by environment, not by a command line that `ps` shows.
        os.environ["SERVERPUSH_SECRET"] = settings.secret
        sys.argv = ["twistd", "--pidfile=", "-n", "serverpush", *argv]
        from twisted.scripts.twistd import run

        run()

"""``python manage.py runserverpush``: the push server, configured from SERVERPUSH_* settings."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_adapter.conf import settings
from django_adapter.signals import DjangoPresence
from twistedpush.tap import Options, makeService


def server_arguments() -> list[str]:
    """``twistd serverpush`` options equivalent to this project's settings."""
    args = [
        "--port",
        f"tcp:{settings.PORT}",
        "--notifier",
        f"tcp:{settings.NOTIFIER_PORT}:interface={settings.NOTIFIER_HOST}",
        "--history-size",
        str(settings.HISTORY_SIZE),
        "--history-ttl",
        str(settings.HISTORY_TTL),
        "--secret",
        settings.secret,
    ]
    for glob in settings.PUBLIC:
        args += ["--public", glob]
    if settings.REDIS_URL:
        args += ["--redis", settings.REDIS_URL]
    return args


class Command(BaseCommand):
    help = (
        "Run the twistedpush push server configured from SERVERPUSH_* settings "
        "(the same service as `twistd -n serverpush`); options given here override them."
    )

    def add_arguments(self, parser: Any) -> None:
        for name, _short, _default, doc in Options.optParameters:
            if name != "secret":  # the key must be the one Django signs tokens with
                parser.add_argument(f"--{name}", dest=name, metavar=name.upper(), help=doc)
        parser.add_argument("--public", action="append", default=[], help="Public channel glob.")

    def handle(self, *args: Any, **options: Any) -> None:
        from twisted.internet import reactor, threads
        from twisted.logger import globalLogBeginner, textFileLogObserver

        argv = server_arguments()
        for name, *_ in Options.optParameters:
            if options.get(name) is not None:
                argv += [f"--{name}", str(options[name])]
        for glob in options["public"]:
            argv += ["--public", glob]
        server_options = Options()
        server_options.parseOptions(argv)
        service = makeService(server_options, reactor)
        service.hub.presence.append(DjangoPresence(lambda *a: threads.deferToThread(*a)))
        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
        try:
            service.startService()  # listens now: a taken port fails here, not later
        except Exception as e:
            raise CommandError(f"cannot start the push server: {e}") from None
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        reactor.run()

"""``python manage.py runserverpush``: the push server, configured from SERVERPUSH_* settings;
with ``--allrequests`` it serves the Django site too, on one port."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError

from django_adapter.conf import settings
from django_adapter.signals import DjangoPresence
from django_adapter.updates import glob_opens_groups
from twistedpush.logs import ForwardedRecords, JSONLineObserver
from twistedpush.tap import Options, build_service, check_ports, tune_collector

REPEATABLE = {
    "public": "PUBLIC",
    "trusted-proxy": "TRUSTED_PROXIES",
    "allowed-origin": "ALLOWED_ORIGINS",
}
"""Repeatable server options and the settings (lists) that give them."""

FROM_SETTINGS_ONLY = ("secret", "publisher-key")
"""Keys that must be the ones Django signs tokens and publishes with."""

ALL_REQUESTS_PORT = "tcp:8000"
"""The public port with --allrequests unless --port says otherwise (as django-pushserver)."""


def django_resource(reactor: Any) -> Any:
    """The Django site as a twisted.web resource: WSGI in the reactor's thread pool.

    Requests are marked as coming through the push server's own port, so that
    pages find it at their own origin (SERVERPUSH_URL's default then). With
    DEBUG, static files are served as ``runserver`` serves them; in production
    use whitenoise or a web server in front (docs/django.md).
    """
    from django.conf import settings as django_settings
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.wsgi import get_wsgi_application
    from twisted.web.wsgi import WSGIResource

    from django_adapter.templatetags.serverpush import ONE_PORT

    application = get_wsgi_application()
    if django_settings.DEBUG and apps.is_installed("django.contrib.staticfiles"):
        application = StaticFilesHandler(application)

    def one_port(environ: dict, start_response: Any) -> Any:
        environ[ONE_PORT] = True
        return application(environ, start_response)

    return WSGIResource(reactor, reactor.getThreadPool(), one_port)


def server_arguments(redis: bool = True) -> list[str]:
    """``twistd serverpush`` options equivalent to this project's settings (without
    the Redis URLs: memory history)."""
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
        "--wamp-realm",
        settings.WAMP_REALM,
    ]
    for option, setting in REPEATABLE.items():
        for value in getattr(settings, setting):
            args += [f"--{option}", value]
    for url in settings.redis_urls if redis else ():
        args += ["--redis", url]
    if settings.publisher_key:
        args += ["--publisher-key", settings.publisher_key]
    if settings.STATS_KEY:
        args += ["--stats-key", settings.STATS_KEY]
    return args


def command_arguments(options: dict[str, Any]) -> list[str]:
    """The server's options: the settings', then this command's on top of them."""
    # --redis replaces the setting's Redis (every shard).
    argv = server_arguments(redis=options.get("redis") is None)
    if options.get("allrequests") and options.get("port") is None:
        argv += ["--port", ALL_REQUESTS_PORT]
    for name, *_ in Options.optParameters:
        if options.get(name) is not None:
            argv += [f"--{name}", str(options[name])]
    for option in REPEATABLE:
        for value in options.get(option, ()):
            argv += [f"--{option}", value]
    return argv


class Command(BaseCommand):
    help = (
        "Run the twistedpush push server configured from SERVERPUSH_* settings "
        "(the same service as `twistd -n serverpush`); options given here override them."
    )

    def add_arguments(self, parser: Any) -> None:
        for name, _short, _default, doc in Options.optParameters:
            if name not in FROM_SETTINGS_ONLY:
                parser.add_argument(f"--{name}", dest=name, metavar=name.upper(), help=doc)
        for option in REPEATABLE:
            doc = getattr(Options, "opt_" + option.replace("-", "_")).__doc__
            parser.add_argument(f"--{option}", dest=option, action="append", default=[], help=doc)
        parser.add_argument(
            "--allrequests",
            action="store_true",
            help="Serve the Django site too, on the push server's public port "
            f"(default {ALL_REQUESTS_PORT}): one process, one port, pages on the same origin.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from twisted.internet import reactor, threads
        from twisted.logger import (
            FilteringLogObserver,
            ILogObserver,
            LogLevel,
            LogLevelFilterPredicate,
            globalLogBeginner,
            textFileLogObserver,
        )

        server_options = Options()
        server_options.parseOptions(command_arguments(options))
        opening = [glob for glob in server_options["public"] if glob_opens_groups(glob)]
        if opening:
            raise CommandError(
                f"--public {opening[0]!r} matches page-group channels (sp.<name>.<digest>): "
                "it would open every user's <view>_update data to anyone"
            )
        # AMP logs each connection: one per Django thread. -v 2 shows them.
        quiet = LogLevelFilterPredicate(LogLevel.info)
        if options["verbosity"] < 2:
            quiet.setLogLevelForNamespace("twisted.protocols.amp", LogLevel.warn)
        try:
            check_ports(server_options, reactor)  # a taken port stops here, before listening
            django = django_resource(reactor) if options["allrequests"] else None
            service = build_service(server_options, reactor, django)
            presence = DjangoPresence(
                reactor, threads.deferToThread, server_options["allowed-origin"]
            )
            service.hub.presence.append(presence)
            lines: ILogObserver
            if server_options.log_file is None:
                lines = textFileLogObserver(sys.stdout)
            else:
                lines = JSONLineObserver(server_options.log_file)
                # Django's and django_adapter's records too, as the LOGGING setting
                # lets them reach the root logger (its own handlers stay).
                logging.getLogger().addHandler(ForwardedRecords(lines))
            globalLogBeginner.beginLoggingTo([FilteringLogObserver(lines, [quiet])])
            service.startService()  # listens now
        except Exception as e:
            raise CommandError(f"cannot start the push server: {e}") from None
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        tune_collector(reactor)
        reactor.run()

"""``python manage.py sendupdate CHANNEL JSON [--name N]``: publish from a shell script
or a cron job, with the site's settings (notifier address, publisher key)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_adapter import PushServerUnavailable, send_update
from twistedpush.errors import PushError
from twistedpush.hub import STRICT_JSON


class Command(BaseCommand):
    help = (
        "Publish one update: CHANNEL and its data as JSON text; prints the update's position (ts)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("channel", help="The channel, e.g. news.headlines.")
        parser.add_argument("data", help='The data, JSON text, e.g. \'{"title": "Hello"}\'.')
        parser.add_argument("--name", help="The event name browsers see (serverpush_<name>).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            data = STRICT_JSON.decode(options["data"])
        except (ValueError, RecursionError) as e:
            raise CommandError(f"the data is not JSON: {e or 'nested too deeply'}") from None
        try:
            ts = send_update(options["channel"], data, options["name"])
        except (PushError, PushServerUnavailable) as e:
            raise CommandError(str(e)) from None
        self.stdout.write(str(ts))

"""Takes each page's position on the push server's clock before the view reads anything."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.http import HttpRequest, HttpResponse

from django_adapter import updates
from django_adapter.client import PushServerUnavailable, current_timestamp

log = logging.getLogger("django_adapter")


@dataclass
class PageState:
    """What a page needs to catch up: its position and its ``<view>_update`` channels."""

    since: int
    channels: list[tuple[str, str]] = field(default_factory=list)


class ServerPushMiddleware:
    """Registers the page's specs, then takes its position (``generated_timestamp``).

    Both happen in ``process_view``: before the view runs, so any change the
    page does not render has a later position, and after the registration, so
    any change committed after the position finds the page's groups. The
    position comes from the push server (``CurrentTimestamp``), never from this
    host's clock. If the push server cannot be reached the position is 0: the
    browser then gets a ``reset`` (a reload) instead of silently missing updates.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view: Callable, args: Any, kwargs: Any) -> None:
        specs = updates.page_specs(request, view)
        channels = updates.register(specs, getattr(request, "user", None))
        try:
            since = current_timestamp()
        except PushServerUnavailable as e:
            log.warning("push server unavailable, page will reset on connect: %s", e)
            since = 0
        request.serverpush = PageState(since, channels)

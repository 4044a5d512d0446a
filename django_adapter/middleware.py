"""A page's groups, position and tokens: each made once, only when the page needs it."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

from django.http import HttpRequest, HttpResponse

from django_adapter import updates
from django_adapter.client import PushServerUnavailable, current_timestamp
from django_adapter.conf import settings
from twistedpush.access import check_channel, sign_token
from twistedpush.errors import Unauthorized, Unavailable

log = logging.getLogger("django_adapter")

PENDING_TTL = 600
"""Seconds a page's groups are published to before its response is known to be
2xx (then SERVERPUSH_TOKEN_TTL): a 403 or 404 page leaves nothing that lasts."""


def _is_public(channel: str) -> bool:
    return any(fnmatchcase(check_channel(channel), glob) for glob in settings.PUBLIC)


def channel_token(channel: str) -> str | None:
    """A token opening ``channel`` for SERVERPUSH_TOKEN_TTL seconds; None for public ones."""
    if _is_public(channel):
        return None
    return sign_token(settings.secret, channel, int(time.time()) + int(settings.TOKEN_TTL))


class PageState:
    """``request.serverpush``: what a page needs to catch up, made when first asked for.

    ``channels`` registers the page's groups (published to from then on);
    ``since`` (``generated_timestamp``) registers them, then takes the page's
    position from the push server, once. ``token()`` writes a stand-in into the
    page that the middleware turns into the token only if the response is 2xx,
    when the groups are also kept for SERVERPUSH_TOKEN_TTL: a 403 or 404 page
    hands out nothing, whatever its template renders.
    """

    def __init__(self, user: Any, specs: Callable[[], list[updates.Spec]]) -> None:
        self.user = user
        self._load_specs = specs
        self._specs: list[updates.Spec] | None = None
        self._channels: list[tuple[str, str]] = []
        self._since: int | None = None
        self._stand_ins: dict[str, str] = {}

    def register(self) -> list[tuple[str, str]]:
        """Register the page's groups, once (published to from then on); return
        (channel, event name) of each."""
        if self._specs is None:
            self._specs = self._load_specs()
            ttl = min(PENDING_TTL, int(settings.TOKEN_TTL))
            self._channels = updates.register(self._specs, self.user, ttl)
        return self._channels

    @property
    def channels(self) -> list[tuple[str, str]]:
        return self.register()

    def position(self) -> int:
        """The page's position, taken after its groups are registered, so that any
        change committed after it reaches the page; 0 (the browser then gets a
        reset, a reload) if the push server is unavailable."""
        if self._since is None:
            self.register()
            self._since = _current_position()
        return self._since

    @property
    def since(self) -> int:
        return self.position()

    def token(self, channel: str) -> str | None:
        """What the page shows for ``channel``'s token (None for a public channel): letters,
        digits and "_" only, which read the same after any escaping (escapejs, urlencode)."""
        if _is_public(channel):
            return None
        return self._stand_ins.setdefault(channel, f"serverpush_token_{secrets.token_hex(16)}")

    def finish(self, response: HttpResponse) -> None:
        """Keep the groups and hand out the tokens if the response is 2xx; else
        blank the tokens (the page's private channels are refused)."""
        success = 200 <= response.status_code < 300
        if success and self._specs:
            updates.register(self._specs, self.user, int(settings.TOKEN_TTL))
        if not self._stand_ins or response.streaming:
            return  # streamed: the stand-ins stay, and are refused as tokens
        content = response.content
        for channel, stand_in in self._stand_ins.items():
            token = (channel_token(channel) or "") if success else ""
            content = content.replace(stand_in.encode(), token.encode())
        response.content = content
        if response.has_header("Content-Length"):
            response["Content-Length"] = str(len(content))


def _current_position() -> int:
    try:
        return current_timestamp()
    except PushServerUnavailable:
        return 0  # logged once per outage by the client
    except Unavailable as e:
        # The push server answered, but its history (Redis, or one of its shards)
        # did not: the page renders, and resets when it connects.
        log.warning("push server has no position to give: %s", e)
        return 0
    except Unauthorized as e:
        # A publisher key that does not match the server's (a rotation half done):
        # pages still render; they reset on connect, as with a server that is away.
        log.error("push server refused SERVERPUSH_PUBLISHER_KEY: %s", e)
        return 0


class ServerPushMiddleware:
    """Prepares each page's :class:`PageState` before its view runs.

    A view with ``<view>_update`` specs registers its groups and takes its
    position here, before it reads anything, so catch-up is exact. Other pages
    (the admin, JSON views, pages with channels of their own) ask the push
    server nothing unless they render its position or tokens.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        state = getattr(request, "serverpush", None)
        if isinstance(state, PageState):
            state.finish(response)
        return response

    def process_view(self, request: HttpRequest, view: Callable, args: Any, kwargs: Any) -> None:
        own = updates.view_specs(request, view, args, kwargs)
        state = PageState(
            getattr(request, "user", None), lambda: own + updates.global_specs(request)
        )
        request.serverpush = state
        if own:
            state.position()

"""``{% load serverpush %}``: ``{% serverpush_js %}``, ``{% serverpush_token %}`` and
``{% serverpush_wamp_config %}`` (for AutobahnJS pages)."""

from __future__ import annotations

import json
from typing import Any

from django import template
from django.http.request import split_domain_port
from django.templatetags.static import static
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from django_adapter.conf import settings
from django_adapter.middleware import channel_token

register = template.Library()


def token_for(context: template.Context, channel: str) -> str | None:
    """The token the page gets for ``channel`` (None for a public one): through the
    request's page state, which hands real tokens out only with a 2xx response."""
    state = getattr(context.get("request"), "serverpush", None)
    return state.token(channel) if state is not None else channel_token(channel)


ONE_PORT = "twistedpush.one_port"
"""WSGI environ key of a request served by ``runserverpush --allrequests``: the push
server is then the page's own origin."""


def push_url(request: Any) -> str:
    """The push server as the page's browser reaches it: SERVERPUSH_URL, else the
    page's own origin in one-port mode, else the page's host on SERVERPUSH_PORT."""
    if settings.URL:
        return str(settings.URL).rstrip("/")
    if request is None:
        return f"http://127.0.0.1:{settings.PORT}"
    if request.META.get(ONE_PORT):
        return f"{request.scheme}://{request.get_host()}"
    domain, _port = split_domain_port(request.get_host())
    if ":" in domain:
        domain = f"[{domain}]"
    return f"{request.scheme}://{domain}:{settings.PORT}"


@register.simple_tag(takes_context=True)
def serverpush_token(context: template.Context, channel: str) -> str:
    """The token for ``channel`` (empty for a public channel)."""
    return token_for(context, channel) or ""


@register.simple_tag(takes_context=True)
def serverpush_js(context: template.Context, *channels: str) -> SafeString:
    """The client script, configured with this page's position and subscriptions.

    Subscribes the page's ``<view>_update`` channels and any channels named as
    arguments, e.g. ``{% serverpush_js "chat" %}``. Also renders the hidden
    ``<div id="generated_timestamp">`` of django-serverpush. The script comes from
    Django's static files, so that a page rendered while the push server is down
    still gets it and goes live when the server is back; with
    ``SERVERPUSH_JS_FROM_PUSH_SERVER`` it comes from the push server.
    """
    request = context.get("request")
    since, subscriptions = _page_subscriptions(context, channels)
    config = {
        "url": push_url(request),
        "since": since,
        "subscriptions": [{"channel": c, "token": t} for c, t in subscriptions],
    }
    if settings.JS_FROM_PUSH_SERVER:
        script = f"{config['url']}/static/serverpush.js"
    else:
        script = static("serverpush/serverpush.js")
    return format_html(
        '<div id="generated_timestamp" style="display:none">{}</div>\n'
        "<script>window.SERVERPUSH_CONFIG = {};</script>\n"
        '<script src="{}"></script>',
        "" if since is None else since,
        _script_json(config),
        script,
    )


def _page_subscriptions(
    context: template.Context, channels: tuple[str, ...]
) -> tuple[int | None, list[tuple[str, str | None]]]:
    """The page's position, and its ``<view>_update`` channels then ``channels`` (each
    once), with their tokens."""
    state = getattr(context.get("request"), "serverpush", None)
    names = [channel for channel, _ in state.channels] if state is not None else []
    names += [c for c in channels if c not in names]
    since = state.since if state is not None else None
    return since, [(c, token_for(context, c)) for c in names]


def _script_json(config: dict) -> SafeString:
    """``config`` as JSON that cannot end the <script> it is written in."""
    return mark_safe(json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e"))


def websocket_url(push: str) -> str:
    """The push server's /ws for a page: ``http(s)://`` becomes ``ws(s)://``."""
    scheme, _, rest = push.partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws"


@register.simple_tag(takes_context=True)
def serverpush_wamp_config(context: template.Context, *channels: str) -> SafeString:
    """``window.SERVERPUSH_WAMP``: what an AutobahnJS page needs instead of serverpush.js.

    ``{"url", "realm", "since", "subscriptions": [{"topic", "token"}]}`` for the
    page's ``<view>_update`` channels and those named as arguments; the page
    subscribes to each topic with the options ``_token`` and ``_since`` (the
    last ``details.publication`` it saw, else ``since``). The realm is
    ``SERVERPUSH_WAMP_REALM``, which runserverpush passes on as ``--wamp-realm``.
    """
    since, subscriptions = _page_subscriptions(context, channels)
    config = {
        "url": websocket_url(push_url(context.get("request"))),
        "realm": settings.WAMP_REALM,
        "since": since,
        "subscriptions": [{"topic": c, "token": t} for c, t in subscriptions],
    }
    return format_html("<script>window.SERVERPUSH_WAMP = {};</script>", _script_json(config))

"""``{% load serverpush %}``: ``{% serverpush_js %}`` and ``{% serverpush_token %}``."""

from __future__ import annotations

import json
import time
from fnmatch import fnmatchcase
from typing import Any

from django import template
from django.conf import settings as django_settings
from django.http.request import split_domain_port
from django.templatetags.static import static
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from django_adapter.conf import settings
from twistedpush.access import check_channel, sign_token

register = template.Library()


def token_for(channel: str) -> str | None:
    """A token opening ``channel`` for SERVERPUSH_TOKEN_TTL seconds; None for public ones."""
    check_channel(channel)
    if any(fnmatchcase(channel, glob) for glob in settings.PUBLIC):
        return None
    return sign_token(settings.secret, channel, int(time.time()) + int(settings.TOKEN_TTL))


def push_url(request: Any) -> str:
    if settings.URL:
        return str(settings.URL).rstrip("/")
    if request is None:
        return f"http://127.0.0.1:{settings.PORT}"
    domain, _port = split_domain_port(request.get_host())
    if ":" in domain:
        domain = f"[{domain}]"
    return f"{request.scheme}://{domain}:{settings.PORT}"


@register.simple_tag(takes_context=True)
def serverpush_token(context: template.Context, channel: str) -> str:
    """The token for ``channel`` (empty for a public channel)."""
    return token_for(channel) or ""


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
    state = getattr(request, "serverpush", None)
    since = state.since if state is not None else None
    names = [channel for channel, _ in state.channels] if state is not None else []
    names += [c for c in channels if c not in names]
    config = {
        "url": push_url(request),
        "since": since,
        "subscriptions": [{"channel": c, "token": token_for(c)} for c in names],
    }
    payload = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e")
    if getattr(django_settings, "SERVERPUSH_JS_FROM_PUSH_SERVER", False):
        script = f"{config['url']}/static/serverpush.js"
    else:
        script = static("serverpush/serverpush.js")
    return format_html(
        '<div id="generated_timestamp" style="display:none">{}</div>\n'
        "<script>window.SERVERPUSH_CONFIG = {};</script>\n"
        '<script src="{}"></script>',
        "" if since is None else since,
        mark_safe(payload),
        script,
    )

"""``{% load pushserver %}``: django-pushserver's template tag, so that its templates work
unchanged: ``{% channel_url "channel_id" %}`` is the channel's subscriber URL on the
push server's push-relay long-poll (``/updates/<channel>``)."""

from __future__ import annotations

from urllib.parse import quote

from django import template

from django_adapter.templatetags.serverpush import push_url, token_for

register = template.Library()


@register.simple_tag(takes_context=True)
def channel_url(context: template.Context, channel: str) -> str:
    """The full URL a push-relay client (django-pushserver's ``updates.js``, or
    ``$.updates.subscribe({name: url})`` of serverpush.js) follows ``channel`` at, with
    its token for a channel that is not public (a token only a 2xx page hands out)."""
    url = f"{push_url(context.get('request'))}/updates/{quote(str(channel), safe='/:@=+')}"
    token = token_for(context, str(channel))
    return url if token is None else f"{url}?token={token}"

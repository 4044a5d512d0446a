"""``{% load serverpush_viewers %}``: ``{% viewers_channel %}`` and ``{% viewers_count %}``,
for a live "N people are viewing this page" (``django_adapter.viewers``)."""

from __future__ import annotations

from django import template

from django_adapter import viewers

register = template.Library()


def _path(context: template.Context) -> str:
    request = context.get("request")
    if request is None:
        raise template.TemplateSyntaxError(
            "the viewer tags need the request in the context "
            "(django.template.context_processors.request)"
        )
    return request.path


@register.simple_tag(takes_context=True)
def viewers_channel(context: template.Context) -> str:
    """This page's viewer channel, to subscribe to: ``{% serverpush_js channel %}``."""
    return viewers.viewers_channel(_path(context))


@register.simple_tag(takes_context=True)
def viewers_count(context: template.Context) -> int | str:
    """How many copies of this page are open, this one included; empty when the
    push server cannot answer. Live after that through the ``serverpush_viewers``
    event (``event.detail.count``)."""
    count = viewers.page_viewers(_path(context))
    return "" if count is None else count

"""Django side of twistedpush: publish updates, render pages that catch up live."""

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

from django_adapter.client import (
    PushServerUnavailable,
    asend_update,
    asend_updates,
    current_timestamp,
    history,
    presence,
    send_update,
    send_updates,
)

__all__ = [
    "PushServerUnavailable",
    "asend_update",
    "asend_updates",
    "current_timestamp",
    "history",
    "page_position",
    "presence",
    "send_update",
    "send_updates",
]


def page_position(request: HttpRequest) -> int:
    """The page's position (``generated_timestamp``), taken now if it was not yet.

    Call it before the view reads what the page shows, when the view has no
    ``<view>_update`` specs (whose pages take it before the view runs): a page
    otherwise takes it when its template renders ``{% serverpush_js %}``, and a
    change committed between the read and then would be missed.
    """
    state = getattr(request, "serverpush", None)
    if state is None:
        raise ImproperlyConfigured("page_position() needs ServerPushMiddleware in MIDDLEWARE")
    return state.position()

"""``generated_timestamp`` and the page's push state for templates."""

from typing import Any

from django.http import HttpRequest


def serverpush(request: HttpRequest) -> dict[str, Any]:
    state = getattr(request, "serverpush", None)
    return {
        "generated_timestamp": state.since if state is not None else None,
        "serverpush": state,
    }

"""``generated_timestamp`` and the page's push state for templates."""

from typing import Any

from django.http import HttpRequest


def serverpush(request: HttpRequest) -> dict[str, Any]:
    """``generated_timestamp`` is the page's position, taken only if the template
    renders it (templates call callables), so pages that do not pay nothing."""
    state = getattr(request, "serverpush", None)
    return {
        "generated_timestamp": state.position if state is not None else None,
        "serverpush": state,
    }

"""A SERVERPUSH_GLOBALS function for the tests: every page hears of counter changes."""

from demo.models import Counter


def site_update(request):
    return [{"name": "site_counter", "model": Counter, "params": {"pk": 1}}]

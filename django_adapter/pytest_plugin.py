"""twistedpush's pytest fixtures, loaded by pytest through the ``pytest11`` entry
point once twistedpush is installed. Django is imported only when a test asks
for a fixture, so projects without pytest-django or Django settings are not
affected."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from django_adapter.testing import LivePushServer, PushedUpdate


@pytest.fixture
def pushed_updates() -> Iterator[list[PushedUpdate]]:
    """The publications the test makes, recorded instead of sent, as
    ``capture_updates()`` records them (on_commit callbacks waiting for your own
    ``transaction.atomic()`` inside a ``db`` test need ``capture_updates()``)."""
    from django_adapter.testing import _recording

    with _recording() as records:
        yield records


@pytest.fixture
def live_push_server() -> Iterator[LivePushServer]:
    """A real push server in this process for the test, with Django's SERVERPUSH_*
    settings pointing at it (use it with ``live_server`` or ``transactional_db``)."""
    from django_adapter.testing import LivePushServer

    with LivePushServer() as server:
        yield server

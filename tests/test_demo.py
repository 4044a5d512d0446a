"""The demo's servers as scripts/demo.sh runs them: on loopback only, with Django's request log."""

from __future__ import annotations

import socket
import time

import pytest

from tests.test_browser import DemoSite

pytestmark = pytest.mark.integration


def network_address() -> str | None:
    """This host's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 9))
        except OSError:
            return None
        return probe.getsockname()[0]


@pytest.fixture
def demo(tmp_path):
    site = DemoSite(tmp_path).start()
    yield site
    site.stop()


def test_servers_are_not_reachable_from_the_network(demo):
    address = network_address()
    if address is None:
        pytest.skip("this host has no network address to try")
    for name in ("DEMO_PUSH_PORT", "DEMO_NOTIFIER_PORT", "DEMO_PORT"):
        port = int(demo.env[name])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, port), timeout=5)


def test_django_request_lines_are_shown(demo):
    demo.visit("/chat/")
    deadline = time.monotonic() + 10
    while '"GET /chat/ HTTP/1.1" 200' not in demo.log("django"):
        assert time.monotonic() < deadline, demo.log("django")
        time.sleep(0.1)

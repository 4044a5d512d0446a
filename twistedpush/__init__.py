"""twistedpush: live updates for Django sites, served by a Twisted push server."""

__version__ = "0.1.0"
"""pyproject.toml's version, for a checkout run without installing (``--version``
reads the package metadata first; tests/test_tap.py keeps the two equal)."""

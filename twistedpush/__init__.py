"""twistedpush: live updates for Django sites, served by a Twisted push server."""

__version__ = "0.1.0"

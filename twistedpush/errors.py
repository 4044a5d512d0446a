"""Errors the core raises; each transport maps the code onto its own wire format."""


class PushError(Exception):
    """A request that the server refuses; ``code`` is the contract's error code."""

    code = "bad_request"
    stored: list[int | None] | None = None
    """From a publisher's pipelined batches: each update's ``ts`` if it was stored."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(PushError):
    code = "bad_request"


class BadChannel(PushError):
    code = "bad_channel"


class BadData(PushError):
    code = "bad_data"


class Forbidden(PushError):
    code = "forbidden"


class TooLarge(PushError):
    code = "too_large"


class Limit(PushError):
    code = "limit"


class Unavailable(PushError):
    """The history store cannot be reached (for example Redis is down)."""

    code = "unavailable"


class Unauthorized(PushError):
    """A publisher without the notifier's publisher key (or with a wrong one)."""

    code = "unauthorized"

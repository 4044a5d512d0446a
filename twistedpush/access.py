"""Channel and event names, tokens, and who may subscribe to what.

Tokens let Django grant a browser one channel until a moment, without the push
server knowing anything of Django's users: ``"<expires>.<sig>"`` where ``sig``
is the unpadded base64url HMAC-SHA256 of ``channel + "\\n" + expires``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from functools import lru_cache

from twistedpush.errors import BadChannel, BadData, Forbidden

CHANNEL_RE = re.compile(r"[A-Za-z0-9._:@=+/-]{1,200}")
NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_EXPIRES_RE = re.compile(r"[0-9]{1,12}")
"""ASCII digits only: ``str.isdigit()`` also accepts "²", which ``int()`` refuses."""
CHANNEL_RULE = "1-200 characters from A-Z a-z 0-9 . _ : @ = + / -"
NAME_RULE = "1-100 characters from A-Z a-z 0-9 _ . : -"


def check_channel(channel: object) -> str:
    """Return ``channel`` if it is a valid channel name, else raise BadChannel."""
    if not isinstance(channel, str) or len(channel) > 200 or not _valid(CHANNEL_RE, channel):
        raise BadChannel(f"channel must be {CHANNEL_RULE}, got {_show(channel)}")
    return channel


def check_name(name: object) -> str | None:
    """Return ``name`` (or None) if it is a valid event name, else raise BadData."""
    if name is None:
        return None
    if not isinstance(name, str) or len(name) > 100 or not _valid(NAME_RE, name):
        raise BadData(f"name must be {NAME_RULE}, got {_show(name)}")
    return name


@lru_cache(maxsize=4096)
def _valid(pattern: re.Pattern[str], text: str) -> bool:
    """Whether ``text`` matches ``pattern`` whole; remembered, as a batch names the
    same channels again and again. Callers pass only texts short enough to be
    valid, so the cache holds at most 4,096 short strings whatever clients send."""
    return pattern.fullmatch(text) is not None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def sign_token(secret: str, channel: str, expires: int) -> str:
    """Make the token that opens ``channel`` until ``expires`` (Unix seconds)."""
    msg = f"{channel}\n{int(expires)}".encode()
    digest = hmac.new(secret.encode(), msg, hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return f"{int(expires)}.{sig}"


class AccessPolicy:
    """Decides whether a subscription to a channel is allowed."""

    def __init__(self, secret: str | None, public: Iterable[str] = ()) -> None:
        self.secret = secret or None
        self.public = tuple(public)

    def is_public(self, channel: str) -> bool:
        return any(fnmatchcase(channel, glob) for glob in self.public)

    def check(self, channel: str, token: object, now: float) -> None:
        """Raise Forbidden unless ``channel`` is public or ``token`` opens it at ``now``."""
        if self.is_public(channel):
            return
        if self.secret is None:
            raise Forbidden(f"channel {channel!r} is not public and the server has no secret")
        if token is None:
            raise Forbidden(f"channel {channel!r} needs a token")
        if not isinstance(token, str):
            raise Forbidden("token must be a string")
        expires_text, dot, _sig = token.partition(".")
        if not dot or not _EXPIRES_RE.fullmatch(expires_text):
            raise Forbidden("token is malformed")
        expected = sign_token(self.secret, channel, int(expires_text))
        if not hmac.compare_digest(expected.encode(), token.encode("utf-8", "replace")):
            raise Forbidden(f"token does not open channel {channel!r}")
        if int(expires_text) < now:
            raise Forbidden(f"token for channel {channel!r} has expired")

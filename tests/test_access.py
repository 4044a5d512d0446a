import base64
import hashlib
import hmac

import pytest

from twistedpush.access import AccessPolicy, check_channel, check_name, sign_token
from twistedpush.errors import BadChannel, BadData, Forbidden

NOW = 1_700_000_000


@pytest.mark.parametrize("name", ["a", "x" * 200, "user:42", "a.b_c:d@e=f+g/h-i", "Z9"])
def test_valid_channels(name):
    assert check_channel(name) == name


@pytest.mark.parametrize("name", ["", "x" * 201, "has space", "é", "a\nb", None, 42, ["a"]])
def test_bad_channels(name):
    with pytest.raises(BadChannel, match="1-200 characters"):
        check_channel(name)


def test_names():
    assert check_name(None) is None
    assert check_name("username_change") == "username_change"
    for bad in ["", "x" * 101, "a/b", "a b", 3]:
        with pytest.raises(BadData, match="name must be"):
            check_name(bad)


def test_token_matches_the_contract_formula():
    expected_sig = (
        base64.urlsafe_b64encode(
            hmac.new(b"s3cret", b"room:1\n1700000100", hashlib.sha256).digest()
        )
        .rstrip(b"=")
        .decode()
    )
    assert sign_token("s3cret", "room:1", 1700000100) == f"1700000100.{expected_sig}"


def test_token_opens_its_channel_until_it_expires():
    policy = AccessPolicy("s3cret")
    token = sign_token("s3cret", "room:1", NOW + 10)
    policy.check("room:1", token, NOW)
    policy.check("room:1", token, NOW + 10)
    with pytest.raises(Forbidden, match="expired"):
        policy.check("room:1", token, NOW + 11)


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "garbage",
        "123",
        f"{NOW + 10}.AAAA",
        sign_token("other-secret", "room:1", NOW + 10),
        sign_token("s3cret", "room:2", NOW + 10),
        42,
        "-5.abc",
    ],
)
def test_wrong_or_foreign_tokens_are_forbidden(token):
    with pytest.raises(Forbidden):
        AccessPolicy("s3cret").check("room:1", token, NOW)


def test_public_globs_need_no_token():
    policy = AccessPolicy("s3cret", ["public.*", "news"])
    policy.check("public.lobby", None, NOW)
    policy.check("news", None, NOW)
    with pytest.raises(Forbidden):
        policy.check("newsroom", None, NOW)


def test_without_secret_only_public_channels():
    policy = AccessPolicy(None, ["open*"])
    policy.check("open1", None, NOW)
    with pytest.raises(Forbidden, match="no secret"):
        policy.check("closed", sign_token("", "closed", NOW + 10), NOW)

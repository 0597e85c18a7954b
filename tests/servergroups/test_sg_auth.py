"""ACS3-HMAC-SHA256 verification without sockets, and the credentials file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from alibabacloud_tea_openapi.utils import Utils
from darabonba.request import DaraRequest

from albingress.api.auth import (
    AccessKey,
    AuthFailure,
    NonceCache,
    Verifier,
    load_credentials,
    load_or_create_credentials,
)
from albingress.diagnostics import ConfigError

KEY = AccessKey("LTAIunit", "unit-secret")
NOW = 1_800_000_000.0
STAMP = "2027-01-15T08:00:00Z"  # = NOW


def sdk_signed(
    query: dict[str, str], body: bytes = b"", secret: str = KEY.secret
) -> dict[str, str]:
    """Headers as the SDK's own signing code produces them for this request."""
    req = DaraRequest()
    req.method = "POST"
    req.pathname = "/"
    req.query = dict(query)
    req.headers = {
        "host": "127.0.0.1:9080",
        "x-acs-version": "2020-06-16",
        "x-acs-action": "ListServerGroups",
        "user-agent": "test",
        "x-acs-date": STAMP,
        "x-acs-signature-nonce": "n-1",
        "accept": "application/json",
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    if body:
        req.headers["content-type"] = "application/x-www-form-urlencoded"
    req.headers["Authorization"] = Utils.get_authorization(
        req, "ACS3-HMAC-SHA256", hashlib.sha256(body).hexdigest(), KEY.id, secret
    )
    return {k.lower(): v for k, v in req.headers.items()}


QUERIES = [
    {},
    {"MaxResults": "5"},
    {"ServerGroupNames.1": "a b+c/é~*'()", "ServerGroupIds.1": "sgp-x"},
]


@pytest.mark.parametrize("query", QUERIES, ids=["empty", "simple", "needs-encoding"])
def test_accepts_what_the_sdk_signs(query: dict[str, str]) -> None:
    headers = sdk_signed(query)
    assert Verifier((KEY,)).verify("POST", "/", query, headers, b"", now=NOW) == KEY.id


def test_body_is_covered() -> None:
    body = b"Servers.1.Port=80"
    headers = sdk_signed({}, body)
    verifier = Verifier((KEY,))
    verdict = verifier.verify("POST", "/", {}, headers, b"Servers.1.Port=81", now=NOW)
    assert isinstance(verdict, AuthFailure) and verdict.code == "ContentSHA256NotMatched"
    assert verifier.verify("POST", "/", {}, headers, body, now=NOW) == KEY.id


def test_header_change_breaks_signature() -> None:
    headers = sdk_signed({"MaxResults": "5"})
    headers["x-acs-action"] = "DeleteServerGroup"
    verdict = Verifier((KEY,)).verify("POST", "/", {"MaxResults": "5"}, headers, b"", now=NOW)
    assert isinstance(verdict, AuthFailure) and verdict.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize(
    ("auth", "code"),
    [
        (None, "MissingAuthorization"),
        ("Basic abc", "IncompleteSignature"),
        ("ACS3-HMAC-SHA256 Credential=LTAIunit", "IncompleteSignature"),
    ],
)
def test_malformed_authorization(auth: str | None, code: str) -> None:
    headers = sdk_signed({})
    headers.pop("authorization")
    if auth is not None:
        headers["authorization"] = auth
    verdict = Verifier((KEY,)).verify("POST", "/", {}, headers, b"", now=NOW)
    assert isinstance(verdict, AuthFailure) and verdict.code == code


def test_skew_boundary() -> None:
    verifier = Verifier((KEY,))
    assert verifier.verify("POST", "/", {}, sdk_signed({}), b"", now=NOW + 900) == KEY.id
    late = Verifier((KEY,)).verify("POST", "/", {}, sdk_signed({}), b"", now=NOW + 901)
    assert isinstance(late, AuthFailure) and late.code == "InvalidTimeStamp.Expired"


def test_nonce_cache_is_bounded_and_expires() -> None:
    cache = NonceCache(ttl=10, capacity=3)
    assert cache.add("a", 0) and not cache.add("a", 1)
    for n in "bcd":
        assert cache.add(n, 2)
    assert len(cache) == 3  # "a" dropped to stay within capacity
    assert cache.add("e", 20) and len(cache) == 1  # everything older than ttl expired


def test_credentials_generated_once_private(tmp_path: Path) -> None:
    keys, path, created = load_or_create_credentials(None, tmp_path / "state")
    assert created and path == tmp_path / "state" / "credentials.yaml"
    assert path.stat().st_mode & 0o777 == 0o600
    again, _, created_again = load_or_create_credentials(None, tmp_path / "state")
    assert not created_again and again == keys
    assert keys[0].secret not in repr(keys[0])


def test_credentials_file_given(tmp_path: Path) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text(
        "accessKeys:\n- accessKeyId: AK1\n  accessKeySecret: S1\n- accessKeyId: AK2\n  accessKeySecret: S2\n"
    )
    keys, used, created = load_or_create_credentials(path, tmp_path / "state")
    assert [k.id for k in keys] == ["AK1", "AK2"] and used == path and not created
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "text",
    ["", "accessKeys: []\n", "accessKeys:\n- accessKeyId: AK1\n", "accessKeys: [\n"],
    ids=["empty", "no-keys", "no-secret", "bad-yaml"],
)
def test_bad_credentials_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_credentials(path)


def test_readable_credentials_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "creds.yaml"
    path.write_text("accessKeys:\n- accessKeyId: AK1\n  accessKeySecret: S1\n")
    path.chmod(0o644)
    with caplog.at_level("WARNING"):
        load_credentials(path)
    assert any("can be read by others" in r.getMessage() for r in caplog.records)
    assert all("S1" not in r.getMessage() for r in caplog.records)
    caplog.clear()
    path.chmod(0o600)
    with caplog.at_level("WARNING"):
        load_credentials(path)
    assert caplog.records == []

"""ACS3-HMAC-SHA256 request signatures, as the official Alibaba Cloud SDKs compute them.

The client builds a canonical request::

    METHOD \\n PATH \\n CANONICAL_QUERY \\n CANONICAL_HEADERS \\n SIGNED_HEADERS \\n HEX(SHA256(body))

where CANONICAL_QUERY is ``key=value`` pairs sorted by key, values percent-encoded (RFC 3986,
only ``-_.~`` and alphanumerics left bare) and joined by ``&``; CANONICAL_HEADERS is one
``name:value\\n`` line per signed header (lowercase name, trimmed value), sorted. It signs
``"ACS3-HMAC-SHA256\\n" + HEX(SHA256(canonical request))`` with HMAC-SHA256 keyed by the
AccessKey secret, and sends ``Authorization: ACS3-HMAC-SHA256 Credential=<AccessKeyId>,
SignedHeaders=<a;b;c>,Signature=<hex>``.

:class:`Verifier` recomputes it from what arrived and refuses (403, ALB codes) a missing or
malformed header, an unknown key, a wrong signature or body hash, a date more than 15 minutes off,
and a nonce seen before (a bounded cache remembers nonces for twice the allowed skew).

Access keys come from a YAML file ``accessKeys: [{accessKeyId, accessKeySecret}]``;
:func:`load_or_create_credentials` creates one (mode 0600) when none is given.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import logging
import os
import secrets
import string
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import yaml

from albingress.diagnostics import ConfigError

ALGORITHM = "ACS3-HMAC-SHA256"
MAX_SKEW = 15 * 60  # seconds a request's x-acs-date may be off
REQUIRED_SIGNED = (
    "host",
    "x-acs-action",
    "x-acs-content-sha256",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-version",
)
CREDENTIALS_FILE = "credentials.yaml"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AccessKey:
    id: str
    secret: str  # never logged, never returned

    def __repr__(self) -> str:
        return f"AccessKey(id={self.id!r}, secret=<hidden>)"


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request was refused: ALB's code and a message that reveals no secret."""

    code: str
    message: str
    status: int = 403


# --------------------------------------------------------------------------- credentials


def load_credentials(path: str | os.PathLike[str]) -> tuple[AccessKey, ...]:
    """The access keys of a credentials file; :class:`ConfigError` when unusable.

    A file that others may read is used, with a warning.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = 0
    if mode & 0o077:
        log.warning(
            "credentials file %s can be read by others (mode %o); chmod 600 it", path, mode & 0o777
        )
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read credentials file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"credentials file {path} is not valid YAML: {exc}") from exc
    items = data.get("accessKeys") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"credentials file {path} needs accessKeys: [{{accessKeyId, accessKeySecret}}]"
        )
    keys = []
    for i, item in enumerate(items):
        kid = item.get("accessKeyId") if isinstance(item, dict) else None
        secret = item.get("accessKeySecret") if isinstance(item, dict) else None
        if not isinstance(kid, str) or not kid or not isinstance(secret, str) or not secret:
            raise ConfigError(
                f"credentials file {path}: accessKeys[{i}] needs a non-empty accessKeyId and accessKeySecret"
            )
        keys.append(AccessKey(kid, secret))
    return tuple(keys)


def generate_key() -> AccessKey:
    alnum = string.ascii_letters + string.digits
    kid = "LTAI" + "".join(secrets.choice(alnum) for _ in range(20))
    secret = "".join(secrets.choice(alnum) for _ in range(30))
    return AccessKey(kid, secret)


def write_credentials(path: str | os.PathLike[str], keys: tuple[AccessKey, ...]) -> None:
    """Write a credentials file readable by its owner only (never widening an existing one)."""
    body = yaml.safe_dump(
        {"accessKeys": [{"accessKeyId": k.id, "accessKeySecret": k.secret} for k in keys]},
        sort_keys=False,
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)


def load_or_create_credentials(
    credentials: str | os.PathLike[str] | None, state_dir: str | os.PathLike[str]
) -> tuple[tuple[AccessKey, ...], Path, bool]:
    """Keys from ``credentials``, or from (or newly into) ``state_dir/credentials.yaml``.

    Returns the keys, the file they came from, and whether it was just created (the caller says
    where, so that the user can find the new pair).
    """
    if credentials is not None:
        return load_credentials(credentials), Path(credentials), False
    path = Path(state_dir) / CREDENTIALS_FILE
    if path.exists():
        return load_credentials(path), path, False
    keys = (generate_key(),)
    try:
        write_credentials(path, keys)
    except FileExistsError:
        return load_credentials(path), path, False
    except OSError as exc:
        raise ConfigError(f"cannot create credentials file {path}: {exc.strerror}") from exc
    return keys, path, True


# --------------------------------------------------------------------------- canonical form


def percent_encode(value: str) -> str:
    return quote(value, safe="~", encoding="utf-8")


def canonical_query(query: Mapping[str, str]) -> str:
    return "&".join(f"{k}={percent_encode(query[k])}" for k in sorted(query))


def canonical_request(
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    signed: list[str],
    payload_hash: str,
) -> str:
    lines = "".join(f"{name}:{headers.get(name, '').strip()}\n" for name in signed)
    return "\n".join(
        [method.upper(), path or "/", canonical_query(query), lines, ";".join(signed), payload_hash]
    )


def sign(secret: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    to_sign = f"{ALGORITHM}\n{digest}"
    return hmac.new(secret.encode("utf-8"), to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def parse_authorization(value: str) -> tuple[str, list[str], str] | None:
    """(AccessKeyId, signed header names, signature) from an Authorization header, or None."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        return None
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            return None
        parts[key] = val
    kid, signed, sig = parts.get("Credential"), parts.get("SignedHeaders"), parts.get("Signature")
    if not kid or not signed or not sig:
        return None
    return kid, signed.split(";"), sig


# --------------------------------------------------------------------------- verification


class NonceCache:
    """Nonces seen in the last ``ttl`` seconds, at most ``capacity`` of them (oldest dropped)."""

    __slots__ = ("_seen", "capacity", "ttl")

    def __init__(self, ttl: float = 2 * MAX_SKEW, capacity: int = 100_000) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: str, now: float) -> bool:
        """Remember ``nonce``; False when it was already there (a replay)."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at < self.ttl and len(self._seen) < self.capacity:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


def parse_acs_date(value: str) -> float | None:
    try:
        moment = datetime.datetime.strptime(value.strip(), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.UTC).timestamp()


class Verifier:
    """Checks the ACS3-HMAC-SHA256 signature of requests against a set of access keys."""

    def __init__(self, keys: tuple[AccessKey, ...], nonces: NonceCache | None = None) -> None:
        self._keys = {k.id: k for k in keys}
        self.nonces = nonces or NonceCache()

    def verify(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
    ) -> AuthFailure | str:
        """The AccessKeyId that signed the request, or why it is refused."""
        now = time.time() if now is None else now
        auth = headers.get("authorization")
        if not auth:
            return AuthFailure(
                "MissingAuthorization", "The request is not signed (no Authorization header)."
            )
        parsed = parse_authorization(auth)
        if parsed is None:
            return AuthFailure(
                "IncompleteSignature",
                f"The Authorization header is not of the form {ALGORITHM} Credential=...,SignedHeaders=...,Signature=...",
            )
        kid, signed, signature = parsed
        key = self._keys.get(kid)
        if key is None:
            return AuthFailure(
                "InvalidAccessKeyId.NotFound", "The specified AccessKeyId is not found."
            )
        missing = [h for h in REQUIRED_SIGNED if h not in signed]
        if missing:
            return AuthFailure(
                "IncompleteSignature", f"These headers must be signed: {', '.join(missing)}."
            )
        if signed != sorted(signed) or any(h != h.lower() for h in signed):
            return AuthFailure("IncompleteSignature", "SignedHeaders must be lowercase and sorted.")
        payload_hash = hashlib.sha256(body).hexdigest()
        if headers.get("x-acs-content-sha256", "").strip().lower() != payload_hash:
            return AuthFailure(
                "ContentSHA256NotMatched", "x-acs-content-sha256 does not match the body.", 400
            )
        expected = sign(
            key.secret, canonical_request(method, path, query, headers, signed, payload_hash)
        )
        if not hmac.compare_digest(expected, signature.strip().lower()):
            return AuthFailure(
                "SignatureDoesNotMatch",
                "The request signature does not conform to Aliyun standards (check your AccessKeySecret).",
            )
        moment = parse_acs_date(headers.get("x-acs-date", ""))
        if moment is None:
            return AuthFailure(
                "InvalidTimeStamp.Format", "x-acs-date must look like 2020-06-16T08:00:00Z.", 400
            )
        if abs(now - moment) > MAX_SKEW:
            return AuthFailure(
                "InvalidTimeStamp.Expired",
                "The request date is more than 15 minutes away from the server time.",
            )
        nonce = headers.get("x-acs-signature-nonce", "").strip()
        if not nonce or len(nonce) > 128:
            return AuthFailure("MissingSignatureNonce", "x-acs-signature-nonce is required.", 400)
        if not self.nonces.add(f"{kid}/{nonce}", now):
            return AuthFailure("SignatureNonceUsed", "The signature nonce has been used.")
        return kid

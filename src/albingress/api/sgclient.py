"""The official ALB SDK as the client of our own admin API (used by ``albingress servergroups``).

:func:`make_client` builds an SDK client for the admin address with an access key from a
credentials file or from ``credentials.yaml`` next to the state file; :func:`call` turns SDK
exceptions into :class:`ApiFailure` carrying the API's code and message; :func:`all_groups` and
:func:`all_servers` follow NextToken through every page.
"""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from albingress.api.auth import CREDENTIALS_FILE, AccessKey, load_credentials
from albingress.diagnostics import ConfigError

_PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


class ApiFailure(Exception):
    """The API refused or could not be reached (exit 1)."""


def find_key(state: str, credentials: str | None) -> AccessKey:
    """The first access key of ``credentials``, or of ``credentials.yaml`` next to ``state``."""
    path = Path(credentials) if credentials else Path(state).parent / CREDENTIALS_FILE
    if not credentials and not path.exists():
        raise ConfigError(
            f"no credentials at {path}: start `albingress serve --state {state}` once "
            "(it creates them) or pass --credentials FILE"
        )
    return load_credentials(path)[0]


def make_client(admin: str, key: AccessKey) -> Any:
    """An SDK client for the admin address ``HOST:PORT`` (plain HTTP)."""
    from alibabacloud_alb20200616.client import Client
    from alibabacloud_tea_openapi.models import Config

    host = admin.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:  # the SDK honours proxy variables: never send loopback traffic to a proxy
        for name in _PROXY_VARS:
            os.environ.pop(name, None)
    config = Config(
        access_key_id=key.id,
        access_key_secret=key.secret,
        endpoint=admin,
        protocol="http",
        read_timeout=30000,
        connect_timeout=5000,
    )
    return Client(config)


def call(fn: Callable[[], Any]) -> Any:
    from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
    from darabonba.exceptions import (  # type: ignore[import-untyped]
        DaraException,
        RetryError,
        UnretryableException,
        ValidateException,
    )

    try:
        return fn()
    except AlibabaCloudException as exc:
        data = exc.data if isinstance(exc.data, dict) else {}
        message = data.get("Message") or exc.message
        raise ApiFailure(f"{exc.code}: {message}") from exc
    except ValidateException as exc:
        raise ApiFailure(f"invalid request: {exc}") from exc
    except (DaraException, RetryError, UnretryableException, OSError) as exc:
        raise ApiFailure(f"cannot reach the admin API: {exc}") from exc


def all_groups(client: Any, ids: list[str] | None = None) -> list[dict[str, Any]]:
    from alibabacloud_alb20200616 import models as m

    out: list[dict[str, Any]] = []
    token = None
    while True:
        req = m.ListServerGroupsRequest(max_results=100, next_token=token, server_group_ids=ids)
        body = call(functools.partial(client.list_server_groups, req)).body
        out += [g.to_map() for g in body.server_groups or []]
        token = body.next_token
        if not token:
            return out


def all_servers(client: Any, gid: str) -> list[dict[str, Any]]:
    from alibabacloud_alb20200616 import models as m

    out: list[dict[str, Any]] = []
    token = None
    while True:
        req = m.ListServerGroupServersRequest(
            server_group_id=gid, max_results=100, next_token=token
        )
        body = call(functools.partial(client.list_server_group_servers, req)).body
        out += [s.to_map() for s in body.servers or []]
        token = body.next_token
        if not token:
            return out

"""The server-group actions of ALB's OpenAPI, over a :class:`ServerGroupStore`.

Each public method is one API action: it reads the group, checks every parameter with
:mod:`albingress.servergroups.validate`, and writes once (one transaction; on a concurrent write
it reads again and retries). Any problem raises :class:`ApiError` carrying ALB's error code and
HTTP status before anything is written, so a failed call changes nothing. Parameters arrive in the
lowerCamel shape of the stored spec; :mod:`albingress.api.openapi` converts the RPC form.

Exceptions::

    ApiError(code, message, status)   what the caller did wrong, as ALB reports it
"""

from __future__ import annotations

import base64
import copy
import re
import secrets
import string
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from albingress.diagnostics import AlbingressError
from albingress.model.servergroup import NetworkSettings
from albingress.servergroups.store import ConflictError, ServerGroupStore, StoredGroup
from albingress.servergroups.validate import (
    GROUP_TYPES,
    MAX_SERVERS_PER_CALL,
    MAX_SERVERS_PER_GROUP,
    Problem,
    duplicate_servers,
    normalize_group_spec,
    normalize_server,
    server_key,
)

_ID_ALPHABET = string.ascii_lowercase + string.digits
_RETRIES = 5
DEFAULT_MAX_RESULTS = 20
GROUP_FIELDS = (
    "serverGroupName",
    "scheduler",
    "uchConfig",
    "healthCheckConfig",
    "stickySessionConfig",
)


class ApiError(AlbingressError):
    """An action refused: ALB's error ``code``, a message for people, and the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def not_found(group_id: str) -> ApiError:
    return ApiError(
        "ResourceNotFound.ServerGroup", f"The server group {group_id} does not exist.", 404
    )


def _from_problems(problems: Sequence[Problem]) -> ApiError:
    code = problems[0][0]
    message = "; ".join(p[2] for p in problems[:10])
    if len(problems) > 10:
        message += f"; and {len(problems) - 10} more"
    return ApiError(code, message, 400)


def new_group_id() -> str:
    """``sgp-`` and 17 random lowercase letters or digits."""
    return "sgp-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(17))


def new_job_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list action."""

    items: list[dict[str, Any]]  # in the API's UpperCamel shape
    next_token: str  # "" on the last page
    max_results: int
    total: int


def _token(prefix: str, n: int) -> str:
    return base64.urlsafe_b64encode(f"{prefix}:{n}".encode()).decode().rstrip("=")


def _read_token(prefix: str, token: str | None) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    match = re.fullmatch(prefix + r":(\d{1,12})", text)
    if match is None:
        raise ApiError("IllegalParam.NextToken", f"The NextToken {token!r} is not valid.", 400)
    return int(match.group(1))


def _max_results(value: Any) -> int:
    if value is None or value == "":
        return DEFAULT_MAX_RESULTS
    text = str(value).strip()
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise ApiError(
            "IllegalParam.MaxResults", "MaxResults must be an integer from 1 to 100.", 400
        )
    return int(text)


def _upper_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k[:1].upper() + k[1:]: _upper_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_upper_keys(v) for v in value]
    return value


def group_view(group: StoredGroup) -> dict[str, Any]:
    """A group as ListServerGroups returns it."""
    spec = group.spec
    view: dict[str, Any] = {
        "ServerGroupId": group.id,
        "ServerGroupName": spec["serverGroupName"],
        "ServerGroupType": spec["serverGroupType"],
        "ServerGroupStatus": "Available",
        "Protocol": spec["protocol"],
        "Scheduler": spec["scheduler"],
        "VpcId": spec.get("vpcId", ""),
        "HealthCheckConfig": _upper_keys(spec["healthCheckConfig"]),
        "StickySessionConfig": _upper_keys(spec["stickySessionConfig"]),
        "ServerCount": len(spec.get("servers", [])),
        "CreateTime": group.created,
        "ConfigManagedEnabled": False,
        "RelatedLoadBalancerIds": [],
        "Tags": [],
    }
    if "uchConfig" in spec:
        view["UchConfig"] = _upper_keys(spec["uchConfig"])
    return view


class ServerGroupService:
    """The actions, with the network rules of ``settings``.

    ``in_use(group_id)`` names the rules that forward to a group (deleting it is then refused);
    ``server_status(group_id, server)`` gives a server's Status for ListServerGroupServers.
    """

    def __init__(
        self,
        store: ServerGroupStore,
        settings: NetworkSettings | None = None,
        in_use: Callable[[str], list[str]] | None = None,
        server_status: Callable[[str, Mapping[str, Any]], str] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings or NetworkSettings()
        self.in_use = in_use or (lambda _gid: [])
        self.server_status = server_status or (lambda _gid, _server: "Available")

    # ----------------------------------------------------------------- helpers

    def _get(self, group_id: Any) -> StoredGroup:
        if group_id is None or group_id == "":
            raise ApiError("MissingParam.ServerGroupId", "ServerGroupId is required.", 400)
        group = self.store.get(str(group_id))
        if group is None:
            raise not_found(str(group_id))
        return group

    def _normalize_group(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Check the group's own fields (servers are checked when they are added)."""
        fields = {k: v for k, v in spec.items() if k != "servers"}
        normalized, problems = normalize_group_spec(fields, self.settings)
        if problems:
            raise _from_problems(problems)
        return normalized

    def _servers(
        self, raw: Any, group_type: str, name: str, *, partial: bool = False
    ) -> list[dict[str, Any]]:
        if raw is None or raw in ([], {}):
            raise ApiError(f"MissingParam.{name}", f"{name} is required.", 400)
        if not isinstance(raw, list):
            raise ApiError(f"IllegalParam.{name}", f"{name} must be a list of servers.", 400)
        if len(raw) > MAX_SERVERS_PER_CALL:
            raise ApiError(
                f"IllegalParam.{name}",
                f"At most {MAX_SERVERS_PER_CALL} servers can be given in one call.",
                400,
            )
        out: list[dict[str, Any]] = []
        problems: list[Problem] = []
        for i, item in enumerate(raw):
            server, found = normalize_server(
                item, group_type, self.settings, f"{name}.{i + 1}", partial=partial
            )
            problems.extend(found)
            if server is not None:
                out.append(server)
        if problems:
            raise _from_problems(problems)
        dupes = duplicate_servers(out, name)
        if dupes:
            raise _from_problems([(f"IllegalParam.{name}", d[1], d[2]) for d in dupes])
        return out

    def _mutate(
        self, group_id: Any, change: Callable[[StoredGroup], dict[str, Any]], dry_run: bool
    ) -> None:
        for _ in range(_RETRIES):
            group = self._get(group_id)
            spec = change(group)
            if dry_run:
                raise dry_run_passed()
            try:
                self.store.replace(group.id, spec, group.version)
            except ConflictError:
                continue
            return
        raise ApiError("Conflict.Lock", "The server group is being changed; try again.", 409)

    # ----------------------------------------------------------------- groups

    def create(self, params: Mapping[str, Any], *, dry_run: bool = False) -> str:
        spec = self._normalize_group(params)
        if dry_run:
            raise dry_run_passed()
        for _ in range(_RETRIES):
            gid = new_group_id()
            spec["serverGroupId"] = gid
            spec["servers"] = []
            try:
                self.store.create(gid, spec)
            except ConflictError:
                continue
            return gid
        raise ApiError("Conflict.Lock", "Could not allocate a server group id; try again.", 409)

    def list_groups(
        self,
        *,
        ids: Sequence[str] = (),
        names: Sequence[str] = (),
        group_type: str = "",
        vpc_id: str = "",
        max_results: Any = None,
        next_token: str | None = None,
    ) -> Page:
        limit = _max_results(max_results)
        after = _read_token("g", next_token)
        if group_type and group_type not in GROUP_TYPES:
            raise ApiError(
                "IllegalParam.ServerGroupType", "ServerGroupType must be Instance or Ip.", 400
            )
        matches = [
            g
            for g in self.store.list_groups()
            if (not ids or g.id in ids)
            and (not names or g.spec.get("serverGroupName") in names)
            and (not group_type or g.spec.get("serverGroupType") == group_type)
            and (not vpc_id or g.spec.get("vpcId") == vpc_id)
        ]
        rest = [g for g in matches if g.seq > after]
        page = rest[:limit]
        token = _token("g", page[-1].seq) if len(rest) > limit else ""
        return Page([group_view(g) for g in page], token, limit, len(matches))

    def update_attribute(
        self, group_id: Any, params: Mapping[str, Any], *, dry_run: bool = False
    ) -> None:
        def change(group: StoredGroup) -> dict[str, Any]:
            merged = copy.deepcopy(group.spec)
            for key in GROUP_FIELDS:
                value = params.get(key)
                if value is None:
                    continue
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
            spec = self._normalize_group(merged)
            spec["serverGroupId"] = group.id
            spec["servers"] = group.spec.get("servers", [])
            return spec

        self._mutate(group_id, change, dry_run)

    def delete(self, group_id: Any, *, dry_run: bool = False) -> None:
        for _ in range(_RETRIES):
            group = self._get(group_id)
            users = self.in_use(group.id)
            if users:
                shown = ", ".join(sorted(users)[:5]) + (" ..." if len(users) > 5 else "")
                raise ApiError(
                    "ResourceInUse.ServerGroup",
                    f"The server group {group.id} is used by forwarding rules: {shown}.",
                    409,
                )
            if dry_run:
                raise dry_run_passed()
            try:
                self.store.delete(group.id, group.version)
            except ConflictError:
                continue
            return
        raise ApiError("Conflict.Lock", "The server group is being changed; try again.", 409)

    # ----------------------------------------------------------------- servers

    def add_servers(self, group_id: Any, servers: Any, *, dry_run: bool = False) -> None:
        def change(group: StoredGroup) -> dict[str, Any]:
            new = self._servers(servers, group.spec["serverGroupType"], "Servers")
            return self._with_added(group, list(group.spec.get("servers", [])), new)

        self._mutate(group_id, change, dry_run)

    def _with_added(
        self, group: StoredGroup, current: list[dict[str, Any]], new: list[dict[str, Any]]
    ) -> dict[str, Any]:
        existing = {server_key(s) for s in current}
        for server in new:
            key = server_key(server)
            if key in existing:
                raise ApiError(
                    "ResourceAlreadyAssociated.BackendServer",
                    f"The server {key[0]}:{key[1]} is already in the server group {group.id}.",
                    409,
                )
        if len(current) + len(new) > MAX_SERVERS_PER_GROUP:
            raise ApiError(
                "QuotaExceeded.ServersNum",
                f"A server group holds at most {MAX_SERVERS_PER_GROUP} servers "
                f"({len(current)} there, {len(new)} added).",
                400,
            )
        spec = copy.deepcopy(group.spec)
        spec["servers"] = current + new
        return spec

    def _without(self, group: StoredGroup, removed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        current = list(group.spec.get("servers", []))
        keys = {server_key(s) for s in current}
        for server in removed:
            key = server_key(server)
            if key not in keys:
                raise ApiError(
                    "ResourceNotFound.BackendServer",
                    f"The server {key[0]}:{key[1]} is not in the server group {group.id}.",
                    404,
                )
        gone = {server_key(s) for s in removed}
        return [s for s in current if server_key(s) not in gone]

    def remove_servers(self, group_id: Any, servers: Any, *, dry_run: bool = False) -> None:
        def change(group: StoredGroup) -> dict[str, Any]:
            removed = self._servers(servers, group.spec["serverGroupType"], "Servers", partial=True)
            spec = copy.deepcopy(group.spec)
            spec["servers"] = self._without(group, removed)
            return spec

        self._mutate(group_id, change, dry_run)

    def replace_servers(
        self, group_id: Any, added: Any, removed: Any, *, dry_run: bool = False
    ) -> None:
        def change(group: StoredGroup) -> dict[str, Any]:
            gtype = group.spec["serverGroupType"]
            gone = self._servers(removed, gtype, "RemovedServers", partial=True)
            new = self._servers(added, gtype, "AddedServers")
            return self._with_added(group, self._without(group, gone), new)

        self._mutate(group_id, change, dry_run)

    def update_servers(self, group_id: Any, servers: Any, *, dry_run: bool = False) -> None:
        def change(group: StoredGroup) -> dict[str, Any]:
            updates = self._servers(servers, group.spec["serverGroupType"], "Servers", partial=True)
            current = [dict(s) for s in group.spec.get("servers", [])]
            by_key = {server_key(s): s for s in current}
            for upd in updates:
                key = server_key(upd)
                target = by_key.get(key)
                if target is None:
                    raise ApiError(
                        "ResourceNotFound.BackendServer",
                        f"The server {key[0]}:{key[1]} is not in the server group {group.id}.",
                        404,
                    )
                for field in ("weight", "description"):
                    if field in upd:
                        target[field] = upd[field]
            spec = copy.deepcopy(group.spec)
            spec["servers"] = current
            return spec

        self._mutate(group_id, change, dry_run)

    def list_servers(
        self,
        group_id: Any,
        *,
        server_ids: Sequence[str] = (),
        max_results: Any = None,
        next_token: str | None = None,
    ) -> Page:
        limit = _max_results(max_results)
        start = _read_token("s", next_token)
        group = self._get(group_id)
        servers = [
            s
            for s in group.spec.get("servers", [])
            if not server_ids or s["serverId"] in server_ids
        ]
        page = servers[start : start + limit]
        token = _token("s", start + limit) if start + limit < len(servers) else ""
        items = []
        for s in page:
            item = _upper_keys(dict(s))
            item["ServerGroupId"] = group.id
            item["Status"] = self.server_status(group.id, s)
            items.append(item)
        return Page(items, token, limit, len(servers))


def dry_run_passed() -> ApiError:
    return ApiError(
        "DryRunOperation", "Request validation has been passed with DryRun flag set.", 400
    )

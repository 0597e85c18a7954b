"""ALB OpenAPI (2020-06-16) server-group actions over RPC, as the official SDK speaks it.

The SDK sends ``POST /`` with the action and version in the ``x-acs-action`` and
``x-acs-version`` headers (or ``Action``/``Version`` query parameters in the older RPC style),
parameters flattened into the query string and a form body (``HealthCheckConfig.HealthCheckPath``,
``Servers.1.Port``), signed with ACS3-HMAC-SHA256 (:mod:`albingress.api.auth`). Answers are JSON:
the action's fields and a ``RequestId``; errors are ``{RequestId, Code, Message}`` with a 4xx
status. The actions themselves live in :mod:`albingress.servergroups.service`.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from albingress.api.auth import AccessKey, AuthFailure, Verifier
from albingress.api.server import AdminRequest, AdminResponse, AdminServer
from albingress.model.servergroup import NetworkSettings
from albingress.servergroups.service import ApiError, Page, ServerGroupService, new_job_id
from albingress.servergroups.store import ServerGroupStore, StoreUnavailable

log = logging.getLogger(__name__)

VERSION = "2020-06-16"
CLIENT_TOKENS = 1000  # successful calls remembered by ClientToken
_INDEX_RE = re.compile(r"^[1-9]\d{0,4}$")
_BOOL_PARAMS = ("DryRun",)


def _json(status: int, data: Mapping[str, Any]) -> AdminResponse:
    body = json.dumps(data, separators=(",", ":")).encode()
    return AdminResponse(status, "application/json;charset=utf-8", body)


def error_response(request_id: str, code: str, message: str, status: int) -> AdminResponse:
    return _json(status, {"RequestId": request_id, "Code": code, "Message": message})


# --------------------------------------------------------------------------- parameters


def unflatten(flat: Mapping[str, str]) -> dict[str, Any]:
    """``{"A.B": "1", "L.1.C": "x", "L.2": "y"}`` -> ``{"A": {"B": "1"}, "L": [...]}``.

    Numeric segments (1-based) make lists, in index order; anything malformed is an ApiError
    naming the parameter.
    """
    root: dict[str, Any] = {}
    for key in sorted(flat):
        parts = key.split(".")
        if any(p == "" for p in parts):
            raise ApiError(f"IllegalParam.{parts[0] or key}", f"Malformed parameter name {key!r}.")
        node: dict[str, Any] = root
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ApiError(
                    f"IllegalParam.{parts[0]}", f"Parameter {key!r} conflicts with another."
                )
            node = child
        leaf = parts[-1]
        if isinstance(node.get(leaf), dict):
            raise ApiError(f"IllegalParam.{parts[0]}", f"Parameter {key!r} conflicts with another.")
        node[leaf] = flat[key]
    result = _listify(root, "")
    assert isinstance(result, dict)
    return result


def _listify(node: Any, name: str) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(_INDEX_RE.match(k) for k in node):
        return [_listify(node[k], name) for k in sorted(node, key=int)]
    if any(_INDEX_RE.match(k) for k in node):
        raise ApiError(
            f"IllegalParam.{name or 'Parameters'}", f"{name} mixes list items and fields."
        )
    return {k: _listify(v, name or k) for k, v in node.items()}


def lower_keys(value: Any) -> Any:
    """UpperCamel keys (the API) to lowerCamel keys (the stored spec), recursively."""
    if isinstance(value, dict):
        return {k[:1].lower() + k[1:]: lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys(v) for v in value]
    return value


def _dry_run(params: Mapping[str, Any]) -> bool:
    raw = params.get("DryRun")
    if raw is None or raw == "":
        return False
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise ApiError("IllegalParam.DryRun", "DryRun must be true or false.")


def _strings(params: Mapping[str, Any], name: str) -> list[str]:
    raw = params.get(name)
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return raw
    raise ApiError(f"IllegalParam.{name}", f"{name} must be a list of strings.")


def _page(page: Page, key: str, request_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "RequestId": request_id,
        key: page.items,
        "MaxResults": page.max_results,
        "TotalCount": page.total,
    }
    if page.next_token:
        out["NextToken"] = page.next_token
    return out


# --------------------------------------------------------------------------- actions


Action = Callable[[ServerGroupService, dict[str, Any], str], dict[str, Any]]


def _create(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    fields = {
        k: p[k]
        for k in (
            "ServerGroupName",
            "ServerGroupType",
            "Protocol",
            "Scheduler",
            "UchConfig",
            "VpcId",
            "HealthCheckConfig",
            "StickySessionConfig",
        )
        if k in p
    }
    gid = svc.create(lower_keys(fields), dry_run=_dry_run(p))
    return {"RequestId": rid, "ServerGroupId": gid, "JobId": new_job_id()}


def _list_groups(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    page = svc.list_groups(
        ids=_strings(p, "ServerGroupIds"),
        names=_strings(p, "ServerGroupNames"),
        group_type=str(p.get("ServerGroupType") or ""),
        vpc_id=str(p.get("VpcId") or ""),
        max_results=p.get("MaxResults"),
        next_token=p.get("NextToken"),
    )
    return _page(page, "ServerGroups", rid)


def _update(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    fields = {
        k: p[k]
        for k in (
            "ServerGroupName",
            "Scheduler",
            "UchConfig",
            "HealthCheckConfig",
            "StickySessionConfig",
        )
        if k in p
    }
    svc.update_attribute(p.get("ServerGroupId"), lower_keys(fields), dry_run=_dry_run(p))
    return {"RequestId": rid, "JobId": new_job_id()}


def _delete(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    svc.delete(p.get("ServerGroupId"), dry_run=_dry_run(p))
    return {"RequestId": rid, "JobId": new_job_id()}


def _add(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    svc.add_servers(p.get("ServerGroupId"), lower_keys(p.get("Servers")), dry_run=_dry_run(p))
    return {"RequestId": rid, "JobId": new_job_id()}


def _remove(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    svc.remove_servers(p.get("ServerGroupId"), lower_keys(p.get("Servers")), dry_run=_dry_run(p))
    return {"RequestId": rid, "JobId": new_job_id()}


def _replace(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    svc.replace_servers(
        p.get("ServerGroupId"),
        lower_keys(p.get("AddedServers")),
        lower_keys(p.get("RemovedServers")),
        dry_run=_dry_run(p),
    )
    return {"RequestId": rid, "JobId": new_job_id()}


def _update_servers(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    svc.update_servers(p.get("ServerGroupId"), lower_keys(p.get("Servers")), dry_run=_dry_run(p))
    return {"RequestId": rid, "JobId": new_job_id()}


def _list_servers(svc: ServerGroupService, p: dict[str, Any], rid: str) -> dict[str, Any]:
    page = svc.list_servers(
        p.get("ServerGroupId"),
        server_ids=_strings(p, "ServerIds"),
        max_results=p.get("MaxResults"),
        next_token=p.get("NextToken"),
    )
    return _page(page, "Servers", rid)


ACTIONS: dict[str, Action] = {
    "CreateServerGroup": _create,
    "ListServerGroups": _list_groups,
    "UpdateServerGroupAttribute": _update,
    "DeleteServerGroup": _delete,
    "AddServersToServerGroup": _add,
    "RemoveServersFromServerGroup": _remove,
    "ReplaceServersInServerGroup": _replace,
    "UpdateServerGroupServersAttribute": _update_servers,
    "ListServerGroupServers": _list_servers,
}


class OpenApiHandler:
    """The ``POST /`` (and ``GET /``) handler: authenticate, parse, run the action, answer.

    A successful call carrying a ``ClientToken`` is remembered (the last
    :data:`CLIENT_TOKENS` of them): the same action and token again returns the same answer
    without acting twice, as ALB's idempotent retries do.
    """

    def __init__(self, service: ServerGroupService, verifier: Verifier) -> None:
        self.service = service
        self.verifier = verifier
        self._done: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()

    def register(self, server: AdminServer) -> None:
        server.route("POST", "/", self.handle)
        server.route("GET", "/", self.handle)

    async def handle(self, req: AdminRequest) -> AdminResponse:
        return self.answer(req)

    def answer(self, req: AdminRequest) -> AdminResponse:
        rid = str(uuid.uuid4()).upper()
        verdict = self.verifier.verify(req.method, req.path, req.query, req.headers, req.body)
        if isinstance(verdict, AuthFailure):
            log.info("refused %s from %s: %s", req.method, req.client[0], verdict.code)
            return error_response(rid, verdict.code, verdict.message, verdict.status)
        try:
            flat = dict(req.query)
            if req.body:
                ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype not in ("application/x-www-form-urlencoded", ""):
                    raise ApiError(
                        "UnsupportedContentType", f"Content type {ctype!r} is not accepted."
                    )
                try:
                    text = req.body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ApiError("IllegalParam.Body", "The form body is not UTF-8.") from exc
                flat.update(parse_qsl(text, keep_blank_values=True))
            action = req.headers.get("x-acs-action") or flat.pop("Action", "")
            version = req.headers.get("x-acs-version") or flat.pop("Version", "")
            if version != VERSION:
                raise ApiError(
                    "InvalidVersion", f"Version {version!r} is not supported; use {VERSION}."
                )
            run = ACTIONS.get(action)
            if run is None:
                raise ApiError(
                    "InvalidAction.NotFound", f"The action {action!r} is not supported.", 404
                )
            for name in ("Format", "SignatureType", "RegionId"):
                flat.pop(name, None)
            token = flat.get("ClientToken", "")
            memo = (verdict, action, token)
            if token and memo in self._done:
                return _json(200, {**self._done[memo], "RequestId": rid})
            result = run(self.service, unflatten(flat), rid)
            if token:
                self._done[memo] = result
                while len(self._done) > CLIENT_TOKENS:
                    self._done.popitem(last=False)
        except ApiError as exc:
            log.info("%s refused: %s", req.headers.get("x-acs-action", "?"), exc.code)
            return error_response(rid, exc.code, exc.message, exc.status)
        except StoreUnavailable as exc:
            log.warning("%s refused: %s", req.headers.get("x-acs-action", "?"), exc)
            return error_response(
                rid,
                "ServiceUnavailable",
                f"The server-group store cannot be written now ({exc}); nothing was changed. "
                "Try again later.",
                503,
            )
        return _json(200, result)


def mount(
    server: AdminServer,
    store: ServerGroupStore,
    keys: tuple[AccessKey, ...],
    settings: NetworkSettings | None = None,
    in_use: Callable[[str], list[str]] | None = None,
    server_status: Callable[[str, Mapping[str, Any]], str] | None = None,
) -> OpenApiHandler:
    """Serve the server-group API of ``store`` at ``/`` of ``server``, signed by ``keys``.

    ``in_use(group_id)`` names the rules forwarding to a group (deleting it is then refused);
    ``server_status(group_id, server_spec)`` is a server's Status in ListServerGroupServers.
    """
    service = ServerGroupService(store, settings, in_use=in_use, server_status=server_status)
    handler = OpenApiHandler(service, Verifier(keys))
    handler.register(server)
    return handler

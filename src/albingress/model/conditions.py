"""The ``alb.ingress.kubernetes.io/conditions.<name>`` annotation: extra match conditions.

A JSON array of blocks ``{"Type": ..., "<Type>Config": {...}}``. Blocks are ANDed, values inside
one block are ORed. Request-direction types: Host, Path, Header, Cookie, QueryString, Method,
SourceIp. ResponseHeader and ResponseStatusCode need ``rule-direction.<name>: Response``; they are
validated, but a response-direction rule is not executed yet (a warning says so).
"""

from __future__ import annotations

import ipaddress
import re

from albingress import ir
from albingress.diagnostics import Collector
from albingress.model.fields import Fields, parse_json

_TYPES = {
    t.casefold(): t
    for t in (
        "Host",
        "Path",
        "Header",
        "Cookie",
        "QueryString",
        "Method",
        "SourceIp",
        "ResponseHeader",
        "ResponseStatusCode",
    )
}
METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE")
_HOST_PATTERN = re.compile(r"[A-Za-z0-9*?.-]{1,128}")
_PATH_PATTERN = re.compile(r"/[A-Za-z0-9_\-./%?#@&=*~:+!$'(),;]{0,127}")
MAX_VALUES = 5


def parse_conditions(
    text: str, where: str, diag: Collector, *, response: bool = False
) -> tuple[ir.Condition, ...] | None:
    before = len(diag.items)
    data = parse_json(text, where, "Condition.InvalidJSON", diag)
    if data is None and len(diag.items) > before:
        return None
    if not isinstance(data, list):
        diag.error("Condition.NotAnArray", where, "the conditions annotation must be a JSON array")
        return None
    result: list[ir.Condition] = []
    for index, item in enumerate(data):
        path = f"{where}[{index}]"
        if not isinstance(item, dict):
            diag.error("Condition.NotAnObject", path, "each condition must be a JSON object")
            continue
        fields = Fields(item, path, diag)
        type_name = fields.string("Type", "Condition.MissingType", required=True)
        canonical = _TYPES.get(type_name.casefold()) if type_name else None
        if type_name and canonical is None:
            diag.error(
                "Condition.UnknownType",
                fields.path("Type"),
                f"unknown condition type {type_name!r} (one of: {', '.join(_TYPES.values())})",
            )
        if canonical is None:
            continue
        is_response = canonical.startswith("Response")
        if is_response and not response:
            diag.error(
                "Condition.ResponseTypeOnRequestRule",
                fields.path("Type"),
                f"{canonical} needs the annotation rule-direction.<name>: Response",
            )
            continue
        config = fields.obj(f"{canonical}Config", "Condition.MissingConfig", required=True)
        fields.warn_unknown(("Type", f"{canonical}Config"), "Condition.UnknownField")
        if config is None:
            continue
        cond = _parse_block(canonical, config)
        if cond is not None:
            result.append(cond)
    if any(d.is_error for d in diag.items[before:]):
        return None
    return tuple(result)


def _values(config: Fields, code: str) -> list[object]:
    values = config.array("Values", code, required=True) or []
    if not values and config.has("Values"):
        config.diag.error(code, config.path("Values"), "Values must not be empty")
    if len(values) > MAX_VALUES:
        config.diag.error(
            code, config.path("Values"), f"at most {MAX_VALUES} values in one condition"
        )
    return values


def _strings(config: Fields, code: str) -> list[str]:
    out: list[str] = []
    for index, value in enumerate(_values(config, code)):
        if not isinstance(value, str) or not value:
            config.diag.error(
                code, f"{config.path('Values')}[{index}]", "each value must be a non-empty string"
            )
            continue
        out.append(value)
    return out


def _parse_block(kind: str, config: Fields) -> ir.Condition | None:
    code = f"Condition.Invalid{kind}"
    diag = config.diag
    if kind in ("Host", "Path", "Method", "SourceIp", "ResponseStatusCode"):
        values = _strings(config, code)
        config.warn_unknown(("Values",), "Condition.UnknownField")
        for value in values:
            problem = _check_value(kind, value)
            if problem:
                diag.error(code, config.path("Values"), problem)
        if kind == "Host":
            values = [v.lower() for v in values]
        if kind == "Method":
            values = [v.upper() for v in values]
        return ir.Condition(kind, tuple(values)) if values else None
    if kind in ("Header", "ResponseHeader"):
        key = config.string("Key", code, required=True)
        if key and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", key):
            diag.error(
                code, config.path("Key"), f"header name {key!r}: 1-40 letters, digits, - or _"
            )
        values = _strings(config, code)
        config.warn_unknown(("Key", "Values"), "Condition.UnknownField")
        return ir.Condition(kind, tuple(values), key.lower()) if values and key else None
    # Cookie, QueryString: Values is an array of {Key, Value}
    pairs: list[str] = []
    for index, item in enumerate(_values(config, code)):
        path = f"{config.path('Values')}[{index}]"
        if not isinstance(item, dict):
            diag.error(code, path, "each value must be an object with Key and Value")
            continue
        pair = Fields(item, path, diag)
        key = pair.string("Key", code, required=kind == "Cookie")
        value = pair.string("Value", code, required=True)
        pair.warn_unknown(("Key", "Value"), "Condition.UnknownField")
        if key or value:
            pairs.append(f"{key}={value}")
    config.warn_unknown(("Values",), "Condition.UnknownField")
    return ir.Condition(kind, tuple(pairs)) if pairs else None


def _check_value(kind: str, value: str) -> str:
    if kind == "Host" and not _HOST_PATTERN.fullmatch(value):
        return f"host {value!r}: letters, digits, '-', '.', '*' and '?' only, at most 128"
    if kind == "Path" and not _PATH_PATTERN.fullmatch(value):
        return f"path {value!r} must start with / and hold at most 128 URL characters"
    if kind == "Method" and value.upper() not in METHODS:
        return f"method {value!r} is not one of {', '.join(METHODS)}"
    if kind == "SourceIp":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"{value!r} is not an IP address or CIDR block"
    if kind == "ResponseStatusCode" and not (value.isdigit() and 100 <= int(value) <= 599):
        return f"{value!r} is not an HTTP status code"
    return ""

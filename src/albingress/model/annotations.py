"""Ingress-wide ``alb.ingress.kubernetes.io/*`` annotations (reference section 3).

Every value is checked; a bad value is an error on the Ingress naming the annotation. Keys under
our prefix that we do not know are warnings (a typo would otherwise be silently ignored).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from albingress import ir
from albingress.diagnostics import Collector
from albingress.model.fields import COOKIE_NAME, as_int

PREFIX = "alb.ingress.kubernetes.io/"
PER_BACKEND = ("actions.", "conditions.", "rule-direction.")
HEALTH_CODES = ("http_2xx", "http_3xx", "http_4xx", "http_5xx")

KNOWN = frozenset(
    {
        "order",
        "canary",
        "canary-weight",
        "canary-by-header",
        "canary-by-header-value",
        "canary-by-cookie",
        "ssl-redirect",
        "rewrite-target",
        "use-regex",
        "listen-ports",
        "backend-protocol",
        "backend-scheduler",
        "backend-scheduler-uch-value",
        "backend-keepalive",
        "traffic-limit-qps",
        "traffic-limit-ip-qps",
        "enable-cors",
        "cors-allow-origin",
        "cors-allow-methods",
        "cors-allow-headers",
        "cors-expose-headers",
        "cors-allow-credentials",
        "cors-max-age",
        "healthcheck-enabled",
        "healthcheck-path",
        "healthcheck-method",
        "healthcheck-protocol",
        "healthcheck-httpcode",
        "healthcheck-timeout-seconds",
        "healthcheck-interval-seconds",
        "healthy-threshold-count",
        "unhealthy-threshold-count",
        "healthcheck-connect-port",
        "healthcheck-host",
        "sticky-session",
        "sticky-session-type",
        "cookie-timeout",
        "cookie",
        "address-type",
        "vswitch-ids",
        "certificate-id",
        "loadbalancer-name",
        "tls-cert-id",
        "server-group-name",
    }
)


@dataclass(frozen=True, slots=True)
class Canary:
    weight: int | None  # 0-100, None when not set
    header: str  # "" when not set
    header_value: str  # "" = the header's value "always" selects the canary
    cookie: str  # "" when not set


@dataclass(frozen=True, slots=True)
class IngressOptions:
    order: int  # 1-1000, default 10
    order_explicit: bool
    listen_ports: tuple[tuple[str, int], ...]  # (protocol, port); () = the default listener
    canary: Canary | None
    ssl_redirect: bool
    rewrite_target: str  # "" when not set
    use_regex: bool
    protocol: ir.Protocol
    scheduler: ir.Scheduler
    uch_key: str
    health_check: ir.HealthCheck
    sticky: ir.StickySession
    traffic_limit: ir.TrafficLimitAction | None


def _flag(value: str, key: str, diag: Collector) -> bool:
    text = value.strip().lower()
    if text in ("true", "false"):
        return text == "true"
    diag.error(
        "Annotation.InvalidValue", PREFIX + key, f'{key} must be "true" or "false", not {value!r}'
    )
    return False


def _number(value: str, key: str, lo: int, hi: int, default: int, diag: Collector) -> int:
    number = as_int(value, allow_string=True)
    if number is None or not lo <= number <= hi:
        diag.error(
            "Annotation.InvalidValue",
            PREFIX + key,
            f"{key} must be an integer {lo}-{hi}, not {value!r}",
        )
        return default
    return number


def _choice(value: str, key: str, options: tuple[str, ...], diag: Collector) -> str:
    for option in options:
        if value.strip().lower() == option.lower():
            return option
    diag.error(
        "Annotation.InvalidValue",
        PREFIX + key,
        f"{key} must be one of {', '.join(options)}, not {value!r}",
    )
    return options[0]


def parse_options(annotations: Mapping[str, Any], diag: Collector) -> IngressOptions:
    ours: dict[str, str] = {}
    for full, value in annotations.items():
        if not isinstance(full, str) or not full.startswith(PREFIX):
            continue
        key = full[len(PREFIX) :]
        if key.startswith(PER_BACKEND):
            continue
        if not isinstance(value, str):
            diag.error("Annotation.NotAString", full, "annotation values must be strings")
            continue
        if key not in KNOWN:
            diag.warn("Annotation.Unknown", full, f"unknown annotation {full!r} is ignored")
            continue
        ours[key] = value

    def get(key: str) -> str | None:
        return ours.get(key)

    order_raw = get("order")
    order = 10 if order_raw is None else _number(order_raw, "order", 1, 1000, 10, diag)

    listen: list[tuple[str, int]] = []
    raw_listen = get("listen-ports")
    if raw_listen is not None:
        listen = _listen_ports(raw_listen, diag)

    canary = _canary(get, diag)
    protocol = ir.Protocol.HTTP
    if (raw := get("backend-protocol")) is not None:
        protocol = ir.Protocol(
            {"http": "HTTP", "https": "HTTPS", "grpc": "gRPC"}[
                _choice(raw, "backend-protocol", ("http", "https", "grpc"), diag)
            ]
        )
    scheduler = ir.Scheduler.WRR
    uch_key = ""
    if (raw := get("backend-scheduler")) is not None:
        name = _choice(raw, "backend-scheduler", ("wrr", "wlc", "sch", "uch"), diag)
        scheduler = ir.Scheduler(name.capitalize())
        if scheduler is ir.Scheduler.UCH:
            uch_key = (get("backend-scheduler-uch-value") or "").strip()
            if not uch_key:
                diag.error(
                    "Annotation.MissingValue",
                    PREFIX + "backend-scheduler-uch-value",
                    "backend-scheduler uch needs backend-scheduler-uch-value (the query-string key to hash)",
                )
    limit = None
    qps_raw, ip_raw = get("traffic-limit-qps"), get("traffic-limit-ip-qps")
    if qps_raw is not None or ip_raw is not None:
        qps = (
            _number(qps_raw or "", "traffic-limit-qps", 1, 1_000_000, 1, diag)
            if qps_raw is not None
            else 0
        )
        per_ip = (
            _number(ip_raw, "traffic-limit-ip-qps", 1, 1_000_000, 0, diag)
            if ip_raw is not None
            else 0
        )
        if qps_raw is None:
            diag.error(
                "Annotation.MissingValue",
                PREFIX + "traffic-limit-qps",
                "traffic-limit-ip-qps needs traffic-limit-qps",
            )
        elif per_ip and per_ip >= qps:
            diag.error(
                "Annotation.InvalidValue",
                PREFIX + "traffic-limit-ip-qps",
                f"traffic-limit-ip-qps ({per_ip}) must be less than traffic-limit-qps ({qps})",
            )
        limit = ir.TrafficLimitAction(max(qps, 1), per_ip)

    if (raw := get("enable-cors")) is not None:
        _flag(raw, "enable-cors", diag)
    if (raw := get("backend-keepalive")) is not None:
        _flag(raw, "backend-keepalive", diag)

    health_check = _health_check(get, diag)
    if protocol is ir.Protocol.HTTPS and health_check.enabled and health_check.protocol == "HTTP":
        diag.warn(
            "Annotation.PlainHealthCheck",
            PREFIX + "healthcheck-protocol",
            "backend-protocol is https but health checks speak plain HTTP to the servers; "
            "set healthcheck-protocol HTTPS (or TCP) if they only speak TLS",
        )
    return IngressOptions(
        order=order,
        order_explicit=order_raw is not None,
        listen_ports=tuple(listen),
        canary=canary,
        ssl_redirect=_flag(get("ssl-redirect") or "false", "ssl-redirect", diag),
        rewrite_target=(get("rewrite-target") or "").strip(),
        use_regex=_flag(get("use-regex") or "false", "use-regex", diag),
        protocol=protocol,
        scheduler=scheduler,
        uch_key=uch_key,
        health_check=health_check,
        sticky=_sticky(get, diag),
        traffic_limit=limit,
    )


def _listen_ports(raw: str, diag: Collector) -> list[tuple[str, int]]:
    key = PREFIX + "listen-ports"
    try:
        data = json.loads(raw)
    except ValueError as exc:
        diag.error("Annotation.InvalidJSON", key, f"listen-ports is not JSON: {exc}")
        return []
    if not isinstance(data, list) or not data:
        diag.error(
            "Annotation.InvalidValue",
            key,
            'listen-ports must be a JSON array like [{"HTTP": 80}, {"HTTPS": 443}]',
        )
        return []
    result: list[tuple[str, int]] = []
    for item in data:
        if not isinstance(item, dict) or len(item) != 1:
            diag.error(
                "Annotation.InvalidValue",
                key,
                f"each listen-ports entry is one {{PROTOCOL: port}} pair, not {item!r}",
            )
            continue
        ((proto, port),) = item.items()
        proto_up = str(proto).upper()
        number = as_int(port, allow_string=True)
        if proto_up not in ("HTTP", "HTTPS") or number is None or not 1 <= number <= 65535:
            diag.error(
                "Annotation.InvalidValue",
                key,
                f"listen-ports entry {item!r}: protocol HTTP or HTTPS and a port 1-65535",
            )
            continue
        result.append((proto_up, number))
    return result


def _canary(get: Any, diag: Collector) -> Canary | None:
    raw = get("canary")
    enabled = _flag(raw, "canary", diag) if raw is not None else False
    others = [
        k
        for k in ("canary-weight", "canary-by-header", "canary-by-header-value", "canary-by-cookie")
        if get(k) is not None
    ]
    if not enabled:
        if others:
            diag.warn(
                "Canary.NotEnabled",
                PREFIX + others[0],
                f'{others[0]} has no effect without canary: "true"',
            )
        return None
    weight = None
    if (w := get("canary-weight")) is not None:
        weight = _number(w, "canary-weight", 0, 100, 0, diag)
    header = (get("canary-by-header") or "").strip()
    if header and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", header):
        diag.error(
            "Annotation.InvalidValue",
            PREFIX + "canary-by-header",
            f"canary-by-header {header!r} is not a header name",
        )
    value = (get("canary-by-header-value") or "").strip()
    if value and not header:
        diag.error(
            "Annotation.MissingValue",
            PREFIX + "canary-by-header-value",
            "canary-by-header-value needs canary-by-header",
        )
    cookie = (get("canary-by-cookie") or "").strip()
    if weight is None and not header and not cookie:
        diag.error(
            "Canary.NoStrategy",
            PREFIX + "canary",
            "a canary Ingress needs canary-weight, canary-by-header or canary-by-cookie",
        )
    return Canary(weight, header, value, cookie)


def _health_check(get: Any, diag: Collector) -> ir.HealthCheck:
    default = ir.HealthCheck()
    raw = get("healthcheck-enabled")
    enabled = _flag(raw, "healthcheck-enabled", diag) if raw is not None else False
    path = (get("healthcheck-path") or default.path).strip()
    if not path.startswith("/"):
        diag.error(
            "Annotation.InvalidValue",
            PREFIX + "healthcheck-path",
            f"healthcheck-path {path!r} must start with /",
        )
    method = default.method
    if (m := get("healthcheck-method")) is not None:
        method = _choice(m, "healthcheck-method", ("HEAD", "GET", "POST"), diag)
    protocol = default.protocol
    if (p := get("healthcheck-protocol")) is not None:
        protocol = _choice(p, "healthcheck-protocol", ("HTTP", "HTTPS", "TCP", "gRPC"), diag)
    codes = default.codes
    if (c := get("healthcheck-httpcode")) is not None:
        parts = tuple(x.strip() for x in c.split(",") if x.strip())
        bad = [x for x in parts if x not in HEALTH_CODES]
        if bad or not parts:
            diag.error(
                "Annotation.InvalidValue",
                PREFIX + "healthcheck-httpcode",
                f"healthcheck-httpcode {c!r}: a comma-separated list of {', '.join(HEALTH_CODES)}",
            )
        else:
            codes = parts

    def num(key: str, lo: int, hi: int, dflt: int) -> int:
        value = get(key)
        return dflt if value is None else _number(value, key, lo, hi, dflt, diag)

    return ir.HealthCheck(
        enabled=enabled,
        protocol=protocol,
        path=path,
        method=method,
        codes=codes,
        interval=num("healthcheck-interval-seconds", 1, 50, default.interval),
        timeout=num("healthcheck-timeout-seconds", 1, 300, default.timeout),
        healthy_threshold=num("healthy-threshold-count", 2, 10, default.healthy_threshold),
        unhealthy_threshold=num("unhealthy-threshold-count", 2, 10, default.unhealthy_threshold),
        connect_port=num("healthcheck-connect-port", 0, 65535, 0),
        host=(get("healthcheck-host") or "").strip(),
    )


def _sticky(get: Any, diag: Collector) -> ir.StickySession:
    raw = get("sticky-session")
    enabled = _flag(raw, "sticky-session", diag) if raw is not None else False
    stype = "Insert"
    if (t := get("sticky-session-type")) is not None:
        stype = _choice(t, "sticky-session-type", ("Insert", "Server"), diag)
    timeout = 1000
    if (t := get("cookie-timeout")) is not None:
        timeout = _number(t, "cookie-timeout", 1, 86400, 1000, diag)
    cookie = (get("cookie") or "").strip()
    if enabled and stype == "Server" and not cookie:
        diag.error(
            "Annotation.MissingValue",
            PREFIX + "cookie",
            "sticky-session-type Server needs the backend's cookie name in cookie",
        )
    elif cookie and not COOKIE_NAME.fullmatch(cookie):
        diag.error(
            "Annotation.InvalidValue",
            PREFIX + "cookie",
            f"cookie {cookie!r} is not a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        )
        cookie = ""
    return ir.StickySession(enabled, stype, timeout, cookie)

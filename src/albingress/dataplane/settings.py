"""Settings of the data plane: timeouts, limits and buffer sizes, with safe defaults.

One frozen :class:`ProxySettings` is made by the CLI (or a test) and handed to the supervisor,
which passes it to every worker as JSON (:func:`settings_to_json`, :func:`settings_from_json`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from albingress.diagnostics import ConfigError


@dataclass(frozen=True, slots=True)
class ProxySettings:
    connect_timeout: float = 5.0  # seconds to open a connection to a server; over it: retry/504
    response_timeout: float = 60.0  # seconds from request sent to the first response byte: 504
    idle_timeout: float = 60.0  # seconds a client connection may sit without a whole request
    drain_timeout: float = 30.0  # seconds in-flight requests get to finish on stop
    max_header_bytes: int = 65536  # request line plus headers; over it: 431
    max_connections: int = 10000  # client connections per worker; over it: 503 and close
    max_retries: int = 2  # extra tries on another server when nothing was sent yet
    max_headers: int = 200  # header fields in one request or response; over it: 431 / 502
    max_body_bytes: int = 0  # request body bytes; 0: no limit (as ALB); over it: 413
    pool_idle_per_server: int = 256  # idle keep-alive connections kept per upstream server
    pool_idle_timeout: float = 30.0  # seconds an idle upstream connection is kept
    write_high_water: int = 256 * 1024  # bytes buffered for a peer before its source is paused
    write_low_water: int = 64 * 1024  # bytes under which the source resumes
    body_buffer_limit: int = 256 * 1024  # request body bytes held while waiting for a server

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "response_timeout", "idle_timeout", "pool_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"ProxySettings.{name} must be > 0")
        if self.drain_timeout < 0:
            raise ConfigError("ProxySettings.drain_timeout must be >= 0")
        if self.max_retries < 0 or self.max_header_bytes < 1024 or self.max_connections < 1:
            raise ConfigError(
                "ProxySettings: max_retries >= 0, max_header_bytes >= 1024, max_connections >= 1"
            )
        if self.max_body_bytes < 0:
            raise ConfigError("ProxySettings.max_body_bytes must be >= 0 (0: no limit)")
        if not 0 < self.write_low_water < self.write_high_water:
            raise ConfigError("ProxySettings: 0 < write_low_water < write_high_water")

    @property
    def sweep_interval(self) -> float:
        """How often timeouts are checked: a quarter of the shortest, between 10 ms and 1 s."""
        shortest = min(self.connect_timeout, self.response_timeout, self.idle_timeout)
        return min(1.0, max(0.01, shortest / 4))


def settings_to_json(settings: ProxySettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)


def settings_from_json(data: dict[str, Any]) -> ProxySettings:
    known = {f.name for f in dataclasses.fields(ProxySettings)}
    return ProxySettings(**{k: v for k, v in data.items() if k in known})

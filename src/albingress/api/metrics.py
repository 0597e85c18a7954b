"""``GET /metrics`` (Prometheus text format) and the live page's data, from the workers' counters.

The supervisor keeps the latest counter snapshot of every worker (see
:mod:`albingress.dataplane.metrics`); a scrape asks each worker for a fresh one, adds them up and
renders them here against the config being served, so label values are names people recognise:

- ``listener``: the ALB listener port; ``ingress``: ``namespace/name``; ``rule``: the rule's
  stable name (``ns/ingress/rules/0/paths/1``);
- ``server_group``: the group id, or for a group built from a Service its ``ns/service:port``;
- ``server``: ``address:port``; ``code_class``: ``2xx`` ... ``5xx``.

Series of rules and servers the current config no longer has are left out, so they disappear
with the config change that deleted them. The measured share of each server group of a forward
group is over the last :attr:`MetricsView.window` seconds (since start until that much has
passed): its drift from the configured share is what to alert on.

The text format is written here (no prometheus-client in the process): it is a few lines per
series and rendering stays well under a second with thousands of rules.
"""

from __future__ import annotations

import collections
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from albingress import __version__, ir
from albingress.dataplane.metrics import BUCKETS, Totals, merge
from albingress.diagnostics import Diagnostic

GroupKey = tuple[int, str, str]  # listener port, rule, group id


@dataclass(frozen=True, slots=True)
class ConfigState:
    """What the supervisor serves, as the metrics need it."""

    config: ir.IR | None  # None before the first compile
    version: int = 0
    reloaded_at: float = 0.0  # wall clock of the last reload attempt
    reload_ok: bool = True  # whether the last reload compiled and was applied
    unhealthy: frozenset[str] = frozenset()  # ir.server_key of servers failing health checks
    failed: tuple[str, ...] = ()  # "ns/name" of Ingresses that failed to compile
    diagnostics: tuple[Diagnostic, ...] = ()
    workers: int = 0  # live worker processes


@dataclass(frozen=True, slots=True)
class _Labels:
    """Label values derived from one IR (cached per IR object)."""

    rules: dict[str, tuple[int, ir.Rule]]  # rule name -> listener port, rule
    groups: dict[str, str]  # group id -> server_group label
    servers: dict[str, tuple[str, str]]  # server key -> (server_group label, address:port)
    forwards: list[tuple[int, ir.Rule, ir.ForwardAction]] = field(default_factory=list)


def _labels(config: ir.IR) -> _Labels:
    groups = {
        g.id: (g.name if g.source is ir.GroupSource.SERVICE else g.id) for g in config.server_groups
    }
    servers = {
        ir.server_key(g.id, s.address, s.port): (groups[g.id], f"{s.address}:{s.port}")
        for g in config.server_groups
        for s in g.servers
    }
    rules: dict[str, tuple[int, ir.Rule]] = {}
    forwards = []
    for lst in config.listeners:
        for rule in lst.rules:
            rules[rule.name] = (lst.port, rule)
            final = rule.actions[-1] if rule.actions else None
            if isinstance(final, ir.ForwardAction):
                forwards.append((lst.port, rule, final))
    return _Labels(rules, groups, servers, forwards)


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class MetricsView:
    """Renders totals against a config; remembers recent totals for the measured shares."""

    def __init__(
        self,
        window: float = 60.0,
        step: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.step = step
        self.clock = clock
        self._cache: tuple[ir.IR, _Labels] | None = None
        # (time, requests per group): the oldest is at least ``window`` old when it can be
        self._samples: collections.deque[tuple[float, dict[GroupKey, int]]] = collections.deque(
            [(clock(), {})]
        )

    def labels(self, config: ir.IR) -> _Labels:
        cached = self._cache
        if cached is None or cached[0] is not config:
            cached = (config, _labels(config))
            self._cache = cached
        return cached[1]

    # ----------------------------------------------------------------- shares

    def group_counts(self, totals: Totals) -> dict[GroupKey, int]:
        counts: dict[GroupKey, int] = {}
        for (port, rule, gid, _, _), n in totals.requests.items():
            if gid:
                key = (port, rule, gid)
                counts[key] = counts.get(key, 0) + n
        return counts

    def measured(self, counts: dict[GroupKey, int]) -> dict[GroupKey, float]:
        """Share of each group of its rule's requests since the newest sample at least
        ``window`` old (since start at first); rules without requests since then have no entry."""
        now = self.clock()
        samples = self._samples
        while len(samples) > 1 and now - samples[1][0] >= self.window:
            samples.popleft()
        base = samples[0][1]
        if now - samples[-1][0] >= self.step:
            samples.append((now, counts))
        delta = {k: v - base.get(k, 0) for k, v in counts.items()}
        per_rule: dict[tuple[int, str], int] = {}
        for (port, rule, _), n in delta.items():
            per_rule[(port, rule)] = per_rule.get((port, rule), 0) + n
        return {
            k: n / per_rule[(k[0], k[1])] for k, n in delta.items() if per_rule[(k[0], k[1])] > 0
        }

    # ----------------------------------------------------------------- Prometheus text

    def render(self, snapshots: Iterable[Mapping[str, Any]], state: ConfigState) -> str:
        totals = merge(snapshots)
        out: list[str] = []
        add = out.append
        labels = self.labels(state.config) if state.config is not None else _labels(ir.IR((), ()))
        rules = labels.rules
        servers = labels.servers

        def rule_labels(port: int, rule: str) -> str:
            found = rules.get(rule)
            ingress = found[1].ingress if found is not None else ""
            return f'listener="{port}",ingress="{_esc(ingress)}",rule="{_esc(rule)}"'

        def meta(name: str, kind: str, text: str) -> None:
            add(f"# HELP {name} {text}")
            add(f"# TYPE {name} {kind}")

        meta("albingress_requests_total", "counter", "Requests answered.")
        by_class: dict[tuple[int, str, str, str], int] = {}
        for (port, rule, _gid, skey, status), n in totals.requests.items():
            if (rule and rule not in rules) or (skey and skey not in servers):
                continue
            key = (port, rule, skey, f"{status // 100}xx")
            by_class[key] = by_class.get(key, 0) + n
        for (port, rule, skey, code_class), n in sorted(by_class.items()):
            group, server = servers.get(skey, ("", ""))
            add(
                f"albingress_requests_total{{{rule_labels(port, rule)},"
                f'server_group="{_esc(group)}",server="{_esc(server)}",'
                f'code_class="{code_class}"}} {n}'
            )
        meta("albingress_request_duration_seconds", "histogram", "Whole request, seconds.")
        for (port, rule), hist in sorted(totals.request_seconds.items()):
            if rule and rule not in rules:
                continue
            _histogram(add, "albingress_request_duration_seconds", rule_labels(port, rule), hist)
        meta(
            "albingress_upstream_duration_seconds",
            "histogram",
            "From sending the request to a server to the end of its response, seconds.",
        )
        for skey, hist in sorted(totals.upstream_seconds.items()):
            if skey not in servers:
                continue
            group, server = servers[skey]
            where = f'server_group="{_esc(group)}",server="{_esc(server)}"'
            _histogram(add, "albingress_upstream_duration_seconds", where, hist)
        meta("albingress_retries_total", "counter", "Extra tries on another server.")
        for (port, rule), n in sorted(totals.retries.items()):
            if not rule or rule in rules:
                add(f"albingress_retries_total{{{rule_labels(port, rule)}}} {n}")
        meta("albingress_active_connections", "gauge", "Client connections open.")
        add(f"albingress_active_connections {totals.connections}")
        meta("albingress_active_requests", "gauge", "Client connections with a request in flight.")
        add(f"albingress_active_requests {totals.busy}")
        self._render_servers(add, meta, state)
        self._render_shares(add, meta, labels, totals)
        self._render_config(add, meta, state, totals)
        return "\n".join(out) + "\n"

    def _render_servers(self, add: Callable[[str], None], meta: Any, state: ConfigState) -> None:
        meta("albingress_server_healthy", "gauge", "1 unless the server fails its health checks.")
        weights = []
        config = state.config
        if config is not None:
            labels = self.labels(config)
            for g in config.server_groups:
                gl = _esc(labels.groups[g.id])
                for s in g.servers:
                    key = ir.server_key(g.id, s.address, s.port)
                    where = f'server_group="{gl}",server="{s.address}:{s.port}"'
                    add(f"albingress_server_healthy{{{where}}} {int(key not in state.unhealthy)}")
                    weights.append(f"albingress_server_weight{{{where}}} {s.weight}")
        meta("albingress_server_weight", "gauge", "Configured weight of the server in its group.")
        for line in weights:
            add(line)

    def _render_shares(
        self, add: Callable[[str], None], meta: Any, labels: _Labels, totals: Totals
    ) -> None:
        measured = self.measured(self.group_counts(totals))
        weight_lines: list[str] = []
        share_lines: list[str] = []
        measured_lines: list[str] = []
        for port, rule, action in labels.forwards:
            total = sum(g.weight for g in action.groups)
            base = f'listener="{port}",ingress="{_esc(rule.ingress)}",rule="{_esc(rule.name)}"'
            for g in action.groups:
                where = f'{base},server_group="{_esc(labels.groups.get(g.group_id, g.group_id))}"'
                weight_lines.append(f"albingress_forward_group_weight{{{where}}} {g.weight}")
                share = g.weight / total if total else 0.0
                share_lines.append(f"albingress_forward_group_share{{{where}}} {_num(share)}")
                m = measured.get((port, rule.name, g.group_id))
                if m is not None:
                    measured_lines.append(
                        f"albingress_forward_group_measured_share{{{where}}} {_num(round(m, 6))}"
                    )
        meta("albingress_forward_group_weight", "gauge", "Configured weight of a server group.")
        out = weight_lines
        meta_share = "Configured share (weight / sum of the forward group's weights)."
        for line in out:
            add(line)
        meta("albingress_forward_group_share", "gauge", meta_share)
        for line in share_lines:
            add(line)
        meta(
            "albingress_forward_group_measured_share",
            "gauge",
            f"Share of the rule's requests the group got over the last {self.window:g} s.",
        )
        for line in measured_lines:
            add(line)

    def _render_config(
        self, add: Callable[[str], None], meta: Any, state: ConfigState, totals: Totals
    ) -> None:
        meta("albingress_config_version", "gauge", "Version of the config being served.")
        add(f"albingress_config_version {state.version}")
        meta("albingress_config_last_reload_success", "gauge", "1 if the last reload succeeded.")
        add(f"albingress_config_last_reload_success {int(state.reload_ok)}")
        meta(
            "albingress_config_last_reload_timestamp_seconds",
            "gauge",
            "When the config was last reloaded (Unix time).",
        )
        add(f"albingress_config_last_reload_timestamp_seconds {_num(round(state.reloaded_at, 3))}")
        meta("albingress_ingresses_failed", "gauge", "Ingresses with errors (not compiled).")
        add(f"albingress_ingresses_failed {len(state.failed)}")
        meta("albingress_workers", "gauge", "Worker processes running.")
        add(f"albingress_workers {state.workers}")
        meta("albingress_access_log_lines_total", "counter", "Access log lines written.")
        add(f"albingress_access_log_lines_total {totals.log_lines}")
        meta("albingress_access_log_dropped_total", "counter", "Access log lines dropped.")
        add(f"albingress_access_log_dropped_total {totals.log_dropped}")
        meta("albingress_access_log_errors_total", "counter", "Access log write or open errors.")
        add(f"albingress_access_log_errors_total {totals.log_failures}")
        meta("albingress_build_info", "gauge", "Version of albingress and Python.")
        add(
            f'albingress_build_info{{version="{__version__}",'
            f'python="{platform.python_version()}"}} 1'
        )


def _histogram(add: Callable[[str], None], name: str, where: str, hist: Sequence[float]) -> None:
    running = 0.0
    for bound, n in zip((*BUCKETS, float("inf")), hist, strict=False):
        running += n
        le = "+Inf" if bound == float("inf") else _num(bound)
        add(f'{name}_bucket{{{where},le="{le}"}} {_num(running)}')
    add(f"{name}_sum{{{where}}} {_num(round(hist[-1], 6))}")
    add(f"{name}_count{{{where}}} {_num(running)}")

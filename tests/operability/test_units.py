"""Counters, rendering, the access log writer and the page's routing, without processes."""

from __future__ import annotations

import asyncio
import json
import os
import time
from types import SimpleNamespace
from typing import Any

import pytest

from albingress import ir
from albingress.api import page
from albingress.api.metrics import ConfigState, MetricsView
from albingress.api.server import AdminRequest, AdminResponse
from albingress.dataplane import accesslog
from albingress.dataplane.accesslog import AccessLog, parse_destination
from albingress.dataplane.balancer import Pick
from albingress.dataplane.metrics import BUCKETS, WorkerMetrics, merge
from albingress.dataplane.wire import client_request_id
from tests.operability.helpers import parse_prometheus, select, total


def _ir(rules: int, servers: int = 2) -> ir.IR:
    group = ir.ServerGroup(
        id="sgp-a",
        name="a",
        source=ir.GroupSource.SERVER_GROUP,
        protocol=ir.Protocol.HTTP,
        scheduler=ir.Scheduler.WRR,
        servers=tuple(ir.Server(f"127.0.31.{i + 1}", 8080, 100, f"s{i}") for i in range(servers)),
    )
    svc = ir.ServerGroup(
        id="svc:ns/web:80",
        name="ns/web:80",
        source=ir.GroupSource.SERVICE,
        protocol=ir.Protocol.HTTP,
        scheduler=ir.Scheduler.WRR,
        servers=(ir.Server("127.0.31.9", 8080, 100, "pod"),),
    )
    action = ir.ForwardAction((ir.WeightedGroup("sgp-a", 30), ir.WeightedGroup(svc.id, 70)))
    listed = tuple(
        ir.Rule(f"ns/ing{i}/rules/0/paths/0", f"ns/ing{i}", 10, f"h{i}.example.com",
                ir.PathMatch(ir.PathType.PREFIX, "/"), (), (action,))
        for i in range(rules)
    )  # fmt: skip
    return ir.IR((ir.Listener(80, "HTTP", listed),), (group, svc))


def _exchange(rule: ir.Rule | None, status: int, **kw: Any) -> SimpleNamespace:
    client = SimpleNamespace(listener_port=80, client_ip="127.0.0.1")
    fields: dict[str, Any] = {
        "client": client, "rule": rule, "status": status, "upstream_status": status, "started": 0.0,
        "sent_at": 0.001, "attempts": 1, "reason": "", "method": "GET", "host": b"h0.example.com",
        "path": "/p", "query": "", "target": b"/p", "raw_head": None, "raw_headers": [(b"Host", b"h")],
        "body_in": 0, "bytes_out": 10, "request_id": None, "rid_line": b"", "log_part": None,
    }  # fmt: skip
    fields.update(kw)
    return SimpleNamespace(**fields)


def _pick(config: ir.IR, gid: str, index: int = 0) -> Pick:
    group = config.group(gid)
    server = group.servers[index]
    return Pick.of(group, server, ir.server_key(gid, server.address, server.port))


def test_worker_counters_histograms_and_prune() -> None:
    config = _ir(2)
    rule0, rule1 = config.listeners[0].rules
    clock = iter([0.004, 0.2, 0.3, 0.5]).__next__
    wm = WorkerMetrics(clock=clock)
    wm.done(_exchange(rule0, 200), _pick(config, "sgp-a"))
    wm.done(_exchange(rule0, 200), _pick(config, "sgp-a"))
    wm.done(_exchange(rule1, 502, attempts=3, reason="refused", sent_at=0.0), None)
    wm.done(_exchange(None, 404, sent_at=0.0), None)
    key = (80, rule0.name, "sgp-a", "sgp-a|127.0.31.1:8080", 200)
    totals = merge([json.loads(json.dumps(wm.snapshot()))])
    assert totals.requests[key] == 2
    hist = totals.request_seconds[(80, rule0.name)]
    assert hist[BUCKETS.index(0.005)] == 1 and hist[BUCKETS.index(0.25)] == 1
    assert hist[-1] == pytest.approx(0.204)
    upstream = totals.upstream_seconds["sgp-a|127.0.31.1:8080"]
    assert sum(upstream[:-1]) == 2 and upstream[-1] == pytest.approx(0.202)
    assert (80, "") in totals.request_seconds and totals.requests[(80, "", "", "", 404)] == 1
    assert wm.retries == {(80, rule1.name): 2}
    assert [e[5] for e in wm.errors] == [502]
    snap = json.loads(json.dumps(wm.snapshot(connections=3)))
    assert merge([snap, snap]).requests[key] == 4
    assert merge([snap, snap]).connections == 6
    smaller = ir.IR((ir.Listener(80, "HTTP", (rule1,)),), config.server_groups)
    wm.prune(smaller)
    assert all(k[1] != rule0.name for k in wm.series)
    assert (80, rule1.name, "", 502) in wm.series


def test_merge_skips_malformed_entries() -> None:
    good = {"requests": [[80, "r", "g", "g|127.0.31.1:8080", 200, 2]]}
    bad = {"requests": [[80, "r"], "x"], "request_seconds": [[80, "r", [1, 2]]]}
    totals = merge([good, bad, good])
    assert totals.requests == {(80, "r", "g", "g|127.0.31.1:8080", 200): 4}


def _snapshot(config: ir.IR, per_rule: int) -> dict[str, Any]:
    wm = WorkerMetrics(clock=lambda: 0.01)
    for rule in config.listeners[0].rules:
        for i in range(per_rule):
            gid = "sgp-a" if i % 10 < 3 else "svc:ns/web:80"
            wm.done(_exchange(rule, 200), _pick(config, gid))
    return json.loads(json.dumps(wm.snapshot()))


def test_render_labels_shares_and_deleted_series() -> None:
    config = _ir(3)
    snap = _snapshot(config, 10)
    view = MetricsView()
    state = ConfigState(config, version=4, reloaded_at=1.5, unhealthy=frozenset(
        {"sgp-a|127.0.31.2:8080"}))  # fmt: skip
    m = parse_prometheus(view.render([snap], state))
    rule = "ns/ing1/rules/0/paths/0"
    assert total(m, "albingress_requests_total", rule=rule, ingress="ns/ing1") == 10
    assert total(m, "albingress_requests_total", rule=rule, server_group="ns/web:80") == 7
    measured = {
        labels["server_group"]: v
        for labels, v in select(m, "albingress_forward_group_measured_share", rule=rule)
    }
    assert measured == {"sgp-a": pytest.approx(0.3), "ns/web:80": pytest.approx(0.7)}
    assert total(m, "albingress_server_healthy", server="127.0.31.2:8080") == 0
    assert total(m, "albingress_server_healthy", server="127.0.31.1:8080") == 1
    assert total(m, "albingress_config_version") == 4
    # a config without ing1, and without server 127.0.31.2: their series are gone
    rules = tuple(r for r in config.listeners[0].rules if r.name != rule)
    groups = (
        ir.ServerGroup(**{**{f: getattr(config.server_groups[0], f) for f in (
            "id", "name", "source", "protocol", "scheduler")},
            "servers": config.server_groups[0].servers[:1]}),
        config.server_groups[1],
    )  # fmt: skip
    smaller = ir.IR((ir.Listener(80, "HTTP", rules),), groups)
    text = view.render([snap], ConfigState(smaller))
    assert "ns/ing1/" not in text and "127.0.31.2" not in text
    assert total(parse_prometheus(text), "albingress_requests_total") == 20


def test_measured_share_is_over_the_window() -> None:
    now = [0.0]
    view = MetricsView(window=60, step=5, clock=lambda: now[0])
    key_a, key_b = (80, "r", "a"), (80, "r", "b")
    assert view.measured({key_a: 10, key_b: 30}) == {key_a: 0.25, key_b: 0.75}
    now[0] = 30.0
    view.measured({key_a: 10, key_b: 30})
    now[0] = 70.0  # the start is the newest sample a window old: everything counts
    assert view.measured({key_a: 20, key_b: 30}) == {key_a: 0.4, key_b: 0.6}
    now[0] = 95.0  # now the sample at 30 s is: only what came since counts
    assert view.measured({key_a: 20, key_b: 30}) == {key_a: 1.0, key_b: 0.0}
    now[0] = 200.0
    assert view.measured({key_a: 20, key_b: 30}) == {}  # nothing in the window: no share


def test_scrape_with_thousands_of_rules_is_fast() -> None:
    config = _ir(5000)
    snaps = [_snapshot(config, 2) for _ in range(2)]
    view = MetricsView()
    started = time.perf_counter()
    text = view.render(snaps, ConfigState(config))
    data = page.traffic(view, snaps, ConfigState(config))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0, elapsed
    assert total(parse_prometheus(text), "albingress_requests_total") == 20000
    assert data["rulesTotal"] == 5000 and data["rulesShown"] == page.DEFAULT_LIMIT


def _log_exchange(**kw: Any) -> SimpleNamespace:
    return _exchange(None, 200, **kw)


def test_access_log_line_fields_and_escaping(tmp_path: Any) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(path=str(path), prefix="p" * 16)  # not started: written at flush
    ex = _log_exchange(path='/a"b\\c\n\x01é', raw_headers=[(b"X-Request-Id", b" given ")])
    log.record(ex, None, 200, 0.5, -1.0, time.monotonic())
    ex2 = _log_exchange(raw_head=b"GET / HTTP/1.1\r\nHost: h\r\n", upstream_status=0)
    log.record(ex2, None, 404, 0.1, -1.0, time.monotonic())
    log.flush()
    first, second = (json.loads(x) for x in path.read_text().splitlines())
    assert first["path"] == '/a"b\\c\n\x01é' and first["request_id"] == "given"
    assert first["upstream_duration_us"] is None and first["status"] == 200
    assert second["request_id"] == "p" * 16 + "1" and second["upstream_status"] is None
    assert second["bytes_in"] == len(b"GET / HTTP/1.1\r\nHost: h\r\n") + 2
    assert abs(time.time() - _parse_time(first["time"])) < 5
    assert log.stats()["lines"] == 2
    log.close()


def _parse_time(text: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_line_time_durations_retries_and_ids(tmp_path: Any) -> None:
    path = tmp_path / "a.log"
    log = AccessLog(path=str(path), prefix="pp")
    log._offset = 1764138000.0  # wall clock at monotonic 0
    log.record(_log_exchange(attempts=2, request_id="abc"), None, 200, 0.0012345678, 0.0005, 0.25)
    log.record(_log_exchange(upstream_status=0, attempts=0), None, 502, 2.5, -1.0, 1.9996)
    log.flush()
    first, second = (json.loads(x) for x in path.read_text().splitlines())
    assert (
        first["time"] == "2025-11-26T06:20:00.250Z" and second["time"] == "2025-11-26T06:20:01.999Z"
    )
    assert first["duration_us"] == 1234 and first["upstream_duration_us"] == 500
    assert second["duration_us"] == 2_500_000 and second["upstream_duration_us"] is None
    assert first["retries"] == 1 and second["retries"] == 0
    assert first["request_id"] == "abc" and second["request_id"] == "pp1"
    assert second["upstream_status"] is None
    assert list(first) == list(accesslog.FIELDS)
    log.close()


def test_request_id_header_forwarded_only_when_generated() -> None:
    log = AccessLog(fd=os.open(os.devnull, os.O_WRONLY), prefix="q" * 16)
    given = _log_exchange(raw_head=b"GET / HTTP/1.1\r\nX-Request-ID: abc\r\nHost: h\r\n")
    assert log.request_id(given) == b"" and given.request_id == "abc"
    fresh = _log_exchange()
    assert log.request_id(fresh) == b"X-Request-Id: " + b"q" * 16 + b"1\r\n"
    assert fresh.request_id == "q" * 16 + "1"
    looked = _log_exchange(request_id="", raw_headers=[(b"X-Request-Id", b"ignored")])
    assert log.request_id(looked) == b"X-Request-Id: " + b"q" * 16 + b"2\r\n"  # "": none sent
    log.close()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET / HTTP/1.1\r\nX-Request-Id:abc\r\nHost: h\r\n", "abc"),  # no space
        (b"GET / HTTP/1.1\r\nx-request-id:a\r\n", "a"),
        (b"GET / HTTP/1.1\r\nX-REQUEST-ID: \t spaced \t\r\nHost: h\r\n", "spaced"),
        (b"GET / HTTP/1.1\r\nX-Request-Id:\r\nAuthorization: Bearer secret\r\n", ""),
        (b"GET / HTTP/1.1\r\nX-Request-Idx: no\r\nHost: h\r\n", ""),
        (b"GET / HTTP/1.1\r\nX-Request-Id: " + b"x" * 300 + b"\r\n", "x" * 200),
    ],
)
def test_client_request_id_is_read_from_the_head(head: bytes, expected: str) -> None:
    assert client_request_id(head.lower(), head) == expected


def test_long_host_names_are_logged_whole(tmp_path: Any) -> None:
    log = AccessLog(path=str(tmp_path / "a.log"))
    for n in range(50):
        log.record(_log_exchange(host=b"h%d" % n + b"x" * 60_000), None, 404, 0.1, -1.0, 1.0)
    log.record(_log_exchange(host=b"short.example"), None, 200, 0.1, -1.0, 1.0)
    log.flush()
    hosts = [json.loads(x)["host"] for x in (tmp_path / "a.log").read_text().splitlines()]
    assert len(hosts) == 51 and hosts[0].startswith("h0xxx") and len(hosts[0]) == 60_002
    log.close()


def test_a_batch_larger_than_the_limit_is_taken_when_nothing_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = AccessLog(fd=os.open(os.devnull, os.O_WRONLY))
    log._thread = SimpleNamespace()  # type: ignore[assignment]  # pretend started, never writes
    monkeypatch.setattr(accesslog, "MAX_PENDING", 1000)
    for _ in range(10):
        log.record(_log_exchange(path="/" + "p" * 500), None, 200, 0.1, -1.0, 1.0)
    log.flush()  # 10 lines over 5 KB: more than the limit, but nothing else waits
    assert log.dropped == 0 and log.pending > 1000
    log.record(_log_exchange(), None, 200, 0.1, -1.0, 1.0)
    log.flush()  # now something waits: over the limit is dropped
    assert log.dropped == 1


def test_close_leaves_the_descriptor_of_a_stuck_writer_alone() -> None:
    read_fd, write_fd = os.pipe()
    log = AccessLog(fd=write_fd)

    async def scenario() -> None:
        log.start(asyncio.get_running_loop())
        for n in range(3000):  # far more than a pipe holds: the writer blocks
            log.record(_log_exchange(path=f"/{n}" + "p" * 100), None, 200, 0.1, -1.0, 1.0)
        log.flush()
        await asyncio.sleep(0.2)
        log.close(timeout=0.2)

    try:
        asyncio.run(scenario())
        assert log.sink.closed
        os.fstat(write_fd)  # still open: the writer may still be in write() on it
    finally:
        os.close(read_fd)  # the blocked write fails (EPIPE) and the writer ends
        time.sleep(0.1)
        os.close(write_fd)


def test_pipe_writes_are_whole_lines_within_pipe_buf(monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = os.pipe()
    try:
        sink = accesslog.Sink(fd=write_fd)
        chunks: list[bytes] = []
        real_write = os.write

        def spy(fd: int, data: Any) -> int:
            chunks.append(bytes(data))
            return real_write(fd, data)

        lines = [json.dumps({"n": i, "pad": "x" * (i % 300)}) + "\n" for i in range(200)]
        data = "".join(lines).encode()
        assert len(data) < 65536  # fits the pipe: no reader needed
        monkeypatch.setattr(accesslog.os, "write", spy)
        sink.write((data, len(lines)))
        monkeypatch.undo()
        assert len(chunks) > 1
        assert all(len(c) <= accesslog.PIPE_BUF and c.endswith(b"\n") for c in chunks)
        assert os.read(read_fd, 1 << 20) == data
        assert sink.lines == 200
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_write_failure_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # nobody will ever read: EPIPE
    sink = accesslog.Sink(fd=write_fd)
    sink.write((b"{}\n", 1))
    assert sink.failures == 1 and sink.dropped == 1 and "cannot write" in sink.error
    assert "serving goes on" in caplog.text
    os.close(write_fd)


def test_too_much_waiting_is_dropped_and_reported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = AccessLog(fd=os.open(os.devnull, os.O_WRONLY))
    log._thread = SimpleNamespace()  # type: ignore[assignment]  # pretend started, never sends
    monkeypatch.setattr(accesslog, "MAX_PENDING", 2000)
    for _ in range(20):
        log.record(_log_exchange(), None, 200, 0.1, -1.0, 1.0)
        log.flush()
    assert 0 < log.dropped < 20
    assert log.pending <= 2000
    stats = log.stats()
    assert stats["dropped"] == log.dropped and stats["failures"] == 1  # reported once
    assert "takes no more lines" in stats["error"] and "serving goes on" in caplog.text
    log.done = log.queued  # the writer caught up
    log.record(_log_exchange(), None, 200, 0.1, -1.0, 1.0)
    log.flush()
    assert log.stats()["error"] == "" and "takes lines again" in caplog.text


def test_unopenable_file_is_retried_later(tmp_path: Any) -> None:
    target = tmp_path / "later" / "a.log"
    log = AccessLog(path=str(target))
    log.record(_log_exchange(), None, 200, 0.1, -1.0, 1.0)
    log.flush()
    assert log.stats()["failures"] == 1 and log.stats()["dropped"] == 1
    target.parent.mkdir()
    assert log.sink is not None
    log.sink._next_open = 0.0
    log.record(_log_exchange(), None, 200, 0.1, -1.0, 1.0)
    log.flush()
    assert len(target.read_text().splitlines()) == 1 and log.stats()["error"] == ""
    log.close()


@pytest.mark.parametrize(
    ("value", "expected"), [("off", None), ("-", "-"), ("/tmp/x.log", "/tmp/x.log"), ("", None)]
)
def test_parse_destination(value: str, expected: str | None) -> None:
    assert parse_destination(value) == expected


def _request(method: str, query: str) -> AdminRequest:
    return AdminRequest(method, "/", {}, {}, b"", ("127.0.0.1", 1), raw_query=query)


@pytest.mark.parametrize(
    ("method", "query", "who"),
    [("GET", "", "page"), ("GET", "Action=ListServerGroups", "api"), ("POST", "", "api")],
)
def test_root_serves_page_or_openapi(method: str, query: str, who: str) -> None:
    async def api(_: AdminRequest) -> AdminResponse:
        return AdminResponse(200, "application/json", b"{}")

    resp = asyncio.run(page.page_or(api)(_request(method, query)))
    assert (b"<html" in resp.body) == (who == "page")


def test_the_writer_thread_writes_every_batch_and_survives_a_failing_destination(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "later" / "a.log"
    monkeypatch.setattr(accesslog, "REOPEN_DELAY", 0.2)

    async def scenario() -> dict[str, Any]:
        log = AccessLog(path=str(target))
        log.start(asyncio.get_running_loop())
        log.record(_log_exchange(path="/lost"), None, 200, 0.1, -1.0, 1.0)
        log.flush()  # the directory is missing: dropped, reported
        for _ in range(100):
            await asyncio.sleep(0.02)
            if log.stats()["failures"]:
                break
        target.parent.mkdir()
        await asyncio.sleep(0.3)  # past the reopen delay
        for n in range(3000):  # more than one batch, flushed by size and by the timer
            log.record(_log_exchange(path=f"/{n}"), None, 200, 0.1, -1.0, 1.0)
        await asyncio.sleep(0.3)
        log.close()
        return log.stats()

    stats = asyncio.run(scenario())
    paths = [json.loads(x)["path"] for x in target.read_text().splitlines()]
    assert paths == [f"/{n}" for n in range(3000)]
    assert stats == {"lines": 3000, "dropped": 1, "failures": 1, "error": ""}

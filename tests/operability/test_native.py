"""The C observer (``_speedups.c``) against the Python it stands for: the same requests counted
the same way and logged to the same bytes, ids included; and that the C part is built where a
compiler is (a build that silently fell back to Python would halve the benchmark's figures)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from albingress import ir
from albingress.dataplane import accesslog, metrics, native
from albingress.dataplane.accesslog import AccessLog
from albingress.dataplane.balancer import Pick
from albingress.dataplane.exchange import Exchange
from albingress.dataplane.metrics import WorkerMetrics

speedups = native.speedups()


def test_the_c_part_is_built_where_a_compiler_is() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler: the Python path serves alone")
    assert native.built(), "albingress.dataplane._speedups was not built (see setup.py)"
    if speedups is None:
        pytest.skip("built, turned off by ALBINGRESS_PURE_PYTHON")
    assert isinstance(WorkerMetrics().native, speedups.Observer)


needs_c = pytest.mark.skipif(speedups is None, reason="the C part is not built")

GROUP = ir.ServerGroup(
    id="sgp-x",
    name="x",
    source=ir.GroupSource.SERVER_GROUP,
    protocol=ir.Protocol.HTTP,
    scheduler=ir.Scheduler.WRR,
    servers=(ir.Server("127.0.32.1", 8080, 100, "s0"),),
)
SERVICE = ir.ServerGroup(
    id="svc:ns/web:80",
    name='ns/we"b:80',  # a name that needs escaping
    source=ir.GroupSource.SERVICE,
    protocol=ir.Protocol.HTTP,
    scheduler=ir.Scheduler.WRR,
    servers=(ir.Server("127.0.32.2", 9090, 100, "pod"),),
)
RULE = ir.Rule(
    "ns/ing/rules/0/paths/0", "ns/ing", 10, "h.example", ir.PathMatch(ir.PathType.PREFIX, "/"),
    (), (),
)  # fmt: skip


def _pick(group: ir.ServerGroup) -> Pick:
    server = group.servers[0]
    return Pick.of(group, server, ir.server_key(group.id, server.address, server.port))


def _client() -> SimpleNamespace:
    return SimpleNamespace(
        listener_port=80, client_ip="127.0.0.1", ctx=SimpleNamespace(clock=lambda: 0.0)
    )


def _real(**kw: Any) -> Exchange:
    """A real Exchange (read by the C code through its slots)."""
    ex = Exchange(_client(), kw.pop("method", "GET"), b"/p", kw.pop("path", "/p"), "", [], [])  # type: ignore[arg-type]
    ex.host = b"h.example"
    ex.rule = RULE
    ex.status = 200
    ex.upstream_status = 200
    ex.sent_at = 0.0005
    ex.attempts = 1
    ex.raw_head = b"GET /p HTTP/1.1\r\nHost: h.example"
    ex.bytes_out = 120
    ex.request_id = ""
    for name, value in kw.items():
        setattr(ex, name, value)
    return ex


def _stand_in(**kw: Any) -> SimpleNamespace:
    """Anything else with the attributes (read through getattr)."""
    fields: dict[str, Any] = {
        "client": _client(), "rule": RULE, "status": 200, "upstream_status": 200,
        "started": 0.0, "sent_at": 0.0005, "attempts": 1, "reason": "", "method": "POST",
        "host": b"h.example", "path": "/q", "query": "a=1", "target": b"/q?a=1",
        "raw_head": None, "raw_headers": [(b"Host", b"h.example"), (b"X-Long", b"v" * 300)],
        "body_in": 5, "bytes_out": 10, "request_id": None, "rid_line": b"", "log_part": None,
    }  # fmt: skip
    fields.update(kw)
    return SimpleNamespace(**fields)


def _cases() -> list[tuple[Any, Pick | None]]:
    a, svc = _pick(GROUP), _pick(SERVICE)
    return [
        (_real(), a),  # a generated id
        (_real(request_id="given-1"), svc),
        (_real(request_id='q"uo\\te\x01\x7fé', path="/ü\n"), a),  # escaped by msgspec
        (_real(status=0, upstream_status=0, sent_at=0.0), None),  # client gone, no server
        (_real(status=502, upstream_status=0, attempts=3, reason="refused"), a),
        (_real(log_part=accesslog.request_part("1.2.3.4", 80, "GET", "h", "/", "", "r", "i")), a),
        (_real(rule=None, status=404, sent_at=0.0), None),
        (_stand_in(), svc),  # the head size of a full-parser request, a body
        (_stand_in(status=503, attempts=2, request_id="", bytes_out=2**40), a),
        (_stand_in(status=200, rule=None), None),
        # values beyond a C long long, and None where an int is kept: logged as Python does
        (_real(bytes_out=2**63 + 5, upstream_status=None), a),
        (_stand_in(body_in=2**63 - 10, raw_head=b"GET / HTTP/1.1\r\nHost: h"), a),
        (_real(bytes_out=None), a),
    ]


def _pair(tmp_path: Path, *, enabled: bool = True) -> tuple[WorkerMetrics, WorkerMetrics]:
    """The same worker twice: in Python (a clock of its own turns the C part off) and in C."""
    py_log = AccessLog(path=str(tmp_path / "py.log"), prefix="pp")
    c_log = AccessLog(path=str(tmp_path / "c.log"), prefix="pp")
    wall = lambda: 1_790_000_000.25  # noqa: E731
    py = WorkerMetrics(metrics=enabled, access_log=py_log, clock=lambda: 0.0, wall=wall)
    c = WorkerMetrics(metrics=enabled, access_log=c_log, wall=wall)
    assert py.native is None and c.native is not None
    c_log._offset = py_log._offset  # one wall clock for both
    c.native.offset = py_log._offset
    return py, c


@needs_c
@pytest.mark.parametrize("enabled", [True, False])
def test_c_and_python_count_and_log_the_same(tmp_path: Path, enabled: bool) -> None:
    py, c = _pair(tmp_path, enabled=enabled)
    now = time.monotonic()
    for i, ((ex_py, pick), (ex_c, _)) in enumerate(zip(_cases(), _cases(), strict=True)):
        at = now + i * 0.0137
        py.clock = lambda at=at: at  # type: ignore[misc]
        py.done(ex_py, pick)
        c.native.done(ex_c, pick, at)
        assert ex_c.request_id == ex_py.request_id
    for wm in (py, c):
        assert wm.access_log is not None
        wm.access_log.close()
    py_lines = (tmp_path / "py.log").read_bytes()
    c_lines = (tmp_path / "c.log").read_bytes()
    assert c_lines == py_lines
    assert len(c_lines.splitlines()) == len(_cases())
    for line in c_lines.splitlines():
        assert list(json.loads(line)) == list(accesslog.FIELDS)
    py_snap, c_snap = py.snapshot(), c.snapshot()
    assert c_snap["series"] == py_snap["series"]
    assert c_snap["retries"] == py_snap["retries"] and c_snap["errors"] == py_snap["errors"]
    if enabled:
        assert len(py_snap["series"]) == 7 and len(py_snap["errors"]) == 2
        assert py_snap["retries"] == [[80, RULE.name, 3]]
    else:
        assert py_snap["series"] == [] and py_snap["errors"] == []


@needs_c
def test_c_metrics_without_a_log_and_a_pruned_series(tmp_path: Path) -> None:
    wm = WorkerMetrics()
    assert wm.native is not None
    pick = _pick(GROUP)
    for _ in range(3):
        wm.done(_real(), pick)  # the real clock, as in a worker
    ((port, rule, skey, status, values),) = wm.snapshot()["series"]
    assert (port, rule, skey, status) == (80, RULE.name, pick.key, 200)
    assert sum(values[: metrics._NB]) == 3 and values[metrics._NB] > 0
    wm.prune(ir.IR((ir.Listener(80, "HTTP", ()),), ()))  # the rule is gone
    assert wm.snapshot()["series"] == []
    wm.done(_real(), pick)  # counted in the same dict: prune changes it in place
    assert len(wm.snapshot()["series"]) == 1


@needs_c
def test_c_hands_a_full_batch_to_the_log(tmp_path: Path) -> None:
    log = AccessLog(path=str(tmp_path / "a.log"), prefix="b")
    wm = WorkerMetrics(access_log=log)
    pick = _pick(GROUP)
    for _ in range(accesslog.FLUSH_LINES + 3):
        wm.done(_real(), pick)
    assert log.sink.lines == accesslog.FLUSH_LINES  # written at the limit, without a flush
    log.close()
    ids = [json.loads(x)["request_id"] for x in (tmp_path / "a.log").read_text().splitlines()]
    assert len(ids) == accesslog.FLUSH_LINES + 3 == len(set(ids))
    assert ids[:3] == ["b1", "b2", "b3"] and ids[-1] == f"b{accesslog.FLUSH_LINES + 3:x}"


@needs_c
@pytest.mark.parametrize("given", ["", "client-id"])
def test_c_and_python_put_the_same_request_id_in_the_head(tmp_path: Path, given: str) -> None:
    head = b"GET /p HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 127.0.0.1\r\n\r\n"
    py_log = AccessLog(path=str(tmp_path / "py.log"), prefix="id")
    c_log = AccessLog(path=str(tmp_path / "c.log"), prefix="id")
    WorkerMetrics(access_log=c_log)  # attaches its observer to the log
    results = []
    for log in (py_log, c_log):
        ex = _real(request_id=given)
        sent = log.forward_head(ex, head)
        results.append((sent, ex.request_id, ex.rid_line))
        log.close()
    assert results[0] == results[1]
    sent, rid, line = results[1]
    if given:
        assert sent == head and rid == "client-id" and line == b""
    else:
        assert sent == head[:-2] + b"X-Request-Id: id1\r\n\r\n" and rid == "id1"
        assert line == b"X-Request-Id: id1\r\n"


@needs_c
def test_c_refuses_what_it_cannot_use() -> None:
    assert speedups is not None
    wm = WorkerMetrics(access_log=AccessLog(fd=1, prefix="x"))
    assert wm.native is not None
    with pytest.raises(ValueError, match="whole request head"):
        wm.native.forward_head(_real(), b"GET / HTTP/1.1\r\n")
    with pytest.raises(TypeError):
        wm.native.done(_real(status="200"), None)  # a status is an int
    kwargs = {**_observer_kwargs(), "buckets": metrics.BUCKETS[:3]}
    with pytest.raises(ValueError, match="buckets"):
        speedups.Observer(**kwargs)
    with pytest.raises(ValueError, match="prefix"):
        speedups.Observer(**{**kwargs, "buckets": metrics.BUCKETS, "prefix": 'a"b'})


# --------------------------------------------------------------------------- the C writer


def _lines(log: AccessLog, n: int, pad: int = 0, start: int = 0) -> None:
    for i in range(start, start + n):
        log.record(
            SimpleNamespace(**{**vars(_stand_in()), "path": f"/{i}" + "p" * pad}), None, 200,
            0.1, -1.0, 1.0,
        )  # fmt: skip


@needs_c
def test_the_c_writer_writes_every_batch_in_order(tmp_path: Path) -> None:
    target = tmp_path / "a.log"

    async def scenario() -> dict[str, Any]:
        log = AccessLog(path=str(target))
        log.start(asyncio.get_running_loop())
        assert log._writer is not None and log._thread is None
        for n in range(3000):  # more than one batch, flushed by size and by the timer
            _lines(log, 1, n % 50, n)
            if n % 700 == 0:
                await asyncio.sleep(0.12)
        log.close()
        return log.stats()

    stats = asyncio.run(scenario())
    paths = [json.loads(x)["path"].rstrip("p") for x in target.read_text().splitlines()]
    assert paths == [f"/{n}" for n in range(3000)]
    assert stats == {"lines": 3000, "dropped": 0, "failures": 0, "error": ""}


@needs_c
def test_c_writers_sharing_a_pipe_never_cut_a_line() -> None:
    read_fd, write_fd = os.pipe()
    assert speedups is not None
    writers = [speedups.Writer(write_fd, True) for _ in range(3)]
    sent = 0
    for w, writer in enumerate(writers):
        for b in range(4):
            data = b"".join(
                json.dumps({"w": w, "b": b, "i": i, "pad": "x" * (i * 37 % 900)}).encode() + b"\n"
                for i in range(400)
            )
            assert writer.put(data, 400)
            sent += 400
    got = b""
    try:
        while got.count(b"\n") < sent:  # the writers block on the full pipe until this reads
            got += os.read(read_fd, 1 << 16)
        assert all(writer.close(2.0) for writer in writers)
        records = [json.loads(line) for line in got.splitlines()]  # every line whole
        assert len(records) == sent
        for w in range(3):
            mine = [(r["b"], r["i"]) for r in records if r["w"] == w]
            assert mine == [(b, i) for b in range(4) for i in range(400)]  # in order
        assert [writer.stats()[:4] for writer in writers] == [(1600, 0, 0, 0)] * 3
    finally:
        os.close(read_fd)
        os.close(write_fd)


@needs_c
def test_a_failing_c_writer_is_reported_and_serving_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    full = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC

    async def scenario() -> dict[str, Any]:
        log = AccessLog(fd=full)
        log.start(asyncio.get_running_loop())
        assert log._writer is not None
        _lines(log, 5)
        await asyncio.sleep(0.3)  # the timer flushes, the writer fails, the tick reports
        _lines(log, 2)
        log.close()
        return log.stats()

    try:
        stats = asyncio.run(scenario())
    finally:
        os.close(full)
    assert stats["lines"] == 0 and stats["dropped"] == 7 and stats["failures"] == 2
    assert "No space left on device" in stats["error"]
    assert caplog.text.count("cannot write the access log") == 1  # once, not per batch
    assert "serving goes on" in caplog.text


@needs_c
def test_close_leaves_the_descriptor_of_a_stuck_c_writer_alone() -> None:
    read_fd, write_fd = os.pipe()
    log = AccessLog(fd=write_fd)

    async def scenario() -> bool:
        log.start(asyncio.get_running_loop())
        _lines(log, 3000, 100)  # far more than a pipe holds: the writer blocks
        log.flush()
        await asyncio.sleep(0.2)
        started = time.monotonic()
        log.close(timeout=0.2)
        return time.monotonic() - started < 1.0

    try:
        assert asyncio.run(scenario())  # close() gave up after its timeout
        assert log._writer is not None and log.sink.closed
        os.fstat(write_fd)  # still open: the writer is still in write() on it
    finally:
        os.close(read_fd)  # the blocked write fails (EPIPE) and the writer ends
        time.sleep(0.1)
        os.close(write_fd)
    assert log._writer.close(1.0)  # ended


@needs_c
def test_an_id_made_for_a_proxy_answer_is_not_taken_for_the_clients(tmp_path: Path) -> None:
    from albingress.dataplane.request import _client_id

    for c in (False, True):
        log = AccessLog(path=str(tmp_path / f"{c}.log"), prefix="m")
        if c:
            WorkerMetrics(access_log=log)
        ex = _real()  # a fast-lane request the proxy answered itself (e.g. 503): no id sent
        assert log.id_of(ex) == "m1"
        assert ex.rid_line == b"X-Request-Id: m1\r\n"
        assert _client_id(ex, ex.raw_head or b"") == ""  # a memo of it makes a new id each time
        log.close()


@needs_c
@pytest.mark.parametrize("head_id", [b"", b"X-Request-Id: from-client\r\n"])
def test_forward_head_looks_for_the_clients_id_when_not_looked_for_yet(
    tmp_path: Path, head_id: bytes
) -> None:
    head = b"GET /p HTTP/1.1\r\nHost: h\r\n" + head_id + b"\r\n"
    results = []
    for c in (False, True):
        log = AccessLog(path=str(tmp_path / f"{c}.log"), prefix="f")
        if c:
            WorkerMetrics(access_log=log)
        ex = _real(request_id=None, raw_head=head[:-2])
        results.append((log.forward_head(ex, head), ex.request_id, ex.rid_line))
        log.close()
    assert results[0] == results[1]
    if head_id:
        assert results[1] == (head, "from-client", b"")
    else:
        assert results[1][1] == "f1" and results[1][0].endswith(b"X-Request-Id: f1\r\n\r\n")


@needs_c
@pytest.mark.parametrize("timeout", [-1.0, float("nan"), 0.0])
def test_closing_a_stuck_c_writer_returns_whatever_the_timeout(timeout: float) -> None:
    assert speedups is not None
    read_fd, write_fd = os.pipe()
    writer = speedups.Writer(write_fd, True)
    try:
        assert writer.put((b"x" * 200 + b"\n") * 1000, 1000)  # more than the pipe holds
        time.sleep(0.05)
        started = time.monotonic()
        assert writer.close(timeout) is False  # stuck in write()
        assert time.monotonic() - started < 0.5
    finally:
        os.close(read_fd)
        time.sleep(0.05)
        os.close(write_fd)
    assert writer.close(1.0)


@needs_c
def test_an_observer_used_before_or_again_after_init_refuses() -> None:
    assert speedups is not None
    bare = speedups.Observer.__new__(speedups.Observer)
    for call in (lambda: bare.done(None, None), bare.take, lambda: bare.new_id(None)):
        with pytest.raises(RuntimeError, match="not initialised"):
            call()
    log = AccessLog(path=os.devnull, prefix="pp")
    wm = WorkerMetrics(access_log=log)
    with pytest.raises(RuntimeError, match="once"):
        wm.native.__init__(**{**_observer_kwargs(), "prefix": "zz"})
    assert log.id_of(_real()) == "pp1"  # the refused init changed nothing
    log.close()


def _observer_kwargs() -> dict[str, Any]:
    return {
        "exchange_type": Exchange, "pick_type": Pick, "buckets": metrics.BUCKETS,
        "series": {}, "rare": print, "log": False, "part_of": print, "id_of": str,
        "head_size": len, "encode": msgspec.json.encode, "flush": print,
        "no_pick": accesslog.NO_PICK, "flush_lines": 8, "prefix": "p", "record": print,
    }  # fmt: skip

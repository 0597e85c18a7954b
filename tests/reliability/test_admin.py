"""Security and faults of the admin side of a running ``albingress serve``.

Unsigned or badly signed API calls are refused with ALB's error codes; the admin address is
loopback by default and a warning is logged when it is not; no endpoint (nor an error body, nor
the log) carries the AccessKey secret; the state and credentials files are owner-only; and when
the state database is locked by another process, the API refuses with a clear ALB-style error
while traffic goes on.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alibabacloud_alb20200616 import models as m

from albingress.api.auth import CREDENTIALS_FILE, load_credentials
from albingress.api.server import AdminServer
from albingress.api.sgclient import ApiFailure, call, find_key, make_client
from tests.e2e.harness import ROOT, Serve, free_port, wait_until
from tests.reliability.conftest import Stubs
from tests.reliability.load import Load

pytestmark = pytest.mark.e2e


def admin_request(
    serve: Serve, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", serve.admin, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.fixture
def own(tmp_path: Path, stubs: Stubs) -> Iterator[Serve]:
    """A serve of its own (its state file is locked by one test), admin on 127.0.0.2."""
    serve = Serve(tmp_path, workers=1)
    try:
        for name, text in stubs.manifests.items():
            serve.write(name, text)
        _start(serve, "127.0.0.2")
        yield serve
    finally:
        assert serve.stop() == 0


def _start(
    serve: Serve,
    admin_host: str,
    extra: tuple[str, ...] = (),
    launch: tuple[str, ...] = ("-m", "albingress"),
) -> None:
    """Serve.start, with the admin on ``admin_host`` (the harness assumes 127.0.0.1)."""
    cmd = [
        sys.executable, *launch, "serve", "--manifests", str(serve.manifests),
        "--listen", f"80=127.0.0.1:{serve.port}", "--listen", f"443=127.0.0.1:{free_port()}",
        "--admin", f"{admin_host}:{serve.admin}", "--state", str(serve.workdir / "state.db"),
        "--workers", "1", "--vpc-cidr", "127.0.0.0/16", *extra,
    ]  # fmt: skip
    with serve.log.open("wb") as log:
        serve.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def healthy() -> bool:
        conn = http.client.HTTPConnection(admin_host, serve.admin, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    wait_until(healthy, 30, "serve to be healthy")


UNSIGNED = {
    "no signature at all": ("POST", "/?Action=ListServerGroups&Version=2020-06-16", {}),
    "a forged Authorization header": (
        "POST",
        "/",
        {
            "x-acs-action": "ListServerGroups",
            "x-acs-version": "2020-06-16",
            "Authorization": "ACS3-HMAC-SHA256 Credential=LTAIforged,SignedHeaders=host,"
            "Signature=" + "0" * 64,
        },
    ),
}


@pytest.mark.parametrize(("method", "path", "headers"), UNSIGNED.values(), ids=UNSIGNED.keys())
def test_unsigned_api_requests_are_refused_with_an_alb_error(
    lb: Serve, method: str, path: str, headers: dict[str, str]
) -> None:
    status, body = admin_request(lb, method, path, headers=headers)
    assert status in (400, 401, 403, 404), body
    data = json.loads(body)
    assert data["Code"] and data["Message"] and data["RequestId"]


def test_no_endpoint_leaks_the_credentials(lb: Serve) -> None:
    secrets = [k.secret for k in load_credentials(lb.workdir / CREDENTIALS_FILE)]
    assert secrets and all(len(s) >= 16 for s in secrets)
    key_id = load_credentials(lb.workdir / CREDENTIALS_FILE)[0].id
    seen = []
    for path in ("/healthz", "/metrics", "/api/v1/config", "/api/v1/traffic", "/", "/nope"):
        seen.append(admin_request(lb, "GET", path)[1])
    seen.append(
        admin_request(
            lb,
            "POST",
            "/",
            headers={
                "x-acs-action": "ListServerGroups",
                "x-acs-version": "2020-06-16",
                "Authorization": f"ACS3-HMAC-SHA256 Credential={key_id},SignedHeaders=host,"
                "Signature=" + "0" * 64,
            },
        )[1]
    )
    client = make_client(f"127.0.0.1:{lb.admin}", find_key(str(lb.workdir / "state.db"), None))
    seen.append(
        json.dumps(
            call(lambda: client.list_server_groups(m.ListServerGroupsRequest())).body.to_map()
        ).encode()
    )
    seen.append(lb.log.read_bytes())
    for secret in secrets:
        for text in seen:
            assert secret.encode() not in text


def test_the_state_and_credentials_files_are_owner_only(lb: Serve) -> None:
    for path in (lb.workdir / "state.db", lb.workdir / CREDENTIALS_FILE):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, (path, oct(mode))


def test_admin_warns_only_outside_loopback(caplog: pytest.LogCaptureFixture) -> None:
    """192.0.2.1 (TEST-NET-1) is not an address of this machine: binding it fails at once, so
    nothing listens or is sent outside loopback; the warning comes before the bind."""

    async def start(host: str) -> None:
        server = AdminServer(host, 0)
        try:
            await server.start()
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="albingress"):
        asyncio.run(start("127.0.0.2"))
        assert not [r for r in caplog.records if "loopback" in r.getMessage()]
        with pytest.raises(OSError):
            asyncio.run(start("192.0.2.1"))
    assert [r for r in caplog.records if "outside loopback" in r.getMessage()]


def test_a_serve_with_its_admin_on_another_loopback_address_does_not_warn(own: Serve) -> None:
    text = own.log.read_text()
    assert "loopback" not in text, text


def test_a_locked_state_database_is_refused_clearly_and_traffic_goes_on(own: Serve) -> None:
    client = make_client(f"127.0.0.2:{own.admin}", find_key(str(own.workdir / "state.db"), None))

    def create(name: str) -> Any:
        req = m.CreateServerGroupRequest(server_group_name=name, server_group_type="Ip")
        return call(lambda: client.create_server_group(req))

    assert create("before").body.server_group_id.startswith("sgp-")
    holder = sqlite3.connect(own.workdir / "state.db", isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with Load(own.port, "r.example.com", threads=2, seconds=20) as load:
            load.wait_for(100)
            started = time.monotonic()
            with pytest.raises(ApiFailure) as failure:
                create("while-locked")
            elapsed = time.monotonic() - started
            load.wait_for(100)
        assert load.failed() == 0 and load.total > 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = str(failure.value)
    print(f"locked: refused in {elapsed:.2f} s: {message}")
    assert "locked" in message.lower() or "busy" in message.lower(), message
    assert elapsed < 10
    assert create("after").body.server_group_id.startswith("sgp-")


# ``python -c`` then ``albingress``: files the process writes stop growing at 256 KiB (EFBIG;
# Python ignores SIGXFSZ), so the state database fills up while everything else goes on.
LIMITED = (
    "-c",
    "import resource, runpy; "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (262144, 262144)); "
    "runpy.run_module('albingress', run_name='__main__')",
)


def test_a_full_state_database_is_refused_clearly_and_traffic_goes_on(
    tmp_path: Path, stubs: Stubs
) -> None:
    serve = Serve(tmp_path, workers=1)
    for name, text in stubs.manifests.items():
        serve.write(name, text)
    try:
        _start(serve, "127.0.0.1", ("--log-level", "warning"), LIMITED)
        client = make_client(f"127.0.0.1:{serve.admin}", find_key(str(tmp_path / "state.db"), None))
        servers = [
            m.AddServersToServerGroupRequestServers(
                server_id=f"127.0.9.{i}", server_ip=f"127.0.9.{i}", port=80, server_type="Ip"
            )
            for i in range(1, 60)
        ]
        failure: ApiFailure | None = None
        created = 0
        with Load(serve.port, "r.example.com", threads=2, seconds=60) as load:
            for i in range(400):
                req = m.CreateServerGroupRequest(
                    server_group_name=f"filler-{i}-" + "x" * 100, server_group_type="Ip"
                )
                try:
                    gid = call(lambda req=req: client.create_server_group(req)).body.server_group_id
                    add = m.AddServersToServerGroupRequest(server_group_id=gid, servers=servers)
                    call(lambda add=add: client.add_servers_to_server_group(add))
                    created += 1
                except ApiFailure as exc:
                    failure = exc
                    break
            load.wait_for(100)
        assert failure is not None, f"the database never filled up ({created} groups)"
        print(f"full after {created} groups: {failure}")
        assert str(failure).startswith("ServiceUnavailable:"), failure
        assert "full" in str(failure) or "disk" in str(failure) or "I/O" in str(failure)
        assert load.failed() == 0 and load.total > 100
        # reads still work, and the store is consistent: every group listed is whole
        groups = call(lambda: client.list_server_groups(m.ListServerGroupsRequest(max_results=100)))
        assert groups.body.total_count >= created
    finally:
        assert serve.stop() == 0, serve.log.read_text()[-2000:]


def test_the_admin_address_is_loopback_by_default() -> None:
    from albingress.cli import build_parser
    from albingress.flags import balancer_options

    for command in (["serve", "--manifests", "."], ["controller"]):
        args = build_parser().parse_args(command)
        host = balancer_options(args).admin[0]
        assert host == "127.0.0.1", (command, host)

"""The live page in headless Chromium: the seed's scenario 4 with its shares, servers and the
diagnostics of a broken Ingress; a screenshot is kept in tests/artifacts/.

Chromium is Debian's ``chromium`` (``scripts/test`` installs it when missing and it can); it only
ever loads the admin address on 127.0.0.1, with its background networking switched off and every
host name but 127.0.0.1 unresolvable. The seed's addresses are moved to 127.0.32.x / 127.4.33.x,
which no other test uses.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

from tests.e2e.harness import ROOT, Backends, Serve

pytestmark = pytest.mark.e2e

ARTIFACTS = ROOT / "tests" / "artifacts"
SEED = ROOT / "examples" / "seed"
HOST = "demo.domain.ingress.top"
MOVED = {"127.0.1.": "127.0.32.", "127.4.2.": "127.4.33."}
BACKENDS = {
    "tea-pod-1": ("127.0.32.1", 8080),
    "tea-pod-2": ("127.0.32.2", 8080),
    "coffee-pod-1": ("127.0.32.3", 8080),
    "coffee-pod-2": ("127.0.32.4", 8080),
    "idc-web-1": ("127.4.33.1", 8080),
    "idc-web-2": ("127.4.33.2", 8080),
    "idc-api-1": ("127.4.33.3", 8080),
}
BROKEN = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: broken
  annotations:
    alb.ingress.kubernetes.io/actions.fwd: |
      [{"type": "ForwardGroup", "ForwardConfig": {"ServerGroups": [
        {"ServiceName": "tea-svc", "ServicePort": 80, "Weight": 500}]}}]
spec:
  ingressClassName: alb
  rules:
  - host: broken.example.com
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {service: {name: fwd, port: {name: use-annotation}}}
"""
RULE = "default/tea-ingress/rules/0/paths/0"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(
            "chromium is not installed (scripts/test installs Debian's chromium with apt-get "
            "when it runs as root; otherwise: apt-get install chromium)"
        )
    return found


def browse(url: str, *extra: str) -> str:
    with tempfile.TemporaryDirectory(prefix="albingress-chromium-") as profile:
        cmd = [
            chromium(), "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-default-apps",
            "--disable-extensions", "--disable-domain-reliability", "--metrics-recording-only",
            "--disable-client-side-phishing-detection", "--disable-breakpad",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=4000", *extra, url,
        ]  # fmt: skip
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


class _Rows(HTMLParser):
    """The ``data-*`` attributes of the page's group, server and failed-Ingress elements."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[dict[str, str]] = []
        self.servers: list[dict[str, str]] = []
        self.failed: list[str] = []
        self.diagnostics = 0
        self.loaded = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        cls = a.get("class", "")
        if tag == "body" and a.get("data-loaded") == "1":
            self.loaded = True
        if tag == "tr" and cls == "group":
            self.groups.append(a)
        elif tag == "tr" and cls == "server":
            self.servers.append(a)
        elif cls == "failed":
            self.failed.append(a["data-ingress"])
        elif cls == "diagnostic":
            self.diagnostics += 1


@pytest.fixture(scope="module")
def seed_lb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    chromium()
    backends = Backends(BACKENDS)
    serve = Serve(tmp_path_factory.mktemp("page"), workers=1, extra=("--access-log", "off"))
    try:
        for name, directory in (("common.yaml", "common"), ("scenario.yaml", "scenario4")):
            text = "\n---\n".join(p.read_text() for p in sorted((SEED / directory).glob("*.yaml")))
            for old, new in MOVED.items():
                text = text.replace(old, new)
            serve.write(name, text)
        serve.write("broken.yaml", BROKEN)
        serve.start()
        conn = serve.connect()
        try:
            for _ in range(200):  # one worker: smooth WRR is exact, 60/40/60/40
                conn.request("GET", "/path/x", headers={"Host": HOST})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200
        finally:
            conn.close()
        yield serve
    finally:
        serve.stop()
        backends.stop()


def test_page_renders_seed_scenario_with_shares(seed_lb: Serve) -> None:
    url = f"http://127.0.0.1:{seed_lb.admin}/"
    rows = _Rows()
    rows.feed(browse(url, "--dump-dom"))
    assert rows.loaded, "the page's script did not load the traffic data"
    groups = {g["data-group"]: g for g in rows.groups}
    assert set(groups) == {
        "default/tea-svc:80",
        "default/coffee-svc:80",
        "sgp-ihydxb9y93ypo*****",
        "sgp-pd0ipbvm2cydo*****",
    }
    expected = {
        "default/tea-svc:80": (30, 0.3),
        "default/coffee-svc:80": (20, 0.2),
        "sgp-ihydxb9y93ypo*****": (30, 0.3),
        "sgp-pd0ipbvm2cydo*****": (20, 0.2),
    }
    for label, (weight, share) in expected.items():
        row = groups[label]
        assert int(row["data-weight"]) == weight
        assert float(row["data-share"]) == pytest.approx(share)
        assert float(row["data-measured"]) == pytest.approx(share, abs=1e-4)
    servers = {s["data-server"]: s for s in rows.servers}
    assert set(servers) == {f"{a}:{p}" for a, p in BACKENDS.values()}
    assert all(s["data-healthy"] == "1" for s in servers.values())
    assert rows.failed == ["default/broken"]
    assert rows.diagnostics >= 1

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "live-page.png"
    shot.unlink(missing_ok=True)
    browse(url, f"--screenshot={shot}", "--window-size=1280,1500", "--hide-scrollbars")
    assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000


def test_page_has_no_external_assets(seed_lb: Serve) -> None:
    status, body = seed_lb.admin_get("/")
    assert status == 200
    text = body.decode()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert 'fetch("/api/v1/traffic"' in text

"""Fixtures of the reliability suite: ``albingress serve`` (a real process) in front of stub servers.

Stub servers stand on 127.0.7.x and 127.0.8.x, addresses no other test directory uses, on a
port found free for all of a set (so that two runs of the suite at once do not collide). The
routes: ``r.example.com`` -> Service ``good`` (two pods, 127.0.7.1 and 127.0.7.2);
``bad.example.com`` -> Service ``bad`` (one pod, 127.0.7.3, that misbehaves on request).
No rule has a default backend: any other Host is a 404 from the proxy itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Serve, service
from tests.reliability.stubs import StubServer


def ingress(name: str, host: str, svc: str) -> str:
    return f"""\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: {name}}}
spec:
  ingressClassName: alb
  rules:
  - host: {host}
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: {svc}, port: {{number: 80}}}}}}}}
---
"""


def manifests(port: int) -> dict[str, str]:
    return {
        "services.yaml": service("good", "127.0.7.1", "127.0.7.2", port=port)
        + service("bad", "127.0.7.3", port=port),
        "ingresses.yaml": ingress("good", "r.example.com", "good")
        + ingress("bad", "bad.example.com", "bad"),
    }


def stub_set(*specs: tuple[str, str]) -> list[StubServer]:
    """Stub servers ``(name, address)`` all on one port, free on every address."""
    for _ in range(50):
        first = StubServer(specs[0][0], specs[0][1], 0)
        started = [first]
        try:
            for name, host in specs[1:]:
                started.append(StubServer(name, host, first.port))
        except OSError:
            for s in started:
                s.stop()
            continue
        return started
    raise AssertionError(f"no port free on all of {specs}")


# Short timeouts so the timeout cases finish quickly; the rest are the defaults.
FLAGS = ("--idle-timeout", "2", "--response-timeout", "2", "--connect-timeout", "1")


class Stubs:
    def __init__(self) -> None:
        self.g1, self.g2, self.bad = stub_set(
            ("g1", "127.0.7.1"), ("g2", "127.0.7.2"), ("bad", "127.0.7.3")
        )
        self.all = (self.g1, self.g2, self.bad)
        self.port = self.g1.port
        self.manifests = manifests(self.port)

    def received(self) -> int:
        return sum(len(s.heads) for s in self.all)

    def stop(self) -> None:
        for s in self.all:
            s.stop()


@pytest.fixture(scope="package")
def stubs() -> Iterator[Stubs]:
    s = Stubs()
    yield s
    s.stop()


@contextlib.contextmanager
def serving(workdir: Path, stubs: Stubs, workers: int, extra: tuple[str, ...]) -> Iterator[Serve]:
    """``albingress serve`` over the stubs' manifests; it must drain and exit 0 at the end."""
    serve = Serve(workdir, workers=workers, extra=extra)
    try:
        for name, text in stubs.manifests.items():
            serve.write(name, text)
        serve.start()
        yield serve
    finally:
        assert serve.stop() == 0, Path(serve.log).read_text()[-3000:]


@pytest.fixture(scope="package")
def lb(tmp_path_factory: pytest.TempPathFactory, stubs: Stubs) -> Iterator[Serve]:
    with serving(tmp_path_factory.mktemp("reliability"), stubs, 2, FLAGS) as serve:
        yield serve

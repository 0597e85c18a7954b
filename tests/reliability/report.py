"""Measure the hostile-input cases and print them as the Markdown rows of docs/reliability.md.

    uv run python -m tests.reliability.report

Starts ``serve`` and the stub servers as the suite does (loopback only), sends every case of
:data:`tests.reliability.test_hostile_input.REFUSED` and ``NOT_FORWARDED``, and prints, per case,
the expected and the measured outcome: status, whether the connection was closed, whether any
byte reached a server, and how long the answer took.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.e2e.harness import Serve
from tests.reliability.conftest import FLAGS, Stubs
from tests.reliability.stubs import exchange
from tests.reliability.test_hostile_input import NOT_FORWARDED, REFUSED


def row(name: str, expected: str, measured: str) -> str:
    section, _, rest = name.partition(" ")
    if not section.startswith(("rfc", "CVE", "CWE")):
        section, rest = "-", name
    if section != "-":
        section = section.replace("rfc", "RFC ").replace("-", " §", 1)
    return f"| {rest} | {section} | {expected} | {measured} |"


def main() -> None:
    stubs = Stubs()
    serve = Serve(Path(tempfile.mkdtemp(prefix="albingress-report-")), workers=2, extra=FLAGS)
    try:
        for name, text in stubs.manifests.items():
            serve.write(name, text)
        serve.start()
        print("| Case | Source | Expected | Measured |")
        print("|---|---|---|---|")
        cases = [(n, d, c, True) for n, (d, c) in REFUSED.items()]
        cases += [(n, d, 404, False) for n, d in NOT_FORWARDED.items()]
        for name, data, code, must_close in cases:
            before = stubs.received()
            started = time.monotonic()
            reply = exchange(serve.port, data, wait=1.0 if not must_close else 3.0)
            elapsed = (time.monotonic() - started) * 1000
            reached = stubs.received() - before
            expected = f"{code}" + (", closed" if must_close else "") + ", not forwarded"
            measured = (
                f"{reply.status or 'no answer'}"
                + (", closed" if reply.closed and must_close else "")
                + (", not forwarded" if not reached else f", FORWARDED x{reached}")
                + (f" ({elapsed:.0f} ms)" if must_close else "")
            )
            print(row(name, expected, measured))
    finally:
        serve.stop()
        stubs.stop()


if __name__ == "__main__":
    main()

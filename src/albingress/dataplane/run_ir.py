"""A small runner: serve an IR from a JSON file with a supervisor and N workers.

``python -m albingress.dataplane.run_ir IR.json --listen 80=127.0.0.1:8080 --workers 2``

For tests and benchmarks until ``albingress serve`` exists. Prints one line
``{"listening": {"80": ["127.0.0.1", 8080]}, "pids": [...]}`` on stdout once the config is live
in every worker. SIGHUP re-reads the file and publishes it as the next version; SIGTERM or
SIGINT drains and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from albingress.dataplane.settings import ProxySettings, settings_from_json
from albingress.dataplane.supervisor import Supervisor
from albingress.diagnostics import ConfigError
from albingress.ir import IR, from_json


def _listen(text: str) -> tuple[int, tuple[str, int]]:
    port, _, addr = text.partition("=")
    host, _, local = addr.rpartition(":")
    return int(port), (host.strip("[]"), int(local))


def _load(path: Path) -> IR:
    return from_json(json.loads(path.read_text()))


async def _run(
    path: Path, listeners: dict[int, tuple[str, int]], workers: int, s: ProxySettings
) -> int:
    sup = Supervisor(listeners, workers, s)
    ir = _load(path)
    await sup.start()
    version = 1
    sup.publish_config(ir, version)
    await sup.wait_applied(version, 30.0)
    bound = {str(k): list(v) for k, v in sup.bound.items()}
    print(json.dumps({"listening": bound, "pids": sup.worker_pids()}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        nonlocal version
        try:
            new = _load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"reload failed: {exc}", file=sys.stderr, flush=True)
            return
        version += 1
        sup.publish_config(new, version)

    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    await sup.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="albingress.dataplane.run_ir")
    parser.add_argument("ir", type=Path)
    parser.add_argument("--listen", action="append", type=_listen, default=[])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--settings", default="{}", help="ProxySettings fields as JSON")
    args = parser.parse_args(argv)
    listeners = dict(args.listen) or {80: ("127.0.0.1", 8080)}
    try:
        settings = settings_from_json(json.loads(args.settings))
        return asyncio.run(_run(args.ir, listeners, args.workers, settings))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

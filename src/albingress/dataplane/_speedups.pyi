"""Stub of the C module (_speedups.c): the per-request bookkeeping of metrics.py in C."""

from collections.abc import Callable, Sequence
from typing import Any

NB: int

class Observer:
    offset: float
    @property
    def pending(self) -> int: ...
    def __init__(
        self,
        *,
        exchange_type: type | None,
        pick_type: type | None,
        buckets: Sequence[float],
        series: dict[Any, list[float]] | None,
        rare: Callable[[Any, Any, int], object],
        log: bool,
        part_of: Callable[[Any], object],
        id_of: Callable[[Any], str],
        head_size: Callable[[Any], int],
        encode: Callable[[str], bytes],
        flush: Callable[[], object],
        no_pick: object,
        flush_lines: int,
        prefix: str,
        record: Callable[..., object],
    ) -> None: ...
    def done(self, ex: Any, pick: Any, now: float = ..., /) -> None: ...
    def take(self) -> tuple[bytes, int]: ...
    def new_id(self, ex: Any, /) -> bytes: ...
    def forward_head(self, ex: Any, head: bytes, /) -> bytes: ...

class Writer:
    def __init__(self, fd: int, pipe: bool = False) -> None: ...
    def put(self, data: bytes, lines: int, /) -> bool: ...
    def stats(self) -> tuple[int, int, int, int, int]: ...
    def close(self, timeout: float = ..., /) -> bool: ...

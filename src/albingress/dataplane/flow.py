"""Flow control: reading from one side stops while the other side cannot keep up.

Each connection (client or upstream) owns one :class:`FlowControl`. Reading from its transport
is paused for one or more *reasons* (bits): the peer's write buffer went above the high-water
mark (asyncio calls ``pause_writing`` on the peer's protocol), requests are queued behind the one
in flight, a request body is waiting for a server. Reading resumes only when no reason is left,
so two independent reasons never undo each other.
"""

from __future__ import annotations

import asyncio

PEER_FULL = 1  # the peer's write buffer is above its high-water mark
QUEUED = 2  # pipelined requests wait behind the one in flight
BUFFERING = 4  # a request body is held while no server is attached yet
TUNNEL_PEER_FULL = 8  # an upgraded connection's peer is full
OWN_FULL = 16  # this connection's own write buffer is full: a client that does not read its
# answers gets no more requests read (answers the proxy makes itself would pile up otherwise)


class FlowControl:
    """Read pause reasons of one transport, and whether writing to it is paused."""

    __slots__ = ("reasons", "transport", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0
        self.write_paused = False  # set by the protocol's pause_writing / resume_writing

    def pause(self, reason: int) -> None:
        if not self.reasons:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reason: int) -> None:
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons and not self.transport.is_closing():
                self.transport.resume_reading()

    @property
    def paused(self) -> bool:
        return bool(self.reasons)

"""In-process transport: the three parties are threads, links are queues.

Used by tests, teaching and single-machine benchmarks.  Payloads are copied on send so
a party can never alias another party's memory.  If any party fails, the group's abort
event is set and every blocked ``recv`` raises :class:`PeerAborted` instead of hanging.
"""
from __future__ import annotations

import queue
import threading
import time

from .transport import Message, N_PARTIES, PeerAborted, PeerTimeout, Transport


class LocalNetwork:
    """The shared state of one in-process group: 3x3 queues and an abort flag."""

    def __init__(self):
        self.queues = {(i, j): queue.Queue() for i in range(N_PARTIES)
                       for j in range(N_PARTIES) if i != j}
        self.abort = threading.Event()
        self.abort_reason = ""

    def fail(self, party: int, exc: BaseException) -> None:
        if not self.abort.is_set():
            self.abort_reason = f"party {party} failed: {type(exc).__name__}: {exc}"
            self.abort.set()

    def transport(self, party_id: int, **kw) -> "LocalTransport":
        return LocalTransport(self, party_id, **kw)


class LocalTransport(Transport):
    POLL = 0.05

    def __init__(self, net: LocalNetwork, party_id: int, **kw):
        super().__init__(party_id, **kw)
        self.net = net

    def _deliver(self, to: int, msg: Message) -> None:
        msg.payload = msg.payload.copy()
        self.net.queues[(self.party_id, to)].put(msg)

    def _collect(self, frm: int, tag: str) -> Message:
        q = self.net.queues[(frm, self.party_id)]
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return q.get(timeout=self.POLL)
            except queue.Empty:
                pass
            if self.net.abort.is_set():
                raise PeerAborted(f"party {self.party_id} stopped at step {tag!r}: "
                                  f"{self.net.abort_reason}")
            if time.monotonic() > deadline:
                raise PeerTimeout(f"party {self.party_id}: no message from party {frm} at "
                                  f"step {tag!r} within {self.timeout:.1f} s")

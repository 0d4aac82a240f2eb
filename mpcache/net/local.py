"""In-process transport: the three parties are threads, links are queues.

Used by tests, teaching and single-machine benchmarks.  Payloads are copied on send so
a party can never alias another party's memory.  If any party fails, the group's abort
event is set and every blocked ``recv`` raises :class:`PeerAborted` instead of hanging.

Per-round cost.  In-process the three parties share one interpreter, so a round costs the
Python work of all three plus the hand-offs between them.  Links are C ``SimpleQueue``s
(not ``queue.Queue``, whose get/put are Python code around a Condition), ``recv`` first
tries a non-blocking get (no deadline arithmetic when the message is already there), the
accounting caches the current scope path and its counters (was a ``"/".join`` and a dict
look-up per message) and scopes are a class, not a generator.  Send+receive of one
message in one thread: 3.6 -> 1.4 us; scope enter/exit 1.7 -> 0.8 us.  Two GIL releases
per tiny step were also removed (:class:`mpcache.prg.PRG` serves small draws from a
block; :func:`mpcache.ring.iota` replaces ``np.arange`` in the bit protocols): each let
another party thread in.  Nothing on the wire changed (bytes, messages, rounds, values).
Measured on a 2-core VM, a chain of 1000 dependent 1-element fixed-point products and 50
1-element ``lt`` (wall us per round, best of 5 sessions, two interleaved runs):
rep3 mul 113 -> 93, add2 mul 86 -> 69, rep3 lt 375 -> 305, add2 lt 334 -> 241.  Most of
what is left is the parties' own Python/numpy work per round and cross-core wake-ups (the
same chain pinned to one core with ``taskset -c 0``: ~67 us per round before the change).
A decoding step (``mpcache bench decode --model gpt2-small-random --context 512
--protocol rep3 --policy full --steps 3``: 2383 rounds) is compute-bound: best step
1.47 s before, 1.40 s after, within this machine's run-to-run noise (+-10%).
"""
from __future__ import annotations

import queue
import threading
import time
from queue import SimpleQueue

from .transport import Message, N_PARTIES, PeerAborted, PeerTimeout, Transport


class LocalNetwork:
    """The shared state of one in-process group: 3x3 queues and an abort flag."""

    def __init__(self):
        self.queues = {(i, j): SimpleQueue() for i in range(N_PARTIES)
                       for j in range(N_PARTIES) if i != j}
        self.abort = threading.Event()
        self.abort_reason = ""
        #: per party: blocked in ``recv`` right now (read by kernels.SideCore: a big
        #: product may use the shared core too while every other party on it waits)
        self.waiting = [False] * N_PARTIES
        #: links to parties in other processes (mpcache.net.pipe): shut on abort, so a
        #: party in another process learns of the failure too; closed after the run
        self.process_links: list = []

    def fail(self, party: int, exc: BaseException) -> None:
        if not self.abort.is_set():
            self.abort_reason = f"party {party} failed: {type(exc).__name__}: {exc}"
            self.abort.set()
            for link in self.process_links:
                link.shutdown()

    def transport(self, party_id: int, **kw) -> "LocalTransport":
        return LocalTransport(self, party_id, **kw)


class LocalTransport(Transport):
    POLL = 0.05

    def __init__(self, net: LocalNetwork, party_id: int, **kw):
        super().__init__(party_id, **kw)
        self.net = net
        #: this party's outgoing and incoming links, indexed by peer (None for itself)
        self._out = [net.queues.get((party_id, j)) for j in range(N_PARTIES)]
        self._in = [net.queues.get((j, party_id)) for j in range(N_PARTIES)]
        #: queue links share memory: copy payloads (a socket link to another process,
        #: mpcache.net.pipe, copies by itself)
        self._copy = [isinstance(q, SimpleQueue) for q in self._out]

    def _deliver(self, to: int, msg: Message) -> None:
        if self._copy[to]:
            msg.payload = msg.payload.copy()
        self._out[to].put(msg)

    def _collect(self, frm: int, tag: str) -> Message:
        q = self._in[frm]
        try:                          # usual case in a busy protocol: already there
            return q.get_nowait()
        except queue.Empty:
            pass
        deadline = time.monotonic() + self.timeout
        self.net.waiting[self.party_id] = True
        try:
            while True:
                try:
                    return q.get(timeout=self.POLL)
                except queue.Empty:
                    pass
                if self.net.abort.is_set():
                    raise PeerAborted(f"party {self.party_id} stopped at step {tag!r}: "
                                      f"{self.net.abort_reason}")
                if time.monotonic() > deadline:
                    raise PeerTimeout(f"party {self.party_id}: no message from party {frm} "
                                      f"at step {tag!r} within {self.timeout:.1f} s")
        finally:
            self.net.waiting[self.party_id] = False

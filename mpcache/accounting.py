"""Per-party cost accounting: bytes, messages and rounds, attributed to named scopes.

Rounds are counted with a Lamport-style clock (one per party): an online message is
stamped ``clock + 1`` when sent, and a receiver sets ``clock = max(clock, stamp)``.  So
messages sent before any receive share a round, and a party's clock at the end of a job
is the number of sequential communication steps on its critical path.  Offline messages
(correlated randomness from the add2 dealer or from seed set-up) are counted apart and do
not advance the clock: they could all be sent ahead of time.

Scopes nest (``with party.scope("layer0"): with party.scope("softmax"): ...``) and are
recorded by their full path ``"layer0/softmax"``.  Bytes, messages and waits are
*exclusive* (attributed to the innermost scope); rounds, seconds and CPU seconds are
*inclusive* (clock, wall and thread CPU time elapsed inside the scope).
:meth:`Accounting.breakdown` aggregates by leaf name.

Where a party's wall time goes: ``wait_seconds`` is the time it spent inside ``recv`` for
online messages (waiting for a peer's round), ``offline_wait_seconds`` the same for
offline ones (add2: the dealer's material arriving late); ``cpu_seconds`` is its thread's
CPU time, measured only in scopes opened with ``cpu=True`` (a clock read costs ~1 us, too
much for every protocol step; the benchmarks open their measured step that way).  On a
shared core the rest of the wall time is time the party was ready but another party ran.
``side_cpu_seconds`` (exclusive) is the CPU time another thread, the side-core worker of
:class:`mpcache.kernels.SideCore`, spent on this party's big ring products: the party's
work that is not in its own thread's clock.  A step's total work, the core-seconds it
consumed, is the sum over parties of both.

Rounds of a scope across parties: parties enter a scope with different clocks (one that
only sent may lag), so per-party clock deltas over-count.  Each scope call records its
(entry, exit) clocks, and the session-level figure is, summed over calls,
``max over parties of exit - max over parties of entry`` (:func:`scope_rounds`).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field, asdict


@dataclass
class Counters:
    bytes_sent: int = 0           # online payload bytes this party sent
    messages_sent: int = 0
    offline_bytes_sent: int = 0   # dealer / set-up traffic
    offline_messages_sent: int = 0
    rounds: int = 0               # inclusive, clock ticks elapsed in scope
    seconds: float = 0.0          # inclusive wall time in scope
    calls: int = 0                # times the scope was entered
    cpu_seconds: float = 0.0      # inclusive thread CPU time (scopes opened with cpu=True)
    wait_seconds: float = 0.0     # exclusive time in recv waiting for online messages
    offline_wait_seconds: float = 0.0   # ... for offline messages (dealer material)
    side_cpu_seconds: float = 0.0  # exclusive CPU of the side-core worker on this party's
    #                                products (kernels.SideCore), in latency_bound blocks

    def add(self, other: "Counters") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Accounting:
    """Counters of one party: totals, per-scope, and the round clock."""

    party_id: int
    clock: int = 0
    total: Counters = field(default_factory=Counters)
    scopes: dict = field(default_factory=lambda: defaultdict(Counters))
    spans: dict = field(default_factory=lambda: defaultdict(list))   # path -> [(in, out)]
    wire_bytes_sent: int = 0      # set by transports that frame payloads (gRPC)
    #: the current scope path ("a/b/c"), kept up to date by scope(); and the Counters of
    #: that path once this scope has sent (None until then: entries are created on first
    #: use, as before)
    _path: str = ""
    _cur: Counters | None = None

    # -- called by the transport -------------------------------------------------
    def _here(self) -> Counters:
        """The current scope's Counters (created on first use)."""
        c = self._cur
        if c is None:
            c = self._cur = self.scopes[self._path]
        return c

    def on_send(self, nbytes: int, offline: bool) -> int:
        """Record a send; return the round stamp to put on the message (0 if offline)."""
        c = self._here()
        if offline:
            self.total.offline_bytes_sent += nbytes
            self.total.offline_messages_sent += 1
            c.offline_bytes_sent += nbytes
            c.offline_messages_sent += 1
            return 0
        self.total.bytes_sent += nbytes
        self.total.messages_sent += 1
        c.bytes_sent += nbytes
        c.messages_sent += 1
        return self.clock + 1

    def on_recv(self, stamp: int) -> None:
        if stamp > self.clock:
            self.clock = stamp

    def on_wait(self, seconds: float, offline: bool) -> None:
        """Record time spent in ``recv`` for one message (online or offline)."""
        c = self._here()
        if offline:
            self.total.offline_wait_seconds += seconds
            c.offline_wait_seconds += seconds
        else:
            self.total.wait_seconds += seconds
            c.wait_seconds += seconds

    def on_side_cpu(self, seconds: float) -> None:
        """Record CPU time the side-core worker spent on one of this party's products
        (another thread's clock: not in this thread's ``cpu_seconds``)."""
        self.total.side_cpu_seconds += seconds
        self._here().side_cpu_seconds += seconds

    # -- scopes ------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    def scope(self, name: str, cpu: bool = False) -> "_Scope":
        """Context manager: count everything inside under ``path/name``; ``cpu``: also
        this thread's CPU time inside (``cpu_seconds``)."""
        return _Scope(self, name, cpu)

    def snapshot(self) -> dict:
        """A plain-dict copy of every counter (safe to send across processes)."""
        tot = self.total.as_dict()
        tot["rounds"] = self.clock
        return {"party": self.party_id, "total": tot, "wire_bytes_sent": self.wire_bytes_sent,
                "scopes": {k: v.as_dict() for k, v in self.scopes.items() if k},
                "spans": {k: list(v) for k, v in self.spans.items()}}

    def breakdown(self) -> dict:
        """Counters aggregated by leaf scope name (bytes exclusive, rounds inclusive)."""
        return breakdown(self.snapshot())


class _Scope:
    """``with acct.scope(name):`` (a class, not a generator: entered once per protocol
    step, so its cost is on every round's path)."""

    __slots__ = ("acct", "name", "outer", "c0", "t0", "cpu0")

    def __init__(self, acct: Accounting, name: str, cpu: bool = False):
        self.acct, self.name = acct, name
        self.cpu0 = 0.0 if cpu else None

    def __enter__(self):
        name, a = self.name, self.acct
        if not name or "/" in name:
            raise ValueError(f"scope names must be non-empty and contain no '/': {name!r}")
        self.outer = a._path
        a._path = f"{a._path}/{name}" if a._path else name
        a._cur = None
        self.c0, self.t0 = a.clock, time.perf_counter()
        if self.cpu0 is not None:
            self.cpu0 = time.thread_time()

    def __exit__(self, *exc):
        a = self.acct
        path = a._path
        c = a.scopes[path]
        c.rounds += a.clock - self.c0
        c.seconds += time.perf_counter() - self.t0
        if self.cpu0 is not None:
            c.cpu_seconds += time.thread_time() - self.cpu0
        a.spans[path].append((self.c0, a.clock))
        c.calls += 1
        a._path = self.outer
        a._cur = None
        return False


def breakdown(snapshot: dict) -> dict:
    out: dict = defaultdict(Counters)
    for path, d in snapshot["scopes"].items():
        leaf = path.rsplit("/", 1)[-1]
        out[leaf].add(Counters(**d))
    return {k: v.as_dict() for k, v in out.items()}


def scope_totals(snapshot: dict, name: str) -> dict:
    """Counters of scope path ``name`` including everything nested inside it."""
    out = Counters()
    for path, d in snapshot["scopes"].items():
        if path == name or path.startswith(name + "/"):
            c = Counters(**d)
            if path != name:   # rounds/seconds/calls/CPU are inclusive already
                c.rounds = c.seconds = c.calls = c.cpu_seconds = 0
            out.add(c)
    return out.as_dict()


def scope_rounds(snapshots: list, path: str) -> int:
    """Critical-path rounds of scope ``path`` across parties, summed over its calls."""
    spans = [s["spans"].get(path, []) for s in snapshots]
    n = min(len(sp) for sp in spans)
    return sum(max(sp[i][1] for sp in spans) - max(sp[i][0] for sp in spans)
               for i in range(n))


def max_over_parties(snapshots: list, key: str) -> int:
    """Max of a total counter over parties (the usual 'per party' figure)."""
    return max(s["total"][key] for s in snapshots)

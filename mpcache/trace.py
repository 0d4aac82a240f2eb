"""Transcripts: every message each party sends and receives, for teaching and auditing.

A :class:`Recorder` is an observer on a party's transport (``Transport.observers``): it
sees each message as it is sent or accepted and appends an :class:`Event` with

    step       this party's event counter (0, 1, 2, ...): its view, in program order
    scope      the accounting scope path the message was counted under ("layer0/softmax")
    tag        the protocol step ("rep3.mul", "add2.trunc.open", ...)
    peer       the other party; direction "send" or "recv"
    dtype, shape, nbytes   of the payload (nbytes is what the accounting counts)
    stamp      the round stamp the message carries (0 = offline: dealer/set-up traffic)
    offline    True for correlated randomness that could be sent ahead of time
    clock      this party's round clock right after the event
    seq        the per-link sequence number

and **no payload values**, unless the session was created with ``trace_values=True``
(teaching on toy data only: a transcript with values is a copy of a party's view, and
the values of several parties together reconstruct every secret).

The totals of a transcript (:meth:`Transcript.scope_totals`) are recomputed from the
events alone and equal the accounting counters exactly: bytes and messages per scope
(exclusive), rounds per scope (inclusive: clock after the scope's last event minus clock
before its first, per maximal run of events).  ``tests/teach/test_teach_trace.py`` checks it.

Sessions::

    res = mpcache.Session("rep3", trace=True).run(job)     # res.transcripts[0..2]
    mpcache.Session("add2", trace="run.jsonl").run(job)     # also writes the file
    MPCACHE_TRACE=run.jsonl mpcache bench ops ...           # any command, any session

File format (JSON lines, one record a line; a ``.json`` path gets one JSON document with
the same records grouped per session): ``{"type": "session", ...}`` then the sessions'
``{"type": "event", ...}`` records, then one ``{"type": "stats", ...}`` per party (the
accounting snapshot, for cross-checks and critical-path rounds).  Within one process the
first session written to a path truncates it and later sessions append, so a traced
command leaves one file with all its sessions.  Read with :func:`read` or
``mpcache trace show FILE``.  Docs: docs/teaching.md.
"""
from __future__ import annotations

import json
import os
import threading
import time
import warnings
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

FORMAT_VERSION = 1
#: With ``trace_values=True``, at most this many values are kept per message.
MAX_VALUES = 4096
COUNTER_KEYS = ("bytes_sent", "messages_sent", "offline_bytes_sent", "offline_messages_sent",
                "rounds")


class TraceValuesWarning(UserWarning):
    """Share values are being recorded: toy data only."""


VALUES_WARNING = ("mpcache trace: recording SHARE VALUES (trace_values=True). This is for "
                  "teaching on toy data only: a transcript with values is a party's whole "
                  "view, and transcripts of two parties reconstruct every secret. Never use "
                  "it on real inputs or weights.")


@dataclass
class Event:
    step: int
    party: int
    direction: str          # "send" | "recv"
    peer: int
    scope: str
    tag: str
    dtype: str
    shape: tuple
    nbytes: int
    stamp: int
    offline: bool
    clock: int
    seq: int
    values: list | None = None       # only with trace_values=True (capped at MAX_VALUES)

    @property
    def sender(self) -> int:
        return self.party if self.direction == "send" else self.peer

    @property
    def receiver(self) -> int:
        return self.peer if self.direction == "send" else self.party

    @property
    def elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def to_record(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if d["values"] is None:
            del d["values"]
        return d

    @classmethod
    def from_record(cls, d: dict) -> "Event":
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        kw["shape"] = tuple(kw["shape"])
        return cls(**kw)


class Recorder:
    """Observer that records one party's transcript (attach it to the party's transport
    *before* the :class:`~mpcache.runtime.Party` is built so key set-up is recorded)."""

    def __init__(self, party_id: int, values: bool = False):
        self.party_id = party_id
        self.values = values
        self.events: list[Event] = []
        self.session = ""
        self._acct = None

    def attach(self, transport) -> "Recorder":
        if transport.party_id != self.party_id:
            raise ValueError(f"recorder of party {self.party_id} attached to the transport "
                             f"of party {transport.party_id}")
        self._acct = transport      # its accounting: the running branch's (.acct)
        transport.observers.append(self)
        return self

    def __call__(self, direction, peer, msg, scope_path) -> None:
        p = msg.payload
        vals = None
        if self.values and not msg.tag.startswith("setup."):     # never the PRG keys
            flat = np.asarray(p).reshape(-1)
            vals = flat[:MAX_VALUES].tolist()
        self.events.append(Event(
            step=len(self.events), party=self.party_id, direction=direction, peer=int(peer),
            scope=scope_path, tag=msg.tag, dtype=str(p.dtype), shape=tuple(p.shape),
            nbytes=int(p.nbytes), stamp=int(msg.stamp),
            offline=bool(getattr(msg, "offline", msg.stamp == 0)),
            clock=int(self._acct.acct.clock) if self._acct is not None else int(msg.stamp),
            seq=int(msg.seq), values=vals))

    def transcript(self, protocol: str = "?", session: str | None = None,
                   stats: dict | None = None):
        return Transcript(self.party_id, protocol, self.session if session is None else session,
                          list(self.events), stats, self.values)


# -- one party's transcript ----------------------------------------------------------------
@dataclass
class Transcript:
    party: int
    protocol: str
    session: str
    events: list
    stats: dict | None = None        # the party's accounting snapshot at the end
    values: bool = False

    def sends(self, online: bool | None = None) -> list:
        return [e for e in self.events if e.direction == "send"
                and (online is None or e.offline != online)]

    def received(self) -> list:
        return [e for e in self.events if e.direction == "recv"]

    @property
    def rounds(self) -> int:
        """The party's final round clock."""
        return self.events[-1].clock if self.events else 0

    def totals(self) -> dict:
        """Whole-transcript counters (same keys as ``Accounting.snapshot()['total']``)."""
        out = _counters(e for e in self.events)
        out["rounds"] = self.rounds
        return out

    def scope_paths(self) -> list:
        """Every scope path with events, and their ancestors (``""`` excluded)."""
        paths = set()
        for e in self.events:
            parts = e.scope.split("/") if e.scope else []
            for i in range(1, len(parts) + 1):
                paths.add("/".join(parts[:i]))
        return sorted(paths)

    def scope_counters(self, path: str, inclusive: bool = False) -> dict:
        """Counters of scope ``path``: bytes/messages exclusive (only messages counted
        under exactly ``path``) unless ``inclusive``; rounds always inclusive."""
        inside = (lambda s: s == path or s.startswith(path + "/")) if path else (
            lambda s: True)
        own = (lambda s: s == path) if not inclusive else inside
        out = _counters(e for e in self.events if own(e.scope))
        rounds, prev, run_start = 0, 0, None
        for e in self.events:
            if inside(e.scope):
                if run_start is None:
                    run_start = prev
                last = e.clock
            elif run_start is not None:
                rounds += last - run_start
                run_start = None
            prev = e.clock
        if run_start is not None:
            rounds += last - run_start
        out["rounds"] = rounds
        return out

    def scope_totals(self, inclusive: bool = False) -> dict:
        """{path: counters} for every scope path (see :meth:`scope_counters`)."""
        return {p: self.scope_counters(p, inclusive) for p in self.scope_paths()}

    def check(self, stats: dict | None = None) -> list:
        """Differences between the counters recomputed from the events and the accounting
        snapshot (``stats``, default: the one stored with the transcript).  [] = exact."""
        stats = stats if stats is not None else self.stats
        if stats is None:
            return ["no accounting snapshot to compare with"]
        bad = []
        tot = self.totals()
        for k in COUNTER_KEYS:
            if tot[k] != stats["total"][k]:
                bad.append(f"P{self.party} total {k}: events {tot[k]} != accounting "
                           f"{stats['total'][k]}")
        mine = self.scope_totals()
        for path in sorted(set(mine) | set(stats["scopes"])):
            acc = stats["scopes"].get(path)
            ev = mine.get(path) or {k: 0 for k in COUNTER_KEYS}
            for k in COUNTER_KEYS:
                want = acc[k] if acc is not None else 0
                if ev[k] != want:
                    bad.append(f"P{self.party} scope {path!r} {k}: events {ev[k]} != "
                               f"accounting {want}")
        return bad


def _counters(events) -> dict:
    out = {k: 0 for k in COUNTER_KEYS}
    for e in events:
        if e.direction != "send":
            continue
        if e.offline:
            out["offline_bytes_sent"] += e.nbytes
            out["offline_messages_sent"] += 1
        else:
            out["bytes_sent"] += e.nbytes
            out["messages_sent"] += 1
    return out


# -- a session: three transcripts -------------------------------------------------------------
@dataclass
class Trace:
    """The transcripts of one session (all three parties), as written to a trace file."""

    session: str
    protocol: str
    transcripts: list
    frac_bits: int | None = None
    values: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def stats(self) -> list | None:
        st = [t.stats for t in self.transcripts]
        return None if any(s is None for s in st) else st

    def records(self):
        yield {"type": "session", "version": FORMAT_VERSION, "session": self.session,
               "protocol": self.protocol, "frac_bits": self.frac_bits,
               "values": self.values, "parties": len(self.transcripts), **self.meta}
        for t in self.transcripts:
            for e in t.events:
                yield {"type": "event", "session": self.session, **e.to_record()}
        for t in self.transcripts:
            if t.stats is not None:
                yield {"type": "stats", "session": self.session, "party": t.party,
                       "stats": t.stats}

    def check(self) -> list:
        return [m for t in self.transcripts for m in t.check()]

    def write(self, path: str, append: bool = False) -> None:
        write([self], path, append=append)


def _from_records(recs: list) -> list:
    traces: dict = {}
    order = []
    for r in recs:
        kind = r.get("type")
        sid = r.get("session", "")
        if kind == "session":
            meta = {k: v for k, v in r.items() if k not in (
                "type", "version", "session", "protocol", "frac_bits", "values", "parties")}
            n = int(r.get("parties", 3))
            traces[sid] = Trace(sid, r.get("protocol", "?"),
                                [Transcript(i, r.get("protocol", "?"), sid, [], None,
                                            bool(r.get("values"))) for i in range(n)],
                                r.get("frac_bits"), bool(r.get("values")), meta)
            order.append(sid)
            continue
        if sid not in traces:
            raise ValueError(f"trace record for unknown session {sid!r} (no session header)")
        t = traces[sid].transcripts[int(r["party"])]
        if kind == "event":
            t.events.append(Event.from_record(r))
        elif kind == "stats":
            t.stats = r["stats"]
    return [traces[s] for s in order]


_write_lock = threading.Lock()
_opened: set = set()        # paths this process has already started (append after that)


def write(traces: list, path: str, append: bool | None = None) -> None:
    """Write sessions to ``path``: JSON lines, or one JSON document for ``*.json``.
    ``append=None``: truncate on this process's first write to the path, append later."""
    key = os.path.abspath(path)
    with _write_lock:
        if append is None:
            append = key in _opened
        _opened.add(key)
        if path.endswith(".json"):
            old = read(path) if append and os.path.exists(path) else []
            doc = {"format": "mpcache-trace", "version": FORMAT_VERSION,
                   "records": [r for t in old + list(traces) for r in t.records()]}
            with open(path, "w") as fh:
                json.dump(doc, fh)
            return
        with open(path, "a" if append else "w") as fh:
            for t in traces:
                for r in t.records():
                    fh.write(json.dumps(r, separators=(",", ":")) + "\n")


def read_for_command(path: str, command: str):
    """:func:`read` for a CLI command: the traces, or None after printing why the file
    cannot be read (the command then exits with status 2)."""
    import sys
    try:
        return read(path)
    except (OSError, ValueError) as e:
        print(f"mpcache {command}: cannot read {path}: {e}", file=sys.stderr)
        return None


def read(path: str) -> list:
    """All sessions in a trace file (JSON lines or JSON document) as :class:`Trace`; a
    folder of per-party files is merged (:func:`mpcache.trace_parties.read_folder`)."""
    if os.path.isdir(path):
        from .trace_parties import read_folder
        return read_folder(path)
    with open(path) as fh:
        text = fh.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and "records" in doc:
        recs = doc["records"]
    elif isinstance(doc, dict):        # a one-line JSON-lines file
        recs = [doc]
    else:
        recs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return _from_records(recs)


# -- hooks used by Session.run ------------------------------------------------------------------
def session_recorders(session, sid: str) -> list:
    """Three recorders for a session (called by :meth:`mpcache.Session.run`)."""
    if session.trace_values:
        warnings.warn(VALUES_WARNING, TraceValuesWarning, stacklevel=3)
    recs = [Recorder(i, values=bool(session.trace_values)) for i in range(3)]
    for r in recs:
        r.session = sid
    return recs


def trace_path(session) -> str | None:
    if isinstance(session.trace, (str, os.PathLike)) and str(session.trace):
        return str(session.trace)
    env = os.environ.get("MPCACHE_TRACE")
    if env and session.trace is False:
        return env
    return None


def finish_session(session, recorders: list, stats: list) -> list:
    """Transcripts of a finished session; writes the trace file if one was asked for."""
    sid = recorders[0].session
    ts = [r.transcript(session.protocol, sid, stats[i]) for i, r in enumerate(recorders)]
    failed = any(s is None for s in stats)
    path = trace_path(session)
    if path:
        meta = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if failed:
            meta["failed"] = True       # a party raised: the transcripts stop where it did
        tr = Trace(sid, session.protocol, ts, session.fxp.frac_bits, bool(session.trace_values),
                   meta)
        # (no command line: arguments such as a prompt can be secret)
        write([tr], path)
    return ts


def traces_of(result, protocol: str | None = None, frac_bits: int | None = None) -> Trace:
    """A :class:`Trace` from a traced :class:`~mpcache.runtime.RunResult`."""
    if result.transcripts is None:
        raise ValueError("this run was not traced: use Session(..., trace=True)")
    t0 = result.transcripts[0]
    return Trace(t0.session, protocol or t0.protocol, result.transcripts, frac_bits,
                 t0.values)


# -- text rendering (``mpcache trace show``) ------------------------------------------------------
def _fmt_shape(shape) -> str:
    return "(" + ",".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def format_timeline(trace: Trace, parties=None, scope: str | None = None,
                    limit: int | None = None) -> str:
    lines = []
    for t in trace.transcripts:
        if parties is not None and t.party not in parties:
            continue
        evs = [e for e in t.events if scope is None or e.scope == scope
               or e.scope.startswith(scope + "/")]
        lines.append(f"P{t.party} timeline: {len(evs)} events "
                     f"({sum(e.direction == 'send' for e in evs)} sent, "
                     f"{sum(e.direction == 'recv' for e in evs)} received), "
                     f"final round clock {t.rounds}")
        lines.append(f"  {'step':>5} {'round':>5} {'clock':>5}  {'scope':<22} {'dir':<6} "
                     f"{'tag':<26} {'dtype':<7} {'shape':<14} {'bytes':>9}")
        shown = evs if limit is None else evs[:limit]
        for e in shown:
            arrow = f"-> P{e.peer}" if e.direction == "send" else f"<- P{e.peer}"
            rnd = "off" if e.offline else str(e.stamp)
            lines.append(f"  {e.step:>5} {rnd:>5} {e.clock:>5}  {_cut(e.scope or '-', 22):<22} "
                         f"{arrow:<6} {_cut(e.tag, 26):<26} {e.dtype:<7} "
                         f"{_cut(_fmt_shape(e.shape), 14):<14} {e.nbytes:>9,}")
            if e.values is not None:
                vs = e.values[:8]
                more = "" if len(e.values) <= 8 and e.elements <= 8 else ", ..."
                lines.append(f"  {'':>19}values: [{', '.join(str(v) for v in vs)}{more}]")
        if limit is not None and len(evs) > limit:
            lines.append(f"  ... {len(evs) - limit} more events (use --limit)")
        lines.append("")
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= div and n >= 10_000:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 1] + "~"


def format_totals(trace: Trace) -> str:
    """Per-scope totals recomputed from the events, and the cross-check with accounting."""
    from .accounting import scope_rounds
    ts = trace.transcripts
    paths = sorted({p for t in ts for p in t.scope_paths()})
    stats = trace.stats
    lines = ["Totals per scope, recomputed from the events.  bytes/party: sent under exactly "
             "that scope (max over parties;",
             "per party in brackets); incl.: with nested scopes; rounds: inclusive, max of the "
             "per-party clocks; crit.path: across parties (as RunResult.scope reports)",
             f"  {'scope':<26} {'bytes/party':>11} {'per party':<22} {'incl.':>9} {'msgs':>5} "
             f"{'offline B':>9} {'rounds':>6} {'crit.path':>9}"]

    def row(name, per, incl, rounds, crit):
        b = [c["bytes_sent"] for c in per]
        pp = "[" + ", ".join(_human(x) for x in b) + "]"
        lines.append(f"  {_cut(name, 26):<26} {max(b):>11,} {_cut(pp, 22):<22} "
                     f"{incl:>9,} {max(c['messages_sent'] for c in per):>5} "
                     f"{max(c['offline_bytes_sent'] for c in per):>9,} {rounds:>6} {crit:>9}")

    tot = [t.totals() for t in ts]
    row("(session total)", tot, max(c["bytes_sent"] for c in tot),
        str(max(t.rounds for t in ts)), str(max(t.rounds for t in ts)))
    unscoped = [t.scope_counters("") for t in ts]     # exclusive: messages outside scopes
    if any(u["bytes_sent"] or u["offline_bytes_sent"] for u in unscoped):
        row("(outside any scope)", unscoped, max(u["bytes_sent"] for u in unscoped), "", "")
    for p in paths:
        depth = p.count("/")
        crit = str(scope_rounds(stats, p)) if stats else "-"
        per = [t.scope_counters(p) for t in ts]
        incl = max(t.scope_counters(p, inclusive=True)["bytes_sent"] for t in ts)
        row("  " * depth + p.rsplit("/", 1)[-1], per, incl,
            str(max(c["rounds"] for c in per)), crit)
    bad = trace.check() if stats else None
    if bad is None:
        lines.append("check: no accounting snapshot in the file; nothing to compare with")
    elif not bad:
        lines.append("check: every counter recomputed from the events equals the accounting "
                     "(bytes, messages, offline, rounds; every scope, every party)")
    else:
        lines.append("check FAILED: events and accounting disagree:")
        lines.extend("  " + m for m in bad[:20])
    return "\n".join(lines)


def format_tags(trace: Trace) -> str:
    """Bytes and messages per protocol step (tag), summed over parties."""
    rows: dict = {}
    for t in trace.transcripts:
        for e in t.sends():
            r = rows.setdefault(e.tag, [0, 0, 0, 0])
            if e.offline:
                r[2] += e.nbytes
                r[3] += 1
            else:
                r[0] += e.nbytes
                r[1] += 1
    lines = ["Totals per protocol step (tag), summed over the three parties",
             f"  {'tag':<32} {'online B':>12} {'msgs':>6} {'offline B':>12} {'msgs':>6}"]
    for tag, (b, m, ob, om) in sorted(rows.items(), key=lambda kv: -(kv[1][0] + kv[1][2])):
        lines.append(f"  {_cut(tag, 32):<32} {b:>12,} {m:>6} {ob:>12,} {om:>6}")
    return "\n".join(lines)


def format_trace(trace: Trace, timeline: bool = True, tags: bool = False, **kw) -> str:
    head = (f"session {trace.session}: protocol {trace.protocol}, "
            f"{sum(len(t.events) for t in trace.transcripts)} events, "
            + ("WITH SHARE VALUES (toy data only)" if trace.values else "metadata only")
            + (" -- the run FAILED; transcripts stop where each party stopped"
               if trace.meta.get("failed") else ""))
    parts = [head, "=" * len(head)]
    if timeline:
        parts.append(format_timeline(trace, **kw))
    parts.append(format_totals(trace))
    if tags:
        parts.append(format_tags(trace))
    return "\n".join(parts) + "\n"

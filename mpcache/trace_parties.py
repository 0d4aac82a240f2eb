"""Transcripts of real party processes: each process records its own view; a folder of
the three files is merged into one :class:`~mpcache.trace.Trace` and cross-checked.

    mpcache launch --config parties.toml --trace traces/ -- softmax --rows 1 --cols 8
    mpcache party --id 1 --config parties.toml --trace p1.jsonl    # one party, any host
    mpcache trace show traces/          # merged: every party's timeline, totals, checks
    mpcache trace html traces/ -o run.html

A party file (written by :func:`write_party_trace`) has the usual trace format with one
session header (``"view": party``), that party's events only, and its own accounting
snapshot.  :func:`merge` joins the files of one session (the session id every party was
started with) and checks two things:

* **accounting**: every party's counters recomputed from its events equal its own
  accounting snapshot (bytes, messages, offline, rounds; every scope) -- as in process;
* **links**: every message a party recorded as sent was recorded by its receiver with the
  same (sender, sequence number, tag, dtype, shape, bytes, round stamp), and nothing was
  received that was not sent.  A tampered or lost message shows up here.

Design choice: the merge trusts no party's file for another party's view; each party's
events come from its own file only, and the link check compares the two ends.
"""
from __future__ import annotations

import os
import time

from .trace import Recorder, Trace, Transcript, read, write


def party_recorder(transport, party_id: int, session: str) -> Recorder:
    """Attach a recorder to a party process's transport (before the Party is built, so
    the PRG key set-up is recorded too)."""
    rec = Recorder(party_id)
    rec.session = session
    return rec.attach(transport)


def write_party_trace(path: str, rec: Recorder, protocol: str, frac_bits: int,
                      stats: dict | None) -> None:
    """Write one party's view: its events and (on success) its accounting snapshot."""
    meta = {"view": rec.party_id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if stats is None:
        meta["failed"] = True
    ts = [Transcript(i, protocol, rec.session, [], None) for i in range(3)]
    ts[rec.party_id] = rec.transcript(protocol, rec.session, stats)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    write([Trace(rec.session, protocol, ts, frac_bits, False, meta)], path, append=False)


def party_file(folder: str, party_id: int) -> str:
    """The file ``mpcache launch --trace FOLDER`` gives party ``party_id``."""
    return os.path.join(folder, f"p{party_id}.jsonl")


def _views(path: str) -> list:
    """(party, Trace) for each session of a party file (the party whose view it holds)."""
    out = []
    for t in read(path):
        view = t.meta.get("view")
        if view is None:                # a whole-session file: every transcript is a view
            for tr in t.transcripts:
                if tr.events:
                    out.append((tr.party, t))
            continue
        out.append((int(view), t))
    return out


def merge(paths) -> list:
    """Merge per-party trace files into whole sessions (one :class:`Trace` per session
    id, in first-seen order).  ``meta["merged"]`` names the files; ``meta["link_check"]``
    holds the link mismatches ([] = every message matched at both ends)."""
    sessions: dict = {}
    order = []
    for path in paths:
        for party, t in _views(path):
            if t.session not in sessions:
                sessions[t.session] = Trace(
                    t.session, t.protocol,
                    [Transcript(i, t.protocol, t.session, [], None) for i in range(3)],
                    t.frac_bits, False, {"merged": "", "files": [None] * 3})
                order.append(t.session)
            m = sessions[t.session]
            if m.protocol != t.protocol:
                raise ValueError(f"session {t.session}: {path} says protocol {t.protocol}, "
                                 f"another file says {m.protocol}")
            if m.meta["files"][party] is not None:
                raise ValueError(f"session {t.session}: party {party}'s view is in both "
                                 f"{m.meta['files'][party]} and {path}")
            m.transcripts[party] = t.transcripts[party]
            m.meta["files"][party] = os.path.basename(path)
            if t.meta.get("failed"):
                m.meta["failed"] = True
    out = []
    for sid in order:
        m = sessions[sid]
        have = [f for f in m.meta["files"] if f]
        m.meta["merged"] = f"{len(have)} party files"
        missing = [i for i, f in enumerate(m.meta["files"]) if f is None]
        m.meta["link_check"] = ([f"no file holds P{i}'s view" for i in missing]
                                + link_check(m, skip=missing))
        out.append(m)
    return out


def link_check(trace: Trace, skip=()) -> list:
    """Mismatches between what each sender recorded and what its receiver recorded."""
    def key(e):
        return (e.sender, e.receiver, e.seq)

    def body(e):
        return (e.tag, e.dtype, tuple(e.shape), e.nbytes, e.stamp, e.offline)

    sent = {key(e): e for t in trace.transcripts for e in t.events if e.direction == "send"}
    got = {key(e): e for t in trace.transcripts for e in t.events if e.direction == "recv"}
    bad = []
    for k in sorted(set(sent) | set(got)):
        s, r = sent.get(k), got.get(k)
        if s is None:
            if k[0] not in skip:
                bad.append(f"P{k[1]} received message {k[2]} from P{k[0]} ({r.tag}) that "
                           f"P{k[0]} did not record sending")
        elif r is None:
            if k[1] not in skip and not trace.meta.get("failed"):
                bad.append(f"P{k[0]} sent message {k[2]} to P{k[1]} ({s.tag}) that "
                           f"P{k[1]} did not record receiving")
        elif body(s) != body(r):
            bad.append(f"message {k[2]} P{k[0]}->P{k[1]}: sender recorded {body(s)}, "
                       f"receiver {body(r)}")
    return bad


def read_folder(folder: str) -> list:
    """The merged sessions of every trace file (``*.jsonl``, ``*.json``) in ``folder``."""
    names = sorted(n for n in os.listdir(folder)
                   if n.endswith((".jsonl", ".json")) and not n.startswith("."))
    if not names:
        raise ValueError(f"{folder} holds no trace file (*.jsonl)")
    return merge([os.path.join(folder, n) for n in names])


def format_merge(trace: Trace) -> str:
    """One paragraph on the merge: files, accounting check per party, link check."""
    if not trace.meta.get("merged"):
        return ""
    lines = [f"merged from {trace.meta['merged']}: "
             + ", ".join(f"P{i} <- {f}" for i, f in enumerate(trace.meta["files"]) if f)]
    for t in trace.transcripts:
        if t.stats is None:
            lines.append(f"  P{t.party}: no accounting snapshot (the party failed or its "
                         "file is missing)")
            continue
        bad = t.check()
        lines.append(f"  P{t.party}: {len(t.events)} events; "
                     + ("totals equal its own accounting (every counter, every scope)"
                        if not bad else f"DIFFERS from its accounting: {bad[0]}"))
    lc = trace.meta.get("link_check") or []
    n = sum(len(t.sends()) for t in trace.transcripts)
    lines.append(f"  links: {n} messages sent; " + (
        "each matched at its receiver (sequence, tag, dtype, shape, bytes, round stamp)"
        if not lc else f"{len(lc)} MISMATCH(ES): " + "; ".join(lc[:5])))
    return "\n".join(lines)

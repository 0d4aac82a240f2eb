"""Checked reveal for rep3: open a secret and abort if its replicated shares disagree.

In rep3 every share component x_j is held by two parties (P_j in slot 0 and P_{j-1} in
slot 1).  A plain reveal takes each receiver's missing component from one of them.  The
checked reveal takes it from both and compares:

    receiver P_r is missing x_{r+2}:  P_{r+1} sends it (slot 1, tag rep3.checked_reveal)
                                      P_{r+2} sends it too (slot 0, tag
                                      rep3.checked_reveal.check): the value
                                      (mode="full") or its SHA-256 (mode="hash")

and, with ``agree=True`` (default), one more round in which every party tells both others
whether its comparison failed (1 byte each): if any party complains, every party aborts,
so no party outputs a value another party saw to be inconsistent (after an altered
re-share, the two receivers that compare consistent copies would otherwise accept a
wrong value).  A failed comparison at P_r names the pair: "P_{r+1} and P_{r+2} sent
different copies of x_{r+2}", and one of those two is the inconsistent party.

Why a pair and not one party: each component has exactly two holders, so a receiver that
sees two different copies has no third opinion; and a complaint cannot be trusted to
single a party out, because a corrupted party can complain falsely (P0 sending a wrong
copy to P2 *and* complaining produces the same two complaints as P1 altering both of its
messages).  Identifying the cheater needs more (signed messages, authenticated shares).

Cost per party, for n ring elements opened to all (measured in tests/teach/test_tamper.py):

    plain reveal            8n bytes, 1 message,  1 round
    checked, mode="hash"    8n + 32 bytes, 2 messages, 1 round   (+2 bytes, 2 messages,
    checked, mode="full"    16n bytes,     2 messages, 1 round    +1 round with agree)

What it gives: an opened value is accepted only if the two holders of every component
sent the same thing, so any single party that sends a wrong reveal message, or that made
the replicated sharing inconsistent earlier (e.g. by altering a reshare message it sent,
so that the two holders of a component no longer agree), is caught at the opening, and
the honest parties abort instead of outputting a wrong value.

What it does NOT give (this is not malicious security): an attack that keeps the sharing
consistent is invisible to it.  A party can add an error to the value it computes *and*
keeps (its 3-additive product term z_i before the reshare, its contribution to a masked
opening in truncation -- "rep3.mul_trunc.open" -- or to a comparison); then both holders
of every component agree on a wrong value.  Nor does it check inputs, dealer randomness
or any intermediate value that is not opened with it; and a party can still abort at will
(no guaranteed output, no fairness).  Full malicious security for rep3 needs a check of
every multiplication (triples verified by sacrifice, or distributed zero-knowledge proofs
over the whole circuit), which mpcache does not implement.  add2 has no checked reveal:
each additive share is held by one party only, so there is nothing to compare.
"""
from __future__ import annotations

import hashlib

import numpy as np

TAG = "rep3.checked_reveal"


class InconsistentShares(RuntimeError):
    """A checked reveal found two holders of a share component disagreeing."""

    def __init__(self, message, receiver=None, component=None, suspects=()):
        super().__init__(message)
        self.receiver = receiver
        self.component = component
        self.suspects = tuple(suspects)


def _digest(a: np.ndarray) -> np.ndarray:
    h = hashlib.sha256()
    h.update(repr((a.dtype.str, a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return np.frombuffer(h.digest(), dtype=np.uint8).copy()


def checked_reveal(x, to=None, mode: str = "hash", agree: bool = True):
    """Open SecretTensor ``x`` (rep3) to party ``to`` (None: all) with the consistency
    check above; raises :class:`InconsistentShares` at every party (``agree=True``) or at
    the receiver that saw the disagreement (``agree=False``).  The error's ``receiver``,
    ``component`` and ``suspects`` (the two holders) describe the raising party's own
    complaint if it made one, else the first party's that did."""
    if mode not in ("hash", "full"):
        raise ValueError(f"mode must be 'hash' or 'full', not {mode!r}")
    p = x.party
    if p.protocol_name != "rep3":
        raise ValueError("checked_reveal needs rep3 (in add2 each share is held by one party "
                         "only: there is no second copy to compare)")
    if to is not None and to not in (0, 1, 2):
        raise ValueError(f"reveal target must be 0, 1, 2 or None, got {to!r}")
    data, me = x.data, p.id
    targets = (0, 1, 2) if to is None else (to,)
    shape = data.shape[1:]
    for r in targets:                      # sends first: one round for all receivers
        if me == (r + 1) % 3:
            p.send(r, data[1], TAG)
        if me == (r + 2) % 3:
            p.send(r, data[0] if mode == "full" else _digest(data[0]), TAG + ".check")
    complaint = None
    u = None
    if me in targets:
        a, b = (me + 1) % 3, (me + 2) % 3
        got = p.recv(a, TAG, shape)
        chk = p.recv(b, TAG + ".check", shape if mode == "full" else (32,))
        same = np.array_equal(got, chk) if mode == "full" else np.array_equal(
            _digest(got), chk)
        if same:
            u = data[0] + data[1] + got
        else:
            complaint = (me, (me + 2) % 3, (a, b))
    if agree:
        flag = np.array([0 if complaint is None else 1], dtype=np.uint8)
        for q in ((me + 1) % 3, (me + 2) % 3):
            p.send(q, flag, TAG + ".agree")
        flags = {me: int(flag[0])}
        for q in ((me + 1) % 3, (me + 2) % 3):
            flags[q] = int(p.recv(q, TAG + ".agree", (1,))[0])
        complainers = sorted(q for q, f in flags.items() if f)
        if complainers:         # own complaint first: the one this party knows is true
            r = me if me in complainers else complainers[0]
            raise InconsistentShares(_verdict(complainers), r, (r + 2) % 3,
                                     ((r + 1) % 3, (r + 2) % 3))
    elif complaint is not None:
        r, comp, pair = complaint
        raise InconsistentShares(
            f"checked reveal: P{r} received share component x{comp} from P{pair[0]} and "
            f"P{pair[1]} (both hold it) and they differ: one of P{pair[0]}, P{pair[1]} is "
            "inconsistent; aborting", r, comp, pair)
    if u is None:
        return None
    return u.view(np.int64) if x.frac == 0 else p.fxp.decode(u, x.frac)


def _verdict(complainers: list) -> str:
    detail = "; ".join(f"P{r} received different copies of x{(r + 2) % 3} from "
                       f"P{(r + 1) % 3} and P{(r + 2) % 3}" for r in complainers)
    return (f"checked reveal failed: {detail} -- one of the two holders named in each "
            "complaint is inconsistent (tampered or faulty); every party aborts")


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of the checked reveal, per tag (or ``*`` pattern): ``title``;
#: ``local``, what the parties compute for it; ``learns``, why the receiver learns only
#: ``kind`` ("random": masked, the default; "dealer", "shape", "output", "key", "pattern").
#: ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "rep3.checked_reveal": dict(
        title="checked reveal: the missing component",
        local="as reveal: P_{r+1} sends x_{r+2} (its slot 1) to P_r (mpcache/checked.py)",
        learns="the component it was missing, so it reconstructs x",
        kind="output"),
    "rep3.checked_reveal.check": dict(
        title="checked reveal: the second holder's copy",
        local="the other holder of x_{r+2}, P_{r+2}, sends it too (or its SHA-256); P_r "
              "compares the two copies and complains if they differ",
        learns="a second copy (or hash) of the component it receives anyway",
        kind="output"),
    "rep3.checked_reveal.agree": dict(
        title="checked reveal: complaints",
        local="every party tells both others whether its comparison failed (1 byte), so "
              "all abort with the same verdict",
        learns="whether the sender's two copies agreed: part of the checked output (all "
               "abort on it)",
        kind="output"),
}

"""Tampering: alter one party's outgoing messages, to see what semi-honest security means.

    from mpcache.testing import tamper
    with tamper(party=1, tag="rep3.mul_trunc.open", fn=lambda u: u + np.uint64(1 << 36)):
        res = mpcache.Session("rep3").run(job)      # P1's openings carry +2^36 each

While the context is active, every in-process session (:class:`mpcache.Session`, threads
or forked party processes) gives party ``party``'s transport one more observer
(``Transport.observers``, called on each message just before it is delivered).  For a
message whose tag matches ``tag`` (exact, or a glob such as ``"rep3.checked_reveal*"``)
and whose receiver is in ``to`` (default: any), the observer replaces the payload with
``fn(payload)``.  The replacement must keep the dtype and shape: the accounting has
already counted the message, and the receiver checks both, so a change of either would
not be an attack on the values but a protocol mismatch (refused with ``ValueError``).

The observer sits before any recorder, so a traced session's transcript shows what the
party really sent (the sender's and the receiver's records agree).  ``count`` says how
many messages were altered in this process (a forked party counts in its own process).

Design choices: the hook is the transport's observer list (no protocol code changes, so
what is tampered is exactly the wire message); sessions are found by wrapping
:meth:`mpcache.net.local.LocalNetwork.transport` for the duration of the context, which
is process-wide: do not run unrelated sessions concurrently inside it.  Party processes
over gRPC are not covered.  See docs/teaching.md ("Tampering") and
:mod:`mpcache.checked` for the check that catches part of it.
"""
from __future__ import annotations

import fnmatch
import threading
from contextlib import contextmanager

import numpy as np

_lock = threading.Lock()


class Tamper:
    """The observer: alters the matching messages of one party (see the module doc)."""

    def __init__(self, party: int, tag: str, fn, to=None, limit: int | None = None):
        if party not in (0, 1, 2):
            raise ValueError(f"party must be 0, 1 or 2, got {party!r}")
        self.party = party
        self.tag = tag
        self.fn = fn
        self.to = None if to is None else {int(to)} if np.isscalar(to) else set(to)
        self.limit = limit
        self.count = 0
        self.tags_seen: set = set()

    def matches(self, tag: str) -> bool:
        return tag == self.tag or ("*" in self.tag or "?" in self.tag) and \
            fnmatch.fnmatchcase(tag, self.tag)

    def __call__(self, direction, peer, msg, scope_path) -> None:
        if direction != "send":
            return
        self.tags_seen.add(msg.tag)
        if not self.matches(msg.tag) or (self.to is not None and peer not in self.to):
            return
        if self.limit is not None and self.count >= self.limit:
            return
        old = msg.payload
        new = np.asarray(self.fn(np.array(old)))
        if new.dtype != old.dtype or new.shape != old.shape:
            raise ValueError(f"tamper fn changed {msg.tag!r} from {old.dtype}{old.shape} to "
                             f"{new.dtype}{new.shape}: keep dtype and shape")
        msg.payload = np.ascontiguousarray(new)
        self.count += 1


@contextmanager
def tamper(party: int, tag: str, fn, to=None, limit: int | None = None):
    """Alter party ``party``'s outgoing messages tagged ``tag`` with ``fn(payload)`` in
    every in-process session run inside the ``with`` block; yields the :class:`Tamper`
    (``.count``: messages altered here).  ``to``: only messages to this party (or these);
    ``limit``: at most this many messages."""
    from .net.local import LocalNetwork
    t = Tamper(party, tag, fn, to, limit)
    with _lock:
        original = LocalNetwork.transport

        def transport(self, party_id, **kw):
            tr = original(self, party_id, **kw)
            if party_id == t.party:
                tr.observers.insert(0, t)
            return tr

        LocalNetwork.transport = transport
    try:
        yield t
    finally:
        with _lock:
            LocalNetwork.transport = original


def add_fixed(delta: float, frac_bits: int = 18, scale: int = 1):
    """``fn`` adding ``delta`` (a real number) to ring words at ``2^(scale*frac_bits)``:
    ``scale=1`` for a fixed-point share, ``scale=2`` for a product before truncation.
    Payloads of another dtype (a hash, packed bits) get their lowest bit flipped."""
    d = np.int64(round(delta * 2.0 ** (scale * frac_bits))).view(np.uint64)

    def fn(u):
        if u.dtype != np.uint64:
            return u ^ np.ones_like(u)
        return u + d
    fn.__name__ = f"add_{delta:g}"
    return fn

"""Independent branches of one program in the same rounds (split-phase execution).

A protocol call blocks in ``recv`` until its round's messages arrive, so two independent
pieces of work -- exp's clip comparison and exp's polynomial, SiLU's threshold signs and
its polynomial -- queue one behind the other even though neither reads the other's
values: 5 + 10 rounds where max(5, 10) would do.  :func:`parallel` runs such pieces as
*branches*: each in its own thread, each sending and receiving as if it ran alone, so a
round of one branch and a round of the other travel together.  The Lamport round clock
(mpcache/accounting.py) then counts ``max`` of the branches' rounds, not their sum, and
over a network the latency is paid once.

What makes a branch independent of its siblings (all of it per party, no new messages):

* **Messages.**  A branch's tags carry its path (``"@0|rep3.mul"``, nested ``"@0.1|..."``);
  a link stays one FIFO queue, and a receiver parks a message of another branch for it
  (:meth:`mpcache.net.transport.Transport._demux`).  Within one branch the order is the
  program's, so every tag, shape and dtype check keeps its meaning.  Sends take a lock
  while branches run (a message's sequence number and its delivery stay in link order).
* **Randomness.**  Every PRG stream a party holds (the two pairwise keys and its own) is
  forked at the call: branch ``i`` gets a fresh AES key drawn from the parent stream, in
  the same program order at both holders of the key, so both holders fork the same child
  streams and the third party learns nothing new (a PRG output used as a key).  A child
  stream is labelled ``parent/i``; a view audit that freezes a stream also freezes the
  keys drawn from it, so the children are fixed across runs exactly when the parent is.
* **Accounting.**  Each branch counts bytes and rounds in its own
  :class:`mpcache.accounting.Accounting`, starting at the parent's clock and scope path;
  at the join the parent's clock becomes the largest branch clock and every counter,
  scope and span is added to the parent's.

Every party must call :func:`parallel` at the same program point with the same number of
branches (the parties run the same program; the add2 dealer follows it with phantom
shares).  A branch must not touch the values of a sibling; results come back in order.
Threads: numpy and the numba kernels release the GIL, so two branches also overlap their
local work on two cores.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import numpy as np

from .accounting import Accounting
from .prg import PRG, array_to_key

_TL = threading.local()

#: False: :func:`parallel` runs its branches one after the other in the calling thread
#: (the rounds add up again; same values, bytes and messages).  For comparisons of the
#: two schedules (tests, ``mpcache bench``); :func:`sequential` sets it for a block.
ENABLED = True

#: The PRG streams a party holds, forked per branch (attribute names on Party).
STREAMS = ("prg_next", "prg_prev", "prg_own")


@dataclass(eq=False)
class Branch:
    path: str            # "0", "1", nested "0.1"
    acct: Accounting
    streams: dict        # Party attribute name -> PRG

    @property
    def prefix(self) -> str:
        return f"@{self.path}|"


def current() -> Branch | None:
    """The branch the calling thread runs, or None at the top of the program."""
    return getattr(_TL, "branch", None)


def prefix_of(tag: str) -> str:
    """The branch prefix of a message tag ("" for the top of the program)."""
    if tag.startswith("@"):
        return tag[:tag.index("|") + 1]
    return ""


def strip(tag: str) -> str:
    """A message tag without its branch prefix (the protocol step)."""
    return tag[tag.index("|") + 1:] if tag.startswith("@") else tag


def _fork(party, path: str, i: int) -> Branch:
    acct = party.acct
    child = Accounting(acct.party_id, clock=acct.clock)
    child._path = acct._path
    streams = {}
    for name in STREAMS:
        parent = getattr(party, name)
        prg = PRG(array_to_key(parent.ring(2)))
        prg.label = f"{getattr(parent, 'label', name)}/{i}"
        streams[name] = prg
    return Branch(f"{path}.{i}" if path else str(i), child, streams)


def _join(acct: Accounting, children) -> None:
    """Add the branches' counters to the parent's; its clock becomes the largest."""
    for b in children:
        c = b.acct
        acct.clock = max(acct.clock, c.clock)
        acct.total.add(c.total)
        acct.wire_bytes_sent += c.wire_bytes_sent
        for path, counters in c.scopes.items():
            acct.scopes[path].add(counters)
        for path, spans in c.spans.items():
            acct.spans[path].extend(spans)
    acct._cur = None


def parallel(party, *fns):
    """Run the zero-argument callables ``fns`` as branches in the same rounds; return
    their results in order.  One branch runs in the calling thread, the others in their
    own.  A branch that raises stops the call (its siblings are left to fail on the
    session's abort or deadline, as a party that raised would leave its peers)."""
    if len(fns) == 1 or not ENABLED:
        return [fn() for fn in fns]
    outer = current()
    kids = [_fork(party, outer.path if outer else "", i) for i in range(len(fns))]
    results: list = [None] * len(fns)
    errors: list = []
    done = threading.Semaphore(0)

    def run(i):
        _TL.branch = kids[i]
        try:
            results[i] = fns[i]()
        except BaseException as exc:       # noqa: BLE001 -- re-raised in the caller
            errors.append(exc)
        finally:
            _TL.branch = outer

    def thread_main(i):
        np.seterr(over="ignore")          # ring wrap-around (numpy's state is per thread)
        run(i)
        done.release()

    tr = party.transport
    tr.open_branches += 1
    try:
        threads = [threading.Thread(target=thread_main, args=(i,), daemon=True,
                                    name=f"party{party.id}-branch{kids[i].path}")
                   for i in range(1, len(fns))]
        for t in threads:
            t.start()
        run(0)
        if errors:
            raise errors[0]
        for _ in threads:
            done.acquire()
            if errors:
                raise errors[0]
    finally:
        tr.open_branches -= 1
    _join(party.acct, kids)
    return results


@contextlib.contextmanager
def sequential():
    """Inside the block, :func:`parallel` runs its branches one after the other (for
    every party of an in-process session started inside it)."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before

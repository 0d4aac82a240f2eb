"""The Transport interface every protocol talks through.

A protocol never touches sockets; a transport never knows about secrets.  A transport
moves numpy arrays between the three parties, in order, per directed link, and counts
what it moves (:mod:`mpcache.net.accounting`).  Concrete transports implement only
:meth:`Transport._deliver` and :meth:`Transport._collect`; framing checks (sequence,
tag, session) and accounting live here once, so the in-process and gRPC transports
account identically.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..accounting import Accounting
from .. import branches

N_PARTIES = 3
#: Largest single message accepted (payload bytes); bigger tensors are a protocol bug.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 31
_PARTIES = range(N_PARTIES)


class TransportError(RuntimeError):
    """Communication failed: a peer died, stalled past the deadline, or sent garbage."""


class PeerTimeout(TransportError):
    pass


class PeerAborted(TransportError):
    pass


class ProtocolMismatch(TransportError):
    """A received message is not the one the protocol expects (tag, order, session)."""


@dataclass(slots=True)
class Message:
    session: str
    sender: int
    seq: int          # per directed link, starting at 0
    tag: str          # the protocol step, e.g. "rep3.mul"
    stamp: int        # round stamp (0 for offline traffic)
    payload: np.ndarray
    offline: bool = False   # correlated randomness / set-up, not on the online path


class Transport:
    """Base class: sequencing, validation and accounting around a raw delivery layer."""

    def __init__(self, party_id: int, session: str = "default", timeout: float = 30.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        if party_id not in range(N_PARTIES):
            raise ValueError(f"party id must be 0, 1 or 2, got {party_id}")
        self.party_id = party_id
        self.session = session
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._acct = Accounting(party_id)
        self._send_seq = [0] * N_PARTIES
        self._recv_seq = [0] * N_PARTIES
        # Branches (mpcache.branches): while any runs, sends take a lock (a message's seq
        # and its delivery stay in link order) and receives go through a demultiplexer
        # (a message of another branch is parked for it).  Off the branches, neither.
        self.open_branches = 0
        self._send_lock = threading.Lock()
        self._links = [_Demux() for _ in _PARTIES]
        #: Callables ``obs(direction, peer, msg, scope_path)`` seeing every message this
        #: party sends ("send") or accepts ("recv"): transcripts and view audits.
        self.observers: list = []

    @property
    def acct(self) -> Accounting:
        """The accounting of the running branch (mpcache.branches), else the party's."""
        b = branches.current()
        return self._acct if b is None else b.acct

    # -- to implement --------------------------------------------------------------
    def _deliver(self, to: int, msg: Message) -> None:
        raise NotImplementedError

    def _collect(self, frm: int, tag: str) -> Message:
        """Block until the next message from ``frm`` arrives (raise on deadline)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- the interface protocols use ---------------------------------------------------
    def _in_branch(self, tag: str):
        """(prefix, accounting, tag) of a message sent or received by the running branch
        (mpcache/branches.py): its tag prefixed and its own clock; outside any branch no
        prefix and the transport's accounting."""
        b = branches.current()
        if b is None:
            return "", self._acct, tag
        return b.prefix, b.acct, b.prefix + tag

    def send(self, to: int, payload: np.ndarray, tag: str, offline: bool = False) -> None:
        if to == self.party_id or to not in _PARTIES:
            raise ValueError(f"party {self.party_id} cannot send to {to}")
        payload = np.asarray(payload)
        if not payload.flags.c_contiguous:   # (ascontiguousarray would make 0-d arrays 1-d)
            payload = payload.copy()
        if payload.nbytes > self.max_message_bytes:
            raise TransportError(f"message {tag!r} of {payload.nbytes} bytes exceeds the "
                                 f"limit of {self.max_message_bytes} bytes")
        _, acct, tag = self._in_branch(tag)
        stamp = acct.on_send(payload.nbytes, offline)
        if self.open_branches:
            with self._send_lock:
                self._post(to, payload, tag, stamp, offline, acct)
        else:
            self._post(to, payload, tag, stamp, offline, acct)

    def _post(self, to, payload, tag, stamp, offline, acct) -> None:
        msg = Message(self.session, self.party_id, self._send_seq[to], tag, stamp, payload,
                      offline)
        self._send_seq[to] += 1
        if self.observers:
            for obs in self.observers:
                obs("send", to, msg, acct.path)
        self._deliver(to, msg)

    def recv(self, frm: int, tag: str, shape: tuple | None = None,
             dtype=None) -> np.ndarray:
        """Next message from ``frm``; it must carry step ``tag`` (and ``shape`` and
        ``dtype`` if given).  With a ``shape`` but no ``dtype`` the payload must still be an
        integer or bool array: every protocol message is one (ring words, packed bits,
        small indices), so a float or other array from a peer is refused, not computed
        with."""
        if frm == self.party_id or frm not in _PARTIES:
            raise ValueError(f"party {self.party_id} cannot receive from {frm}")
        prefix, acct, tag = self._in_branch(tag)
        link = self._links[frm]
        if self.open_branches or link.parked:
            msg = self._demux(frm, prefix, tag, acct)
        else:
            msg = self._take(frm, tag, acct)
        if msg.tag != tag:
            raise ProtocolMismatch(f"party {self.party_id}: expected step {tag!r} from party "
                                   f"{frm}, got {msg.tag!r} (parties are running different "
                                   f"programs)")
        if shape is not None and tuple(msg.payload.shape) != tuple(shape):
            raise ProtocolMismatch(f"party {self.party_id}: step {tag!r} from party {frm} "
                                   f"carries shape {tuple(msg.payload.shape)}, expected "
                                   f"{tuple(shape)} (parties are running different programs)")
        got = msg.payload.dtype
        if (dtype is not None and got != np.dtype(dtype)) or \
                (dtype is None and shape is not None and got.kind not in "biu"):
            want = np.dtype(dtype).str if dtype is not None else "an integer dtype"
            raise ProtocolMismatch(f"party {self.party_id}: step {tag!r} from party {frm} "
                                   f"carries dtype {got.str}, expected {want} (parties are "
                                   f"running different programs)")
        acct.on_recv(msg.stamp)
        if self.observers:
            for obs in self.observers:
                obs("recv", frm, msg, acct.path)
        return msg.payload

    def _take(self, frm: int, tag: str, acct) -> Message:
        """The next message on the link from ``frm``, checked for session, sender and
        link order (the order messages were sent in, whatever branch sent them)."""
        t0 = time.perf_counter()
        msg = self._collect(frm, tag)
        acct.on_wait(time.perf_counter() - t0, msg.offline)
        want = self._recv_seq[frm]
        if msg.session != self.session:
            raise ProtocolMismatch(f"party {self.party_id}: message from party {frm} is for "
                                   f"session {msg.session!r}, expected {self.session!r}")
        if msg.sender != frm:
            raise ProtocolMismatch(f"party {self.party_id}: message on the link from party "
                                   f"{frm} claims sender {msg.sender}")
        if msg.seq != want:
            kind = "duplicate" if msg.seq < want else "out-of-order"
            raise ProtocolMismatch(f"party {self.party_id}: {kind} message from party {frm} "
                                   f"(seq {msg.seq}, expected {want}) at step {tag!r}")
        self._recv_seq[frm] += 1
        return msg

    def _demux(self, frm: int, prefix: str, tag: str, acct) -> Message:
        """The next message of branch ``prefix`` from ``frm``: parked by another branch,
        or read off the link by this thread (one reader per link at a time; messages of
        other branches are parked for them).  Within a branch the link is still FIFO,
        so the tag check that follows keeps its meaning."""
        link = self._links[frm]
        cv = link.cv
        while True:
            with cv:
                while True:
                    q = link.parked.get(prefix)
                    if q:
                        msg = q.popleft()
                        if not q:
                            del link.parked[prefix]
                        return msg
                    if not link.reading:
                        link.reading = True
                        break
                    cv.wait(0.05)
            msg = owner = None
            try:
                msg = self._take(frm, tag, acct)
                owner = branches.prefix_of(msg.tag)
            finally:
                with cv:
                    # park BEFORE the next reader may take the link: released first, a
                    # message sent after this one could reach its branch ahead of it
                    # (seen as a ProtocolMismatch under load, add2 SmolLM2 at 2048)
                    if msg is not None and owner != prefix:
                        link.parked.setdefault(owner, collections.deque()).append(msg)
                    link.reading = False
                    cv.notify_all()
            if owner == prefix:
                return msg

    # -- conveniences -----------------------------------------------------------------
    def exchange(self, to: int, payload: np.ndarray, frm: int, tag: str) -> np.ndarray:
        """Send to one peer and receive (same shape) from another in the same round."""
        self.send(to, payload, tag)
        return self.recv(frm, tag, np.shape(payload), np.asarray(payload).dtype)


class _Demux:
    """One incoming link's messages read ahead for other branches (mpcache.branches)."""

    __slots__ = ("cv", "parked", "reading")

    def __init__(self):
        self.cv = threading.Condition()
        self.parked: dict = {}        # branch prefix -> deque of messages
        self.reading = False          # a thread is reading the link now

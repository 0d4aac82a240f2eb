"""Links to a party in another process on the same machine: socket pairs.

``Session.run`` can run some parties in forked child processes (by default add2's dealer:
``Session.processes``).  Every link that touches such a party is a Unix socket pair
instead of an in-process queue; :class:`ProcessLink` gives it the queue interface
:class:`mpcache.net.local.LocalTransport` already uses (``put``, ``get_nowait``,
``get(timeout)``), so the transport, its framing checks and its accounting are unchanged.

Why a process.  In-process parties are threads sharing one interpreter lock.  add2's
dealer runs ahead of the online parties, generating triples (PRG draws, numpy products,
ring matmuls with the whole KV cache); as a thread, every bit of its Python work takes the
lock away from P0 and P1 (measured: a SmolLM2 add2 step at 2048 tokens with MPCache took
1.36x less time than full cache against 2.08x for rep3, whose parties have no dealer).
In its own process the dealer's work runs beside the online parties on another core, as
it would on its own machine.  (CrypTen's trusted-third-party mode is also a process.)

Framing: a small pickled header (session, sender, seq, tag, stamp, offline, dtype,
shape), then the payload's raw bytes in the same frame when small, else in a second frame
received straight into a fresh array (no extra copy).  Only ndarrays of fixed-size dtypes
travel, as on the gRPC wire; a header is read with a size cap, its dtype, shape and size
(at most ``DEFAULT_MAX_MESSAGE_BYTES``) are checked before the array is allocated, and the
body must have exactly the announced length, else the link counts as broken.  A closed or broken socket sets the group's abort flag, so
the parties blocked in ``recv`` raise :class:`PeerAborted` with the reason.  (Headers and
results are pickled: only between processes forked from one session, over unnamed socket
pairs no other process can connect to.)
"""
from __future__ import annotations

import math
import pickle
import queue
import socket
import threading
from multiprocessing import BufferTooShort
from multiprocessing.connection import Connection
from queue import SimpleQueue

import numpy as np

from .transport import DEFAULT_MAX_MESSAGE_BYTES, Message, PeerAborted

#: Payloads up to this many bytes travel in the header's frame (one write per message).
INLINE_BYTES = 1 << 16
#: Socket buffer sizes asked of the kernel (the dealer sends large triples ahead).
SOCKET_BUFFER = 4 << 20
#: Largest header frame read (a header plus an inline payload of INLINE_BYTES).
_HEADER_MAX = INLINE_BYTES + (1 << 16)


class ProcessLink:
    """One socket end, used as both the outgoing and the incoming queue of a link.

    Sends do not wait for the peer to read.  A message over ``INLINE_BYTES`` goes to a
    writer thread per link (written in the party's own thread, two parties that both send
    a message bigger than the socket buffer before receiving -- every exchange does --
    would wait on each other forever); so does everything after it until the writer is
    idle again (order is kept).  A small message with the writer idle is written at once:
    a hand-off to the writer costs a thread wake-up in the round's path (measured: a data-
    dependent top-k reveal to add2's dealer and its answer cross the link every round), and
    it can block only behind ``SOCKET_BUFFER`` bytes the peer has not read, far more than
    one round of small messages.  ``on_broken(reason)`` is called once when the peer
    process goes away (EOF or a socket error): the group's abort."""

    def __init__(self, sock: socket.socket, on_broken):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            except OSError:           # the kernel caps it: its own default is fine
                pass
        self.conn = Connection(sock.detach())
        self._on_broken = on_broken
        self.broken = False
        self._outq: SimpleQueue = SimpleQueue()
        self._writer: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0             # items queued for, or being written by, the writer

    # -- outgoing ---------------------------------------------------------------------
    def put(self, msg: Message) -> None:
        """Send ``msg``: at once if small and the writer is idle, else queued for the
        writer thread (as a snapshot: the caller may reuse its array)."""
        if self.broken:
            raise _gone(msg)
        p = msg.payload
        inline = p.nbytes <= INLINE_BYTES
        head = pickle.dumps((msg.session, msg.sender, msg.seq, msg.tag, msg.stamp,
                             msg.offline, p.dtype.str, p.shape,
                             p.tobytes() if inline else None), pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if inline and self._pending == 0:
                try:
                    self.conn.send_bytes(head)
                except OSError as e:
                    self._broken(f"link to the other process failed: {e}")
                    raise _gone(msg, e) from e
                return
            self._pending += 1
        self._outq.put((head, None if inline else p.reshape(-1).view(np.uint8).copy()))
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                            name="mpcache-link-writer")
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            item = self._outq.get()
            if item is None:
                return
            head, body = item
            try:
                self.conn.send_bytes(head)
                if body is not None:
                    self.conn.send_bytes(body)
            except OSError as e:
                self._broken(f"link to the other process failed: {e}")
                return
            finally:
                with self._lock:
                    self._pending -= 1

    def flush(self) -> None:
        """Wait until everything queued so far is written (or the link broke)."""
        if self._writer is not None:
            self._outq.put(None)
            self._writer.join()
            self._writer = None

    # -- incoming: the SimpleQueue interface LocalTransport reads -------------------------
    def get_nowait(self) -> Message:
        return self.get(0.0)

    def get(self, timeout: float | None = None) -> Message:
        if self.broken:
            raise queue.Empty
        try:
            if not self.conn.poll(timeout):
                raise queue.Empty
            return self._read()
        except (EOFError, OSError, ValueError, TypeError, pickle.UnpicklingError,
                BufferTooShort) as e:
            self._broken("the other process closed its link" if isinstance(e, EOFError)
                         else f"link to the other process failed: {e}")
            raise queue.Empty from None

    def _read(self) -> Message:
        session, sender, seq, tag, stamp, offline, dt, shape, raw = pickle.loads(
            self.conn.recv_bytes(_HEADER_MAX))
        dtype, shape = np.dtype(dt), tuple(int(n) for n in shape)
        if dtype.kind not in "biuf" or dtype.fields or any(n < 0 for n in shape):
            raise OSError(f"bad message header from the other process: {dt} {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > DEFAULT_MAX_MESSAGE_BYTES:
            raise OSError(f"message of {nbytes} bytes from the other process exceeds the "
                          f"limit of {DEFAULT_MAX_MESSAGE_BYTES} bytes")
        if raw is not None:
            if len(raw) != nbytes:
                raise OSError(f"message from the other process has {len(raw)} bytes, its "
                              f"header says {nbytes}")
            payload = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        else:
            # the body is its own frame whose length prefix is checked before any read:
            # recv_bytes_into refuses (BufferTooShort) a body longer than the header says
            payload = np.empty(shape, dtype=dtype)
            got = self.conn.recv_bytes_into(payload.reshape(-1).view(np.uint8))
            if got != nbytes:
                raise OSError(f"message from the other process has {got} bytes, its "
                              f"header says {nbytes}")
        return Message(session, sender, seq, tag, stamp, payload, offline)

    def _broken(self, reason: str) -> None:
        if not self.broken:
            self.broken = True
            self._on_broken(reason)

    def shutdown(self) -> None:
        """Stop the link both ways (the peer's reads see EOF), from any thread."""
        try:
            s = socket.fromfd(self.conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        except OSError:               # already closed or gone
            pass

    def close(self) -> None:
        self.flush()
        self.conn.close()


def _gone(msg: Message, why=None) -> PeerAborted:
    return PeerAborted(f"party {msg.sender} could not send {msg.tag!r}: the other party's "
                       f"process is gone" + (f" ({why})" if why is not None else ""))


def socket_links(pairs) -> dict:
    """A socket pair per unordered link ``(i, j)`` in ``pairs``: {(i, j): (end_i, end_j)}."""
    return {(i, j): socket.socketpair() for i, j in pairs}


def send_result(sock: socket.socket, result) -> None:
    """From a child party: its (output, stats, error, traceback) to the parent, pickled.
    An output or error that cannot be pickled is replaced by a RuntimeError saying so."""
    try:
        data = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - reported to the parent instead
        out, stats, err, tb = result
        what = "error" if err is not None else "output"
        data = pickle.dumps((None, stats, RuntimeError(
            f"this party ran in its own process (Session.processes) and its job's {what} "
            f"cannot be sent back ({e}; error: {err!r}): return plain values -- a secret "
            "tensor cannot leave its party: reveal it first -- or run the parties as "
            "threads, Session(processes=())"), tb))
    Connection(sock.detach()).send_bytes(data)


def recv_result(sock: socket.socket):
    """At the parent: a child's result (blocks until it comes), or None when the child
    died without sending one."""
    conn = Connection(sock.detach())
    try:
        return pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return None
    finally:
        conn.close()

"""The gRPC transport: three party processes, one client stream per directed link.

Each party runs a gRPC server (service ``mpcache.net.v1.Party``, see proto/mpcache.proto)
and dials its two peers.  Start-up: ``Handshake`` to each peer (both sides check
protocol, ring, fixed point, version, session and -- under TLS -- that the peer's
certificate names the party id it claims), then one long-lived ``Link`` client stream
per directed link carries :class:`Frame` s.  The receiving server thread reassembles
chunks and queues whole messages per sender; :meth:`_collect` pops them.

Copies: a send serializes each chunk with a single ``bytes.join`` straight from the
array's memory (the header is a tiny protobuf; the payload field is appended by hand,
byte-identical to what protobuf would write).  A receive slices the payload out of the
frame without a protobuf parse and copies it once into the output array, which is
writable like the in-process transport's.

Bounded inboxes: the messages a peer has sent but this party has not yet received wait
in that peer's inbox, at most ``INBOX_MESSAGES`` messages and ``INBOX_BYTES`` payload
bytes (a single larger message, up to ``max_message_bytes``, is admitted only into an
empty inbox).  When it is full, the link's server thread stops reading: gRPC's flow
control then holds the sender, whose ``send`` waits up to ``timeout_s`` for room and then
raises :class:`PeerTimeout` (a peer can therefore never make this party buffer more than
the bound).  Every party's port is its own: servers set ``grpc.so_reuseport = 0`` (a
second process binding the same port fails at start-up instead of sharing its
connections), and a second ``Link`` stream from a peer that already has one is refused
(``ALREADY_EXISTS``): one stream per directed link, so nothing can be interleaved into it.

Failure semantics (never hang): every receive has a deadline (:class:`PeerTimeout`); a
peer that disconnects without saying BYE, or says ABORT, makes every later send/receive
raise :class:`PeerAborted` naming it; malformed or wrong-session frames raise
:class:`ProtocolMismatch`; oversize frames :class:`TransportError`.

The bounded per-peer inbox is :class:`mpcache.net.inbox.Inbox`.
"""
from __future__ import annotations

import logging
import queue
import os
import threading
import time
from concurrent import futures

import grpc
import numpy as np

from .config import NetConfig
from .inbox import WAKE, Closed, Inbox
from .proto import mpcache_pb2 as pb
from .shaping import LinkShaper
from .tls import TlsFiles, auth_context_parties, party_name
from .transport import (N_PARTIES, Message, PeerAborted, PeerTimeout, ProtocolMismatch,
                        Transport, TransportError)
from .wire import BadFrame, Reassembler, decode_frame, encode_frame

__all__ = ["GrpcTransport", "BadFrame", "decode_frame", "encode_frame"]

log = logging.getLogger("mpcache.net")

RING_BITS = 64
SERVICE = "mpcache.net.v1.Party"
_SEND_QUEUE_FRAMES = 16        # frames in flight per link before send() blocks


def mpcache_version() -> str:
    try:
        from mpcache import __version__  # type: ignore[attr-defined]
        return str(__version__)
    except Exception:  # noqa: BLE001 - package metadata is optional in a checkout
        try:
            from importlib.metadata import version
            return version("mpcache")
        except Exception:  # noqa: BLE001
            return "0.1.0"


class GrpcTransport(Transport):
    """Transport over gRPC; see the module docstring.  ``connect()`` before use."""

    #: Bounds of each peer's inbox (messages, payload bytes): see the module docstring.
    INBOX_MESSAGES = 1 << 16
    INBOX_BYTES = 1 << 30

    def __init__(self, party_id: int, config: NetConfig, session: str | None = None, *,
                 peers=None, timeout: float | None = None, connect: bool = True):
        super().__init__(party_id, session=session or config.session,
                         timeout=timeout or config.timeout_s,
                         max_message_bytes=config.max_message_bytes)
        self.cfg = config
        self.peers = sorted(peers) if peers is not None else \
            [j for j in range(N_PARTIES) if j != party_id]
        self.chunk = config.chunk_bytes
        # Our own per-frame check (clear error) sits well below gRPC's (opaque error).
        self.max_frame_bytes = max(2 * self.chunk, 16 << 20)
        self._grpc_limit = 4 * self.max_frame_bytes
        self.tls = None
        if not config.insecure:
            self.tls = TlsFiles(*config.tls_paths(party_id))
            try:
                self.tls.check_identity(party_id)
            except ValueError as e:   # peers will refuse it with a clear message
                log.warning("%s", e)
        self.wait_s = 0.0                         # time blocked in receive
        self._inbox = {j: Inbox(self.INBOX_MESSAGES, self.INBOX_BYTES) for j in self.peers}
        self._link_in = {j: False for j in self.peers}   # a Link stream from j is open
        self._outbox = {j: queue.Queue(maxsize=_SEND_QUEUE_FRAMES) for j in self.peers}
        self._shapers = {j: LinkShaper(config.shaping) for j in self.peers} \
            if config.shaping else {}
        self._hello_in = {j: threading.Event() for j in self.peers}
        self._bye_from = {j: False for j in self.peers}
        self._link_done = {j: threading.Event() for j in self.peers}
        self._lock = threading.Lock()
        self._fatal: TransportError | None = None
        self._cause: str | None = None
        self._state = "new"                       # new, connected, closing, closed
        self._server = None
        self._channels, self._calls = {}, {}
        if connect:
            self.connect()

    # -- errors -------------------------------------------------------------------------
    @property
    def failure_cause(self) -> str | None:
        """The root cause of the first fatal error (a peer's ABORT reason is passed on)."""
        return self._cause

    def _fail(self, exc: TransportError, cause: str | None = None) -> None:
        """Record the first fatal error and wake every blocked receive."""
        with self._lock:
            if self._fatal is not None or self._state in ("closing", "closed"):
                return
            self._fatal, self._cause = exc, cause or str(exc)
        log.debug("fatal: %s", exc)
        for q in self._inbox.values():
            q.put_control(WAKE)

    def _raise_fatal(self, where: str = "") -> None:
        f = self._fatal
        if f is not None:
            raise type(f)(f"{f}{where}") from None

    # -- server side ----------------------------------------------------------------------
    def _hello(self, to: int) -> pb.Hello:
        return pb.Hello(protocol=self.cfg.protocol, ring_bits=RING_BITS,
                        frac_bits=self.cfg.frac_bits, version=mpcache_version(),
                        session=self.session, party=self.party_id, to=to)

    def _mismatch(self, theirs: pb.Hello, them: int) -> str | None:
        """Why ``theirs`` is incompatible with us (None if compatible)."""
        mine = self._hello(them)
        if theirs.to != self.party_id:
            return (f"party {them} dialed expecting party {theirs.to} but reached party "
                    f"{self.party_id} at {self.cfg.address(self.party_id)} (address mix-up)")
        for name in ("protocol", "ring_bits", "frac_bits", "version", "session"):
            a, b = getattr(theirs, name), getattr(mine, name)
            if name == "version":
                a, b = ".".join(a.split(".")[:2]), ".".join(b.split(".")[:2])
            if a != b:
                return (f"mismatched {name}: party {them} has {getattr(theirs, name)!r}, "
                        f"party {self.party_id} has {getattr(mine, name)!r}")
        return None

    def _check_peer_identity(self, context, claimed: int) -> str | None:
        if self.tls is None:
            return None
        ids = auth_context_parties(context.auth_context())
        if ids is None:
            return f"party {claimed} connected without a TLS client certificate"
        if claimed not in ids:
            return (f"the client claims to be party {claimed} but its certificate names "
                    f"{', '.join(party_name(i) for i in sorted(ids)) or 'no mpcache party'}")
        return None

    def _serve_handshake(self, req: pb.Hello, context) -> pb.HelloReply:
        them = req.party
        if them not in self.peers:
            return pb.HelloReply(ok=False, error=f"party {self.party_id} does not expect "
                                 f"a connection from party {them}", hello=self._hello(them))
        err = self._check_peer_identity(context, them) or self._mismatch(req, them)
        if self._fatal is not None and err is None:
            err = f"party {self.party_id} already failed: {self._fatal}"
        if err:
            self._fail(ProtocolMismatch(f"party {self.party_id} refused party {them}: {err}"))
            return pb.HelloReply(ok=False, error=err, hello=self._hello(them))
        self._hello_in[them].set()
        return pb.HelloReply(ok=True, hello=self._hello(them))

    def _serve_link(self, frames, context) -> pb.LinkEnd:
        md = dict(context.invocation_metadata())
        try:
            j = int(md.get("mpcache-party", "-1"))
        except ValueError:
            j = -1
        if j not in self.peers or not self._hello_in[j].is_set():
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"party {self.party_id}: link from party {j} without a handshake")
        err = self._check_peer_identity(context, j)
        if err or md.get("mpcache-session") != self.session:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, err or "wrong session")
        with self._lock:
            dup, self._link_in[j] = self._link_in[j], True
        if dup:
            log.warning("party %d: refused a second link stream claiming party %d",
                        self.party_id, j)
            context.abort(grpc.StatusCode.ALREADY_EXISTS,
                          f"party {self.party_id} already has a link from party {j}; a "
                          f"second stream is refused (one stream per directed link)")
        n, ended = 0, False
        asm = Reassembler(self.party_id, j, self.session, self.max_frame_bytes,
                          self.max_message_bytes)
        try:
            for item in frames:
                n += 1
                if isinstance(item, BadFrame):
                    raise ProtocolMismatch(f"party {self.party_id}: malformed frame from party "
                                           f"{j} ({item.size} bytes): {item.reason}")
                fr, payload = item
                if fr.kind == pb.BYE:
                    self._bye_from[j] = ended = True
                    self._inbox[j].put_control(Closed())
                    continue
                if fr.kind == pb.ABORT:
                    ended = True
                    cause = fr.reason or "no reason given"
                    self._fail(PeerAborted(f"party {self.party_id}: party {j} aborted; cause: "
                                           f"{cause}"), cause)
                    continue
                msg = asm.add(fr, payload)
                if msg is not None and not self._inbox[j].put(msg, msg.payload.nbytes,
                                                              self._running):
                    ended = True          # shutting down: nobody will receive it
                    break
        except TransportError as e:
            ended = True
            self._fail(e)
            try:    # keep the sender's call open: it must learn why from our ABORT
                for _ in frames:
                    pass
            except Exception:  # noqa: BLE001
                pass
        except Exception:  # noqa: BLE001 - gRPC gives no detail: died, or frame too big
            if not ended and self._state in ("new", "connected"):
                self._fail(PeerAborted(
                    f"party {self.party_id}: party {j} disconnected without finishing (its "
                    f"process died, the network failed, or it sent a frame over the gRPC "
                    f"limit of {self._grpc_limit} bytes)"))
            ended = True
        if not ended and self._state in ("new", "connected"):
            self._fail(PeerAborted(f"party {self.party_id}: party {j} disconnected without "
                                   f"finishing (process died or network failed)"))
        return pb.LinkEnd(frames=n)

    def _running(self) -> bool:
        return self._fatal is None and self._state in ("new", "connected")

    # -- connecting ---------------------------------------------------------------------
    def _grpc_options(self) -> list:
        # keepalive every 20 s (MPCACHE_GRPC_KEEPALIVE_MS: tests shorten it)
        ka = int(os.environ.get("MPCACHE_GRPC_KEEPALIVE_MS", "20000"))
        return [("grpc.max_send_message_length", self.max_frame_bytes + (1 << 20)),
                ("grpc.max_receive_message_length", self._grpc_limit),
                ("grpc.keepalive_time_ms", ka), ("grpc.keepalive_timeout_ms", 10000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.http2.min_recv_ping_interval_without_data_ms", ka // 2),
                # server side: accept those keepalives however long a link is idle (a
                # party may wait minutes while another computes a prefill layer); without
                # these gRPC answers GOAWAY "too_many_pings" and drops the link
                ("grpc.http2.min_ping_interval_without_data_ms", ka // 2),
                ("grpc.http2.max_ping_strikes", 0),
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.min_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 500),
                ("grpc.enable_retries", 0)]

    def _start_server(self) -> None:
        handlers = {
            "Handshake": grpc.unary_unary_rpc_method_handler(
                self._serve_handshake, request_deserializer=pb.Hello.FromString,
                response_serializer=pb.HelloReply.SerializeToString),
            "Link": grpc.stream_unary_rpc_method_handler(
                self._serve_link, request_deserializer=decode_frame,
                response_serializer=pb.LinkEnd.SerializeToString),
        }
        pool = futures.ThreadPoolExecutor(max_workers=4 + 2 * len(self.peers),
                                          thread_name_prefix=f"mpc-P{self.party_id}")
        server = grpc.server(pool,
                             handlers=[grpc.method_handlers_generic_handler(SERVICE, handlers)],
                             options=self._grpc_options() + [("grpc.so_reuseport", 0)],
                             maximum_concurrent_rpcs=32)
        bind = self.cfg.parties[self.party_id].bind
        try:
            if self.tls is None:
                port = server.add_insecure_port(bind)
            else:
                port = server.add_secure_port(bind, self.tls.server_credentials())
        except RuntimeError as e:
            raise TransportError(f"party {self.party_id}: cannot listen on {bind}: {e}") from None
        if port == 0:
            raise TransportError(f"party {self.party_id}: cannot listen on {bind} "
                                 f"(address in use?)")
        server.start()
        self._server = server

    def _channel(self, j: int) -> grpc.Channel:
        addr = self.cfg.address(j)
        opts = self._grpc_options()
        if self.tls is None:
            return grpc.insecure_channel(addr, options=opts)
        opts.append(("grpc.ssl_target_name_override", party_name(j)))
        return grpc.secure_channel(addr, self.tls.channel_credentials(), options=opts)

    def _handshake(self, j: int, deadline: float) -> None:
        me, addr = self.party_id, self.cfg.address(j)
        call = self._channels[j].unary_unary(f"/{SERVICE}/Handshake",
                                             request_serializer=pb.Hello.SerializeToString,
                                             response_deserializer=pb.HelloReply.FromString)
        last, tls_failures = "", 0
        while True:
            self._raise_fatal()
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerTimeout(f"party {me}: could not reach party {j} at {addr} within "
                                  f"{self.cfg.connect_timeout_s:.1f} s (last error: {last})")
            try:
                rep = call(self._hello(j), timeout=min(left, 5.0))
                break
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
                low = last.lower()
                if any(w in low for w in ("ssl", "tls", "certificate", "handshake", "peer name")):
                    tls_failures += 1
                    if tls_failures >= 3:   # deterministic: wrong CA or wrong identity
                        raise TransportError(
                            f"party {me}: TLS handshake with party {j} at {addr} failed: "
                            f"its certificate is not signed by our CA or does not name "
                            f"{party_name(j)} (or it rejected ours): {e.details()}") from None
                time.sleep(min(0.2, max(0.0, left)))
        if not rep.ok:
            raise ProtocolMismatch(f"party {me}: party {j} refused the handshake: {rep.error}")
        err = self._mismatch(rep.hello, j) if rep.hello.party == j else \
            f"{addr} answered as party {rep.hello.party}, expected party {j}"
        if err:
            raise ProtocolMismatch(f"party {me} refused party {j}: {err}")

    def connect(self) -> "GrpcTransport":
        """Listen, handshake with every peer, open the outgoing links (or raise)."""
        if self._state != "new":
            return self
        try:
            self._start_server()
            for j in self.peers:
                self._channels[j] = self._channel(j)
            deadline = time.monotonic() + self.cfg.connect_timeout_s
            errors = {}

            def shake(j):
                try:
                    self._handshake(j, deadline)
                except TransportError as e:
                    errors[j] = e
            threads = [threading.Thread(target=shake, args=(j,), daemon=True)
                       for j in self.peers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:   # a refusal or a TLS failure says more than "unreachable"
                worst = sorted(errors.values(), key=lambda e: isinstance(e, PeerTimeout))[0]
                raise worst
            for j in self.peers:
                while not self._hello_in[j].wait(0.05):
                    self._raise_fatal()
                    if time.monotonic() > deadline:
                        raise PeerTimeout(f"party {self.party_id}: party {j} did not complete "
                                          f"its handshake within "
                                          f"{self.cfg.connect_timeout_s:.1f} s")
            self._raise_fatal()
            self._state = "connected"
            for j in self.peers:
                self._open_link(j)
        except TransportError as e:
            with self._lock:
                self._fatal = self._fatal or e
                self._cause = self._cause or str(e)
            self._shutdown(linger=1.0, reason=str(e))
            raise
        except BaseException:
            self._shutdown(linger=0.0, reason="start-up failed")
            raise
        return self

    def _open_link(self, j: int) -> None:
        stream = self._channels[j].stream_unary(f"/{SERVICE}/Link",
                                                request_serializer=lambda b: b,
                                                response_deserializer=pb.LinkEnd.FromString)
        md = (("mpcache-party", str(self.party_id)), ("mpcache-session", self.session))
        fut = stream.future(self._frames(j), metadata=md)
        fut.add_done_callback(lambda f, j=j: self._on_link_done(j, f))
        self._calls[j] = fut

    def _frames(self, j: int):
        """The request iterator of link ``j``: frames in order, held until release."""
        q = self._outbox[j]
        while True:
            item = q.get()
            if item is None:
                return
            release, data = item
            wait = release - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            yield data

    def _on_link_done(self, j: int, fut) -> None:
        self._link_done[j].set()
        if self._state != "connected" or self._bye_from[j]:
            return
        exc = fut.exception()
        if isinstance(exc, grpc.RpcError) and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            self._fail(TransportError(f"party {self.party_id}: a frame to party {j} was "
                                      f"refused by gRPC: {exc.details()}"))
            return
        why = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.RpcError) \
            else "the stream ended"
        self._fail(PeerAborted(f"party {self.party_id}: party {j} disconnected without "
                               f"finishing (our link to it broke: {why})"))

    # -- Transport ----------------------------------------------------------------------
    def _put(self, to: int, item, tag: str) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            self._raise_fatal(f" (while sending step {tag!r} to party {to})")
            if self._link_done[to].is_set():
                raise PeerAborted(f"party {self.party_id}: cannot send step {tag!r} to party "
                                  f"{to}: its link is closed (it already finished)")
            try:
                self._outbox[to].put(item, timeout=0.05)
                return
            except queue.Full:
                if time.monotonic() > deadline:
                    raise PeerTimeout(f"party {self.party_id}: party {to} did not take step "
                                      f"{tag!r} within {self.timeout:.1f} s") from None

    def _deliver(self, to: int, msg: Message) -> None:
        if self._state != "connected":
            raise TransportError(f"party {self.party_id}: transport is {self._state}, "
                                 f"not connected")
        if to not in self._outbox:
            raise ValueError(f"party {self.party_id} has no link to party {to}")
        arr = msg.payload
        flat = arr.reshape(-1).view(np.uint8)
        total = flat.nbytes
        n_chunks = max(1, -(-total // self.chunk))
        shaper = self._shapers.get(to)
        wire = 0
        for k in range(n_chunks):
            if k == 0:
                hdr = pb.Frame(session=msg.session, sender=msg.sender, seq=msg.seq,
                               tag=msg.tag, dtype=arr.dtype.str, shape=arr.shape,
                               stamp=msg.stamp, offline=msg.offline, chunk=0,
                               n_chunks=n_chunks, total_bytes=total)
            else:
                hdr = pb.Frame(session=msg.session, sender=msg.sender, seq=msg.seq, chunk=k)
            data = encode_frame(hdr, flat[k * self.chunk:(k + 1) * self.chunk])
            wire += len(data)
            self._put(to, (shaper.schedule(len(data)) if shaper else 0.0, data), msg.tag)
        self.acct.wire_bytes_sent += wire

    def _collect(self, frm: int, tag: str) -> Message:
        if frm not in self._inbox:
            raise ValueError(f"party {self.party_id} has no link from party {frm}")
        q = self._inbox[frm]
        where = f" (while waiting for party {frm} at step {tag!r})"
        t0 = time.monotonic()
        deadline = t0 + self.timeout
        try:
            while True:
                self._raise_fatal(where)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerTimeout(f"party {self.party_id}: no message from party {frm} at "
                                      f"step {tag!r} within {self.timeout:.1f} s (party "
                                      f"{frm} stalled, or timeout_s is too short)")
                try:
                    item = q.get(timeout=left)
                except queue.Empty:
                    continue
                if isinstance(item, Message):
                    return item
                if isinstance(item, Closed):
                    q.put_control(item)
                    raise PeerAborted(f"party {self.party_id}: party {frm} has closed the "
                                      f"session but step {tag!r} expects a message from it "
                                      f"(the parties run different programs)")
        finally:
            self.wait_s += time.monotonic() - t0

    def _send_raw(self, to: int, data: bytes) -> None:
        """Put arbitrary bytes on the link to ``to`` as one frame (fault-injection tests)."""
        self._put(to, (0.0, bytes(data)), "raw")

    # -- shutting down ------------------------------------------------------------------
    def _control(self, kind, reason: str = "") -> None:
        fr = pb.Frame(session=self.session, sender=self.party_id, kind=kind, reason=reason)
        data = encode_frame(fr, b"")
        for j in self.peers:
            if j in self._calls and not self._link_done[j].is_set():
                try:
                    self._outbox[j].put((0.0, data), timeout=1.0)
                    self._outbox[j].put(None, timeout=1.0)
                except queue.Full:
                    self._calls[j].cancel()

    def close(self) -> None:
        """Say BYE on every link, wait until the peers took it, stop the server."""
        self._shutdown(linger=0.0, reason="")

    def abort(self, reason: str) -> None:
        """Tell every peer this party failed (``reason`` must hold no secrets), then stop."""
        self._shutdown(linger=0.5, reason=reason or "failed")

    def _shutdown(self, linger: float, reason: str) -> None:
        if self._state in ("closing", "closed"):
            return
        was_connected = self._state == "connected"
        if was_connected:
            self._control(pb.ABORT if reason else pb.BYE, reason[:2000])
        with self._lock:
            self._state = "closing"
        end = time.monotonic() + (min(self.timeout, 10.0) if was_connected else 0.0)
        for j, fut in self._calls.items():
            try:
                fut.result(timeout=max(0.0, end - time.monotonic()))
            except Exception:  # noqa: BLE001 - best effort: the peer may be gone
                fut.cancel()
        if linger and self._server is not None:
            time.sleep(linger)   # peers still dialing us get our refusal, not silence
        if self._server is not None:
            self._server.stop(grace=0.2).wait(2.0)
        for ch in self._channels.values():
            ch.close()
        self._state = "closed"

    def __enter__(self):
        return self.connect()

    def __exit__(self, et, ev, tb):
        if ev is None:
            self.close()
        elif isinstance(ev, TransportError):      # our own messages: no data in them
            self.abort(self.failure_cause or str(ev))
        else:   # only the type: an exception's message could quote a private value
            self.abort(f"{type(ev).__name__} in party {self.party_id} (details in its log)")
        return False

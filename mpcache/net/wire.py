"""Frame codec and per-link reassembly for the gRPC transport (proto/mpcache.proto).

Why hand-rolled around protobuf: a tensor chunk is megabytes, and protobuf's Python
runtime copies a ``bytes`` field on every parse and every access.  So the header is a
small protobuf ``Frame`` and the payload (field 15, last) is appended / sliced by hand:
:func:`encode_frame` output is byte-identical to ``Frame(..., payload=p).SerializeToString()``
(any protobuf implementation reads it), and :func:`decode_frame` accepts any valid
encoding (fields in any order) while returning the payload as a view, not a copy.

:class:`Reassembler` validates every frame of one directed link (session, sender, dtype,
shape against byte count, size limits, chunk count and order) and turns chunk runs into
:class:`~mpcache.net.transport.Message` s, each assembled into one fresh writable array.
Memory follows the bytes actually received, never a header's claim: chunks are kept as
views of their frames until half the announced size has arrived, and only then is the
message's array allocated (each byte is still copied once); a message never makes the
receiver allocate more than twice what its sender actually sent, so a header saying
"2 GiB" followed by nothing allocates nothing.
"""
from __future__ import annotations

import math

import numpy as np

from .proto import mpcache_pb2 as pb
from .transport import Message, ProtocolMismatch, TransportError

PAYLOAD_FIELD = 15
_PAYLOAD_KEY = bytes([(PAYLOAD_FIELD << 3) | 2])
_DTYPE_KINDS = "biuf"          # bool, int, uint, float: never object / structured
#: Most dimensions a received array may have (numpy's own limit is 64).
MAX_NDIM = 32


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf, pos: int) -> tuple:
    shift = result = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


class BadFrame:
    """What :func:`decode_frame` returns for bytes that are not a Frame (never raises,
    so the receiving link can report it instead of gRPC dropping the stream)."""

    def __init__(self, reason: str, size: int):
        self.reason, self.size = reason, size


def encode_frame(header: pb.Frame, payload) -> bytes:
    """Serialized Frame = header fields + payload field: one copy of the payload."""
    mv = memoryview(payload).cast("B")
    return b"".join((header.SerializeToString(), _PAYLOAD_KEY, _varint(mv.nbytes), mv))


def decode_frame(data: bytes):
    """``(header Frame, payload memoryview)``, or a :class:`BadFrame`."""
    try:
        view = memoryview(data)
        pos, parts, payload = 0, [], view[0:0]
        while pos < len(data):
            start = pos
            key, pos = _read_varint(data, pos)
            field_no, wt = key >> 3, key & 7
            if wt == 0:
                _, pos = _read_varint(data, pos)
            elif wt == 1:
                pos += 8
            elif wt == 5:
                pos += 4
            elif wt == 2:
                n, pos = _read_varint(data, pos)
                if field_no == PAYLOAD_FIELD:
                    if pos + n > len(data):
                        raise ValueError("payload runs past the end of the frame")
                    payload = view[pos:pos + n]
                    pos += n
                    continue
                pos += n
            else:
                raise ValueError(f"wire type {wt} of field {field_no}")
            if pos > len(data):
                raise ValueError("field runs past the end of the frame")
            parts.append(view[start:pos])
        return pb.Frame.FromString(b"".join(parts)), payload
    except Exception as e:  # noqa: BLE001 - reported to the receiver as ProtocolMismatch
        return BadFrame(f"{type(e).__name__}: {e}", len(data))


class Reassembler:
    """Checks the DATA frames of the link ``sender -> me`` and rebuilds messages."""

    def __init__(self, me: int, sender: int, session: str, max_frame_bytes: int,
                 max_message_bytes: int):
        self.me, self.j, self.session = me, sender, session
        self.max_frame_bytes, self.max_message_bytes = max_frame_bytes, max_message_bytes
        self.head = None            # chunk 0 of the message in progress
        self.buf = None             # the message's array, once half of it has arrived
        self.parts: list = []       # chunks received before that (views of their frames)

    def _err(self, cls, text: str):
        return cls(f"party {self.me}: {text}")

    def add(self, fr: pb.Frame, payload) -> Message | None:
        """Take one frame; return the message it completes (None if more chunks follow)."""
        j = self.j
        if fr.session != self.session:
            raise self._err(ProtocolMismatch, f"frame from party {j} is for session "
                                              f"{fr.session!r}, expected {self.session!r}")
        if fr.sender != j:
            raise self._err(ProtocolMismatch, f"frame on the link from party {j} claims "
                                              f"sender {fr.sender}")
        if fr.kind != pb.DATA:
            raise self._err(ProtocolMismatch, f"unknown frame kind {fr.kind} from party {j}")
        if len(payload) > self.max_frame_bytes:
            raise self._err(TransportError, f"oversize frame from party {j}: {len(payload)} "
                                            f"bytes > {self.max_frame_bytes}")
        if fr.chunk == 0:
            self._start(fr)
        elif self.head is None or fr.seq != self.head.seq or fr.chunk != self.next_chunk:
            raise self._err(ProtocolMismatch, f"out-of-order chunk {fr.chunk} of message "
                                              f"{fr.seq} from party {j}")
        h = self.head
        end = self.offset + len(payload)
        last = self.next_chunk + 1 == h.n_chunks
        if end > h.total_bytes or (last and end != h.total_bytes) or \
                (not last and len(payload) == 0):
            raise self._err(ProtocolMismatch, f"message {h.seq} from party {j} has {end} "
                                              f"payload bytes, its header says {h.total_bytes}")
        # Until half the message has arrived, keep each chunk as the view of its frame
        # (gRPC already holds it: no copy); then allocate the message once and copy in.
        # So a message never costs more than twice the bytes its peer actually sent.
        if self.buf is None:
            self.parts.append(payload)
            if last or 2 * end >= h.total_bytes:
                self.buf = np.empty(h.total_bytes, dtype=np.uint8)
                pos = 0
                for part in self.parts:
                    self.buf[pos:pos + len(part)] = np.frombuffer(part, dtype=np.uint8)
                    pos += len(part)
                self.parts = []
        else:
            self.buf[self.offset:end] = np.frombuffer(payload, dtype=np.uint8)
        self.offset, self.next_chunk = end, self.next_chunk + 1
        if not last:
            return None
        self.head = None
        buf, self.buf = self.buf, None
        arr = buf.view(self.dtype).reshape(self.shape)
        return Message(h.session, h.sender, h.seq, h.tag, h.stamp, arr, h.offline)

    def _start(self, fr: pb.Frame) -> None:
        j = self.j
        if self.head is not None:
            raise self._err(ProtocolMismatch, f"party {j} started message {fr.seq} before "
                                              f"finishing message {self.head.seq}")
        if fr.total_bytes > self.max_message_bytes:
            raise self._err(TransportError, f"oversize message {fr.tag!r} from party {j}: "
                                            f"{fr.total_bytes} bytes exceeds the limit of "
                                            f"{self.max_message_bytes} bytes")
        try:
            dtype = np.dtype(fr.dtype)
        except TypeError:
            dtype = None
        if dtype is None or dtype.kind not in _DTYPE_KINDS or dtype.fields:
            raise self._err(ProtocolMismatch, f"party {j} sent unsupported dtype "
                                              f"{fr.dtype!r} at step {fr.tag!r}")
        shape = tuple(int(s) for s in fr.shape)
        if len(shape) > MAX_NDIM or any(s < 0 for s in shape) or \
                math.prod(shape) * dtype.itemsize != fr.total_bytes:
            raise self._err(ProtocolMismatch, f"party {j} sent shape {shape[:MAX_NDIM + 1]} "
                                              f"of {fr.dtype} but {fr.total_bytes} bytes")
        # every chunk but the last carries at least one byte and at most a frame
        if fr.n_chunks < 1 or fr.n_chunks > max(1, fr.total_bytes) or \
                fr.total_bytes > fr.n_chunks * self.max_frame_bytes:
            raise self._err(ProtocolMismatch, f"party {j} announced {fr.n_chunks} chunks for "
                                              f"{fr.total_bytes} bytes")
        self.head, self.dtype, self.shape = fr, dtype, shape
        self.parts, self.buf = [], None
        self.offset = self.next_chunk = 0

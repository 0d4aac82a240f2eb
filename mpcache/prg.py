"""Pairwise PRG keys and zero-sharings with no communication.

Key ring (both protocols): key ``k_i`` is shared by parties ``P_i`` and ``P_{i+1}``.
So ``P_i`` holds ``k_i`` (with its right neighbour) and ``k_{i-1}`` (with its left
neighbour).  At session start ``P_i`` draws ``k_i`` from the OS and sends it to
``P_{i+1}`` (16 bytes, counted as offline set-up traffic).

Each key drives an AES-128-CTR key stream (the ``cryptography`` package, i.e. OpenSSL,
which uses AES-NI where the CPU has it): the 128-bit key is the AES key, the counter
block starts at zero, and the stream is read as little-endian 64-bit words.  AES-CTR is
a standard pseudorandom generator: without the key, its output cannot be told from
uniform words (a fixed counter start is safe because each key drives exactly one
stream).  The two holders of a key draw from it in the same program order (the parties
run the same program), so they see identical streams; the third party never learns the
stream.
"""
from __future__ import annotations

import math
import secrets

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: Key stream bytes are produced by encrypting zeros; at most this many per call.
_CHUNK_BYTES = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK_BYTES))   # sliced without copying
#: ``update_into`` wants room for one cipher block beyond the input: two spare words.
_SPARE = 2


class PRG:
    """An AES-128-CTR stream keyed by a 128-bit key; draws uniform ring elements.

    Small draws are served from a block drawn ahead of time: each call into the cipher
    costs a fixed ~0.3-1 us, and with three party threads in one process each tiny call
    is also a chance for a GIL hand-off to another party.  The stream is unchanged by
    the blocking: CTR mode is a stream, so drawing ``a`` words then ``b`` words gives
    the same words as drawing ``a + b``, and the block is consumed strictly in order (a
    large draw first takes what is left of it).
    """

    #: Draws of at most SMALL words come from the block; BLOCK words are drawn at a time.
    SMALL = 256
    BLOCK = 4096

    def __init__(self, key: int):
        key = int(key)
        if not 0 <= key < 1 << 128:
            raise ValueError("PRG key must be a 128-bit non-negative integer")
        cipher = Cipher(algorithms.AES(key.to_bytes(16, "little")), modes.CTR(bytes(16)))
        self._enc = cipher.encryptor()
        self._buf = _EMPTY
        self._pos = 0

    def _stream(self, n: int) -> np.ndarray:
        """The next ``n`` words straight from the cipher (a fresh, writable array)."""
        out = np.empty(n + _SPARE, dtype=np.uint64)
        mem = memoryview(out).cast("B")
        total, done = 8 * n, 0
        while done < total:
            step = min(_CHUNK_BYTES, total - done)
            # the output slice always has >= 16 spare bytes after it (the next chunk's
            # room, or the two spare words at the end)
            self._enc.update_into(_ZEROS[:step], mem[done:])
            done += step
        if _BIG_ENDIAN:
            out.byteswap(inplace=True)
        return out[:n]

    def _raw(self, n: int, copy: bool = True) -> np.ndarray:
        """The next ``n`` words of the stream as a fresh 1-d array (``copy=False``: possibly
        a view of the block, for callers that read it once and never write it)."""
        pos, buf = self._pos, self._buf
        left = buf.shape[0] - pos
        if n <= left:
            self._pos = pos + n
            return buf[pos:pos + n].copy() if copy else buf[pos:pos + n]
        if n <= self.SMALL:
            fresh = self._stream(self.BLOCK)
            self._buf, self._pos = fresh, n - left
            return np.concatenate((buf[pos:], fresh[:n - left])) if left else fresh[:n].copy()
        self._buf, self._pos = _EMPTY, 0
        out = self._stream(n - left)
        return np.concatenate((buf[pos:], out)) if left else out

    def ring(self, shape) -> np.ndarray:
        # hot path (every product draws several masks): no numpy helpers on the shape
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(map(int, shape))
        return self._raw(math.prod(shape)).reshape(shape)

    def words_view(self, n: int) -> np.ndarray:
        """The next ``n`` words, possibly a view of the block: read them, do not keep or
        write them (the bit engine unpacks them at once)."""
        return self._raw(int(n), copy=False)

    def bits(self, shape) -> np.ndarray:
        return self.ring(shape) & np.uint64(1)


_EMPTY = np.empty(0, dtype=np.uint64)
_BIG_ENDIAN = np.little_endian is False


def fresh_key(rng: np.random.Generator | None = None) -> int:
    """A new 128-bit key: from the OS, or from ``rng`` for reproducible test runs."""
    if rng is None:
        return secrets.randbits(128)
    hi, lo = rng.integers(0, 2**63, size=2, dtype=np.int64)
    return (int(hi) << 64) | int(lo)


def key_to_array(key: int) -> np.ndarray:
    return np.array([key & (2**64 - 1), key >> 64], dtype=np.uint64)


def array_to_key(a: np.ndarray) -> int:
    return int(a[0]) | (int(a[1]) << 64)

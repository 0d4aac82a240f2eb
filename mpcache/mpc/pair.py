"""The two-party bit engine behind every comparison (share arrays in, share arrays out).

The XOR-shared word tensor of both protocols (:class:`mpcache.booltensor.BoolTensor`)
sits one layer up, beside SecretTensor.

**Pair** (the comparison engine): two *data parties* A and B hold 2-of-2 shares
(XOR for bits, additive mod 2^64 for ring values) and a third party D *deals* correlated
randomness seed-compressed: everything A needs comes from the A-D key, everything B needs
from the B-D key except the one correlated value per gate, which D sends to B (counted as
offline: it is data-independent and could be sent ahead of time).  add2 uses
(A, B, D) = (P0, P1, P2), its native sharing.  rep3 uses (A, B, D) = (P1, P2, P0) -- the
*helper-party trick*: a replicated sharing is a 2-of-2 sharing between P1 (x1 + x2) and
P2 (x0) for free, P0 (who holds x0, x1 but never sees an opening) deals, and results go
back to replicated form in one round (P1 and P2 each send one masked element to P0).
Bits travel packed (8 per byte), so a gate costs exactly its bits on the wire.

Gates (bits are uint8 0/1 arrays, leading-axis batched; one message per round):

* ``and_fan(x, ys)``: ``x & y`` for several ``y`` sharing one left operand ``x``; x is
  opened once (Beaver with a shared mask): bits sent per party = |x| + sum |y|.
* ``and_private(u)``: ``u_A & v_B`` of A's private bits and B's private bits: each opens
  its own input once (1 bit per gate per party).
* dealt lookup tables (compare_core.masked_digits): after opening ``c = d + rho`` the
  parties read XOR shares of f(c_j, rho_j) from tables the dealer made for its rho_j.
* ``b2a(bits)``: XOR-shared bit -> additive ring share (dealer pair [r]_B, [r]_A): open
  ``e = b ^ r`` (1 bit), then ``b = e + (1 - 2e) r``.  1 round; offline 8 bytes/bit.
* ``bitmul(c, x)``: ``c * x`` for an XOR-shared bit c and a ring value x in ONE round
  (bit injection): open ``e = c ^ r`` and ``f = x - alpha`` together, then
  ``c x = e x + (1 - 2e)(f [r] + [r alpha])``.  1 bit + 8 bytes per product per party.
* ``open_bits`` / ``reveal_bits``: open XOR-shared bits to A and B (and D).

What each party learns: A and B see only openings masked by dealer randomness that is
uniform and unknown to them (``x ^ a``, ``b ^ r``, ``x - alpha``), i.e. uniform bits and
ring elements; D receives nothing (rep3: P0 receives only the final re-sharing, masked by
the P1-P2 key).  Security needs D not to collude with A or B (rep3: honest majority).
"""
from __future__ import annotations

import math

import numpy as np

from ..ring import RING, iota
from .base import ProtocolError

U8 = np.uint8
_ONE = np.uint64(1)


# -- bit helpers ------------------------------------------------------------------------
def rand_bits(prg, shape) -> np.ndarray:
    """Uniform bits (uint8 0/1) of ``shape`` from a PRG stream (64 bits per draw)."""
    # hot path (every AND gate draws three of these): math.prod, not np.prod
    shape = tuple(map(int, shape))
    n = math.prod(shape)
    words = prg.words_view((n + 63) >> 6)
    return np.unpackbits(words.view(U8), count=n, bitorder="little").reshape(shape)


def rand_bits_many(prg, shapes) -> list:
    """Uniform bit arrays of each of ``shapes`` from ONE draw of the stream (the holders
    of a key must ask for the same list of shapes in the same order)."""
    return _split(rand_bits(prg, (sum(math.prod(s) for s in shapes),)), shapes)


def _split(flat: np.ndarray, shapes) -> list:
    """Consecutive pieces of the 1-d ``flat``, one per shape, each reshaped to it."""
    out, off = [], 0
    for shp in shapes:
        n = math.prod(shp)
        out.append(flat[off:off + n].reshape(shp))
        off += n
    return out


def pack_bits(bits: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(bits, dtype=U8).reshape(-1), bitorder="little")


def unpack_bits(buf: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(np.asarray(buf, dtype=U8), count=n, bitorder="little")


def pack_msg(bits=(), rings=()) -> np.ndarray:
    """One uint8 payload: all bit arrays packed (8 per byte), then ring arrays raw."""
    parts = []
    if bits:
        parts.append(pack_bits(np.concatenate([np.asarray(b, U8).reshape(-1) for b in bits])))
    for r in rings:
        parts.append(np.ascontiguousarray(r, dtype=RING).reshape(-1).view(U8))
    return np.concatenate(parts) if parts else np.zeros(0, U8)


def msg_size(bit_shapes=(), ring_shapes=()) -> int:
    nb = sum(math.prod(s) for s in bit_shapes)
    nr = sum(math.prod(s) for s in ring_shapes)
    return (nb + 7) // 8 + 8 * nr


def unpack_msg(buf, bit_shapes=(), ring_shapes=()):
    """Inverse of :func:`pack_msg` given the shapes: (list of bits, list of rings)."""
    buf = np.asarray(buf, dtype=U8)
    nb = sum(math.prod(s) for s in bit_shapes)
    off = (nb + 7) // 8
    bits = _split(unpack_bits(buf[:off], nb) if nb else np.zeros(0, U8), bit_shapes)
    rings = []
    for s in ring_shapes:
        n = math.prod(s)
        rings.append(buf[off:off + 8 * n].copy().view(RING).reshape(s))
        off += 8 * n
    return bits, rings


def to_bits(u: np.ndarray, nbits: int = 64, start: int = 0) -> np.ndarray:
    """Bits ``start .. start+nbits-1`` of uint64 values -> uint8 array [nbits, *u.shape]."""
    u = np.asarray(u, dtype=RING)
    sh = iota(start + nbits, RING)[start:].reshape((nbits,) + (1,) * u.ndim)
    return ((u[None] >> sh) & _ONE).astype(U8)


# -- the two-party bit engine ---------------------------------------------------------------
class Pair:
    """2-of-2 shares between data parties A and B; D deals correlated randomness.

    Every method is called at all three parties with the same arguments' *shapes*; D's
    data arguments are ignored (pass zeros of the right shape).  Bits are uint8 0/1.
    """

    def __init__(self, party, a: int, b: int, d: int, offline_deal: bool = True):
        self.party = party
        self.A, self.B, self.D = a, b, d
        self.role = "A" if party.id == a else "B" if party.id == b else "D"
        self.offline_deal = offline_deal

    # keys: A-D, B-D, A-B (the last one D does not hold)
    @property
    def kA(self):
        return self.party.prg_with(self.D if self.role == "A" else self.A)

    @property
    def kB(self):
        return self.party.prg_with(self.D if self.role == "B" else self.B)

    @property
    def kAB(self):
        return self.party.prg_with(self.B if self.role == "A" else self.A)

    @property
    def k_own(self):
        """At A or B: the stream shared with the dealer."""
        return self.kA if self.role == "A" else self.kB

    @property
    def other(self) -> int:
        return self.B if self.role == "A" else self.A

    # -- messaging -----------------------------------------------------------------------
    def _deal(self, payload: np.ndarray, tag: str) -> None:
        self.party.send(self.B, payload, tag + ".deal", offline=self.offline_deal)

    def _recv_deal(self, n: int, tag: str) -> np.ndarray:
        return self.party.recv(self.D, tag + ".deal", (n,))

    def _exchange(self, payload: np.ndarray, tag: str) -> np.ndarray:
        p = self.party
        p.send(self.other, payload, tag)
        return p.recv(self.other, tag, payload.shape)

    def open(self, bits=(), rings=(), tag="pair.open"):
        """A and B exchange their shares: public bits (XOR) and ring values (sum)."""
        bits, rings = list(bits), list(rings)
        if self.role == "D":
            return [np.zeros(b.shape, U8) for b in bits], [np.zeros(r.shape, RING) for r in rings]
        theirs = self._exchange(pack_msg(bits, rings), tag)
        tb, tr = unpack_msg(theirs, [b.shape for b in bits], [r.shape for r in rings])
        return [b ^ t for b, t in zip(bits, tb)], [r + t for r, t in zip(rings, tr)]

    def ab_mask(self, shape, bits: bool = False) -> np.ndarray:
        """At A and B: a mask from the A-B key (the dealer does not hold it), ring values
        or (``bits``) uint8 bits.  Added to both data parties' halves of an opening that
        also goes to D, it cancels in the sum and hides each half from D."""
        return rand_bits(self.kAB, shape) if bits else self.kAB.ring(shape)

    def reveal_bits(self, bits: np.ndarray, tag="pair.reveal") -> np.ndarray:
        """Open XOR-shared bits to all three parties (for public control flow).

        A and B send ``share ^ z`` with the same bits z from the A-B key: the two messages
        still XOR to the value, but neither is a raw share.  A raw share would tell D more
        than the value: D holds A's and B's dealt randomness, so from A's share of a
        comparison bit it can recompute a function of the masked input (for top-k's
        revealed comparisons, a threshold test on the low bits of the difference).
        Same bytes and rounds as sending the raw shares."""
        p = self.party
        if self.role == "D":
            n = bits.size
            sa = unpack_bits(p.recv(self.A, tag, ((n + 7) // 8,)), n)
            sb = unpack_bits(p.recv(self.B, tag, ((n + 7) // 8,)), n)
            return (sa ^ sb).reshape(bits.shape)
        z = self.ab_mask(bits.shape, bits=True)
        msg = pack_bits(bits ^ z)
        p.send(self.D, msg, tag)
        p.send(self.other, msg, tag)
        t = unpack_bits(p.recv(self.other, tag, msg.shape), bits.size).reshape(bits.shape)
        return bits ^ z ^ t

    # -- gates -----------------------------------------------------------------------------
    def and_fan(self, x: np.ndarray, ys, tag="pair.and"):
        """[x[-len(y):] & y for y in ys]: AND of several right operands with one left
        operand ``x`` (leading axes suffix-aligned), x opened once.  1 round."""
        ys = list(ys)
        m = x.shape[0] if x.ndim else 1
        for y in ys:
            if y.shape[1:] != x.shape[1:] or y.shape[0] > m:
                raise ProtocolError(f"and_fan: operand {y.shape} does not align with {x.shape}")
        # one draw per key: A-D stream [a, (b, c) per y], B-D stream [a, b per y]
        shapes_a = [x.shape] + [y.shape for y in ys for _ in (0, 1)]
        shapes_b = [x.shape] + [y.shape for y in ys]
        if self.role == "D":
            ra, rb = rand_bits_many(self.kA, shapes_a), rand_bits_many(self.kB, shapes_b)
            a = ra[0] ^ rb[0]
            cb = []
            for i, y in enumerate(ys):
                b = ra[1 + 2 * i] ^ rb[1 + i]
                cb.append((a[m - y.shape[0]:] & b) ^ ra[2 + 2 * i])
            if ys:
                self._deal(pack_msg(cb), tag)
            return [np.zeros(y.shape, U8) for y in ys]
        k = self.k_own
        if self.role == "A":
            r = rand_bits_many(k, shapes_a)
            a, bs, cs = r[0], r[1::2], r[2::2]
        else:
            r = rand_bits_many(k, shapes_b)
            a, bs, cs = r[0], r[1:], [None] * len(ys)
        if self.role == "B" and ys:
            n = sum(y.size for y in ys)
            cs, _ = unpack_msg(self._recv_deal((n + 7) // 8, tag), [y.shape for y in ys])
        if not ys:
            return []
        opened, _ = self.open([x ^ a] + [y ^ b for y, b in zip(ys, bs)], tag=tag)
        e, fs = opened[0], opened[1:]
        out = []
        for y, b, c, f in zip(ys, bs, cs, fs):
            es, as_ = e[m - y.shape[0]:], a[m - y.shape[0]:]
            z = c ^ (es & b) ^ (as_ & f)
            if self.role == "A":
                z ^= es & f
            out.append(z)
        return out

    def and_(self, x, y, tag="pair.and"):
        return self.and_fan(x, [y], tag)[0]

    def and_private(self, mine: np.ndarray, tag="pair.andp"):
        """``u & v`` where A inputs private bits u and B private bits v (D: zeros of the
        shape).  Each data party opens only its own input: 1 bit per gate, 1 round."""
        shape = mine.shape
        if self.role == "D":
            kA, kB = self.kA, self.kB
            a, b = rand_bits(kA, shape), rand_bits(kB, shape)
            ca = rand_bits(kA, shape)
            self._deal(pack_bits((a & b) ^ ca), tag)
            return np.zeros(shape, U8)
        k = self.k_own
        if self.role == "A":
            a, c = rand_bits(k, shape), rand_bits(k, shape)
            f = unpack_bits(self._exchange(pack_bits(mine ^ a), tag), mine.size).reshape(shape)
            e = mine ^ a
            return (e & f) ^ (a & f) ^ c
        b = rand_bits(k, shape)
        c = unpack_bits(self._recv_deal((mine.size + 7) // 8, tag), mine.size).reshape(shape)
        e = unpack_bits(self._exchange(pack_bits(mine ^ b), tag), mine.size).reshape(shape)
        return (e & b) ^ c

    def bits_to_ring(self, bits, table, x=None, tag="pair.lut"):
        """Arithmetic shares of F(b_1..b_k) -- or F(b) * x for a ring payload x (F's
        shape broadcast over x's trailing axes) -- for XOR-shared bits ``bits`` (list of
        k arrays of one shape S) and a public truth table ``table`` of 2^k integers
        (index = sum b_i 2^i).  The dealer masks the bits with rho and deals the rotated
        table T[j] = F[j ^ rho] additively (and U[j] = T[j] alpha for the payload); A and
        B open e = b ^ rho (k bits) and x - alpha (8 bytes) together: 1 round.
        This fuses a final AND/XOR layer with bit-to-ring conversion or bit injection."""
        k = len(bits)
        S = bits[0].shape
        K = 1 << k
        F = np.asarray(table, dtype=RING).reshape(K)
        wts = iota(k)
        sx = x.shape if x is not None else None
        extra = () if x is None else sx[len(S):]
        if x is not None and sx[:len(S)] != S:
            raise ProtocolError(f"payload {sx} does not extend the bits' shape {S}")
        if self.role == "D":
            kA, kB = self.kA, self.kB
            rho = np.stack([rand_bits(kA, S) ^ rand_bits(kB, S) for _ in range(k)], -1)
            r = (rho.astype(np.int64) << wts).sum(-1)                         # S
            T = F[iota(K) ^ r[..., None]]                                 # S + (K,)
            parts = [T - kA.ring(S + (K,))]
            if x is not None:
                al = kA.ring(sx) + kB.ring(sx)
                U = T.reshape(S + (1,) * len(extra) + (K,)) * al[..., None]
                parts.append(U - kA.ring(sx + (K,)))
            self._deal(pack_msg(rings=parts), tag)
            return np.zeros(S if x is None else sx, RING)
        kk = self.k_own
        rho = [rand_bits(kk, S) for _ in range(k)]
        if self.role == "A":
            T = kk.ring(S + (K,))
            if x is not None:
                al = kk.ring(sx)
                U = kk.ring(sx + (K,))
        else:
            if x is not None:
                al = kk.ring(sx)
            shapes = [S + (K,)] + ([sx + (K,)] if x is not None else [])
            n = sum(math.prod(q) for q in shapes)
            _, got = unpack_msg(self._recv_deal(8 * n, tag), (), shapes)
            T = got[0]
            U = got[1] if x is not None else None
        masked = [b ^ r for b, r in zip(bits, rho)]
        opened, rings = self.open(masked, [] if x is None else [x - al], tag=tag)
        e = sum(o.astype(np.int64) << i for i, o in enumerate(opened))
        c = np.take_along_axis(T, e[..., None], axis=-1)[..., 0]              # S
        if x is None:
            return c
        ee = e.reshape(S + (1,) * len(extra))
        cu = np.take_along_axis(U, np.broadcast_to(ee, sx)[..., None], axis=-1)[..., 0]
        return rings[0] * c.reshape(S + (1,) * len(extra)) + cu

    def b2a(self, bits: np.ndarray, tag="pair.b2a") -> np.ndarray:
        """XOR-shared bits -> additive ring shares of the same 0/1 values.  1 round."""
        shape = bits.shape
        if self.role == "D":
            kA, kB = self.kA, self.kB
            r = (rand_bits(kA, shape) ^ rand_bits(kB, shape)).astype(RING)
            ra = kA.ring(shape)
            self._deal(pack_msg(rings=[r - ra]), tag)
            return np.zeros(shape, RING)
        k = self.k_own
        r = rand_bits(k, shape)
        if self.role == "A":
            ra = k.ring(shape)
        else:
            ra = self._recv_deal(8 * bits.size, tag).view(RING).reshape(shape)
        (e,), _ = self.open([bits ^ r], tag=tag)
        e = e.astype(RING)
        out = (_ONE - (e << _ONE)) * ra
        return out + e if self.role == "A" else out

    def bitmul(self, c: np.ndarray, x: np.ndarray, tag="pair.bitmul") -> np.ndarray:
        """``c * x`` for XOR-shared bits c (broadcastable to x's shape) and additive ring
        shares x, in one round (bit injection with a dealer triple)."""
        sc, sx = c.shape, x.shape
        np.broadcast_shapes(sc, sx)
        if self.role == "D":
            kA, kB = self.kA, self.kB
            r = (rand_bits(kA, sc) ^ rand_bits(kB, sc)).astype(RING)
            ra = kA.ring(sc)
            al = kA.ring(sx)
            al = al + kB.ring(sx)
            w = kA.ring(sx)
            self._deal(pack_msg(rings=[r - ra, r * al - w]), tag)
            return np.zeros(np.broadcast_shapes(sc, sx), RING)
        k = self.k_own
        r = rand_bits(k, sc)
        if self.role == "A":
            ra, al, w = k.ring(sc), k.ring(sx), k.ring(sx)
        else:
            al = k.ring(sx)
            n = math.prod(sc) + math.prod(sx)
            _, (ra, w) = unpack_msg(self._recv_deal(8 * n, tag), (), [sc, sx])
        (e,), (f,) = self.open([c ^ r], [x - al], tag=tag)
        e = e.astype(RING)
        return e * x + (_ONE - (e << _ONE)) * (f * ra + w)


def pair_of(party) -> Pair:
    """The bit engine for this party's protocol (add2: P0, P1 + dealer P2; rep3: P1, P2 +
    helper P0)."""
    a, b, d = party.protocol.pair_roles()
    return Pair(party, a, b, d)


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of the bit engine's gates, per tag (or ``*`` pattern):
#: ``title``; ``local``, what the parties compute for it; ``learns``, why the receiver
#: learns only ``kind`` ("random": masked, the default; "dealer", "shape", "output", "key",
#: "pattern").  ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "pair.open": dict(
        title="masked opening in the bit engine (x ^ a, x - alpha)",
        local="the two data parties open their bits / ring values masked by dealer "
              "randomness",
        learns="masked values: the masks are the dealer's and unknown to the receiver"),
    "*.lut": dict(
        title="carry chain leaves: one-time truth tables on w-bit digits",
        local="per w-bit digit, (generate, propagate) of u_A + u_B is read from a truth "
              "table the dealer permuted by random (r, s) and XOR-shared; A opens x ^ r, "
              "B opens y ^ s (w bits each), then each reads its share of the table entry",
        learns="x ^ r (or y ^ s): the other party's digit masked by dealer bits it does "
               "not know"),
    "*.b2a": dict(
        title="bit to ring (B2A): open e = c ^ r",
        local="the dealer deals a random bit r as XOR bits and as ring shares; the data "
              "parties open e = c ^ r (1 bit each) and set c = e + (1 - 2e) [r] locally",
        learns="e = c ^ r, a uniform bit (r is the dealer's)"),
    "*.mux": dict(
        title="bit injection: c * x for a secret bit c and a ring value x, in one round",
        local="open e = c ^ r and f = x - alpha together (r, alpha, [r alpha] dealt); "
              "then c x = e x + (1 - 2e)(f [r] + [r alpha]) locally",
        learns="e = c ^ r (uniform bit) and f = x - alpha (uniform ring element)"),
    "*.deal": dict(
        title="correlated randomness for the gates (dealt)",
        local="the dealer D (add2: P2; rep3's bit engine: P0) derives everything A needs "
              "from the A-D key and everything B needs from the B-D key, except the one "
              "correlated value per gate, which it sends to B (offline: data-independent)",
        learns="the correlated part, masked by values from the A-D key B does not hold",
        kind="dealer"),
}

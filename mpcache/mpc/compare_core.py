"""The comparison core on the two-party bit engine (:mod:`.pair`): flat ring shares in,
XOR-shared bits (or ring shares of a bit) out.  Both protocols run it: add2 natively
(P0, P1; dealer P2), rep3 with P1, P2 as data parties and P0 as helper.

* :func:`msb_bits` -- the sign of d = u_A + u_B by a masked opening and digit tables
  (the steps and the references are on the function).
* :func:`sign_to_ring` -- the last tree level fused with bit-to-ring / bit injection.
* :func:`zero_bits` (equality): the same opening; d = 0 iff all digits of c equal rho's:
  leaves [c_j == rho_j] by lookup, then an AND tree (2 bits per AND).
* :func:`carry_bits`: the bit-level reference circuit (private-input ANDs + (G, P) tree,
  7 rounds, 30 bytes per value), kept for comparison and tests.

Cost formulas: :func:`mpcache.mpc.costs.cmp_cost` (checked against the accounting by
tests/functions/test_compare.py).  The SecretTensor functions built on this core (lt, eq, relu,
max, top-k, ...) are in :mod:`mpcache.functions.compare` and
:mod:`mpcache.functions.select`; A2B and B2A of whole words in
:mod:`mpcache.functions.convert`.

What each party learns: only uniformly masked openings (see pair.py); nothing about
x.  No value is reconstructed except by an explicit ``reveal``.
"""
from __future__ import annotations

import numpy as np

from ..kernels import dealt_rows, table_leaves
from ..ring import RING
from .pair import U8, Pair, pack_bits, rand_bits, to_bits, unpack_bits

_ONE = np.uint64(1)

WORD_BITS = 64

#: Fuse msb/lt's last tree level with its bit-to-ring round (:func:`sign_to_ring`): one
#: round fewer (lt 64: 5 -> 4 rounds, rep3 6 -> 5), the same online bytes, 64 dealt
#: bytes per value instead of 8 for the conversion.  exp's clip (functions/approx.py)
#: uses the same fused form with its payload, so it still costs what ``ltz`` costs.
#: relu/abs/clip/maximum/minimum, eq and the max/argmax trees are always fused.
FUSE_SIGN_B2A = True


# -- the comparison core: carry trees on packed bits ------------------------------------------
def _tree(pair: Pair, G: np.ndarray, P: np.ndarray, tag: str, last: bool = True):
    """Group generate of all leaves (leading axis, index 0 = least significant).
    ``last=False`` stops before the final combine and returns its inputs
    (G_hi, P_hi, G_lo) -- the result is G_hi ^ (P_hi & G_lo) -- for a fused final step."""
    stop = 1 if last else 2
    while G.shape[0] > stop:
        m = G.shape[0]
        h = m // 2
        Gl, Gh, Pl, Ph = G[0:2 * h:2], G[1:2 * h:2], P[0:2 * h:2], P[1:2 * h:2]
        zg, zp = pair.and_fan(Ph, [Gl, Pl[1:]], tag)
        Gn = Gh ^ zg
        Pn = np.concatenate([np.zeros((1,) + G.shape[1:], U8), zp])   # group 0: P unused
        if m % 2:
            Gn = np.concatenate([Gn, G[-1:]])
            Pn = np.concatenate([Pn, P[-1:]])
        G, P = Gn, Pn
    if last:
        return G[0]
    if G.shape[0] == 1:
        z = np.zeros(G.shape[1:], U8)
        return G[0], z, z
    return G[1], P[1], G[0]


#: Digit width of the comparison leaves (dealt lookup tables of 2^w entries); None =
#: adaptive: 8 for batches of at most SMALL_BATCH values (3 tree levels; 512 dealt bytes
#: per comparison, so at most 1 MiB per batch), else 4 (4 tree levels; 64 dealt bytes).
#: SMALL_BATCH was 512; at 2048 the batches of 513..2048 comparisons (the thermometers'
#: bound, top-k's all-pairs levels, a softmax row max's middle levels, a short softmax's
#: exp clip) take one round fewer for 448 more dealt bytes per comparison (online bytes
#: drop: 18 instead of 41 tree bits).  See docs/nonlinear-compare.md.  The limit is on
#: the tables' bytes (:func:`digit_width`): comparisons with fewer bits keep 8-bit digits
#: in bigger batches.
DIGIT_BITS: int | None = None
SMALL_BATCH = 2048
#: Batches of at most this many comparisons fuse their last tree level into the final
#: bit-to-ring / bit-injection round (one round fewer; 64 dealt bytes per value and 64 per
#: payload value instead of 8 and 16); bigger batches keep the separate round.
FUSE_MAX_BATCH = 8192


def digit_width(n_values: int, low: int = WORD_BITS - 1) -> int:
    """The leaf digit width used for a batch of ``n_values`` comparisons of ``low`` bits
    below the sign: 8 while the batch's 8-bit tables stay within those of SMALL_BATCH
    full 64-bit comparisons (1 MiB: 8 digits x 64 bytes each), else 4.  A shorter
    comparison has fewer digits, so bigger batches keep 8-bit digits (a coarse 16-bit
    comparison: 2 digits, up to 4 x SMALL_BATCH values, one tree level)."""
    if DIGIT_BITS is not None:
        return int(DIGIT_BITS)
    return 8 if n_values * -(-low // 8) <= SMALL_BATCH * 8 else 4


_TABLES: dict = {}


def _digit_tables(w: int, kind: str) -> np.ndarray:
    """Packed rows, one per secret digit value q: for every public v in [0, 2^w) the bits
    ``lt``: ([v < q], [v == q]) or ``eq``: ([v == q],), little-endian, 8 per byte."""
    key = (w, kind)
    if key not in _TABLES:
        M = 1 << w
        v, q = np.arange(M)[None, :], np.arange(M)[:, None]
        bits = [v < q, v == q] if kind == "lt" else [v == q]
        T = np.stack(bits, axis=-1).astype(U8).reshape(M, -1)
        _TABLES[key] = np.packbits(T, axis=1, bitorder="little")
    return _TABLES[key]


def _ring_dtype(nbits: int):
    return np.uint8 if nbits <= 8 else np.uint16 if nbits <= 16 else np.uint32 \
        if nbits <= 32 else np.uint64


def masked_digits(pair: Pair, u: np.ndarray, nbits: int, low: int, w: int, kind: str,
                  tag: str, pairs=None, drop: int = 0):
    """Open c = d + rho mod 2^nbits (rho: a dealer mask, uniform, each half from a key) and
    look up, for every w-bit digit j of the ``low`` low bits, XOR shares of the dealt
    table row of rho's digit at the public digit of c: ([c_j < rho_j], [c_j == rho_j])
    (``kind="lt"``) or ([c_j == rho_j],) (``"eq"``).  Digits are little-endian with the
    partial digit at the bottom, padded with zero bits on both sides (equal, so they
    change nothing).  1 round; returns (leaf bits [D, N, nout], public c, this party's
    XOR share of bit ``low`` of rho (for the sign) or None).

    ``pairs=(I, J)``: ``u`` holds the values and the N differences are ``u[I] - u[J]``.
    Each VALUE is opened once, c_v = u_v + r_v mod 2^nbits (r_v a dealer mask, a half
    from each key), and the differences' openings are c_I - c_J = d + (r_I - r_J): the
    dealer deals the tables of rho = r_I - r_J.  One opening per value, not per difference (the fan-in-4
    tree: 4 values for its 6 comparisons per group); c_v is uniform, and every c_I - c_J
    is a function of the c_v.

    ``drop`` > 0 (a coarse comparison, :func:`msb_bits`): the digits and the top bit are
    those of c' = c >> drop and rho' = rho >> drop (of the ``nbits``-bit words; per VALUE
    before the pairs' differences, mod 2^(nbits - drop)): the opening is the same, the
    tables cover ``low`` = nbits - drop - 1 bits."""
    u = np.asarray(u, dtype=RING).reshape(-1)
    if pairs is not None:
        I, J = (np.asarray(t, dtype=np.int64).reshape(-1) for t in pairs)
    nv = u.size                                  # values opened
    N = u.size if pairs is None else I.size
    w = min(w, low)
    D = -(-low // w)
    M = 1 << w
    nout = 2 if kind == "lt" else 1
    tb = (M * nout + 7) // 8
    want_top = low < nbits

    def tbytes(prg):
        n = N * D * tb
        return prg.ring(((n + 7) // 8,)).view(U8)[:n].reshape(D, N, tb)

    if pair.role == "D":
        kA, kB = pair.kA, pair.kB
        rho = kA.ring((nv,)) + kB.ring((nv,))
        if drop:
            rho = _coarse(rho, nbits, drop)
        if pairs is not None:
            rho = rho[I] - rho[J]
        ta = tbytes(kA)
        parts = [dealt_rows(rho, _digit_tables(w, kind), w, low, ta).reshape(-1)]
        if want_top:
            topa = rand_bits(kA, (N,))
            parts.append(pack_bits(((rho >> np.uint64(low)) & _ONE).astype(U8) ^ topa))
        pair._deal(np.concatenate(parts), tag)
        return np.zeros((D, N, nout), U8), np.zeros(N, RING), np.zeros(N, U8)
    k = pair.k_own
    r = k.ring((nv,))
    if pair.role == "A":
        tab = tbytes(k)
        top = rand_bits(k, (N,)) if want_top else None
    else:
        nbytes = N * D * tb + ((N + 7) // 8 if want_top else 0)
        buf = pair._recv_deal(nbytes, tag)
        tab = buf[:N * D * tb].reshape(D, N, tb)
        top = unpack_bits(buf[N * D * tb:], N) if want_top else None
    dt = _ring_dtype(nbits)
    mine = (u + r).astype(dt)
    c = (mine.astype(RING) + pair._exchange(mine, tag).astype(RING))
    if drop:
        c = _coarse(c, nbits, drop)
    if pairs is not None:
        c = c[I] - c[J]
    if nbits - drop < 64:
        c &= np.uint64((1 << (nbits - drop)) - 1)
    return table_leaves(c, tab, w, low, nout), c, top


def _coarse(v: np.ndarray, nbits: int, drop: int) -> np.ndarray:
    """The top ``nbits - drop`` bits of the ``nbits``-bit words v (a coarse comparison's
    digits, :func:`msb_bits`)."""
    if nbits < 64:
        v = v & np.uint64((1 << nbits) - 1)
    return v >> np.uint64(drop)


def msb_bits(pair: Pair, u: np.ndarray, tag: str = "cmp", nbits: int = 64,
             digit: int | None = None, last: bool = True, pairs=None, drop: int = 0):
    """XOR shares of bit ``nbits - 1`` (the sign) of d = u_A + u_B mod 2^nbits, for flat
    ring shares ``u``: the core of every comparison (``a < b  <=>  msb(a - b) = 1``).

    Reference: the masked-opening comparison of Damgaard, Fitzi, Kiltz, Nielsen, Toft,
    "Unconditionally secure constant-rounds multi-party computation for equality,
    comparison, bits and exponentiation", TCC 2006, and Rabbit (Makri, Rotaru, Vercauteren,
    Wouters, Asiacrypt 2021), with the helper's dealt lookup tables in place of bitwise
    shared masks so the leaves need no interaction; the carry tree is the (G, P) prefix
    combine of Kogge-Stone (IEEE Trans. Computers 1973); the dealer/helper setting of
    ABY3 (Mohassel, Rindal, CCS 2018, Sec. 5.3).

    Steps (w-bit digits, w = :func:`digit_width`; ``low = nbits - 1``):

    1. (dealer, :func:`masked_digits`) D draws rho = rho_A + rho_B (each half from its key
       with A, resp. B: no bytes) and deals, per digit j of rho's ``low`` low bits, XOR
       shares of the table row ([v < rho_j], [v == rho_j]) for every v in [0, 2^w), plus
       a share of rho's bit ``low``.  Offline, seed-compressed (only B's part is sent).
    2. (open, 1 round) A and B open c = d + rho mod 2^nbits (uniform: 8 bytes each, fewer
       for small ``nbits``), and read their table shares at c's digits: leaves
       LT_j = [c_j < rho_j], EQ_j = [c_j == rho_j] (local).
    3. (tree, ceil(log2 D) rounds) combine neighbouring digits,
       ``LT = LT_hi ^ EQ_hi & LT_lo``, ``EQ = EQ_hi & EQ_lo`` (EQ_hi opened once for both
       ANDs: 3 bits per combine, 2 for the lowest group): the borrow [c_low < rho_low].
    4. (finish, local: :func:`msb_finish`) sign(d) = c_top ^ rho_top ^ borrow.

    With w = 8: 8 digits, 3 tree levels, 8 + 18/8 bytes per value per party, 4 rounds;
    dealt 8 x 2^8 x 2 bits = 512 bytes (w = 4 for big batches: 4 levels, 8 + 41/8 bytes,
    64 dealt bytes).  Rounds: 1 + ceil(log2 ceil((nbits-1)/w)).
    ``last=False``: stop before the final AND of step 3 and return (s, p, q) with
    sign = s ^ (p & q), for :func:`sign_to_ring` (which fuses that AND into its own
    round).  Exact cost: :func:`mpcache.mpc.costs.cmp_cost`.
    ``pairs=(I, J)``: the signs of ``u[I] - u[J]``, each value opened once
    (:func:`masked_digits`).

    ``drop`` = s > 0, a *coarse* comparison: the tree skips the s low bits, i.e. the
    result is the sign of y = (c >> s) - (rho >> s) = floor(d / 2^s) + carry, carry in
    {0, 1} (the carry of the dropped bits, never computed).  Exact for d >= 0 and for
    d < -2^s; for -2^s <= d < 0 it may say "not negative".  With ``pairs``, y is
    per VALUE (y_v = floor(u_v / 2^s) + carry_v, each value masked once), so the
    comparisons of a batch are those of one set of numbers: transitive, a tournament
    over them has exactly one winner; exact for values at least 2^(s+1) apart.  Same opening (``nbits`` bits), a tree over
    ``nbits - s - 1`` bits: at s = nbits - 17, 2 digits of 8 bits instead of 4 -- one
    tree round fewer (softmax's approximate row max, :func:`mpcache.functions.select.amax`
    with ``tol``)."""
    u = np.asarray(u, dtype=RING).reshape(-1)
    n = u.size if pairs is None else np.size(pairs[0])
    if not 0 <= drop <= nbits - 2:
        raise ValueError(f"drop must be in [0, nbits - 2], got {drop} (nbits {nbits})")
    nbits_all, nbits = nbits, nbits - drop
    low = nbits - 1
    w = digit if digit is not None else digit_width(n, low)
    if low == 0:                          # 1-bit values: the sign is the bit itself
        b = ((u & _ONE).astype(U8)) if pair.role != "D" else np.zeros(u.size, U8)
        return b if last else (b, np.zeros_like(b), np.zeros_like(b))
    leaves, c, top = masked_digits(pair, u, nbits_all, low, int(w), "lt", tag + ".open",
                                   pairs, drop)
    if not last and n > FUSE_MAX_BATCH:     # big batch: finish here (fewer dealt bytes)
        return msb_finish(pair, _tree(pair, np.ascontiguousarray(leaves[..., 0]),
                                      np.ascontiguousarray(leaves[..., 1]), tag + ".tree"),
                          c, top, low), None, None
    res = _tree(pair, np.ascontiguousarray(leaves[..., 0]),
                np.ascontiguousarray(leaves[..., 1]), tag + ".tree", last)
    s = msb_finish(pair, res if last else res[0], c, top, low)
    return s if last else (s, res[1], res[2])


def msb_finish(pair, lt, c, top, low):
    """sign = c_top ^ rho_top ^ borrow (XOR shares; A adds the public bit)."""
    if pair.role == "D":
        return lt
    s = lt ^ top
    if pair.role == "A":
        s = s ^ ((c >> np.uint64(low)) & _ONE).astype(U8)
    return s


#: F(s, p, q) = s ^ (p & q), indexed by s + 2p + 4q.
_SIGN_TABLE = np.array([(s ^ (p & q)) for q in (0, 1) for p in (0, 1) for s in (0, 1)])


def sign_to_ring(pair: Pair, parts, x=None, negate: bool = False, tag: str = "cmp.b2a"):
    """Ring shares of the sign bit (or of sign * x, bit injection) from the unfinished
    comparison ``parts`` = (s, p, q) of :func:`msb_bits` (last=False): the final AND
    and the conversion in ONE round (Pair.bits_to_ring).  ``negate``: use 1 - sign.
    Batches above FUSE_MAX_BATCH arrive finished ((bits, None, None)) and take the
    plain b2a / bit injection (16 instead of 64 + 64 dealt bytes per payload value)."""
    s, p, q = parts
    if p is None:
        bits = s ^ U8(1) if (negate and pair.role == "A") else s
        if x is None:
            return pair.b2a(bits, tag)
        return pair.bitmul(bits.reshape(bits.shape + (1,) * (x.ndim - bits.ndim)), x, tag)
    table = _SIGN_TABLE ^ 1 if negate else _SIGN_TABLE
    return pair.bits_to_ring([s, p, q], table, x, tag)


def zero_bits_finish(pair, z, tag):
    while z.shape[0] > 1:
        m = z.shape[0]
        h = m // 2
        y = pair.and_(z[0:2 * h:2], z[1:2 * h:2], tag + ".tree")
        z = np.concatenate([y, z[-1:]]) if m % 2 else y
    return z[0]


def carry_bits(pair: Pair, u: np.ndarray, nbits: int, tag: str = "cmp") -> np.ndarray:
    """Reference bit-level circuit (not used by default): XOR shares of the carry into bit
    ``nbits`` of u_A + u_B, from private-input ANDs (g_i = u_i & v_i) and a (G, P) tree:
    1 + ceil(log2 nbits) rounds, 1 + 3 bits per position per party."""
    u = np.asarray(u, dtype=RING).reshape(-1)
    ub = to_bits(u, nbits)
    g = pair.and_private(ub, tag + ".gen")
    return _tree(pair, g, ub, tag + ".tree")


def zero_bits(pair: Pair, u: np.ndarray, nbits: int = WORD_BITS, tag: str = "eq",
              digit: int | None = None, last: bool = True):
    """XOR shares of [u_A + u_B == 0 mod 2^nbits]: open c = d + rho, then d = 0 iff every
    digit of c equals rho's (leaves by table lookup) and an AND tree over the digits
    (2 bits per AND).  Rounds 1 + ceil(log2 ceil(nbits / w)).  ``last=False`` returns
    (0, p, q) with the result p & q, for :func:`sign_to_ring`."""
    u = np.asarray(u, dtype=RING).reshape(-1)
    w = digit if digit is not None else digit_width(u.size)
    leaves, _, _ = masked_digits(pair, u, nbits, nbits, int(w), "eq", tag + ".open")
    z = leaves[..., 0]
    if not last and u.size > FUSE_MAX_BATCH:
        return zero_bits_finish(pair, z, tag), None, None
    stop = 1 if last else 2
    while z.shape[0] > stop:
        m = z.shape[0]
        h = m // 2
        y = pair.and_(z[0:2 * h:2], z[1:2 * h:2], tag + ".tree")
        z = np.concatenate([y, z[-1:]]) if m % 2 else y
    if last:
        return z[0]
    zero = np.zeros(z.shape[1:], U8)
    if z.shape[0] == 1:                  # one digit: result = s (p & q = 0)
        return z[0], zero, zero
    return zero, z[0], z[1]


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of the comparison core, per tag (or ``*`` pattern): ``title``;
#: ``local``, what the parties compute for it; ``learns``, why the receiver learns only
#: ``kind`` ("random": masked, the default; "dealer", "shape", "output", "key", "pattern").
#: ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "*.gen": dict(
        title="carry chain, generate bits g = u_A & u_B (private AND)",
        local="the comparison works on the bits of a 2-of-2 sharing d = u_A + u_B (the "
              "difference a - b): the carry of u_A + u_B starts with g_j = u_A[j] & "
              "u_B[j]; each data party opens its OWN bits masked by dealer bits (bits "
              "travel packed, 8 per byte)",
        learns="u_j ^ a_j: the other party's bits masked by dealer bits it does not know"),
    "*.open": dict(
        title="masked opening (comparison digits: c = d + rho)",
        local="the data parties open the difference d masked by a dealer mask rho (c = d "
              "+ rho mod 2^nbits, each half of rho from a key with the dealer), then read "
              "their XOR shares of the dealt table row of rho's digits at the public "
              "digits of c: ([c_j < rho_j], [c_j == rho_j]) per w-bit digit; a carry tree "
              "combines them.  With a public bound nbits < 64 (fewer bytes, fewer "
              "digits); a coarse comparison (drop = s) uses only the digits above bit s "
              "of c and rho: the sign of floor(d / 2^s) + carry, one tree round fewer",
        learns="c = d + rho: uniform, because rho is uniform and each party knows only "
               "one half"),
    "*.tree": dict(
        title="carry chain, one level of the parallel-prefix (Kogge-Stone) tree",
        local="(G, P) of neighbouring blocks are combined: G = G_hi ^ P_hi & G_lo, P = "
              "P_hi & P_lo, AND gates with dealer bit triples, the shared left operand "
              "opened once (x ^ a, y ^ b); one level per round, ceil(log2(leaves)) levels",
        learns="x ^ a and y ^ b for dealer bits a, b the receiver does not know"),
}

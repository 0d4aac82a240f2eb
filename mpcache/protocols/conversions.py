"""Arithmetic <-> boolean conversions (both protocols).

References: Mohassel, Rindal, "ABY3", CCS 2018, Sec. 5.3 (A2B by a parallel-prefix adder,
bit injection); Kogge, Stone, IEEE Trans. Computers 1973 (the prefix adder); Demmler,
Schneider, Zohner, "ABY", NDSS 2015 (Beaver AND triples for the dealer setting).

* :func:`a2b` (full 64-bit decomposition, public API): the protocol splits x into two
  XOR-shared summands (rep3: y = x0 + x1 input by P0 plus x2, which is already an XOR
  sharing; add2: x0 and x1 themselves), then a Kogge-Stone adder on 64-bit words:
  generate layer g = a & b (1 AND round) and log2(64) = 6 levels of
  ``G ^= P & (G << k); P &= P << k`` (both ANDs in one message).  Rounds: rep3 1 + 1 + 6
  = 8, add2 1 + 6 = 7.  Bytes per value per party: rep3 8 (P0's input) + 8 + 6 * 16 = 112;
  add2 16 + 6 * 32 = 208 (Beaver opens two words per AND); add2 offline 8 + 6 * 16.
* :func:`carry_bits` / :func:`msb_bits` (the comparison core, used by compare.py):
  only the carry into the top bit is needed, so instead of the full adder the engine
  (boolean.Pair) evaluates a carry *tree* over the 63 low bit positions on packed bits:
  leaves g_i = u_i & v_i with private inputs (1 bit per gate per party), p_i = u_i ^ v_i
  free, then 6 levels combining (G, P) pairs with ``G = G_hi ^ P_hi & G_lo`` and
  ``P = P_hi & P_lo`` (P_hi opened once for both: 3 bits per combine, 2 for the lowest
  group whose P is never needed).  msb = u_63 ^ v_63 ^ carry.
  Cost per value: 7 rounds, 63 + 180 = 243 bits = 30.4 bytes per party online; dealer
  63 + 118 = 181 bits offline.  rep3 runs the same engine with P1, P2 as data parties and
  P0 as helper (a replicated sharing is a free 2-of-2 sharing x = (x1 + x2) + x0).
* :func:`b2a` (single bits -> ring 0/1): dealer pair ([r]_B, [r]_A), open b ^ r: 1 round,
  1 bit per value per party, 8 bytes offline; rep3 adds the 1-round re-sharing to
  replicated form (P1 and P2 send 8 bytes per value to P0).

What each party learns: only uniformly masked openings (see boolean.py); nothing about
x.  No value is reconstructed except by an explicit ``reveal``.
"""
from __future__ import annotations

import numpy as np

from ..ring import RING
from .boolean import U8, BoolTensor, Pair, pair_of, to_bits

WORD_BITS = 64


# -- full A2B (public API) ---------------------------------------------------------------------
def a2b(x) -> BoolTensor:
    """Boolean (XOR) sharing of the 64-bit ring value of ``x`` (its fixed-point encoding for
    fixed tensors).  Kogge-Stone adder, rounds: rep3 8, add2 7."""
    p = x.party
    proto = p.protocol
    with p.scope("a2b"):
        ya, yb = proto.a2b_summands(x.data)
        a, b = BoolTensor(p, ya), BoolTensor(p, yb)
        G = a & b
        P = a ^ b
        s = P
        k = 1
        while k < WORD_BITS:
            # G ^= P & (G << k); P &= P << k  -- both ANDs batched in one message
            lhs = _stack2(P, P)
            rhs = _stack2(G << k, P << k)
            both = lhs & rhs
            G = G ^ both[0]
            P = both[1]
            k *= 2
        return s ^ (G << 1)


def _stack2(a: BoolTensor, b: BoolTensor) -> BoolTensor:
    if not a._proto.active:
        from .base import phantom
        return BoolTensor(a.party, phantom((2,) + a.shape, a._proto.slots))
    return BoolTensor(a.party, np.stack([a.data, b.data], axis=1))


def b2a(b: BoolTensor, bit: int = 0):
    """Ring integer (frac 0) SecretTensor holding bit ``bit`` of each shared word.
    add2: 1 round; rep3: 2 rounds (the second re-shares to replicated form)."""
    from ..tensor import SecretTensor
    p = b.party
    proto = p.protocol
    with p.scope("b2a"):
        pair = pair_of(p)
        w = proto.bool_to_pair(b.data)
        bits = ((w >> np.uint64(bit)) & np.uint64(1)).astype(U8).reshape(-1)
        y = pair.b2a(bits)
        return SecretTensor(p, proto.from_pair(y.reshape(b.shape), b.shape), 0)


bit2a = b2a


# -- the comparison core: carry trees on packed bits ------------------------------------------
def _tree(pair: Pair, G: np.ndarray, P: np.ndarray, tag: str) -> np.ndarray:
    """Group generate of all leaves (leading axis, index 0 = least significant)."""
    while G.shape[0] > 1:
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
    return G[0]


#: Digit width of the carry tree's leaves (one-time truth tables); 1 = bit-level
#: generate layer with private-input ANDs; None = adaptive: 4 for batches of at most
#: SMALL_BATCH values (one round fewer; 1 KiB of dealt tables per value), else 2
#: (128 B of tables per value).  See docs/nonlinear-compare.md for the trade-off.
DIGIT_BITS: int | None = None
SMALL_BATCH = 256
_GP_TABLES: dict = {}


def _gp_table(w: int) -> np.ndarray:
    """[2^w, 2^w, 2]: (generate, propagate) of the w-bit group sum x + y."""
    if w not in _GP_TABLES:
        M = 1 << w
        s = np.arange(M)[:, None] + np.arange(M)[None, :]
        _GP_TABLES[w] = np.stack([s >= M, s == M - 1], axis=-1).astype(U8)
    return _GP_TABLES[w]


def carry_bits(pair: Pair, u: np.ndarray, nbits: int, tag: str = "cmp",
               digit: int | None = None) -> np.ndarray:
    """XOR shares of the carry into bit ``nbits`` of u_A + u_B (low ``nbits`` bits of
    this party's ring share ``u``, flat).

    Leaves are w-bit digits (w = ``digit``, default :data:`DIGIT_BITS`) whose
    (generate, propagate) pair comes from a one-time truth table in one round (w bits
    opened per digit per party); the partial digit sits at the bottom, padded with zero
    bits (which neither generate nor propagate a carry).  Then a tree over the
    D = ceil(nbits / w) leaves: rounds 1 + ceil(log2 D)."""
    u = np.asarray(u, dtype=RING).reshape(-1)
    w = digit if digit is not None else DIGIT_BITS
    if w is None:
        w = 4 if u.size <= SMALL_BATCH else 2
    w = int(w)
    if w <= 1:
        ub = to_bits(u, nbits)                # [nbits, N] private bits of this party
        g = pair.and_private(ub, tag + ".gen")
        return _tree(pair, g, ub, tag + ".tree")
    w = builtins_min(w, nbits)
    D = -(-nbits // w)
    pad = D * w - nbits
    if pair.role == "D":
        digits = np.zeros((D, u.size), np.int64)
    else:
        v = (u << np.uint64(pad)) if pad else u     # zero bits below bit 0
        mask = np.uint64((1 << w) - 1)
        sh = (np.arange(D, dtype=np.uint64) * np.uint64(w))[:, None]
        digits = ((v[None, :] >> sh) & mask).astype(np.int64)
    gp = pair.lut2(digits, w, _gp_table(w), tag + ".lut")      # [D, N, 2]
    return _tree(pair, np.ascontiguousarray(gp[..., 0]), np.ascontiguousarray(gp[..., 1]),
                 tag + ".tree")


def builtins_min(a, b):
    return a if a < b else b


def msb_bits(pair: Pair, u: np.ndarray, tag: str = "cmp") -> np.ndarray:
    """XOR shares of msb(u_A + u_B) for flat ring shares ``u``.  7 rounds."""
    u = np.asarray(u, dtype=RING).reshape(-1)
    top = (u >> np.uint64(63)).astype(U8)
    return top ^ carry_bits(pair, u, WORD_BITS - 1, tag)


def zero_bits(pair: Pair, u: np.ndarray, nbits: int = WORD_BITS, tag: str = "eq") -> np.ndarray:
    """XOR shares of [u_A + u_B == 0 mod 2^nbits]: the low bits of u_A and -u_B must agree,
    so NOT(u_A ^ -u_B) is a free XOR sharing and an AND tree over ``nbits`` positions
    finishes it: ceil(log2 nbits) rounds, 2 bits per AND per party."""
    u = np.asarray(u, dtype=RING).reshape(-1)
    if pair.role == "B":
        u = np.uint64(0) - u
    w = to_bits(u, nbits)
    if pair.role == "A":
        w ^= U8(1)
    while w.shape[0] > 1:
        m = w.shape[0]
        h = m // 2
        z = pair.and_(w[0:2 * h:2], w[1:2 * h:2], tag)
        w = np.concatenate([z, w[-1:]]) if m % 2 else z
    return w[0]


# -- cost formulas (checked against the accounting by tests/test_compare.py) ----------------------
def digit_width(n_values: int) -> int:
    """The leaf digit width :func:`carry_bits` uses for a batch of ``n_values``."""
    if DIGIT_BITS is not None:
        return int(DIGIT_BITS)
    return 4 if n_values <= SMALL_BATCH else 2


def carry_levels(nbits: int, w: int) -> list:
    """Per round of :func:`carry_bits`: (online bits per value per party, dealt bits per
    value).  First entry: the leaves (private ANDs or truth tables), then the tree."""
    if w <= 1:
        leaves, out = nbits, [(nbits, nbits)]
    else:
        w = min(w, nbits)
        leaves = -(-nbits // w)
        out = [(w * leaves, leaves * (1 << 2 * w) * 2)]
    m = leaves
    while m > 1:
        h = m // 2
        out.append((3 * h - 1, 2 * h - 1))      # open P_hi, G_lo, P_lo[1:]; one c per AND
        m = h + m % 2
    return out


def cmp_cost(op: str, n: int, protocol: str, nbits: int = 63) -> dict:
    """Cost of a batch of ``n`` comparisons: ``op`` in {"msb" (= lt, ltz, ...), "relu",
    "reveal" (revealed comparison inside top-k)}; per party, bits packed per message.
    Returns {'bytes', 'rounds', 'offline'} (offline = dealt bytes, max over parties)."""
    levels = carry_levels(nbits, digit_width(n))
    online = sum((b * n + 7) // 8 for b, _ in levels)
    offline = sum((d * n + 7) // 8 for _, d in levels)
    rounds = len(levels) + 1
    if op == "msb":             # b2a: open 1 bit; dealer r_A (8 bytes)
        online += (n + 7) // 8
        offline += 8 * n
    elif op == "relu":          # bitmul: open 1 bit + 1 ring element; dealer [r], [r alpha]
        online += (n + 7) // 8 + 8 * n
        offline += 16 * n
    elif op == "reveal":        # A and B send their bit shares to each other and to D
        online += 2 * ((n + 7) // 8)
    else:
        raise ValueError(f"unknown comparison op {op!r}")
    if protocol == "rep3" and op != "reveal":
        online += 8 * n         # back to replicated: P1, P2 send one element each to P0
        rounds += 1
    return {"bytes": online, "rounds": rounds, "offline": offline}

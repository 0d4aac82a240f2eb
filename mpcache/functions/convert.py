"""Arithmetic <-> boolean conversions of whole tensors (both protocols).

* :func:`a2b` (full 64-bit decomposition): the protocol splits x into two XOR-shared
  summands (rep3: y = x0 + x1 input by P0 plus x2, which is already an XOR sharing; add2:
  x0 and x1 themselves), then a Kogge-Stone adder on 64-bit words.
* :func:`b2a` (single bits -> ring 0/1): dealer pair ([r]_B, [r]_A), open b ^ r: 1 round,
  1 bit per value per party, 8 bytes offline; rep3 adds the 1-round re-sharing to
  replicated form (P1 and P2 send 8 bytes per value to P0).

The comparison itself needs neither (it opens a masked difference:
:func:`mpcache.mpc.compare_core.msb_bits`).  What each party learns: only uniformly masked
openings (mpc/pair.py); nothing about x.
"""
from __future__ import annotations

import numpy as np

from ..booltensor import U8, BoolTensor
from ..mpc.base import phantom
from ..mpc.compare_core import WORD_BITS
from ..mpc.pair import pair_of
from ..tensor import SecretTensor


def a2b(x) -> BoolTensor:
    """Boolean (XOR) sharing of the 64-bit ring value of ``x`` (its fixed-point encoding for
    fixed tensors).

    Reference: Mohassel, Rindal, "ABY3", CCS 2018, Sec. 5.3 (A2B by a parallel-prefix
    adder); Kogge, Stone, IEEE Trans. Computers 1973 (the prefix adder); Demmler,
    Schneider, Zohner, "ABY", NDSS 2015 (Beaver AND triples, the add2 dealer setting).

    Steps:

    1. split x into two XOR-shared summands a + b = x (the protocol's ``a2b_summands``;
       rep3: P0 inputs x0 + x1, 1 round, 8 bytes; add2: free);
    2. generate layer G = a & b (1 AND round), P = a ^ b;
    3. log2(64) = 6 levels of ``G ^= P & (G << k); P &= P << k`` (both ANDs in one
       message);
    4. x = (a ^ b) ^ (G << 1) (local).

    Rounds: rep3 1 + 1 + 6 = 8, add2 1 + 6 = 7.  Bytes per value per party: rep3 8 (P0's
    input) + 8 + 6 * 16 = 112; add2 16 + 6 * 32 = 208 (Beaver opens two words per AND);
    add2 offline 8 + 6 * 16."""
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
        return BoolTensor(a.party, phantom((2,) + a.shape, a._proto.slots))
    return BoolTensor(a.party, np.stack([a.data, b.data], axis=1))


def b2a(b: BoolTensor, bit: int = 0):
    """Ring integer (frac 0) SecretTensor holding bit ``bit`` of each shared word.
    add2: 1 round; rep3: 2 rounds (the second re-shares to replicated form)."""
    p = b.party
    proto = p.protocol
    with p.scope("b2a"):
        pair = pair_of(p)
        w = proto.bool_to_pair(b.data)
        bits = ((w >> np.uint64(bit)) & np.uint64(1)).astype(U8).reshape(-1)
        y = pair.b2a(bits)
        return SecretTensor(p, proto.from_pair(y.reshape(b.shape), b.shape), 0)


bit2a = b2a

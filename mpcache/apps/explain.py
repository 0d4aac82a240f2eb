"""``mpcache explain OP``: run one op on random data with tracing and narrate the protocol.

For every communication step (grouped by round and protocol tag) it prints what the
parties compute locally, who sends what to whom (bytes, dtype, shape), and one line on
what the receiver learns: a uniformly random masked value, the shape (public), dealer
randomness, or the revealed output.  The narration comes from :data:`TAGS`, a table from
message tags to explanations; a tag missing from the table is printed as such (never
guessed).  The numbers come from a real traced run (:mod:`mpcache.trace`), and the totals
are checked against the cost formulas (:mod:`mpcache.protocols.costs`) when one exists.

    mpcache explain mul --protocol rep3
    mpcache explain matmul --protocol add2 --shape 2x3x4
    mpcache explain softmax --protocol rep3 --shape 1x8

Docs: docs/teaching.md.  Everything here runs on random toy data with a fixed seed; the
optional ``--values`` flag prints share values (toy data only).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

# -- the tag table --------------------------------------------------------------------------
# kind: what the receiver learns, in one word: "random" (uniform, masked), "shape"
# (public metadata), "dealer" (correlated randomness, uniform to its receiver), "output"
# (a revealed value, by design), "key" (set-up).
LEARNS = {
    "random": "uniformly random values (masked): nothing about the data",
    "dealer": "dealer randomness, uniformly random to the receiver: nothing about the data",
    "shape": "the shape only (public under the threat model)",
    "output": "the revealed output (by design: the program asked to open it)",
    "key": "a PRG key it now shares with the sender (set-up, no data)",
    "pattern": "comparison outcomes between SHUFFLED keys (by design): the order pattern of "
               "a uniformly random permutation, independent of the data",
}


@dataclass
class TagInfo:
    title: str
    local: str            # what the parties compute locally before/for this message
    learns: str           # why the receiver learns only `kind`
    kind: str = "random"


TAGS: dict[str, TagInfo] = {
    # -- session set-up ----------------------------------------------------------------
    "setup.key": TagInfo(
        "pairwise PRG keys",
        "P_i draws a 128-bit key k_i from the OS and sends it to P_{i+1}; both then draw "
        "identical AES-CTR streams from it (zero-sharings, masks, dealt values)",
        "key k_{i-1}, shared with its left neighbour only", "key"),
    # -- rep3 ------------------------------------------------------------------------------
    "rep3.share": TagInfo(
        "input sharing",
        "owner o sets x_{o+2} = 0, draws x_o from its key with P_{o-1} (which derives the "
        "same x_o) and sends x_{o+1} = x - x_o to P_{o+1}",
        "x - x_o, where x_o comes from a key the receiver does not hold"),
    "rep3.share.shape": TagInfo(
        "input shape",
        "owner o tells P_{o+2} the shape; P_{o+2} holds (x_{o+2}, x_o) = (0, F(k))",
        "the shape of the input", "shape"),
    "rep3.reveal": TagInfo(
        "reveal",
        "P_i sends its second component x_{i+1} to P_{i-1}; each party adds the three "
        "components x_0 + x_1 + x_2",
        "the component it was missing, so it reconstructs x", "output"),
    "rep3.checked_reveal": TagInfo(
        "checked reveal: the missing component",
        "as reveal: P_{r+1} sends x_{r+2} (its slot 1) to P_r (mpcache/checked.py)",
        "the component it was missing, so it reconstructs x", "output"),
    "rep3.checked_reveal.check": TagInfo(
        "checked reveal: the second holder's copy",
        "the other holder of x_{r+2}, P_{r+2}, sends it too (or its SHA-256); P_r compares "
        "the two copies and complains if they differ",
        "a second copy (or hash) of the component it receives anyway", "output"),
    "rep3.checked_reveal.agree": TagInfo(
        "checked reveal: complaints",
        "every party tells both others whether its comparison failed (1 byte), so all "
        "abort with the same verdict",
        "whether the sender's two copies agreed: part of the checked output (all abort "
        "on it)", "output"),
    "rep3.mul": TagInfo(
        "ring product: re-sharing",
        "each P_i computes z_i = x_i*y_i + x_i*y_{i+1} + x_{i+1}*y_i + alpha_i, where "
        "alpha_i = F(k_i) - F(k_{i-1}) is a zero-sharing (no communication), and sends z_i "
        "to P_{i-1}",
        "z_{i+1}, masked by alpha_{i+1}, which needs key k_{i+1} the receiver does not hold"),
    "rep3.matmul": TagInfo(
        "ring matmul: re-sharing",
        "each P_i computes z_i = X_i@(Y_i + Y_{i+1}) + X_{i+1}@Y_i + alpha_i (local "
        "matmuls, zero-sharing alpha from the keys) and sends z_i to P_{i-1}: the cost is "
        "the OUTPUT size",
        "z_{i+1}, masked by alpha_{i+1} (key k_{i+1}, not held by the receiver)"),
    "rep3.*.deal": TagInfo(
        "truncation mask (dealt by P2)",
        "P2 derives the mask r = F(k_2) + F(k_1) (a half from each key it holds), and "
        "deals [r >> f] and [msb(r)]: P0's parts come from the P0-P2 key, P1's parts "
        "(s - s0, m - m0) are sent",
        "s - s0 and m - m0, masked by s0, m0 from the P0-P2 key P1 does not hold",
        "dealer"),
    "rep3.mul_trunc.open": TagInfo(
        "fused product + masked opening c = x*y + 2^62 + r",
        "every P_i computes its 3-additive product part z_i (cross terms + zero-sharing); "
        "P2 sends z_2 to P0 and P1; P0 sends z_0 + 2^62 + r_a, P1 sends z_1 + r_b "
        "(r_a from the P0-P2 key, r_b from the P1-P2 key); P0, P1 add everything: "
        "c = x*y + 2^62 + r",
        "from P2: z_2, masked by its zero-share alpha_2 (needs the key the receiver lacks); "
        "from the other opener: a value masked by its half of r; so c is uniform"),
    "rep3.matmul_trunc.open": TagInfo(
        "fused matmul + masked opening c = X@Y + 2^62 + r",
        "as for mul_trunc, with local matmuls: P2 sends Z_2 to P0 and P1, P0 and P1 "
        "exchange their masked parts and add up c",
        "masked values only: c = X@Y + 2^62 + r with r unknown to each opener"),
    "rep3.trunc.open": TagInfo(
        "masked opening c = x + 2^62 + r",
        "P0 sends x_0 + 2^62 + r_a to P1, P1 sends x_2 + r_b to P0 (both know x_1); each "
        "adds c = x + 2^62 + r",
        "a value masked by the sender's half of r, which the receiver does not hold"),
    "rep3.*.reshare": TagInfo(
        "back to replicated form",
        "from c, P0 and P1 compute additive shares yA + yB = x >> f (the wrap bit is "
        "(1 - msb(c)) * [msb(r)]); y0 = F(k_2); P0 sends y1 = yA - y0 - rho to P1 and P1 "
        "sends y2 = yB + rho to P2, rho = F(k_0)",
        "P1 gets y1, masked by y0 (key k_2, not P1's); P2 gets y2, masked by rho (key "
        "k_0, not P2's)"),
    # -- add2 ---------------------------------------------------------------------------------
    "add2.share.shape": TagInfo(
        "input sharing (only the shape moves)",
        "owner o keeps x - r, the other data party derives r from the P0-P1 key; the "
        "dealer P2 only learns the shape",
        "the shape of the input", "shape"),
    "add2.reveal": TagInfo(
        "reveal",
        "P0 and P1 send their additive shares to every party that must learn x; when the "
        "dealer P2 is one of them, P0 sends x0 + s and P1 x1 - s (s from the P0-P1 key): "
        "P2 knows the triples inside raw shares and would learn more than x",
        "the other half, so it reconstructs x = x0 + x1 (and nothing else)", "output"),
    "add2.triple": TagInfo(
        "Beaver triple (dealt by P2)",
        "P2 draws a0, b0, c0 from the P0-P2 key and a1, b1 from the P1-P2 key, and sends "
        "c1 = op(a0 + a1, b0 + b1) - c0 to P1 (P0 derives its parts itself)",
        "c1, masked by c0 from the P0-P2 key P1 does not hold", "dealer"),
    "add2.mul": TagInfo(
        "Beaver product: open e = x - a, f = y - b",
        "P_i sends e_i = x_i - a_i and f_i = y_i - b_i; then z_i = c_i + e*b_i + a_i*f "
        "(+ e*f at P0), no more communication",
        "e_j, f_j, masked by the dealer's a_j, b_j (from a key the receiver lacks)"),
    "add2.matmul": TagInfo(
        "matrix triple: open E = X - A, F = Y - B",
        "P_i sends E_i = X_i - A_i and F_i = Y_i - B_i; then Z_i = C_i + E@B_i + A_i@F "
        "(+ E@F at P0): the cost is the INPUT sizes",
        "E_j, F_j, masked by dealer matrices A_j, B_j (from a key the receiver lacks)"),
    "add2.*.deal": TagInfo(
        "truncation mask (dealt by P2)",
        "P2 derives r = F(k_2) + F(k_1) and deals [r >> f], [msb(r)]: P0's parts from the "
        "P0-P2 key, P1's parts sent",
        "s - s0 and m - m0, masked by s0, m0 from the P0-P2 key P1 does not hold",
        "dealer"),
    "add2.*.open": TagInfo(
        "masked opening c = x + 2^62 + r",
        "P0 sends x_0 + 2^62 + r_a, P1 sends x_1 + r_b; both add c and compute their "
        "additive share of x >> f locally (1 round in add2)",
        "a value masked by the sender's half of r, which the receiver does not hold"),
    "add2.persist.open": TagInfo(
        "persistent operand (weight, KV-cache prefix): open W - B once",
        "each data party sends W_i - B_i for a dealer mask B used with this weight only",
        "W_j - B_j, masked by B_j (from a key the receiver lacks)"),
    "add2.ptriple": TagInfo(
        "per-product triple for a persistent weight (dealt by P2)",
        "P2 sends C1 = A@B - C0 to P1 for a fresh left mask A",
        "C1, masked by C0 from the P0-P2 key", "dealer"),
    "add2.pmatmul": TagInfo(
        "persistent-operand matmul: open E = X - A only",
        "P_i sends E_i = X_i - A_i (plus W_i - b_i for elements not persisted, e.g. KV rows "
        "appended after prefill); Z_i = C_i + E@B_i + A_i@F (+ E@F at P0)",
        "E_j, masked by the fresh dealer mask A_j (and W_j - b_j by a fresh b_j)"),
    # -- boolean sharing (protocols/boolean.py) ---------------------------------------------
    "rep3.bshare": TagInfo(
        "boolean (XOR) input sharing",
        "owner o draws b_o from its key with P_{o-1} and sends b_{o+1} = b ^ b_o to P_{o+1}",
        "b ^ b_o, where b_o comes from a key the receiver does not hold"),
    "rep3.bshare.shape": TagInfo("boolean input shape", "owner o tells P_{o+2} the shape",
                                 "the shape of the input", "shape"),
    "add2.bshare.shape": TagInfo("boolean input sharing (only the shape moves)",
                                 "owner keeps b ^ r, the other data party derives r from the "
                                 "P0-P1 key", "the shape of the input", "shape"),
    "rep3.and": TagInfo(
        "AND of XOR-shared words (ABY3)",
        "each P_i computes z_i = x_i&y_i ^ x_i&y_{i+1} ^ x_{i+1}&y_i ^ alpha_i (alpha: an "
        "XOR zero-sharing from the keys) and sends z_i to P_{i-1}",
        "z_{i+1}, masked by alpha_{i+1} (key k_{i+1}, not held by the receiver)"),
    "add2.btriple": TagInfo(
        "boolean Beaver triple (dealt by P2)",
        "P2 sends c1 = (a0 ^ a1) & (b0 ^ b1) ^ c0 to P1 (everything else from the keys)",
        "c1, masked by c0 from the P0-P2 key", "dealer"),
    "add2.and": TagInfo(
        "AND with a boolean Beaver triple: open e = x ^ a, f = y ^ b",
        "P_i sends x_i ^ a_i and y_i ^ b_i; z = c ^ e&b ^ a&f (^ e&f at P0), locally",
        "x_j ^ a_j, y_j ^ b_j, masked by dealer bits the receiver lacks"),
    "*.breveal": TagInfo("reveal of XOR-shared words",
                         "each party sends the XOR component the receiver is missing",
                         "the missing component, so it reconstructs the word", "output"),
    # -- the helper-party bit engine (boolean.Pair; add2: P0, P1 + dealer P2; rep3: P1, P2
    #    + helper P0) and the comparison protocols (compare.py, conversions.py) ----------
    "rep3.from_pair": TagInfo(
        "back to replicated form (from the bit engine's 2-of-2 between P1 and P2)",
        "x2 = F(k_1) and rho = F(k_1) (P1-P2 key); P1 sends x1 = yA - x2 + rho, P2 sends "
        "x0 = yB - rho, both to P0",
        "x0 and x1, whose sum x - x2 is masked by x2 from the P1-P2 key P0 does not hold"),
    "rep3.bfrom_pair": TagInfo(
        "back to replicated XOR form (from the bit engine's 2-of-2)",
        "as from_pair with XOR: P1 sends y_A ^ x2 ^ rho, P2 sends y_B ^ rho to P0",
        "words masked by x2, rho from the P1-P2 key P0 does not hold"),
    "*.gen": TagInfo(
        "carry chain, generate bits g = u_A & u_B (private AND)",
        "the comparison works on the bits of a 2-of-2 sharing d = u_A + u_B (the difference "
        "a - b): the carry of u_A + u_B starts with g_j = u_A[j] & u_B[j]; each data party "
        "opens its OWN bits masked by dealer bits (bits travel packed, 8 per byte)",
        "u_j ^ a_j: the other party's bits masked by dealer bits it does not know"),
    "pair.open": TagInfo(
        "masked opening in the bit engine (x ^ a, x - alpha)",
        "the two data parties open their bits / ring values masked by dealer randomness",
        "masked values: the masks are the dealer's and unknown to the receiver"),
    "*.open": TagInfo(
        "masked opening (comparison digits: c = d + rho)",
        "the data parties open the difference d masked by a dealer mask rho (c = d + rho "
        "mod 2^nbits, each half of rho from a key with the dealer), then read their XOR "
        "shares of the dealt table row of rho's digits at the public digits of c: "
        "([c_j < rho_j], [c_j == rho_j]) per w-bit digit; a carry tree combines them",
        "c = d + rho: uniform, because rho is uniform and each party knows only one half"),
    "*.lut": TagInfo(
        "carry chain leaves: one-time truth tables on w-bit digits",
        "per w-bit digit, (generate, propagate) of u_A + u_B is read from a truth table the "
        "dealer permuted by random (r, s) and XOR-shared; A opens x ^ r, B opens y ^ s "
        "(w bits each), then each reads its share of the table entry",
        "x ^ r (or y ^ s): the other party's digit masked by dealer bits it does not know"),
    "*.tree": TagInfo(
        "carry chain, one level of the parallel-prefix (Kogge-Stone) tree",
        "(G, P) of neighbouring blocks are combined: G = G_hi ^ P_hi & G_lo, P = P_hi & "
        "P_lo, AND gates with dealer bit triples, the shared left operand opened once "
        "(x ^ a, y ^ b); one level per round, ceil(log2(leaves)) levels",
        "x ^ a and y ^ b for dealer bits a, b the receiver does not know"),
    "*.b2a": TagInfo(
        "bit to ring (B2A): open e = c ^ r",
        "the dealer deals a random bit r as XOR bits and as ring shares; the data parties "
        "open e = c ^ r (1 bit each) and set c = e + (1 - 2e) [r] locally",
        "e = c ^ r, a uniform bit (r is the dealer's)"),
    "approx.topbit": TagInfo(
        "top-bit normalisation: thermometer bits [x < 2^i] to ring, last carry level fused",
        "x was compared with every power of two of the window in one batch; the last carry "
        "level and the bit-to-ring conversion share one dealt 8-entry table, opened as "
        "three masked bits; the one-hot of the leading one is t_(i+1) - t_i (local)",
        "three uniform bits per comparison (the dealer's table masks them)"),
    "*.mux": TagInfo(
        "bit injection: c * x for a secret bit c and a ring value x, in one round",
        "open e = c ^ r and f = x - alpha together (r, alpha, [r alpha] dealt); then "
        "c x = e x + (1 - 2e)(f [r] + [r alpha]) locally",
        "e = c ^ r (uniform bit) and f = x - alpha (uniform ring element)"),
    "approx.max": TagInfo(
        "max tree: keep the larger of each pair (bit injection w = a + [a < b](b - a))",
        "open e = c ^ r and f = (b - a) - alpha for dealt r, alpha; the winner is local",
        "a uniform bit and a uniform ring element"),
    # -- one-hot, top-k, gather (protocols/select.py) -----------------------------------
    "rep3.onehot.in": TagInfo(
        "random one-hot preprocessing: P0 shares onehot(r_a)",
        "P0 (random r_a) sends onehot(r_a) - x0 to P1, x0 from the P0-P2 key",
        "a one-hot masked by x0 from a key P1 does not hold", "dealer"),
    "rep3.onehot.r": TagInfo(
        "random one-hot preprocessing: P0's rotation r_a, masked",
        "P0 sends r_a - t to P2, t from the P0-P1 key",
        "r_a - t, masked by t from a key P2 does not hold", "dealer"),
    "rep3.onehot.back": TagInfo(
        "random one-hot preprocessing: P1, P2 rotate by r_b and re-share to P0",
        "P1 and P2 rotate their 2-of-2 one-hot by their common r_b and send the "
        "re-sharing to P0 (as from_pair): nobody knows r = r_a + r_b",
        "values masked by the P1-P2 key P0 does not hold", "dealer"),
    "add2.onehot": TagInfo(
        "random one-hot preprocessing (dealt by P2)",
        "P2 sends P1 its shares of onehot(r) and of r (P0's from the P0-P2 key)",
        "shares masked by values from the P0-P2 key", "dealer"),
    "onehot.open": TagInfo(
        "one-hot of a secret index: open e = idx - r mod N",
        "the data parties open e = idx - r (r: the random one-hot's index, unknown to "
        "everyone) and rotate their shares of onehot(r) by e: onehot(idx), no comparison; "
        "rep3's helper P0 also needs e: A sends its half + z, B its half - z (z from the "
        "A-B key), so P0 cannot unmask B's half with the r-share it dealt",
        "e = idx - r mod N, uniform because r is uniform and unknown to each party"),
    "topk.shuffle*.ad": TagInfo(
        "secret shuffle: dealer's permuted masks (to B)",
        "the dealer knows two of the three permutation parts and sends B the masks "
        "permuted by its part",
        "masks permuted by a permutation B does not know", "dealer"),
    "topk.shuffle*.bd": TagInfo(
        "secret shuffle: dealer's permuted masks (to A)",
        "as .ad, towards A", "masks permuted by a permutation A does not know", "dealer"),
    "topk.shuffle*.b2a": TagInfo(
        "secret shuffle: B hands its masked, permuted share to A",
        "B sends X - m_B (m_B a mask from its key with the dealer)",
        "X - m_B, masked by m_B which A does not hold"),
    "topk.shuffle*.a2b": TagInfo(
        "secret shuffle: A hands its masked, permuted share to B",
        "A sends X - m_A", "X - m_A, masked by m_A which B does not hold"),
    "topk.*.reveal": TagInfo(
        "revealed comparisons of SHUFFLED keys (multi-pivot selection / final sort)",
        "after a secret uniform shuffle, the candidates are compared with the pivots and the "
        "outcome bits are opened to all parties so they can follow the same control flow; "
        "A and B send their bit shares XOR the same bits from the A-B key, so the dealer "
        "gets the outcome and not a raw share (whose dealt randomness it knows)",
        "the outcomes only relate positions of a secret random permutation (keys are made "
        "distinct), so they are simulatable without the data", "pattern"),
    # -- generic: dealer messages of the bit engine (any gate tag + ".deal") ------------------
    "*.deal": TagInfo(
        "correlated randomness for the gates (dealt)",
        "the dealer D (add2: P2; rep3's bit engine: P0) derives everything A needs from the "
        "A-D key and everything B needs from the B-D key, except the one correlated value "
        "per gate, which it sends to B (offline: data-independent)",
        "the correlated part, masked by values from the A-D key B does not hold", "dealer"),
}

UNKNOWN = TagInfo("(not in the tag table)", "see the protocol module's docstring",
                  "not documented in mpcache/apps/explain.py's TAGS table: check the protocol's "
                  "docs and run the view audit (mpcache.testing)", "?")


def lookup(tag: str) -> TagInfo:
    """The explanation of a message tag: the exact entry, else the most specific matching
    pattern (the one with the most literal characters)."""
    if tag in TAGS:
        return TAGS[tag]
    hits = [pat for pat in TAGS if "*" in pat and fnmatch.fnmatchcase(tag, pat)]
    if not hits:
        return UNKNOWN
    return TAGS[max(hits, key=lambda p: len(p.replace("*", "")))]


# -- ops that can be explained --------------------------------------------------------------------
@dataclass
class OpSpec:
    doc: str
    default_shape: tuple
    inputs: callable            # shape -> list of (name, shape, owner, integer, lo, hi)
    run: callable               # (party, *secrets) -> secret result (or plaintext via reveal)
    reference: callable         # (*plain inputs) -> expected output
    cost: callable | None = None   # (protocol, shape) -> costs.cost(...) dict
    atol: float = 1e-3
    needs: tuple = ()           # SecretTensor attributes / functions the op needs
    prep: callable = None       # (party, *secrets) -> secrets, run in scope "input"
    notes: list = field(default_factory=list)


def _n(shape):
    return int(np.prod(shape))


def _c(op, **kw):
    def f(protocol, shape):
        from ..mpc.costs import cost
        return cost(protocol, op, **{k: v(shape) for k, v in kw.items()})
    return f


def _cmp(op):
    def f(protocol, shape):
        from ..mpc.costs import cmp_cost
        return cmp_cost(op, _n(shape), protocol)
    return f


def _mm_shapes(shape):
    if len(shape) != 3:
        raise ValueError("matmul takes --shape MxKxQ (X is M x K, Y is K x Q)")
    m, k, q = shape
    return (m, k), (k, q)


def _ops() -> dict:
    ops = {
        "share": OpSpec(
            "secret-share an input held by P0", (4,),
            lambda s: [("x", s, 0, False, -8, 8)],
            None, lambda x: x, _c("share", n=_n, ndim=len)),
        "reveal": OpSpec(
            "open a secret to every party", (4,),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x, lambda x: x, _c("reveal", n=_n)),
        "mul": OpSpec(
            "fixed-point product x * y (product + exact truncation)", (4,),
            lambda s: [("x", s, 0, False, -8, 8), ("y", s, 1, False, -8, 8)],
            lambda p, x, y: x * y, lambda x, y: x * y, _c("mul_fixed", n=_n)),
        "mul_ring": OpSpec(
            "ring (integer) product x * y: no truncation", (4,),
            lambda s: [("x", s, 0, True, -100, 100), ("y", s, 1, True, -100, 100)],
            lambda p, x, y: x * y, lambda x, y: x * y, _c("mul_ring", n=_n), atol=0),
        "matmul": OpSpec(
            "fixed-point matmul X @ Y (matmul + exact truncation)", (2, 3, 2),
            lambda s: [("X", _mm_shapes(s)[0], 0, False, -4, 4),
                       ("Y", _mm_shapes(s)[1], 1, False, -4, 4)],
            lambda p, x, y: x @ y, lambda x, y: x @ y,
            _c("matmul_fixed", m=lambda s: s[0], k=lambda s: s[1], q=lambda s: s[2])),
        "matmul_ring": OpSpec(
            "ring (integer) matmul X @ Y", (2, 3, 2),
            lambda s: [("X", _mm_shapes(s)[0], 0, True, -20, 20),
                       ("Y", _mm_shapes(s)[1], 1, True, -20, 20)],
            lambda p, x, y: x @ y, lambda x, y: x @ y,
            _c("matmul_ring", m=lambda s: s[0], k=lambda s: s[1], q=lambda s: s[2]), atol=0),
        "trunc": OpSpec(
            "x * 0.5: a public real costs one exact truncation", (4,),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x * 0.5, lambda x: x * 0.5, _c("trunc", n=_n)),
        "lt": OpSpec(
            "comparison x < y (a secret bit per element)", (4,),
            lambda s: [("x", s, 0, False, -8, 8), ("y", s, 1, False, -8, 8)],
            lambda p, x, y: x < y, lambda x, y: (x < y).astype(np.int64), _cmp("msb"),
            atol=0, needs=("__lt__",)),
        "relu": OpSpec(
            "ReLU max(x, 0)", (4,), lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.relu(), lambda x: np.maximum(x, 0), _cmp("relu"), needs=("relu",)),
        "eq": OpSpec(
            "equality x == y (a secret bit per element)", (4,),
            lambda s: [("x", s, 0, True, -2, 2), ("y", s, 1, True, -2, 2)],
            lambda p, x, y: x.eq(y), lambda x, y: (x == y).astype(np.int64), None, atol=0,
            needs=("eq",)),
        "rsqrt": OpSpec(
            "1 / sqrt(x)", (4,), lambda s: [("x", s, 0, False, 0.5, 8)],
            lambda p, x: x.rsqrt(), lambda x: 1 / np.sqrt(x), None, atol=0.01,
            needs=("rsqrt",)),
        "gelu": OpSpec(
            "GELU (piecewise polynomial)", (4,), lambda s: [("x", s, 0, False, -4, 4)],
            lambda p, x: x.gelu(),
            lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
            None, atol=0.02, needs=("gelu",)),
        "silu": OpSpec(
            "SiLU x * sigmoid(x) (piecewise polynomial)", (4,),
            lambda s: [("x", s, 0, False, -4, 4)],
            lambda p, x: x.silu(), lambda x: x / (1 + np.exp(-x)), None, atol=0.02,
            needs=("silu",)),
        "exp": OpSpec(
            "exp(x)", (4,), lambda s: [("x", s, 0, False, -6, 2)],
            lambda p, x: x.exp(), np.exp, None, atol=0.05, needs=("exp",)),
        "reciprocal": OpSpec(
            "1 / x", (4,), lambda s: [("x", s, 0, False, 0.5, 8)],
            lambda p, x: x.reciprocal(), lambda x: 1 / x, None, atol=0.01,
            needs=("reciprocal",)),
        "max": OpSpec(
            "maximum along the last axis (tree of comparisons)", (1, 8),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.max(axis=-1), lambda x: x.max(axis=-1), None, needs=("max",)),
        "argmax": OpSpec(
            "one-hot argmax along the last axis", (1, 8),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.argmax(axis=-1),
            lambda x: (x == x.max(axis=-1, keepdims=True)).astype(np.int64), None, atol=0,
            needs=("argmax",)),
        "gather": OpSpec(
            "gather = one-hot @ X: rows of X picked by a secret one-hot (here the argmax of "
            "secret scores, computed with the inputs)", (8, 4),
            lambda s: [("scores", (1, s[0]), 0, False, -8, 8), ("X", s, 1, False, -8, 8)],
            lambda p, oh, x: oh @ x,
            lambda sc, x: x[np.argmax(sc, axis=-1)], None, needs=("argmax",),
            prep=lambda p, sc, x: (sc.argmax(axis=-1), x)),
        "softmax": OpSpec(
            "softmax along the last axis (max, exp, sum, reciprocal)", (1, 8),
            lambda s: [("x", s, 0, False, -4, 4)],
            lambda p, x: x.softmax(axis=-1),
            lambda x: np.exp(x - x.max(-1, keepdims=True))
            / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True),
            None, atol=0.01, needs=("softmax",)),
        "topk": OpSpec(
            "top-k (k=2) as a one-hot selection matrix [k, C]", (8,),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.top_k(2),
            lambda x: np.eye(x.shape[-1], dtype=np.int64)[np.sort(np.argsort(-x)[:2])],
            None, atol=0, needs=("top_k",)),
    }
    return ops


OPS = _ops()


def available(name: str) -> bool:
    from ..tensor import SecretTensor
    spec = OPS[name]
    return all(hasattr(SecretTensor, a) and (a != "__lt__" or SecretTensor.__lt__
                                             is not object.__lt__) for a in spec.needs)


def parse_shape(text: str | None) -> tuple | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.lower().replace(",", "x").split("x") if s)
    except ValueError:
        raise ValueError(f"bad --shape {text!r}: use e.g. 4, 2x3, 2x3x4") from None


# -- running and narrating ------------------------------------------------------------------------
@dataclass
class Explained:
    op: str
    protocol: str
    shape: tuple
    inputs: list
    output: object
    expected: object
    result: object              # RunResult (traced)
    text: str


def run_traced(op: str, protocol: str, shape=None, seed: int = 0, values: bool = False):
    """Run ``op`` on random inputs with tracing.  Scopes: "input", "op", "output"."""
    import mpcache
    spec = OPS[op]
    shape = tuple(shape) if shape else spec.default_shape
    rng = np.random.default_rng(seed)
    ins = []
    for name, s, owner, integer, lo, hi in spec.inputs(shape):
        if protocol == "add2" and owner == 2:
            owner = 0
        v = rng.integers(lo, hi + 1, s) if integer else np.round(rng.uniform(lo, hi, s), 3)
        ins.append((name, v, owner, integer))

    def job(p):
        if spec.run is None:                       # the op is sharing itself
            name, v, owner, integer = ins[0]
            with p.scope("op"):
                x = p.share(v if p.id == owner else None, owner=owner, integer=integer)
            with p.scope("output"):
                return p.reveal(x)
        with p.scope("input"):
            xs = [p.share(v if p.id == owner else None, owner=owner, integer=integer)
                  for name, v, owner, integer in ins]
            if spec.prep is not None:
                xs = spec.prep(p, *xs)
        if op == "reveal":
            with p.scope("op"):
                return p.reveal(xs[0])
        with p.scope("op"):
            y = spec.run(p, *xs)
        with p.scope("output"):
            return p.reveal(y)

    sess = mpcache.Session(protocol, seed=seed, trace=True, trace_values=values)
    res = sess.run(job)
    expected = spec.reference(*[v for _, v, _, _ in ins])
    return shape, ins, res, expected


def aligned_rounds(transcripts, scope: str) -> dict:
    """Round of every message sent under ``scope``, counted from the scope's start as if
    every party entered it at the same time (``{(sender, receiver, seq): round}``).

    The Lamport stamps on messages depend on each party's clock when it entered the
    scope (a party that only sent before may lag), so the same logical step can carry
    different stamps; replaying the scope's events with all clocks at 0 aligns them.
    Offline messages get the round before which their receiver used them."""
    inside = lambda s: s == scope or s.startswith(scope + "/")  # noqa: E731
    evs = [[e for e in t.events if inside(e.scope)] for t in transcripts]
    pos = [0] * len(evs)
    clock = [0] * len(evs)
    sent: dict = {}
    out: dict = {}
    progress = True
    while progress:
        progress = False
        for i, lst in enumerate(evs):
            while pos[i] < len(lst):
                e = lst[pos[i]]
                if e.direction == "send":
                    key = (e.party, e.peer, e.seq)
                    st = 0 if e.offline else clock[i] + 1
                    sent[key] = st
                    if not e.offline:
                        out[key] = st
                else:
                    key = (e.peer, e.party, e.seq)
                    if key not in sent:
                        # sent outside the scope (stamp 0 here) or not replayed yet
                        sender_has = any(x.direction == "send" and (x.party, x.peer, x.seq)
                                         == key for x in evs[e.peer])
                        if sender_has:
                            break
                        sent[key] = 0
                    clock[i] = max(clock[i], sent[key])
                    if e.offline:
                        out[key] = clock[i] + 1
                pos[i] += 1
                progress = True
    return out


def _message_groups(transcripts, scope: str):
    """Messages of ``scope`` (nested included) grouped by (aligned round, tag)."""
    inside = lambda s: s == scope or s.startswith(scope + "/")  # noqa: E731
    rounds = aligned_rounds(transcripts, scope)
    groups: dict = {}
    order = []
    for t in transcripts:
        for e in t.events:
            if e.direction != "send" or not inside(e.scope):
                continue
            rnd = rounds.get((e.party, e.peer, e.seq), 1)
            key = (rnd, not e.offline, e.tag)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(e)
    return [(k, groups[k]) for k in sorted(order, key=lambda k: (k[0], k[1], order.index(k)))]


def _values_line(e, n=4):
    if e.values is None:
        return ""
    vs = ", ".join(f"{v:#018x}" if isinstance(v, int) and v > 9999 else str(v)
                   for v in e.values[:n])
    more = ", ..." if len(e.values) > n else ""
    return f"  values [{vs}{more}]"


def narrate(transcripts, scope: str, protocol: str, full_repeats: bool = False) -> list:
    """Lines narrating every message sent under ``scope``, round by round.  A tag seen
    before is printed on one line pointing back to its first explanation (unless
    ``full_repeats``); a change of sub-scope (e.g. ``op/max``) gets a header."""
    lines = []
    groups = _message_groups(transcripts, scope)
    if not groups:
        lines.append("    (no communication: every party computes locally)")
        return lines
    first_step: dict = {}
    cur_sub = None
    for step, ((rnd, online, tag), evs) in enumerate(groups, 1):
        sub = evs[0].scope[len(scope) + 1:] if evs[0].scope != scope else ""
        if sub != cur_sub and (sub or cur_sub):
            lines.append(f"  -- in scope {scope}/{sub}" if sub else f"  -- back in {scope}")
        cur_sub = sub
        info = lookup(tag)
        when = f"round {rnd}" if online else f"offline, used in round {rnd}"
        per_party: dict = {}
        for e in evs:
            per_party[e.party] = per_party.get(e.party, 0) + e.nbytes
        msgs = sorted(evs, key=lambda e: (e.party, e.peer))
        if tag in first_step and not full_repeats:
            links = ", ".join(f"P{e.party}->P{e.peer} {e.nbytes:,} B" for e in msgs)
            lines.append(f"  step {step} ({when}) {tag}: {links}  [as step {first_step[tag]}]")
            continue
        first_step.setdefault(tag, step)
        lines.append(f"  step {step} ({when}) {tag}: {info.title}")
        lines.append(f"    local:  {info.local}")
        for e in msgs:
            lines.append(f"    P{e.party} -> P{e.peer}: {e.nbytes:,} B ({e.elements:,} x "
                         f"{e.dtype}, shape {tuple(e.shape)})" + _values_line(e))
        lines.append(f"    bytes:  {sum(per_party.values()):,} in all; max per party "
                     f"{max(per_party.values()):,}" + (" (offline)" if not online else ""))
        learns = LEARNS.get(info.kind, "(not in the tag table: unexplained)")
        lines.append(f"    learns: {learns}" + (f" -- {info.learns}" if info.learns else ""))
    return lines


def explain(op: str, protocol: str = "rep3", shape=None, seed: int = 0,
            values: bool = False, show_io: bool = False, full: bool = False) -> Explained:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(sorted(OPS))}")
    if not available(op):
        raise NotImplementedError(f"op {op!r} needs SecretTensor.{'/'.join(OPS[op].needs)}, "
                                  "which this build does not have yet")
    spec = OPS[op]
    shape, ins, res, expected = run_traced(op, protocol, shape, seed, values)
    ts = res.transcripts
    out = res.output
    L = [f"mpcache explain {op} --protocol {protocol} --shape "
         f"{'x'.join(map(str, shape))}: {spec.doc}"]
    L.append("=" * len(L[0]))
    if protocol == "rep3":
        L.append("Sharing: replicated 3PC, x = x0 + x1 + x2 over Z_2^64; P_i holds "
                 "(x_i, x_{i+1}).  Keys: k_i shared by P_i and P_{i+1}.")
    else:
        L.append("Sharing: additive 2PC, x = x0 + x1 over Z_2^64 (P0, P1); P2 is a dealer of "
                 "correlated randomness and holds no shares.  Keys: k_0 = P0-P1, k_1 = P1-P2, "
                 "k_2 = P2-P0.")
    fb = 18
    L.append(f"Fixed point: {fb} fractional bits.  Inputs (random, seed {seed}):")
    for name, v, owner, integer in ins:
        L.append(f"  {name} {tuple(np.shape(v))} {'int' if integer else 'fixed'} owned by "
                 f"P{owner}: {_short(v)}")
    if values:
        L.append("!! share values shown: toy data only (trace_values=True) !!")
    L.append("")
    stats = res.stats
    from ..accounting import scope_rounds
    sections = [("input", "inputs: sharing"), ("op", f"the op: {op}"),
                ("output", "output: reveal")]
    for sc, title in sections:
        if sc != "op" and not show_io:
            c = res.scope(sc) if any(sc in s["scopes"] for s in stats) else None
            if c is not None:
                L.append(f"[{title}: {c['bytes_sent']:,} B/party, {c['rounds']} round(s); "
                         f"--io shows the steps]")
            continue
        L.append(f"[{title}]")
        L.extend(narrate(ts, sc, protocol, full_repeats=full))
        L.append("")
    c = res.scope("op")
    subs = {k: v for k, v in res.breakdown_under("op").items()
            if k != "other" or v["bytes_sent"] or v["offline_bytes_sent"]}
    if len(subs) > 1:
        L.append("Breakdown of the op by sub-scope (bytes per party, rounds, offline bytes):")
        for k, v in subs.items():
            L.append(f"  {k:<16} {v['bytes_sent']:>10,} B {v['rounds']:>4} rounds "
                     f"{v['offline_bytes_sent']:>10,} B offline")
    L.append(f"Totals of the op (from the accounting): {c['bytes_sent']:,} B per party "
             f"(max over parties), {c['rounds']} round(s), {c['offline_bytes_sent']:,} B "
             f"offline (dealer/helper).  crit. path rounds: {scope_rounds(stats, 'op')}")
    if spec.cost is not None:
        f = spec.cost(protocol, shape)
        ok = (f["bytes"], f["rounds"], f["offline"]) == (
            c["bytes_sent"], c["rounds"], c["offline_bytes_sent"])
        where = ("costs.py" if getattr(spec.cost, "__qualname__", "").startswith("_c.")
                 else "conversions.cmp_cost")
        L.append(f"Cost formula (mpcache/protocols/{where}): {f['bytes']:,} B, {f['rounds']} "
                 f"round(s), {f['offline']:,} B offline -> "
                 + ("matches the measurement" if ok else "DIFFERS from the measurement"))
    err = float(np.max(np.abs(np.asarray(out, float) - np.asarray(expected, float)))) \
        if np.shape(out) == np.shape(expected) else float("nan")
    L.append(f"Revealed output: {_short(out)}")
    L.append(f"numpy reference: {_short(expected)}  (max abs error {err:.2g})")
    L.append("Only the output is revealed; every other message above is masked "
             "(checked statistically by mpcache.testing.assert_view_indistinguishable).")
    return Explained(op, protocol, shape, ins, out, expected, res, "\n".join(L))


def _short(v, n=8) -> str:
    a = np.asarray(v)
    flat = a.reshape(-1)
    if a.dtype.kind == "f":
        s = ", ".join(f"{x:.4g}" for x in flat[:n])
    else:
        s = ", ".join(str(x) for x in flat[:n])
    return f"[{s}{', ...' if flat.size > n else ''}]" + (f" shape {a.shape}" if a.ndim > 1
                                                        else "")

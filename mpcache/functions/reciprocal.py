"""Non-linear approximations, part 2: reciprocal and rsqrt by top-bit normalisation.

For ``x > 0`` with ring integer ``X = x * 2^fx`` let ``k = floor(log2 X)`` (the top set
bit) and ``a = X / 2^k in [1, 2)``.  Then

    1/x       = 2^(fx - k) / a
    1/sqrt(x) = 2^(fx/2) * 2^(-floor(k/2)) * (1/sqrt 2)^(k mod 2) / sqrt(a)

Steps (each a sub-protocol; nothing is opened):

1. *Top-bit one-hot* (:func:`top_bit_weights`): a thermometer code ``t_i = [X < 2^i]``
   from ONE batched comparison of X with the public thresholds of the window (the compare
   engine's sign protocol, its last level fused with the bit-to-ring round), so
   ``h_i = t_(i+1) - t_i`` is the one-hot of the top bit (for wide tensors, by a public
   rule, :data:`THERMOMETER_MAX`: A2B + prefix-OR + bit injection instead), and *public
   weights per bit position* are summed locally: any function of ``k`` becomes one
   weighted sum, e.g.
   ``D = sum_i h_i 2^(60 - i) = 2^(60 - k)`` and ``R = 2^(43 - k)`` or, for rsqrt,
   ``E = sum_i h_i round(2^(c - i/2))`` (the odd-exponent sqrt 2 is exact in the
   weight).  One re-sharing (rep3: 1 round) for all sums.  (Stop 12: the thermometer
   took a decoding step's reciprocals and rsqrts from 23 to 14 rounds in rep3.)
2. *Normalise*: ``a = trunc(X * D)`` (one fused level; ``X * D = a * 2^60``).
3. *Polynomial* ``p(a) ~ 1/a`` (or ``1/sqrt a``) on [1, 2): relative least-squares fit of
   degree ``degree`` (default 4: 2 levels, rel. error 3e-4 for 1/a, 7e-5 for 1/sqrt a),
   then ``iterations`` Newton steps (2 levels each; default 0).
4. *Un-normalise*: one fused product with ``R`` (or ``E``) and truncation.

Supported inputs: ``0 < x`` in the fixed-point range (``2^kmin <= X < 2^min(61, fx + 26)``
with ``kmin = max(0, fx - 17)``: every positive encodable x at f = 18 bits);
accuracy targets hold for 1/x on [1e-2, 1e4] and 1/sqrt on [1e-3, 1e4] (relative error
<= 1e-3, measured ~3e-4 / 1e-4 with the defaults; tiny x carry few significant bits in
fixed point, which then dominates).  ``x <= 0`` is outside the domain: the result is
unspecified garbage (no error is raised: checking would cost a comparison).

What a party learns: nothing beyond the comparison and multiplication sub-protocols,
whose messages are uniformly masked.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..mpc.compare_core import msb_bits, sign_to_ring
from ..mpc.costs import cmp_cost
from ..mpc.pair import pair_of, to_bits
from ..tensor import SecretTensor
from .compare import to_pair
from .convert import a2b
from .poly import (Dot, PolyPlan, _choose_frac, add_const, fit_poly, poly_eval_many,
                   run_level, scale_pow2, to_frac)

__all__ = ["reciprocal", "rsqrt", "top_bit_weights", "topbit_cost", "THERMOMETER_MAX"]


# ---------------------------------------------------------------------------------------
# top-bit one-hot -> arithmetic powers of two
# ---------------------------------------------------------------------------------------
#: Public rule for the top-bit one-hot: the thermometer (one batched comparison with each
#: threshold: 4-5 rounds) while it compares at most this many (value, threshold) pairs --
#: decoding's norms (1 row x 45) and softmax reciprocals (rows x ~13); beyond, A2B +
#: prefix-OR (about 9 more rounds in rep3, but one A2B per value: for 1024 values 0.24 MB
#: and 9.5 ms against 0.69 MB and 46 ms).
THERMOMETER_MAX = 2048


#: A promised window's thermometer (``top_bit_weights(promise=True)``) compares coarsely:
#: X within 2^-THERMO_REL_BITS (relative, at the smallest threshold) below a threshold may
#: count as above it -- the guess then comes from the next piece, just outside its fit.
THERMO_REL_BITS = 8


def thermometer_bits(nbits: int, lo_bit: int, promise: bool) -> tuple:
    """(comparison width, dropped bits) of the thermometer's ``X - tau`` on a window
    [lo_bit, nbits): 64 and 0 by default; with ``promise`` (X < 2^nbits is promised)
    ``nbits + 1`` bits, coarse below 2^(lo_bit - THERMO_REL_BITS)."""
    if not promise:
        return 64, 0
    width = min(64, nbits + 1)
    return width, max(0, min(lo_bit - THERMO_REL_BITS, width - 2))


def top_bit_weights(x, weights, nbits: int, lo_bit: int = 0, method: str | None = None,
                    sub: int = 1, promise: bool = False):
    """``[sum_i h_i * w[i] for w in weights]`` as arithmetic ring integers (frac 0), where
    ``h`` is the one-hot of the top set bit of ``X`` (x's ring value) among bit positions
    ``lo_bit .. nbits-1`` and each ``w`` is a public integer weight per position (indexed
    by the absolute position).

    ``method="thermometer"``: ONE batched comparison of X with every public threshold,
    ``t_i = [X < 2^i]`` for i = lo_bit .. nbits (``compare_core.msb_bits`` on X - 2^i, its
    last tree level fused with the bit-to-ring round, ``sign_to_ring``); ``h_i = t_(i+1) -
    t_i`` is linear.  Rounds do not grow with the window (4 + 1 for up to 2048
    comparisons, 5 + 1 beyond); bytes do, ~10-13 per threshold and value.
    ``method="a2b"``: A2B (``convert.a2b``), prefix-OR from the top on packed words
    (``m |= m >> s``: ceil(log2 window) AND rounds, bits >= nbits are promised zero),
    ``h = m ^ (m >> 1)`` (local), bit injection of the window's bits (``Pair.b2a``).
    Default (None): the thermometer up to :data:`THERMOMETER_MAX` comparisons (a public
    rule on public sizes), else A2B.  Either way the weighted sums are local in 2-of-2 form
    and one re-sharing brings them to the protocol's form (rep3: one round; add2: free).
    A top bit outside the window (e.g. x <= 0) gives all-zero sums.
    ``sub`` > 1 (thermometer only): ``sub`` pieces per octave, thresholds
    ``round(2^(i + q/sub))`` for q < sub; the one-hot is over the positions ``j = sub i +
    q`` (X in [tau_j, tau_(j+1))) and each weight array is indexed by j (length sub nbits).
    ``promise`` (thermometer): the caller promises X < 2^nbits (a reciprocal's
    ``x_range``): the comparisons run on :func:`thermometer_bits` -- nbits + 1 bits and
    coarse, relative 2^-8 at the smallest threshold (softmax's row sums: 49 -> 24 tree
    bits, one tree round fewer).
    What a party learns: nothing (masked openings of the sub-protocols only).
    """
    p = x.party
    shape = x.shape
    if method is None:
        method = "thermometer" if x.size * (sub * (nbits - lo_bit) + 1) <= THERMOMETER_MAX \
            else "a2b"
    if method not in ("thermometer", "a2b"):
        raise ValueError(f"top-bit method must be 'thermometer' or 'a2b', got {method!r}")
    if sub != 1 and method != "thermometer":
        raise ValueError("sub-octave top-bit positions need the thermometer")
    with p.scope("topbit"):
        pair = pair_of(p)
        if method == "thermometer":
            h = _onehot_thermometer(x, pair, nbits, lo_bit, sub, promise)  # [window, N]
        else:
            h = _onehot_a2b(x, pair, nbits, lo_bit)
        W = np.stack([np.asarray(wt, dtype=np.uint64)[sub * lo_bit:sub * nbits]
                      for wt in weights])
        sums = _ring_rowsum(W, h)
        out = p.protocol.from_pair(sums.reshape((len(weights),) + shape),
                                   (len(weights),) + shape)
    return [SecretTensor(p, out[:, i], 0) for i in range(len(weights))]


def _thresholds(lo_bit: int, nbits: int, sub: int = 1) -> list:
    """The thermometer's thresholds: round(2^(i + q/sub)) for lo_bit <= i < nbits and
    q < sub (2^i exactly for q = 0), then 2^nbits."""
    return [(1 << i) if q == 0 else int(round(2.0 ** (i + q / sub)))
            for i in range(lo_bit, nbits) for q in range(sub)] + [1 << nbits]


def _onehot_thermometer(x, pair, nbits, lo_bit, sub=1, promise=False):
    _, u = to_pair(x)                                         # flat 2-of-2 ring shares
    thr = np.array(_thresholds(lo_bit, nbits, sub), dtype=np.uint64)
    d = u[None, :] - thr[:, None] if pair.role == "A" else np.broadcast_to(
        u[None, :], (thr.size, u.size))
    width, drop = thermometer_bits(nbits, lo_bit, promise)
    t = sign_to_ring(pair, msb_bits(pair, d.reshape(-1), "topbit.cmp", nbits=width,
                                    last=False, drop=drop),
                     tag="approx.topbit").reshape(thr.size, -1)       # [X < 2^i]
    return t[1:] - t[:-1]


def _onehot_a2b(x, pair, nbits, lo_bit):
    m = a2b(x)
    s = 1
    while s < nbits - lo_bit:
        m = m | (m >> s)
        s *= 2
    h = m ^ (m >> 1)
    w = x.party.protocol.bool_to_pair(h.data).reshape(-1)
    return pair.b2a(to_bits(w, nbits - lo_bit, lo_bit), "topbit.a2b.b2a")


def topbit_cost(n: int, nbits: int, lo_bit: int, n_weights: int, protocol: str,
                sub: int = 1, promise: bool = False) -> dict:
    """Exact cost of :func:`top_bit_weights` by the thermometer on ``n`` values (bytes per
    party, rounds, dealt bytes): one "sign" batch of ``n (sub (nbits - lo_bit) + 1)``
    comparisons (:func:`thermometer_bits` wide), then rep3 re-shares the ``n_weights n``
    sums (8 bytes each, one round)."""
    width, drop = thermometer_bits(nbits, lo_bit, promise)
    c = dict(cmp_cost("sign", n * (sub * (nbits - lo_bit) + 1), protocol, nbits=width,
                      drop=drop))
    if protocol == "rep3":
        c["bytes"] += 8 * n * n_weights
        c["rounds"] += 1
    return c


def _ring_rowsum(W, y):
    """(W @ y) mod 2^64 for uint64 W [S, n] and y [n, N] (numpy's integer matmul wraps)."""
    return np.matmul(W, y.reshape(y.shape[0], -1)).reshape((W.shape[0],) + y.shape[1:])


@functools.lru_cache(maxsize=256)
def _pow2_weights(c: float, nbits: int, half: bool = False):
    """Public weights round(2^(c - i)) (or 2^(c - i/2) with ``half``) for i < nbits, as
    ring integers; weights below 1/2 become 0.  Cached (read-only): every norm and
    softmax of a model asks for the same few tables."""
    out = np.zeros(nbits, dtype=np.uint64)
    for i in range(nbits):
        e = c - (i / 2 if half else i)
        if e >= 0:
            out[i] = np.uint64(int(round(2.0 ** e)) if e < 63 else 0)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=None)
def _fit(kind: str, degree: int, scale: float):
    """Relative least-squares fit of scale/a (or scale/sqrt a) on [1, 2] in t = a - 1.5."""
    if kind == "recip":
        fn = lambda a: scale / a                     # noqa: E731
    else:
        fn = lambda a: scale / np.sqrt(a)            # noqa: E731
    return tuple(fit_poly(fn, 1.0, 2.0, degree, relative=True, var=lambda a: a - 1.5))


def _prod(u, v, G: int):
    """Dot ``u * v`` with v at G extra bits: truncating by ``v.frac + G`` leaves u.frac."""
    return Dot([(u, scale_pow2(v, G).with_frac(v.frac + G))])


def _newton_G(y) -> int:
    """Extra bits of the Newton products for a guess y at _F bits (as the degree-4 guess's
    fixed-point choice: ``_choose_frac`` of its plan)."""
    return _choose_frac(PolyPlan(_fit("recip", 4, 1.0), 0.5).bound() + 2.0, _F).G


def _newton_recip(a, y, G: int, iterations: int):
    """y <- 2y - a y^2 (2 levels per step; the relative error squares)."""
    for _ in range(iterations):
        a_ = to_frac(a, y.frac)
        y2 = run_level([_prod(y, y, G)], y.frac + G)[0]
        ay2 = run_level([_prod(a_, y2, G)], y.frac + G)[0]
        y = y * np.int64(2) - ay2
    return y


def _newton_rsqrt(a, y, G: int, iterations: int):
    """y <- 1.5 y - 0.5 a y^3 (2 levels per step; the result gains one fraction bit)."""
    for _ in range(iterations):
        a_ = to_frac(a, y.frac)
        y2, ay = run_level([_prod(y, y, G), _prod(a_, y, G)], y.frac + G)
        e = run_level([_prod(ay, y2, G)], y.frac + G)[0]               # a y^3
        y = (y * np.int64(3) - e).with_frac(y.frac + 1)
    return y


_F = _F_DEFAULT = 18          # fraction bits of the normalised a in [1, 2)


def _window(fx: int, x_range) -> tuple:
    """(klo, khi): the bit positions that may hold the top bit of X = x 2^fx.

    Default: every positive encodable x (|x| < 2^26), clipped below so that the output
    scaling covers the window (khi - klo <= 61 - _F); ``x_range = (lo, hi)`` is a promise
    that narrows it (fewer thresholds to compare with)."""
    khi = min(60, fx + 25)
    klo = max(0, khi - (61 - _F))
    if x_range is not None:
        lo, hi = float(x_range[0]), float(x_range[1])
        if not 0 < lo <= hi:
            raise ValueError("x_range must be (lo, hi) with 0 < lo <= hi")
        klo = max(klo, math.floor(math.log2(lo * 2.0 ** fx)))
        khi = min(khi, math.floor(math.log2(hi * 2.0 ** fx)))
    return klo, khi


def _normalised(x, extra_weights, window, shift: int = 60 - _F_DEFAULT, extra_dots=None):
    """(a = X / 2^k at _F bits, [weighted sums of the one-hot for extra_weights], [results
    of ``extra_dots(sums)``]).  ``a = trunc(X 2^(shift + _F - k), shift)`` in one level;
    ``extra_dots``: a function of the sums giving more dots truncated by ``shift`` in that
    same level (the folded product of :func:`reciprocal`'s ``times``)."""
    klo, khi = window
    sums = top_bit_weights(x, [_pow2_weights(shift + _F, khi + 1)] + list(extra_weights),
                           khi + 1, klo)
    # X * 2^(shift + _F - k) = a * 2^(shift + _F) < 2^61; one fused truncation to _F bits
    dots = [Dot([(x.with_frac(0), sums[0])])] + (extra_dots(sums[1:]) if extra_dots else [])
    out = run_level(dots, shift)
    return out[0].with_frac(_F), sums[1:], out[1:]




#: Pieces per octave of the decoding-sized reciprocals and rsqrts (the thermometer path):
#: a degree-2 fit per piece, its coefficients selected by the top-bit one-hot (public
#: weights, free) and applied in the normalisation's level, so the guess costs ONE level
#: after it instead of the degree-4 polynomial's two (relative error 1.6e-4 for 1/a and
#: 5e-5 for 1/sqrt a, against 3e-4 and 7e-5); 4x the thresholds (bytes, same rounds).
SUB = 4


#: Pieces per octave of the *linear* guess, and the most (value, threshold) comparisons
#: its thermometer may take: ``y = alpha_j a + beta_j`` per piece (relative error 5.9e-5
#: for 1/a and 2.2e-5 for 1/sqrt a, below the quadratic's 1.6e-4 / 5e-5), computed from
#: X in the normalisation's level itself -- no level of its own (norms and softmax's
#: reciprocal 2 rounds fewer) -- for 8x the quadratic's thresholds (one norm: 1441
#: instead of 181 comparisons, ~11 online and ~520 dealt bytes each; same rounds).
SUB_LINEAR = 32
LINEAR_MAX = 8192


def _pieces(x, window, degree) -> int:
    """The guess by public sizes: SUB_LINEAR (linear pieces), SUB (quadratic pieces) or
    0 (the degree-4 polynomial after the normalisation)."""
    klo, khi = window
    if degree is not None:
        return 0
    if x.size * (SUB_LINEAR * (khi + 1 - klo) + 1) <= LINEAR_MAX:
        return SUB_LINEAR
    if x.size * (SUB * (khi + 1 - klo) + 1) <= THERMOMETER_MAX:
        return SUB
    return 0


def _use_pieces(x, window, degree) -> bool:
    """The piecewise guess: default degree and a thermometer-sized top bit (public sizes)."""
    return _pieces(x, window, degree) != 0


@functools.lru_cache(maxsize=4096)
def _piece_fit(kind: str, lo: float, hi: float, degree: int = 2):
    """(m, c0, c1, c2): relative degree-2 (or 1: c2 = 0) fit of 1/a (1/sqrt a) on
    [lo, hi] in t = a - m."""
    m = 0.5 * (lo + hi)
    fn = (lambda a: 1.0 / a) if kind == "recip" else (lambda a: 1.0 / np.sqrt(a))
    c = fit_poly(fn, lo, hi, degree, relative=True, var=lambda a: a - m, n=64, lawson=20)
    return m, float(c[0]), float(c[1]), float(c[2]) if degree > 1 else 0.0


def _ring_ints(vals) -> np.ndarray:
    """Python ints (any sign) as uint64 ring integers (two's complement)."""
    return np.array([int(v) % (1 << 64) for v in vals], dtype=np.uint64)


@functools.lru_cache(maxsize=64)
def _piece_weights(kind: str, klo: int, khi: int, shift: int, gp: int):
    """Public weights per position j = SUB i + q (i <= khi) of the piecewise guess:
    D = 2^(shift + _F - i) (a = X D >> shift at _F bits, a in [1, 2)), E2 = c2/4
    2^(shift + _F + gp - i) (c2 a / 4 at _F + gp bits, same level), L = (c1 - c2 m)
    2^(_F + gp), C0 = c0 2^(2 _F + gp), M = m 2^_F; the fit on the piece's own interval
    [tau_j, tau_(j+1)) / 2^i (rounded thresholds at small i).  Positions below klo: 0."""
    thr = _thresholds(0, khi + 1, SUB)
    cols = [[0] * (SUB * (khi + 1)) for _ in range(5)]
    fB = _F + gp
    for j in range(SUB * klo, SUB * (khi + 1)):
        i = j // SUB
        lo, hi = thr[j] / 2.0 ** i, thr[j + 1] / 2.0 ** i
        if hi <= lo:
            continue
        m, c0, c1, c2 = _piece_fit(kind, round(lo, 12), round(hi, 12))
        cols[0][j] = 1 << (shift + _F - i)
        cols[1][j] = int(round(c2 / 4 * 2.0 ** (shift + _F + gp - i)))
        cols[2][j] = int(round((c1 - c2 * m) * 2.0 ** fB))
        cols[3][j] = int(round(c0 * 2.0 ** (_F + fB)))
        cols[4][j] = int(round(m * 2.0 ** _F))
    out = tuple(_ring_ints(c) for c in cols)
    for o in out:
        o.flags.writeable = False
    return out


#: The linear guess's truncation: y = trunc(X A, LINEAR_SHIFT) at _F bits, with
#: A = alpha 2^(LINEAR_SHIFT + _F - i): |X A| < 2^60 on every piece, and A keeps 2^(59 -
#: i) >= 2^16 of resolution up to the default window's top (i <= 43).
LINEAR_SHIFT = 59 - _F


@functools.lru_cache(maxsize=64)
def _linear_weights(kind: str, klo: int, khi: int):
    """Public weights per position j = SUB_LINEAR i + q of the linear guess ``y =
    alpha a + beta`` (a = X / 2^i): A = alpha 2^(LINEAR_SHIFT + _F - i), B = beta 2^_F;
    the fit on the piece's own interval [tau_j, tau_(j+1)) / 2^i.  Positions below klo: 0."""
    sub = SUB_LINEAR
    thr = _thresholds(0, khi + 1, sub)
    cols = [[0] * (sub * (khi + 1)) for _ in range(2)]
    for j in range(sub * klo, sub * (khi + 1)):
        i = j // sub
        lo, hi = thr[j] / 2.0 ** i, thr[j + 1] / 2.0 ** i
        if hi <= lo:
            continue
        m, c0, c1, _ = _piece_fit(kind, round(lo, 12), round(hi, 12), 1)
        # the slope rounds to an integer weight: at the window's top (large i) only
        # 2^(59 - i) of resolution; its rounding error d times a is d m (a constant of
        # the piece: moved into beta) plus d (a - m), 50x smaller over a 1/32 octave
        exact = c1 * 2.0 ** (LINEAR_SHIFT + _F - i)
        cols[0][j] = int(round(exact))
        d = (exact - cols[0][j]) * 2.0 ** (i - LINEAR_SHIFT - _F)
        cols[1][j] = int(round((c0 - c1 * m + d * m) * 2.0 ** _F))
    out = tuple(_ring_ints(c) for c in cols)
    for o in out:
        o.flags.writeable = False
    return out


def _per_piece(w, sub: int = SUB) -> np.ndarray:
    """A per-bit weight array repeated for the ``sub`` pieces of each octave."""
    return np.repeat(np.asarray(w, dtype=np.uint64), sub)


def _guess(x, kind, extra_weights, window, shift, extra_dots, degree, promise=False):
    """(a = X / 2^k at _F bits, y ~ 1/a or 1/sqrt a at _F bits, [extra sums], [extra
    dots' results]), by public sizes (:func:`_pieces`).  Linear pieces
    (:data:`SUB_LINEAR`): ONE level for y and the extra dots (a is None).  Quadratic
    pieces (:data:`SUB`): one level for a, c2 a and the extra dots, one for ``y = (a -
    m)(c2 a + c1 - c2 m) + c0``.  Otherwise the normalisation, then the
    degree-``degree`` polynomial (default 4, two levels).
    ``promise``: the window is an ``x_range`` promise (a shorter, coarse thermometer)."""
    sub = _pieces(x, window, degree)
    if not sub:
        a, sums, outs = _normalised(x, extra_weights, window, shift, extra_dots)
        y, _ = _initial_guess(a, kind, 4 if degree is None else degree)
        return a, y, sums, outs
    klo, khi = window
    X = x.with_frac(0)
    if sub == SUB_LINEAR:
        # y = trunc(X A, LINEAR_SHIFT) + B from the one-hot's weighted sums, in the
        # normalisation's rounds: its truncation differs from the extra dots', so the
        # two run as branches of one level (mpcache.branches).  No a: only Newton steps
        # read it, and they take the polynomial path.
        A, B = _linear_weights(kind, klo, khi)
        sums = top_bit_weights(x, [A, B] + [_per_piece(w, sub) for w in extra_weights],
                               khi + 1, klo, "thermometer", sub, promise)
        ydot = [Dot([(X, sums[0])])]
        if extra_dots:
            (y,), outs = x.party.parallel(lambda: run_level(ydot, LINEAR_SHIFT),
                                          lambda: run_level(extra_dots(sums[2:]), shift))
        else:
            (y,), outs = run_level(ydot, LINEAR_SHIFT), []
        return None, y.with_frac(_F) + sums[1].with_frac(_F), sums[2:], outs
    gp = max(0, min(24, 59 - shift - _F))
    D, E2, L, C0, M = _piece_weights(kind, klo, khi, shift, gp)
    sums = top_bit_weights(x, [D, E2, L, C0, M] + [_per_piece(w) for w in extra_weights],
                           khi + 1, klo, "thermometer", SUB, promise)
    dots = [Dot([(X, sums[0])]), Dot([(X, sums[1])])] + \
        (extra_dots(sums[5:]) if extra_dots else [])
    out = run_level(dots, shift)
    fB = _F + gp
    a = out[0].with_frac(_F)
    B = (out[1] * np.int64(4)).with_frac(fB) + sums[2].with_frac(fB)     # c2 a + c1 - c2 m
    t = a - sums[4].with_frac(_F)                                        # a - m
    y = run_level([Dot([(t, B)], sums[3].with_frac(_F + fB))], fB)[0].with_frac(_F)
    return a, y, sums[5:], out[2:]


def _initial_guess(a, kind: str, degree: int):
    """The degree-``degree`` fit of ``kind`` ("recip" / "rsqrt") on the normalised
    ``a in [1, 2)``, evaluated in ``t = a - 1.5`` at a frac chosen for its coefficients;
    returns the guess (frac f) and that fixed-point choice (Newton steps reuse it)."""
    plan = PolyPlan(_fit(kind, int(degree), 1.0), 0.5)
    fxq = _choose_frac(plan.bound() + 2.0, _F)
    t = add_const(a, -1.5)
    y = poly_eval_many([scale_pow2(t, fxq.F - _F).with_frac(fxq.F)], [plan], fx=fxq,
                       out_frac=_F)[0]
    return y, fxq


def reciprocal(x, *, degree: int | None = None, iterations: int = 0,
               out_frac: int | None = None, x_range=None, times=None,
               times_bound: float = 1.0):
    """``1/x`` for secret ``x > 0`` (fixed point, any fraction bits ``x.frac``).

    Top-bit normalisation to ``a in [1, 2)``, a degree-``degree`` polynomial (default
    None: where the top bit takes the thermometer, a degree-2 fit per quarter octave
    whose coefficients ride in the normalisation's level (:data:`SUB`, :func:`_guess`:
    one level instead of two, relative error 1.6e-4); else degree 4, relative error 3e-4;
    degree 8: 3e-7) and ``iterations`` Newton steps (default 0; each squares the relative
    error and costs 2 levels).  Result at ``out_frac`` bits
    (default f; at f = 18 the result's resolution is 2^-18, so 1/x for large x has few
    significant bits: ask ``out_frac=32`` for relative accuracy up to x = 1e4).
    Domain: ``x > 0``; ``x <= 0`` gives unspecified garbage (no error raised).
    ``x_range=(lo, hi)``: a promise ``lo <= x <= hi`` that shrinks the top-bit window
    (e.g. softmax's row sums in [1, n]: ~13 thresholds instead of 45, fewer bytes; the
    rounds do not depend on the window); outside it the result is garbage.
    ``times``: a secret tensor ``t`` (``|t| <= times_bound``, broadcast against x) --
    returns ``t / x`` at ``out_frac`` bits with the product *folded into the
    un-normalisation* (:func:`_times_plan`): ``u = t 2^(c - k)`` is computed in the same
    level as ``a = X 2^-k`` and the result is ``u * p(a)``, one level instead of the two
    of ``reciprocal(x) * t`` (softmax: ``e / sum e``; 2 rounds fewer, one more product
    per element of t).  A window too wide for the fold takes the two levels.
    Cost: top-bit one-hot (thermometer, :func:`topbit_cost`: 4-5 rounds [+1 rep3]; or
    A2B + ceil(log2 window) AND rounds + 1 injection [+1 rep3] for wide tensors) +
    (1 + ceil(log2 degree) + 2 * iterations + 1) truncating levels.
    What a party learns: nothing (see module doc).
    """
    fx = x.frac
    fo = x.party.fxp.frac_bits if out_frac is None else out_frac
    win = _window(fx, x_range)
    plan = None if times is None else _times_plan(fx, times.frac, times_bound, win, fo)
    deg = degree if degree is not None or not iterations else 4
    if plan is not None:
        shift, c, s2 = plan
        a, y, _, (u,) = _guess(
            x, "recip", [_pow2_weights(c, win[1] + 1)], win, shift,
            lambda sums: [Dot([(times.with_frac(0), sums[0].with_frac(shift))])], deg,
            x_range is not None)
        if iterations:
            y = _newton_recip(a, y, _newton_G(y), int(iterations))
        return run_level([Dot([(u.with_frac(0), y.with_frac(s2))])], s2)[0].with_frac(fo)
    if times is not None:
        r = reciprocal(x, degree=degree, iterations=iterations, x_range=x_range)
        return run_level([Dot([(r, times)])], r.frac + times.frac - fo)[0]
    c2 = 61 - _F + win[0]
    shift0 = c2 - fx - fo
    if shift0 + _F < 0:
        raise ValueError(f"reciprocal: out_frac {fo} too large for input frac {fx}")
    a, y, (R,), _ = _guess(x, "recip", [_pow2_weights(c2, win[1] + 1)], win, 60 - _F,
                           None, deg, x_range is not None)
    if iterations:
        y = _newton_recip(a, y, _newton_G(y), int(iterations))
    return run_level([Dot([(y, R)])], y.frac + shift0)[0].with_frac(fo)


def _times_plan(fx: int, ft: int, bound: float, window, fo: int):
    """(shift, c, s2) of ``t / x`` folded into the un-normalisation, or None.

    With X = x 2^fx = a 2^k, T = t 2^ft: level 1 computes ``a = trunc(X 2^(shift+_F-k),
    shift)`` and ``u = trunc(T R, shift)`` with the public power-of-two weights
    ``R = 2^(c - k)``; level 2 ``trunc(u y, s2)`` with ``y = 2^_F / a``:
    ``u y = (t / x) 2^(ft - fx + c - shift + _F)``, so ``s2 = ft - fx + c - shift + _F - fo``.
    Constraints: ``T R < 2^61`` (c - klo <= 61 - ft - log2 bound), ``R >= 1`` (c >= khi),
    ``X 2^(shift+_F-k) < 2^61`` and ``2^(shift+_F-k)`` integral (khi - _F <= shift <= 42),
    ``u y < 2^61`` (shift >= _F), ``s2 >= 0``."""
    klo, khi = window
    c = klo + 61 - ft - max(0, math.ceil(math.log2(bound)))
    shift = max(khi - _F, _F)
    if c < khi or shift > 60 - _F:
        return None
    s2 = ft - fx + c - shift + _F - fo
    if s2 < 0:
        return None
    return shift, c, s2


def rsqrt(x, *, degree: int | None = None, iterations: int = 0,
          out_frac: int | None = None, x_range=None, scale: float = 1.0, times=None,
          times_bound: float = 1.0):
    """``1/sqrt(x)`` for secret ``x > 0`` (fixed point, any fraction bits ``x.frac``).

    Top-bit normalisation to ``a in [1, 2)`` with the un-normalisation weights
    ``2^(c - k/2)`` computed per bit position (the odd-exponent sqrt(2) is exact in the
    public weights), a degree-``degree`` polynomial (default None: the piecewise guess of
    :func:`reciprocal` where the thermometer applies, relative error 5e-5, one level;
    else degree 4, relative error 7e-5, two levels) and
    ``iterations`` Newton steps (default 0; 2 levels each).  Result at ``out_frac`` bits
    (default f).  Domain: ``x > 0``; else unspecified garbage.  ``x_range``: as in
    :func:`reciprocal`.  ``scale`` (public, > 0): returns ``scale / sqrt(x)`` at no cost
    (folded into the public un-normalisation weights; the norms fold their 1/n and
    prescale into it: one truncating level fewer each).
    ``times``: a secret ``t`` (broadcast against x) whose squares are summed in x, the
    promise ``t^2 <= x`` elementwise (a norm's ``t = a x`` over ``x = sum (a x)^2 + eps``)
    -- returns ``t * scale / sqrt(x)`` with the product *folded into the
    un-normalisation* (:func:`_rsqrt_times_plan`): ``u = t 2^(c - k/2)`` in the
    normalisation's level (the promise bounds it whatever k is), then ``u * p(a)``: one
    level instead of the un-normalisation plus a product (rep3 4 -> 2 rounds).
    ``times_bound`` (public B >= 1): the promise is ``t^2 <= B^2 x`` instead (a norm's
    prescaled input times the next linear's weights, ``|(a x) . W_j| <= ||a x|| B`` for
    column norms ``||W_j|| <= B``: the norm folded into that linear, nn.layers); the
    un-normalised u keeps log2(B) fewer fraction bits.
    Cost: as :func:`reciprocal` with the same number of levels.
    What a party learns: nothing (see module doc).
    """
    fx = x.frac
    fo = x.party.fxp.frac_bits if out_frac is None else out_frac
    it = int(iterations)
    win = _window(fx, x_range)
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"rsqrt: scale must be a positive finite number, got {scale}")
    deg = degree if degree is not None or not it else 4
    tb = float(times_bound)
    if not (math.isfinite(tb) and tb >= 1.0):
        raise ValueError(f"rsqrt: times_bound must be a finite number >= 1, got {tb}")
    plan = None if times is None or it else _rsqrt_times_plan(fx, times.frac, scale * tb,
                                                              win, fo)
    if plan is not None:
        shift, c, s2 = plan          # (B only lowered u's fraction bits: fu)
        a, y, _, (u,) = _guess(
            x, "rsqrt", [_pow2_weights(c + math.log2(scale), win[1] + 1, half=True)], win,
            shift, lambda sums: [Dot([(times.with_frac(0), sums[0].with_frac(shift))])], deg,
            x_range is not None)
        return run_level([Dot([(u.with_frac(0), y.with_frac(s2))])], s2)[0].with_frac(fo)
    if times is not None:
        r = rsqrt(x, degree=degree, iterations=iterations, out_frac=out_frac,
                  x_range=x_range, scale=scale)
        return run_level([Dot([(r, times)])], times.frac)[0]
    # weights scale * 2^(c3 - k/2): lower c3 by ceil(log2 scale) so they stay <= 2^c3
    c3 = 61 - _F - it + win[0] // 2 - max(0, math.ceil(math.log2(scale)))
    if (c3 - fx / 2) != int(c3 - fx / 2):
        c3 -= 0.5
    a, y, (E,), _ = _guess(x, "rsqrt", [_pow2_weights(c3 + math.log2(scale), win[1] + 1,
                                                     half=True)], win, 60 - _F, None, deg,
                    x_range is not None)
    if it:
        y = _newton_rsqrt(a, y, _newton_G(y), it)
    shift = y.frac + c3 - fx / 2 - fo
    if shift < 0 or shift != int(shift):
        raise ValueError(f"rsqrt: out_frac {fo} too large for input frac {fx}")
    return run_level([Dot([(y, E)])], int(shift))[0].with_frac(fo)


def _rsqrt_times_plan(fx: int, ft: int, scale: float, window, fo: int):
    """(shift, c, s2) of ``t scale / sqrt(x)`` folded into the un-normalisation, or None.

    With X = x 2^fx = a 2^k, T = t 2^ft and ``t^2 <= x``: level 1 computes ``a =
    trunc(X 2^(shift+_F-k), shift)`` and ``u = trunc(T E, shift)`` with the public weights
    ``E = scale 2^(c - k/2)``, so ``u = t scale 2^(fx/2 - k/2) 2^fu`` (``|u| <= scale
    sqrt 2`` at fu bits, whatever k); level 2 ``trunc(u y, s2)`` with ``y = 2^_F /
    sqrt(a)`` gives the result at fo bits, ``s2 = fu + _F - fo``.  Constraints: ``|T E|
    < scale 2^(fu + shift + 1/2) <= 2^61``, khi - _F <= shift <= 60 - _F (as
    :func:`_times_plan`), ``fo <= fu`` and ``u y < 2^61``; fu at most fo + 12."""
    klo, khi = window
    shift = max(khi - _F, 0)
    if shift > 60 - _F:
        return None
    ls = math.log2(scale)
    fu = min(fo + 12, math.floor(60.5 - ls - shift), math.floor(60 - ls - 0.5 - _F))
    if fu < fo:
        return None
    c = fx / 2 + fu + shift - ft
    if ls + c - klo / 2 >= 62:          # the widest weight must fit the ring
        return None
    return shift, c, fu + _F - fo


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of the top-bit normalisation, per tag (or ``*`` pattern):
#: ``title``; ``local``, what the parties compute for it; ``learns``, why the receiver
#: learns only ``kind`` ("random": masked, the default; "dealer", "shape", "output", "key",
#: "pattern").  ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "approx.topbit": dict(
        title="top-bit normalisation: thermometer bits [x < 2^i] (decoding sizes: "
              "[x < 2^(i + q/4)], quarter octaves) to ring, last carry level fused",
        local="x was compared with every power of two (quarter octave) of the window in "
              "one batch; the "
              "last carry level and the bit-to-ring conversion share one dealt 8-entry "
              "table, opened as three masked bits; the one-hot of the leading one is "
              "t_(i+1) - t_i (local)",
        learns="three uniform bits per comparison (the dealer's table masks them)"),
}

"""Non-linear approximations, part 3: GELU and SiLU by piecewise polynomials (PUMA-style).

PUMA (Dong et al., "PUMA: Secure Inference of LLaMA-7B in Five Minutes", 2023) splits GELU
into pieces (0 / low-degree / higher-degree / x) selected by comparisons.  We use the same
idea with a symmetry that halves the work: both functions are ``0.5 x + E(x)`` with ``E``
*even*, and both tend to ReLU = ``0.5 x + 0.5 |x|`` for large ``|x|``:

    GELU(x) - 0.5 x = 0.5 x erf(x / sqrt 2)        SiLU(x) - 0.5 x = 0.5 x tanh(x / 2)

so with ``c_hi = [x > T]``, ``c_lo = [x < -T]`` (ONE batched sign-bit computation on 2n
values, kept as XOR-shared bits) and ``mid = NOT(c_hi XOR c_lo)``:

    f(x) = c_hi * x + mid * (0.5 x + P(x^2 / T^2))

where ``P`` is a degree-``m`` polynomial in ``s = x^2 / T^2 in [0, 1]`` (an even
polynomial of degree 2m in x), fitted here with numpy least squares (Lawson re-weighting
towards minimax, Chebyshev nodes on [0, T]).  ``s`` costs one level (the 1/T^2 rides in
the product's coefficient, no extra truncation), ``P`` ``ceil(log2 m)`` levels, and the
selection one bit-injection round (``Pair.bitmul``, both products at once; rep3 adds one re-sharing
round).  Out of ``[-T, T]`` the polynomial may wrap; it is multiplied by ``mid = 0`` exactly.

Defaults (max abs error over [-8, 8], fit + tail, before fixed point):

    gelu: T = 3.25, m = 4  (3 levels + select)  ~3e-3
    silu: T = 7.0,  m = 6  (4 levels + select)  ~6.5e-3 (tail: SiLU(-7) = -6.4e-3)

Knobs: ``T`` and ``degree`` (= m) keyword arguments.  Above ``T`` the result is exactly
``x`` (GELU/SiLU minus ReLU is below the error bound there); below ``-T`` exactly 0.
Inputs are any fixed-point values (the comparisons handle the full range).

``bound``: a public B with |x| <= B that the caller guarantees (a decoder's MLP input,
from the weights: ``nn.private.act_bound_exponent``).  The comparisons then run on
``select.bound_bits(B + T)`` bits, and coarse (``select.sign_drop`` with
:data:`ACT_TOL`): the thresholds move in to ``T - t`` (t <= ACT_TOL, 2^-7 for SmolLM2's
2^8) and a value in ``(T - t, T]`` may take either piece -- both are accurate there, the
error bound grows from the tail at T to the tail at T - t (SiLU: 6.38e-3 -> 6.42e-3).
SmolLM2's MLP: 64 -> 17-bit trees, 5 -> 2 comparison rounds.

What a party learns: nothing beyond the comparison/multiplication sub-protocols.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from ..tensor import concatenate
from .poly import (Dot, PolyPlan, _choose_frac, add_const, bits_times, bnot, fit_poly,
                   lincomb, poly_eval_many, run_level, sign_bits, to_frac)
from .select import bound_bits, sign_drop

__all__ = ["gelu", "silu", "tanh", "sigmoid", "even_piecewise", "odd_piecewise", "ACTIVATIONS",
           "SATURATING"]


def _erf(x):
    x = np.asarray(x, dtype=np.float64)
    return np.vectorize(math.erf)(x)


def _gelu_even(x):
    return 0.5 * x * _erf(x / math.sqrt(2.0))


def _silu_even(x):
    return 0.5 * x * np.tanh(0.5 * x)


#: name -> (even part E, default T, default m)
ACTIVATIONS = {
    "gelu": (_gelu_even, 3.25, 4),
    "silu": (_silu_even, 7.0, 6),
}


@functools.lru_cache(maxsize=None)
def _even_fit(name: str, T: float, m: int):
    fn = ACTIVATIONS[name][0]
    return tuple(fit_poly(fn, 0.0, T, m, var=lambda x: (x / T) ** 2))


#: The most a bounded activation's thresholds move in for coarse comparisons (module doc).
ACT_TOL = 2.0 ** -6


def _cmp_bits(x, T: float, bound: float | None = None):
    """(pair, c_hi = [x > T], c_lo = [x < -T]) as XOR-shared bits: one batched sign-bit
    computation on the 2n values ``T - x`` and ``x + T``.  ``bound`` (|x| <= bound):
    ``bound_bits(bound + T)``-bit coarse signs of ``T' - x`` and ``x + T'``, T' = T - t,
    t = 2^drop ring units: exact outside (T - t, T] and [-T, -T + t) (module doc)."""
    n = x.size
    nbits, drop, Tc = 64, 0, T
    if bound is not None:
        nbits = bound_bits(float(bound) + T, x.frac, pairwise=False)
        drop = sign_drop(nbits, x.frac, ACT_TOL)
        Tc = T - 2.0 ** (drop - x.frac) if drop else T
    both = concatenate([add_const(-x, Tc).reshape(n), add_const(x, Tc).reshape(n)], axis=0)
    pair, bits = sign_bits(both, nbits, drop)
    return pair, bits[:n], bits[n:]


def even_piecewise(x, name: str, *, T: float | None = None, degree: int | None = None,
                   bits=None, bound: float | None = None, times=None):
    """``c_hi * x + mid * (0.5 x + P(x^2/T^2))`` for an activation in :data:`ACTIVATIONS`.

    ``bits``: optional precomputed ``(pair, c_hi, c_lo)`` (XOR-shared flat bits from the
    compare engine), e.g. when a caller batches the comparisons of several activations.
    ``bound``: a public bound on |x| (module doc: shorter, coarse comparisons).
    ``times``: a secret ``t`` of x's shape: returns ``f(x) * t`` (SwiGLU's ``silu(g) *
    up``) as ``c_hi * (x t) + (mid * t) * q``: ``x t`` and the signs run beside the
    polynomial (branches, mpcache.branches), the bit products ``mid * t`` and ``c_hi * (x
    t)`` too, so the product with t takes the selection's place: ONE level after q
    instead of the selection's injection (1 round, rep3 + 1) and then a product level
    (SiLU * up: rep3 12 -> 10 rounds, add2 11 -> 10).
    """
    _, T0, m0 = ACTIVATIONS[name]
    T = float(T0 if T is None else T)
    m = int(m0 if degree is None else degree)
    if not (1 <= m <= 16):
        raise ValueError("degree must be in [1, 16]")
    f = x.party.fxp.frac_bits
    coeffs = _even_fit(name, T, m)
    plan = PolyPlan(coeffs, 1.0)
    fx = _choose_frac(plan.bound() + T, f)
    F, G = fx.F, fx.G

    def middle():
        # level 0: s = x^2 / T^2 at F bits (x at f bits; 1/T^2 at G bits in the product)
        xg = lincomb([(1.0 / (T * T), x)], 0.0, x.frac + G)
        s = run_level([Dot([(x, xg)])], x.frac + x.frac + G - F)[0]
        if plan.levels == 0:
            return lincomb([(plan.c[1] if plan.D else 0.0, s), (0.5, x)], plan.c[0], f)
        return poly_eval_many([s], [plan], fx=fx, out_frac=f, extra_lin=[[(0.5, x)]])[0]

    if times is not None:
        if bits is not None:
            raise ValueError("even_piecewise: times= computes its own comparison bits")
        return _times_selected(x, T, bound, times, middle, f)
    if bits is None:      # the signs run in the polynomial's rounds (mpcache.branches)
        (pair, c_hi, c_lo), q = x.party.parallel(lambda: _cmp_bits(x, T, bound), middle)
    else:
        (pair, c_hi, c_lo), q = bits, middle()
    mid = bnot(pair, c_hi ^ c_lo)            # exclusive: mid = NOT(c_hi OR c_lo)
    return bits_times(pair, [c_hi, mid], [x, q], x.shape, f)


def _times_selected(x, T, bound, t, middle, f):
    """``c_hi * (x t) + (mid * t) * q`` (:func:`even_piecewise` with ``times``)."""
    if tuple(t.shape) != tuple(x.shape):
        raise ValueError(f"times must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
    p = x.party

    def gates():
        # signs beside x t (both beside the polynomial), then both bit products in ONE
        # injection round (Pair.bitmul) and one re-sharing
        (pair, c_hi, c_lo), xt = p.parallel(lambda: _cmp_bits(x, T, bound),
                                            lambda: x * t)
        mid = bnot(pair, c_hi ^ c_lo)
        return bits_times(pair, [mid, c_hi], [t, xt.with_frac(t.frac)], x.shape, t.frac,
                          separate=True)

    q, (mt, cx) = p.parallel(middle, gates)
    fr = mt.frac + q.frac
    return run_level([Dot([(mt, q)], to_frac(cx, fr))], fr - f)[0]


def gelu(x, *, T: float | None = None, degree: int | None = None,
         bound: float | None = None):
    """GELU (erf form) of a secret fixed-point tensor; see the module doc for the method.

    Defaults: ``T = 3.25``, ``degree = 4`` (polynomial in x^2/T^2): max abs error about
    3e-3 on any input (GPT-2's tanh-form GELU differs from the erf form by < 5e-4).
    Cost: 1 batched ltz (2n) + 4 levels (3 truncating, 1 ring).  ``bound``: a public
    bound on |x| (module doc: shorter, coarse comparisons).
    """
    return even_piecewise(x, "gelu", T=T, degree=degree, bound=bound)


def silu(x, *, T: float | None = None, degree: int | None = None,
         bound: float | None = None, times=None):
    """SiLU ``x * sigmoid(x)`` of a secret fixed-point tensor (module doc for the method).

    Defaults: ``T = 7``, ``degree = 6``: max abs error about 6.5e-3 (dominated by the
    tail: SiLU(-7) = -6.4e-3 is returned as 0).  Cost: 1 batched ltz (2n) + 5 levels.
    ``bound``: a public bound on |x| (module doc: shorter, coarse comparisons).
    ``times``: returns ``silu(x) * times`` with the product in the selection's place
    (:func:`even_piecewise`).
    """
    return even_piecewise(x, "silu", T=T, degree=degree, bound=bound, times=times)


# ---------------------------------------------------------------------------------------
# saturating odd functions: tanh, sigmoid
# ---------------------------------------------------------------------------------------
def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


#: name -> (function, default T, default degree, value below -T, value above T)
SATURATING = {
    "tanh": (np.tanh, 3.5, 15, -1.0, 1.0),
    "sigmoid": (_sigmoid, 7.0, 15, 0.0, 1.0),
}


@functools.lru_cache(maxsize=None)
def _sat_fit(name: str, T: float, d: int, k: int):
    fn = SATURATING[name][0]
    return tuple(fit_poly(fn, -T, T, d, var=lambda x: x / 2 ** k))


def odd_piecewise(x, name: str, *, T: float | None = None, degree: int | None = None):
    """``[x < -T] lo + [x > T] hi + [|x| <= T] P(x / 2^k)`` for a saturating function in
    :data:`SATURATING`; ``P`` is a degree-``degree`` least-squares fit on [-T, T] in
    ``x / 2^k`` (``2^k >= T``: an exact rescaling), ``ceil(log2 degree)`` levels.
    What a party learns: nothing beyond the comparison/multiplication sub-protocols.
    """
    fn, T0, d0, lo_v, hi_v = SATURATING[name]
    T = float(T0 if T is None else T)
    d = int(d0 if degree is None else degree)
    f = x.party.fxp.frac_bits
    k = max(0, math.ceil(math.log2(T)))
    plan = PolyPlan(_sat_fit(name, T, d, k), T / 2 ** k)
    fx = _choose_frac(plan.bound(), x.frac + k)
    u = x.with_frac(x.frac + k)
    u = u._local(lambda dd: dd * np.uint64(1 << (fx.F - u.frac))).with_frac(fx.F)
    # the signs run in the polynomial's rounds (mpcache.branches)
    P, (pair, c_hi, c_lo) = x.party.parallel(
        lambda: poly_eval_many([u], [plan], fx=fx, out_frac=f)[0], lambda: _cmp_bits(x, T))
    mid = bnot(pair, c_hi ^ c_lo)
    zero = (x * 0).with_frac(f)
    bits, vals = [mid], [P]
    for c, v in ((c_hi, hi_v), (c_lo, lo_v)):
        if v:
            bits.append(c)
            vals.append(zero + float(v))
    return bits_times(pair, bits, vals, x.shape, f)


def tanh(x, *, T: float | None = None, degree: int | None = None):
    """tanh by a degree-15 fit on [-3.5, 3.5] and +-1 outside: max abs error ~1.8e-3
    (tail 1 - tanh 3.5).  Cost: 4 levels + one batched sign-bit (2n) + 1 injection round."""
    return odd_piecewise(x, "tanh", T=T, degree=degree)


def sigmoid(x, *, T: float | None = None, degree: int | None = None):
    """sigmoid by a degree-15 fit on [-7, 7], 0 / 1 outside: max abs error ~9e-4.
    Cost: as :func:`tanh`."""
    return odd_piecewise(x, "sigmoid", T=T, degree=degree)

"""Non-linear approximations, part 1: exp and softmax on the polynomial engine (:mod:`.poly`).

Both protocols (rep3, add2) through one API on :class:`mpcache.tensor.SecretTensor`.
Design notes, fits and measured costs: ``docs/nonlinear-approx.md``.  Siblings:
:mod:`.reciprocal` (reciprocal, rsqrt) and :mod:`.activations` (GELU, SiLU, tanh, sigmoid).

What a party learns: nothing.  Every step is a sub-protocol call of rep3/add2 (products,
truncations) whose messages are uniformly masked, plus the comparison sub-protocols of
``compare.py`` and ``select.py`` (same guarantee); nothing is opened outside ``reveal``.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .poly import (Dot, PolyPlan, _choose_frac, add_const, fit_poly, poly_eval_many,
                   run_level, scale_pow2, sign_parts, sign_times, to_frac)
from .reciprocal import reciprocal
from .select import amax, bound_bits, coarse_drop, sign_drop

__all__ = ["exp", "softmax", "rowmax"]


# ---------------------------------------------------------------------------------------
# exp
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _exp_plan(lo: float, hi: float, degree: int, squarings: int):
    """Fit e^y on [lo, hi] / 2^squarings in t = (y - mid) / 2^k, |t| <= tmax."""
    ylo, yhi = lo / 2 ** squarings, hi / 2 ** squarings
    mid = 0.5 * (ylo + yhi)
    half = 0.5 * (yhi - ylo)
    k = max(0, math.ceil(math.log2(half))) if half > 0 else 0
    tmax = half / 2 ** k
    coeffs = fit_poly(np.exp, ylo, yhi, degree, relative=squarings > 0,
                      var=lambda y: (y - mid) / 2 ** k)
    return mid, k, tmax, tuple(coeffs)


def exp(x, *, lo: float = -14.0, hi: float = 0.0, degree: int = 8, squarings: int = 2,
        clip: bool = True, clip_bound: float | None = None, clip_tol: float | None = None,
        out_frac: int | None = None):
    """Secret ``e^x`` for ``x`` in ``[lo, hi]`` (default ``[-14, 0]``: softmax's range).

    Method: ``e^x = p(x / 2^s)^(2^s)`` with ``p`` a degree-``degree`` least-squares fit of
    ``e^y`` on ``[lo, hi] / 2^s`` (relative error when ``s > 0``), evaluated in
    ``ceil(log2 degree)`` levels, then ``s = squarings`` squarings.  Defaults (8, 2):
    5 levels = 10 rounds, relative error ~6e-6 from the fit.

    ``clip`` (default True): ``x < lo`` gives exactly 0 (the sign of ``x - lo``, its last
    tree level fused with the bit injection into the result: what ``ltz`` costs; e^-14 <
    2^-20 is below the fixed-point resolution anyway).  ``clip_bound``: a public B with
    |x| <= B the caller guarantees (softmax: twice its score bound); the clip's comparison
    then runs on ``select.bound_bits(B - lo)`` bits (one tree round fewer at 32 bits).
    ``clip_tol``: a public t > 0: values in ``[lo - t, lo)`` may escape the clip (the
    polynomial evaluated just below its range) -- a coarse comparison
    (``select.sign_drop``: one tree round fewer on a 32-bit clip when t >= 2^-3 at 18
    fractional bits).
    With ``clip=False`` the caller guarantees ``x >= lo``; below it the result is garbage.
    Above ``hi`` the result is garbage too (not checked): ``exp`` is for ``x <= hi``.  A
    general range works (e.g. ``lo=-8, hi=8``; values up to e^hi must fit the fixed
    point range, hi <= 17), precision degrades with ``hi`` as the fractional bits left
    for intermediates shrink.  ``out_frac``: fractional bits of the result (default f).

    What a party learns: nothing beyond the comparison/multiplication sub-protocols.
    """
    f = x.party.fxp.frac_bits
    out_frac = f if out_frac is None else out_frac
    if hi <= lo:
        raise ValueError("exp needs lo < hi")
    mid, k, tmax, coeffs = _exp_plan(float(lo), float(hi), int(degree), int(squarings))
    plan = PolyPlan(coeffs, tmax)
    bound = max(plan.bound(), math.exp(max(hi, 0.0)) * 1.01)     # largest product value
    # t = (x / 2^s - mid) / 2^k: exact by re-reading the fraction bits
    s = int(squarings)
    t = add_const(x, -mid * 2 ** s).with_frac(x.frac + s + k)
    fx = _choose_frac(bound, t.frac)
    t = to_frac(t, fx.F)
    F, G = fx.F, fx.G
    last = out_frac if s == 0 else F

    def power():
        y = poly_eval_many([t], [plan], fx=fx, out_frac=last)[0]
        for i in range(s):
            fin = i == s - 1
            y = run_level([Dot([(y, scale_pow2(y, G).with_frac(F + G))])],
                          2 * F + G - (out_frac if fin else F))[0]
        return y

    if not clip:
        return power()
    # [x >= lo] * y: the sign's tree runs in the polynomial's rounds (a branch,
    # mpcache.branches: its 4-5 rounds ride in the polynomial's 10); its last tree level
    # is then fused with the bit injection (sign_times: one round fewer than finishing
    # the sign, then injecting it)
    nbits = bound_bits(None if clip_bound is None else clip_bound - lo, x.frac,
                       pairwise=False)
    drop = sign_drop(nbits, x.frac, clip_tol)
    (pair, parts), y = x.party.parallel(
        lambda: sign_parts(add_const(x, -lo), nbits, drop), power)
    y = sign_times(pair, parts, y, negate=True)
    return y


#: Softmax's tolerances on a bounded row (``score_bound``): the row max may be any entry
#: within SOFTMAX_MAX_TOL of the max (coarse comparisons, one round fewer per tree
#: level), and exp's clip may pass values up to SOFTMAX_CLIP_TOL below its range.
SOFTMAX_MAX_TOL = 2.0
SOFTMAX_CLIP_TOL = 0.125


# ---------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------
def rowmax(x, axis: int = -1, bound: float | None = None, tol: float | None = None):
    """Max along ``axis`` with keepdims: ``select.amax`` (the comparison tree: all
    comparisons of a level batched, one re-sharing at the end for rep3), on
    ``select.bound_bits(bound)``-bit comparisons when the caller knows |x| <= bound;
    ``tol``: any entry within tol of the max will do (``amax``).
    What a party learns: nothing."""
    return amax(x, axis=axis, keepdims=True, bound=bound, tol=tol)


def softmax(x, axis: int = -1, *, method: str = "max", bound: float | None = None,
            score_bound: float | None = None, exp_kw: dict | None = None,
            recip_kw: dict | None = None, frac_hi: int | None = None,
            weights=None, weight_bound: float = 1.0):
    """Softmax along ``axis``: ``e^(x - m) / sum e^(x - m)``, one reciprocal per row.

    ``method="max"`` (default): ``m`` = the row max (:func:`rowmax`), so ``x - m <= 0``
    and exp runs on ``[-14, 0]`` with clipping.  Valid for any scores in the fixed-point
    range (masked entries such as -1e4 become exactly 0).  ``score_bound``: a public S
    with |x| <= S that the CALLER guarantees (attention scores: from the weights, see
    ``nn.private.score_bound_exponent``); the row max then compares on
    ``select.bound_bits(S)`` bits: SmolLM2's S = 2^11 gives 32-bit comparisons, one tree
    round fewer per level of the max (5 rounds for 2049 values), one for exp's clip, and
    half the opened bytes.  With the bound the max is also *approximate*: coarse
    comparisons (``select.coarse_drop``, :data:`SOFTMAX_MAX_TOL`) return an entry m
    within ``loss`` (public, <= 2) of the max, one more tree round fewer per level, and
    softmax shifts by ``m + loss`` >= the max (so exp still sees x <= 0, and the row sum
    is at least e^-loss); exp's clip is coarse too (:data:`SOFTMAX_CLIP_TOL`).  Softmax
    does not depend on the shift, so only rounding moves (tested bounds unchanged).
    A score outside the bound can make the max any of the row's values.

    ``method="bounded"``: no max (saves the comparison tree); ``m = bound`` is a public
    upper bound on the scores (``bound`` required).  Valid when every score is
    ``<= bound`` AND each row's max is ``>= bound - 8`` or so: entries below ``bound - 14``
    become 0, and the row sum must stay >= e^-8 for the reciprocal to keep its relative
    accuracy (it degrades gracefully down to about e^-12, and a row with every entry
    below ``bound - 14`` sums to 0 and returns garbage).  Use it in decoding when scores
    are known bounded (e.g. normalised q, k).

    Precision: the exponentials and their row sum are kept at ``frac_hi`` fractional bits
    (default 2f) so that summing 1024 terms adds no visible rounding; the output has f.
    ``exp_kw`` / ``recip_kw``: knobs forwarded to :func:`exp` / ``reciprocal``.

    ``weights``: the WEIGHTED softmax ``w e^(x - m) / sum w e^(x - m)`` for integer
    weights ``0 <= w <= weight_bound`` (a public integer array or a secret of ring
    integers, frac 0; broadcast against x): an entry standing for ``w`` equal rows, 0 for
    none (MPCache's cluster summaries, ``nn.policies.mpcache_policy``).  Secret weights
    cost one product per element (1 round, no truncation: the weights have no fraction
    bits), public ones nothing.  The caller guarantees that each row's max is attained
    at an entry of weight >= 1 (else the row sum's range below does not hold).

    Cost: max (if any) + exp + 1 reciprocal per row + 1 fixed product per element.
    What a party learns: nothing beyond the comparison/multiplication sub-protocols.
    """
    if weights is not None:
        wf = getattr(weights, "frac", 0)
        if wf != 0 or (not hasattr(weights, "frac") and (
                np.asarray(weights).dtype.kind not in "iub" or np.any(np.asarray(weights) < 0))):
            raise ValueError("softmax weights must be non-negative integers (a public "
                             "integer array or a secret of ring integers, frac 0)")
        if not weight_bound >= 1:
            raise ValueError("weight_bound must be >= 1")
    f = x.party.fxp.frac_bits
    frac_hi = 2 * f if frac_hi is None else frac_hi
    ax = axis % x.ndim
    loss = 0.0
    if method == "max" and score_bound is not None:
        n = x.shape[ax]
        _, loss = coarse_drop(n, x.size // max(n, 1), SOFTMAX_MAX_TOL, x.frac,
                              bound_bits(score_bound, x.frac))
    if method == "max":
        z = x - rowmax(x, ax, score_bound, SOFTMAX_MAX_TOL if loss else None)
        if loss:                  # m >= max - loss: shift by m + loss >= max
            z = add_const(z, -loss)
    elif method == "bounded":
        if bound is None:
            raise ValueError("method='bounded' needs the public score bound")
        z = add_const(x, -float(bound))
    else:
        raise ValueError(f"unknown softmax method {method!r}")
    ekw = dict(exp_kw or {})
    if method == "max" and score_bound is not None:   # x - max lies in [-2S, 0]
        ekw.setdefault("clip_bound", 2.0 * float(score_bound) + loss)
        ekw.setdefault("clip_tol", SOFTMAX_CLIP_TOL)
    with x.party.scope("exp"):
        e = exp(z, out_frac=frac_hi, **ekw)
    wb = 1.0
    if weights is not None:
        with x.party.scope("weights"):
            e = e * weights
        wb = float(weight_bound)
    s = e.sum(axis=ax, keepdims=True)
    kw = dict(recip_kw or {})
    if method == "max":           # the max contributes e^-loss: sums in [e^-loss, w n]
        kw.setdefault("x_range", (0.5 * math.exp(-loss), 2.0 * wb * x.shape[ax]))
    with x.party.scope("recip"):
        # e / s, the product with e folded into the reciprocal's un-normalisation level
        # (reciprocal's ``times``: 2 rounds fewer than reciprocal(s) * e; e <= 1 after the
        # max, up to the polynomial's relative error)
        return reciprocal(s, times=e, times_bound=(1.0 if method == "max" else 2.0) * wb,
                          **kw)

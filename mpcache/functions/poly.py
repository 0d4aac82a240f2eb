"""The low-depth polynomial engine behind every non-linear approximation.

Both protocols (rep3, add2) through one API on :class:`mpcache.tensor.SecretTensor`.
Design notes, fits and measured costs: ``docs/nonlinear-approx.md``.  Users:
:mod:`.approx` (exp, softmax), :mod:`.reciprocal` (reciprocal, rsqrt) and
:mod:`.activations` (GELU, SiLU, tanh, sigmoid).

Cost model that drives every choice here: a fixed-point product costs **2 rounds** in both
protocols (exact truncation, ``truncation.py``), a ring product (integer x anything) 1
round.  So what matters is the *multiplicative depth*, and the number of truncated
*outputs* (rep3 pays per output, not per product; add2 pays per Beaver product plus per
truncated output).  The engine therefore evaluates everything as **levels**: a level is
one batch of independent *dots* ``trunc(sum_k U_k * V_k + W)``, computed with ONE protocol
call (rep3: one batched ``matmul_trunc``, whose cost is the output size, so a sum of
products costs as much as one product; add2: one Beaver ``mul`` for all products, then one
truncation), i.e. 2 rounds per level whatever the number of outputs.

Fixed-point bookkeeping inside a polynomial (see ``_Frac``): powers ``t^j`` live at ``F``
fractional bits; public-coefficient combinations ``sum c_j t^j`` (no truncation: exact
integer products) at ``F + G``; their products with a power at ``2F + G``, one truncation
back.  The low-degree part of a dot (the addend ``W``) is encoded with ``F + G`` bits per
coefficient, so only the coefficients that get multiplied by a power (hence damped by it)
are rounded at ``2^-G``.

Polynomials of degree ``D`` are evaluated with Paterson-Stockmeyer-like splitting in
``ceil(log2 D)`` levels: baby powers ``t, t^2 (L1), t^3, t^4 (L2)``, giant ``t^8 (L3)``:

    D <= 2 :  c0 + c1 t + t * (c2 t)                                   1 level
    D <= 4 :  A(t) + t^2 * B(t)                                        2 levels
    D <= 8 :  A(t) + t^4 * B(t)                  (A deg 4, B deg 4)     3 levels
    D <= 16:  A(t) + t^4 * B(t) + t^8 * R(t),  R = A'(t) + t^4 B'(t)   4 levels

What a party learns: nothing.  Every step is a sub-protocol call of rep3/add2 (products,
truncations) whose messages are uniformly masked, plus the comparison sub-protocols of
``compare.py`` (same guarantee); nothing is opened outside ``reveal``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..mpc.base import phantom
from ..mpc.compare_core import msb_bits, sign_to_ring
from ..ring import RING
from ..tensor import SecretTensor
from . import compare

__all__ = ["Dot", "run_level", "lincomb", "poly_eval", "poly_eval_many", "fit_poly",
           "PolyPlan", "sign_bits", "sign_parts", "sign_times", "bnot", "bits_times"]

_TOP = 61           # products must stay below 2^_TOP in the signed ring (window 2^62)


# ---------------------------------------------------------------------------------------
# share-level helpers
# ---------------------------------------------------------------------------------------
def _proto(t):
    return t.party.protocol


def _flat(t, shape) -> np.ndarray:
    """Share data of ``t`` broadcast to ``shape`` and flattened to (slots, n)."""
    p = _proto(t)
    n = math.prod(shape)
    if not p.active:
        return phantom((n,), p.slots)
    d = t.data
    nd = len(shape)
    if d.ndim - 1 < nd:
        d = d.reshape((d.shape[0],) + (1,) * (nd - d.ndim + 1) + d.shape[1:])
    return np.broadcast_to(d, (d.shape[0],) + tuple(shape)).reshape(d.shape[0], n)


def _wrap(like, data, shape, frac):
    p = _proto(like)
    if not p.active:
        data = phantom(shape, p.slots)
    else:
        data = data.reshape((data.shape[0],) + tuple(shape))
    return SecretTensor(like.party, data, frac)


def _enc(v: float, frac: int) -> np.uint64:
    """round(v * 2^frac) as a ring element (checked to fit the signed range)."""
    s = round(float(v) * 2.0 ** frac)
    if abs(s) >= 2 ** 63:
        raise OverflowError(f"constant {v} does not fit with {frac} fractional bits")
    return np.uint64(s & ((1 << 64) - 1))


def add_const(t, v: float, frac: int | None = None):
    """``t + v`` with ``v`` encoded at ``t.frac`` bits (or ``frac``): local, raw ring add."""
    c = _enc(v, t.frac if frac is None else frac)
    return t._local(lambda d: _proto(t).add_public(d, c))


def scale_pow2(t, k: int):
    """``t * 2^k`` exactly (k >= 0), keeping ``t.frac``: i.e. the same value at frac+k."""
    if k < 0:
        raise ValueError("scale_pow2 needs k >= 0 (a division would need a truncation)")
    if k == 0:
        return t
    return t._local(lambda d: d * np.uint64(1 << k)).with_frac(t.frac + k)


def to_frac(t, frac: int):
    """Re-encode ``t`` at ``frac`` bits exactly (only upwards: no communication)."""
    return scale_pow2(t, frac - t.frac)


def lincomb(terms, const: float, frac: int, like=None):
    """``sum_j c_j * t_j + const`` at ``frac`` fractional bits, exact and local.

    Each coefficient is encoded with ``frac - t_j.frac`` bits (an integer multiplier), so
    nothing is truncated.  ``terms``: iterable of (float c, SecretTensor t).
    """
    acc = None
    terms = list(terms)
    for c, t in terms:
        k = frac - t.frac
        if k < 0:
            raise ValueError(f"term at {t.frac} bits cannot enter a combination at {frac}")
        m = int(_enc(c, k).astype(np.int64)) if k else int(round(c))
        if m == 0:
            continue
        term = (t * np.int64(m)).with_frac(frac)
        acc = term if acc is None else acc + term
    if acc is None:
        if like is None:
            like = next(iter(terms))[1]
        acc = like._local(lambda d: d * np.uint64(0)).with_frac(frac)
    return add_const(acc, const, frac) if const else acc


# ---------------------------------------------------------------------------------------
# levels of dots
# ---------------------------------------------------------------------------------------
@dataclass
class Dot:
    """``sum_k U_k * V_k + W`` (all at the same product frac), truncated by the level."""
    terms: list
    addend: object = None
    shape: tuple = field(default=None)

    def __post_init__(self):
        if self.shape is None:
            shapes = [np.broadcast_shapes(u.shape, v.shape) for u, v in self.terms]
            if self.addend is not None:
                shapes.append(self.addend.shape)
            self.shape = tuple(np.broadcast_shapes(*shapes))

    @property
    def frac(self) -> int:
        fr = {u.frac + v.frac for u, v in self.terms}
        if self.addend is not None:
            fr.add(self.addend.frac)
        if len(fr) != 1:
            raise ValueError(f"dot terms at different fractional bits: {sorted(fr)}")
        return fr.pop()


def run_level(dots, shift: int):
    """Evaluate independent dots in ONE protocol call; truncate each by ``shift`` bits
    (``shift == 0``: exact ring products, 1 round).  Returns SecretTensors.

    rep3: one batched ``matmul_trunc`` of [N,1,K] @ [N,K,1] (the addend rides as W * 1);
    add2: one Beaver ``mul`` over all products, local sums, one ``trunc``.
    2 rounds with a truncation, 1 without, in both protocols.
    """
    if not dots:
        return []
    like = dots[0].terms[0][0] if dots[0].terms else dots[0].addend
    p = _proto(like)
    fracs = [d.frac for d in dots]
    sizes = [math.prod(d.shape) for d in dots]
    N = sum(sizes)
    outs = []
    if p.name == "rep3" and (shift > 0 or any(d.addend is not None or len(d.terms) > 1
                                               for d in dots)):
        K = max(len(d.terms) + (d.addend is not None) for d in dots)
        A = np.zeros((2, N, 1, K), dtype=RING)
        B = np.zeros((2, N, K, 1), dtype=RING)
        one = p.add_public(np.zeros((2, 1), RING), np.uint64(1))[:, 0]
        off = 0
        for d, n in zip(dots, sizes):
            for k, (u, v) in enumerate(d.terms):
                A[:, off:off + n, 0, k] = _flat(u, d.shape)
                B[:, off:off + n, k, 0] = _flat(v, d.shape)
            if d.addend is not None:
                A[:, off:off + n, 0, K - 1] = _flat(d.addend, d.shape)
                B[:, off:off + n, K - 1, 0] = one[:, None]
            off += n
        if shift > 0:
            Z = p.matmul_trunc(A, B, shift)
        else:
            Z = p.matmul(A, B)
        Z = Z.reshape(2, N)
    elif p.name == "rep3":          # single plain ring products
        a = np.concatenate([_flat(d.terms[0][0], d.shape) for d in dots], axis=1)
        b = np.concatenate([_flat(d.terms[0][1], d.shape) for d in dots], axis=1)
        Z = p.mul(a, b)
    else:                           # add2 (dealer included: it follows the shapes)
        us, vs = [], []
        for d in dots:
            for u, v in d.terms:
                us.append(_flat(u, d.shape))
                vs.append(_flat(v, d.shape))
        P = sum(u.shape[1] for u in us)
        if p.active:
            prod = p.mul(np.concatenate(us, axis=1), np.concatenate(vs, axis=1)) if us \
                else np.zeros((1, 0), RING)
            Z = np.zeros((1, N), RING)
            off = poff = 0
            for d, n in zip(dots, sizes):
                for _ in d.terms:
                    Z[:, off:off + n] += prod[:, poff:poff + n]
                    poff += n
                if d.addend is not None:
                    Z[:, off:off + n] += _flat(d.addend, d.shape)
                off += n
        else:
            if us:
                p.mul(phantom((P,), 1), phantom((P,), 1))
            Z = phantom((N,), 1)
        if shift > 0:
            Z = p.trunc(Z, shift)
    off = 0
    for d, n, fr in zip(dots, sizes, fracs):
        z = Z[:, off:off + n] if p.active else None
        outs.append(_wrap(like, z, d.shape, fr - shift))
        off += n
    return outs


# ---------------------------------------------------------------------------------------
# polynomial plans
# ---------------------------------------------------------------------------------------
def fit_poly(fn, lo: float, hi: float, degree: int, *, relative: bool = False,
             var=None, n: int = 800, lawson: int = 30) -> np.ndarray:
    """Near-minimax polynomial fit by iteratively re-weighted least squares (Lawson).

    Fits ``fn(x) ~ sum_j c_j var(x)^j`` on ``[lo, hi]`` sampled at Chebyshev nodes with
    ``numpy.linalg.lstsq``; ``relative`` weights the error by ``1/|fn|``.  ``var`` maps
    x to the polynomial variable (identity by default).  Returns c_0..c_degree.
    """
    k = np.arange(n)
    x = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * (k + 0.5) / n)
    y = fn(x)
    t = x if var is None else var(x)
    A = t[:, None] ** np.arange(degree + 1)[None, :]
    w = 1.0 / np.abs(y) if relative else np.ones_like(y)
    lw = np.ones_like(y) / n
    c = None
    for _ in range(max(1, lawson)):
        s = w * np.sqrt(lw)
        c = np.linalg.lstsq(A * s[:, None], y * s, rcond=None)[0]
        e = np.abs(A @ c - y) * w
        lw = lw * (e + 1e-300)
        lw /= lw.sum()
    return c


@dataclass(frozen=True)
class _Frac:
    F: int      # powers
    G: int      # extra bits of public coefficients in combinations


def _choose_frac(bound: float, min_F: int, want_G: int = 16, top: int = _TOP) -> _Frac:
    """Pick F >= min_F and G with bound * 2^(2F+G) < 2^top (bound: max |product|)."""
    room = top - max(0, math.ceil(math.log2(max(bound, 1e-300))))
    F = max(min_F, min(26, (room - want_G) // 2))
    G = room - 2 * F
    if G < 6:
        raise ValueError(f"polynomial too large for fixed point (bound {bound:.3g})")
    return _Frac(F, min(G, 30))


class PolyPlan:
    """A polynomial ``sum_j c_j t^j`` on ``|t| <= tmax``, evaluated in ceil(log2 D) levels.

    Several plans (same degree class, same ``_Frac``) can run side by side in the same
    levels: see :func:`poly_eval_many`.
    """

    def __init__(self, coeffs, tmax: float = 1.0):
        c = np.asarray(coeffs, dtype=np.float64)
        while len(c) > 1 and c[-1] == 0.0:
            c = c[:-1]
        self.c = c
        self.D = len(c) - 1
        self.tmax = float(tmax)
        if self.D > 16:
            raise ValueError("degree > 16 is not supported (4 levels)")

    @property
    def levels(self) -> int:
        """0 for a constant, 1 for an affine map (one truncation for the public slope)."""
        return 0 if self.D == 0 else 1 if self.D == 1 else math.ceil(math.log2(self.D))

    def bound(self) -> float:
        """Bound on every intermediate value (products, combinations, result)."""
        return float(np.sum(np.abs(self.c) * self.tmax ** np.arange(self.D + 1))) + 1.0


def poly_eval_many(ts, plans, *, fx: _Frac, out_frac: int, extra_lin=None):
    """Evaluate ``plans[i]`` at ``ts[i]`` (each t at ``fx.F`` bits), all in lock-step levels.

    ``extra_lin``: optional per-plan list of ``(coef, tensor)`` added (exactly) to the
    result inside the final dot, e.g. the odd ``0.5 x`` of GELU.  Results at ``out_frac``.
    """
    F, G = fx.F, fx.G
    for t in ts:
        if t.frac != F:
            raise ValueError(f"poly input must be at {F} bits, got {t.frac}")
    L = max(pl.levels for pl in plans)
    n = len(plans)
    pw = [{1: t} for t in ts]           # powers per plan (frac F)

    def V(i, js, coef):                 # combination at F+G (multiplied by a power later)
        return lincomb([(coef[j], pw[i][j]) for j in js if j >= 1 and coef[j] != 0],
                       coef[0] if 0 in js else 0.0, F + G, like=ts[i])

    def W(i, js, coef, final=False):    # addend at 2F+G
        terms = [(coef[j], pw[i][j]) for j in js if j >= 1 and coef[j] != 0]
        if final and extra_lin is not None and extra_lin[i]:
            terms += list(extra_lin[i])
        return lincomb(terms, coef[0] if 0 in js else 0.0, 2 * F + G, like=ts[i])

    def coefs(i, lo, hi):
        c = plans[i].c
        return {j: (c[lo + j] if lo + j <= plans[i].D else 0.0) for j in range(0, hi - lo + 1)}

    results = [None] * n
    # final-level dots built per plan when its last level is reached
    for lev in range(1, L + 1):
        dots, sinks = [], []
        for i, pl in enumerate(plans):
            D = pl.D
            c = pl.c
            cc = {j: (c[j] if j <= D else 0.0) for j in range(17)}
            if pl.levels == 0:
                continue
            final = lev == L          # all plans finish on the shared last level
            if D <= 2:
                if final:
                    terms = [(ts[i], lincomb([(cc[2], ts[i])], 0.0, F + G))] if D == 2 else []
                    dots.append(Dot(terms, W(i, [0, 1], cc, final=True)))
                    sinks.append((i, "out"))
                continue
            if lev == 1:
                dots.append(Dot([(ts[i], scale_pow2(ts[i], G).with_frac(F + G))]))
                sinks.append((i, 2))
                continue
            if D <= 4:
                if final:
                    dots.append(Dot([(pw[i][2], V(i, [1, 2], {0: 0.0, 1: cc[3], 2: cc[4]}))],
                                    W(i, [0, 1, 2], cc, final=True)))
                    sinks.append((i, "out"))
                continue
            if lev == 2:
                dots.append(Dot([(pw[i][2], scale_pow2(ts[i], G).with_frac(F + G))]))
                sinks.append((i, 3))
                dots.append(Dot([(pw[i][2], scale_pow2(pw[i][2], G).with_frac(F + G))]))
                sinks.append((i, 4))
                continue
            hi4 = {0: 0.0, 1: cc[5], 2: cc[6], 3: cc[7], 4: cc[8] if D <= 8 else 0.0}
            if D <= 8:
                if final:
                    dots.append(Dot([(pw[i][4], V(i, [1, 2, 3, 4], hi4))],
                                    W(i, [0, 1, 2, 3, 4], cc, final=True)))
                    sinks.append((i, "out"))
                continue
            if lev == 3:
                dots.append(Dot([(pw[i][4], scale_pow2(pw[i][4], G).with_frac(F + G))]))
                sinks.append((i, 8))
                rlo = {j: cc[8 + j] for j in range(5)}
                rhi = {0: 0.0, 1: cc[13], 2: cc[14], 3: cc[15], 4: cc[16]}
                terms = []
                if any(rhi.values()):
                    terms.append((pw[i][4], V(i, [1, 2, 3, 4], rhi)))
                dots.append(Dot(terms, W(i, [0, 1, 2, 3, 4], rlo)))
                sinks.append((i, "R"))
                continue
            if final:
                R = pw[i]["R"]
                dots.append(Dot([(pw[i][4], V(i, [1, 2, 3, 4], hi4)),
                                 (pw[i][8], scale_pow2(R, G).with_frac(F + G))],
                                W(i, [0, 1, 2, 3, 4], cc, final=True)))
                sinks.append((i, "out"))
        if not dots:
            continue
        final_level = lev == L
        if final_level:
            shift = 2 * F + G - out_frac
            outs = run_level(dots, shift)
        else:
            outs = run_level(dots, F + G)
        for (i, key), o in zip(sinks, outs):
            if key == "out":
                results[i] = o
            else:
                pw[i][key] = o
    for i, pl in enumerate(plans):
        if pl.levels == 0:       # a constant (plus the exact extra terms), local
            results[i] = lincomb(list((extra_lin or [[]] * n)[i] or []), pl.c[0], out_frac,
                                 like=ts[i])
    return results


def poly_eval(t, coeffs, *, tmax: float = 1.0, out_frac: int | None = None,
              min_F: int | None = None):
    """``sum_j coeffs[j] * t^j`` for secret ``t`` with ``|t| <= tmax`` (degree <= 16).

    ``ceil(log2 degree)`` levels (2 rounds each).  ``t`` is re-encoded exactly at the
    internal precision when it has fewer bits; it must not have more (no truncation is
    spent on the input).  Out of ``|t| <= tmax`` the fixed-point intermediates may wrap.
    What a party learns: nothing (products and truncations only).
    """
    plan = PolyPlan(coeffs, tmax)
    fx = _choose_frac(plan.bound(), max(t.frac, min_F or 0))
    out_frac = t.party.fxp.frac_bits if out_frac is None else out_frac
    return poly_eval_many([to_frac(t, fx.F)], [plan], fx=fx, out_frac=out_frac)[0]


# ---------------------------------------------------------------------------------------
# comparison plumbing (the compare module's bit engine; results stay XOR-shared bits)
# ---------------------------------------------------------------------------------------
def sign_bits(d, nbits: int = 64, drop: int = 0):
    """(pair engine, XOR-shared bits [d < 0] flat): ``compare.msb_pair`` (the compare
    engine's sign-bit protocol; the bits stay XOR-shared for a fused bit injection);
    ``nbits``/``drop`` as in :func:`sign_parts`."""
    return compare.msb_pair(d, nbits, drop)


def sign_parts(d, nbits: int = 64, drop: int = 0):
    """(pair engine, the unfinished sign of ``d`` (s, p, q) with [d < 0] = s ^ (p & q)) for
    :func:`sign_times` (``compare_core.msb_bits(last=False)``); ``nbits`` < 64 when the
    caller knows |d| < 2^(nbits - 1) ring units (``select.bound_bits``); ``drop``: a
    coarse sign, unsure for -2^drop <= d < 0 ring units (``msb_bits``)."""
    pair, u = compare.to_pair(d)
    return pair, msb_bits(pair, u, nbits=nbits, last=False, drop=drop)


def sign_times(pair, parts, value, negate: bool = False):
    """``[d < 0] * value`` (``negate``: ``[d >= 0] * value``) for the unfinished sign of
    :func:`sign_parts`: the sign's last AND and the bit injection in ONE round
    (``compare_core.sign_to_ring``), then back to the protocol's sharing (rep3: 1 round).
    Exact: no truncation."""
    _, u = compare.to_pair(value)
    y = sign_to_ring(pair, parts, u, negate=negate, tag="approx.mux")
    return compare.from_pair(value.party, y, value.shape, value.frac)


def bnot(pair, bits):
    """NOT of XOR-shared bits (local: party A flips its share)."""
    return bits ^ np.uint8(1) if pair.role == "A" else bits


def bits_times(pair, bits_list, values, shape, frac, separate: bool = False):
    """``sum_i bits_i * values_i`` for XOR-shared bit vectors (flat, one per value tensor)
    and secret ring/fixed tensors of ``shape``: ONE bit-injection round for all products
    (``Pair.bitmul``), summed in 2-of-2 form, then back to the protocol's sharing (rep3:
    one more round).  ``separate``: the products ``[bits_i * values_i]`` themselves (the
    same two rounds).  Exact: no truncation."""
    us = [compare.to_pair(v.broadcast_to(shape))[1] for v in values]
    z = pair.bitmul(np.concatenate(bits_list), np.concatenate(us), "approx.mux")
    party = values[0].party
    if separate:
        both = compare.from_pair(party, z, (len(us),) + tuple(shape), frac)
        return [both[i] for i in range(len(us))]
    n = us[0].size
    acc = z[:n].copy()
    for i in range(1, len(us)):
        acc = acc + z[i * n:(i + 1) * n]
    return compare.from_pair(party, acc, tuple(shape), frac)

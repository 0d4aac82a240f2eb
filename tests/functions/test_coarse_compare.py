"""Coarse comparisons (``compare_core.msb_bits(drop=s)``) and what is built on them: the
approximate max (``amax(x, bound=B, tol=t)``), exp's coarse clip and softmax on a bounded
row.  A coarse sign is exact outside [-2^s, 0); the pairwise form ranks one set of numbers
(exactly one winner per group); the max is a row entry within the public loss of the
max; each costs one tree round fewer than the 32-bit comparison, on both protocols, at the
cost the formulas say; bad tolerances are refused."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mpcache
from mpcache import branches
from mpcache.functions import approx as A
from mpcache.functions import compare as C
from mpcache.functions import select as S
from mpcache.mpc import compare_core as V
from mpcache.mpc.costs import cmp_levels, max_tree_cost
from mpcache.testing import run_aligned

EX = settings(max_examples=8, deadline=None)
F_BITS = 18
SCORE_BOUND = 2.0 ** 11          # SmolLM2's public score bound: 32-bit comparisons


@EX
@given(drop=st.integers(1, 20), seed=st.integers(0, 2 ** 16))
def test_coarse_sign_exact_outside_the_dropped_bits(protocol, drop, seed):
    """sign of d on 32 bits with ``drop`` low bits skipped: exact for d >= 0 and for
    d < -2^drop, both signs possible in between; also the pairwise form."""
    rng = np.random.default_rng(seed)
    d = np.concatenate([rng.integers(-2 ** 29, 2 ** 29, 300),
                        -rng.integers(0, 2 ** drop + 1, 50),
                        [0, -1, 2 ** drop, -2 ** drop, -2 ** drop - 1, 2 ** 29, -2 ** 29]])

    def job(p):
        a = p.share(d if p.id == 0 else None, 0, integer=True)
        pair, u = C.to_pair(a)
        return pair.reveal_bits(V.msb_bits(pair, u, nbits=32, drop=drop))
    got = mpcache.Session(protocol, seed=seed).run(job).output
    sure = (d >= 0) | (d < -2 ** drop)
    assert np.array_equal(got[sure], (d[sure] < 0).astype(np.uint8))


@EX
@given(drop=st.integers(1, 15), n=st.integers(2, 9), seed=st.integers(0, 2 ** 16))
def test_coarse_pairs_form_a_transitive_tournament(protocol, drop, n, seed):
    """All pairs of n values, each value masked once: the coarse comparisons order one
    set of numbers, so exactly one value beats all others; exact for values at least
    2^(drop+1) apart."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-2 ** (drop + 2), 2 ** (drop + 2), n)     # near-ties at the scale
    I, J = np.triu_indices(n, 1)

    def job(p):
        a = p.share(x if p.id == 0 else None, 0, integer=True)
        pair, u = C.to_pair(a)
        return pair.reveal_bits(V.msb_bits(pair, u, nbits=32, drop=drop, pairs=(I, J)))
    lt = mpcache.Session(protocol, seed=seed).run(job).output      # [x_I < x_J]
    beats = np.ones((n, n), bool)
    beats[I, J], beats[J, I] = lt == 0, lt == 1
    winners = [i for i in range(n) if all(beats[i, j] for j in range(n) if j != i)]
    assert len(winners) == 1
    sure = np.abs(x[I] - x[J]) >= 2 ** (drop + 1)       # y_v is within 2^drop of x_v
    assert np.array_equal(lt[sure], (x[I] < x[J])[sure].astype(np.uint8))


def test_coarse_drop_rule():
    s, loss = S.coarse_drop(2049, 9, 2.0, F_BITS, 32)
    assert s == 32 - 1 - S.COARSE_BITS == 15
    assert loss == 5 * 2 * 2.0 ** (15 - F_BITS)          # 5 fan-in levels, 2^(s+1) each
    assert S.coarse_drop(2049, 9, 1.0, F_BITS, 32) == (0, 0.0)     # loss above tol: exact
    assert S.coarse_drop(2049, 9, 2.0, F_BITS, 64) == (0, 0.0)     # unbounded: exact
    assert S.coarse_drop(2049, 9, None, F_BITS, 32) == (0, 0.0)
    assert S.coarse_drop(1, 9, 2.0, F_BITS, 32) == (0, 0.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tolerance"):
            S.coarse_drop(64, 1, bad, F_BITS, 32)
    with pytest.raises(ValueError, match="drop"):
        mpcache.Session("add2").run(
            lambda p: V.msb_bits(*C.to_pair(p.share(np.ones(4), 0)), nbits=32, drop=31))


@EX
@given(rows=st.integers(1, 3), n=st.integers(2, 70), seed=st.integers(0, 2 ** 16),
       near=st.booleans())
def test_approximate_max_within_loss(protocol, rows, n, seed, near):
    """amax(tol=2) returns an entry of its row within the public loss of the row max
    (min likewise), for spread and for near-tied rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, n)) * (0.05 if near else 30)
    _, loss = S.coarse_drop(n, rows, 2.0, F_BITS, 32)
    assert 0 < loss <= 2.0
    hi, _ = run_aligned(protocol, x, lambda a: a.max(axis=-1, bound=SCORE_BOUND, tol=2.0))
    lo, _ = run_aligned(protocol, x, lambda a: a.min(axis=-1, bound=SCORE_BOUND, tol=2.0))
    eps = 2.0 ** -F_BITS
    for out, ref, sign in ((hi, x.max(-1), 1), (lo, x.min(-1), -1)):
        assert np.all(np.min(np.abs(x - out[:, None]), axis=-1) <= eps)      # an entry
        assert np.all(sign * (ref - out) <= loss + eps) and np.all(sign * (ref - out) >= -eps)


@pytest.mark.parametrize("n,rows", [(64, 1), (2049, 9)])
def test_approximate_max_cost(protocol, n, rows):
    """One tree round fewer per level than the 32-bit max, two on the second level of
    2049 x 9 (6912 comparisons of 16 bits keep 8-bit digits: 2 digits, one tree level;
    22 -> 16 rounds), the same opened bytes, fewer tree bytes; ``max_tree_cost(drop=)``
    is exact."""
    x = np.random.default_rng(n).normal(size=(rows, n)) * 30
    s, loss = S.coarse_drop(n, rows, 2.0, F_BITS, 32)
    out, sc = run_aligned(protocol, x, lambda a: a.max(axis=-1, bound=SCORE_BOUND, tol=2.0))
    assert np.all(out >= x.max(-1) - loss - 2.0 ** -F_BITS)
    fan = (S.MAX_FANIN, S.FANIN4_MAX_VALUES, S.FANIN8_MAX_VALUES)
    want = max_tree_cost(n, rows, 1, *fan, nbits=32, drop=s)
    exact = max_tree_cost(n, rows, 1, *fan, nbits=32)
    extra = protocol == "rep3"                           # re-sharing to replicated
    assert sc["rounds"] == want["rounds"] + extra
    assert sc["bytes_sent"] == want["bytes"] + 8 * rows * extra
    assert exact["rounds"] - want["rounds"] == {64: 2, 2049: 6}[n]
    assert want["bytes"] < exact["bytes"]
    # the digit tree: 31 bits -> 16 (2 digits of 8, or 4 of 4 in big batches)
    assert len(cmp_levels(100, 32, drop=s)) == len(cmp_levels(100, 32)) - 1
    assert len(cmp_levels(30000, 32, drop=s)) == len(cmp_levels(30000, 32)) - 1


def test_coarse_exp_clip(protocol):
    """exp's clip with clip_tol = 1/8: values within 1/8 below -14 may pass as e^x (the
    polynomial just below its range stays close), all others exactly as before; one
    tree round fewer."""
    x = -np.concatenate([np.linspace(0, 20, 40), [2.0 ** 12, 14.5, 13.9, 14.0],
                         np.linspace(14.0, 14.125, 9)])[None, :]
    with branches.sequential():          # the clip's own rounds (not hidden beside exp's)
        out, sc = run_aligned(protocol, x,
                              lambda a: A.exp(a, clip_bound=2.0 ** 12, clip_tol=0.125))
        ref, sc0 = run_aligned(protocol, x, lambda a: A.exp(a, clip_bound=2.0 ** 12))
    unsure = (x < -14) & (x >= -14.125)
    want = np.where(x >= -14, np.exp(x), 0.0)
    assert np.abs(out - want)[~unsure].max() < 1e-4
    assert np.all(np.minimum(np.abs(out[unsure]), np.abs(out[unsure] - np.exp(x[unsure])))
                  <= 2.0 ** -F_BITS)                  # 0 or e^x, to the output's resolution
    assert sc["rounds"] == sc0["rounds"] - 1 and sc["bytes_sent"] < sc0["bytes_sent"]
    assert S.sign_drop(32, F_BITS, 0.125) == 15 and S.sign_drop(32, F_BITS, 0.1) == 0
    assert S.sign_drop(64, F_BITS, 0.125) == 0 and S.sign_drop(32, F_BITS, None) == 0
    with pytest.raises(ValueError, match="tolerance"):
        S.sign_drop(32, F_BITS, -1.0)


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])
def test_bounded_softmax_with_approximate_max(protocol, scale):
    """Softmax on a bounded decoding-shaped row (9 heads x 2049): the approximate max and
    the coarse clip move only rounding (the same error bound as the exact max), and save
    7 rounds (6 tree rounds of the max, 1 of the clip; the coarse thermometer of the
    reciprocal 1 more, both here and without the bound)."""
    x = np.random.default_rng(int(scale * 10)).normal(size=(9, 2049)) * scale
    want = np.exp(x - x.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    out, sc = run_aligned(protocol, x, lambda a: A.softmax(a, score_bound=SCORE_BOUND))
    assert np.abs(out - want).max() < 2e-4
    assert np.allclose(out.sum(-1), 1.0, atol=1e-3)
    _, loss = S.coarse_drop(2049, 9, A.SOFTMAX_MAX_TOL, F_BITS, 32)
    assert 0 < loss <= A.SOFTMAX_MAX_TOL and math.exp(-loss) > 0.1
    # exact 32-bit max: 49, 47; exp's clip sequential (branches.sequential()) and
    # quadratic pieces in the reciprocal: 41, 39
    rounds = {"rep3": 36, "add2": 34}[protocol]
    assert sc["rounds"] == rounds


def _silu(z):
    return z / (1 + np.exp(-z))


def _gelu(z):
    from math import erf
    return 0.5 * z * (1 + np.vectorize(erf)(z / np.sqrt(2)))


@pytest.mark.parametrize("name,fn,tol", [("silu", _silu, 6.5e-3), ("gelu", _gelu, 3.2e-3)])
def test_bounded_activation(protocol, name, fn, tol):
    """SiLU/GELU with a public input bound (SmolLM2's MLP: 2^8): the same error bound as
    unbounded (a grid through both thresholds, incl. the moved-in band (T - t, T]), 3
    rounds fewer at SmolLM2's width 1536 (3072 signs: 64-bit on 4-bit digits, 4 tree
    rounds; bounded to 28 bits and coarse: a 17-bit tree of 2 digits, 1 round)."""
    from mpcache.functions import activations as Ac
    T = Ac.ACTIVATIONS[name][1]
    t = 2.0 ** (S.sign_drop(S.bound_bits(2.0 ** 8 + T, F_BITS, pairwise=False), F_BITS,
                            Ac.ACT_TOL) - F_BITS)
    assert 0 < t <= Ac.ACT_TOL
    x = np.concatenate([np.linspace(-12, 12, 601), T - t * np.linspace(0, 1, 9),
                        -T + t * np.linspace(0, 1, 9), [255.0, -255.0]])
    x = np.concatenate([x, np.random.default_rng(1).normal(size=1536 - x.size) * 4])[None, :]
    f = getattr(Ac, name)
    with branches.sequential():          # the signs' own rounds (not hidden beside P's)
        out, sc = run_aligned(protocol, x, lambda a: f(a, bound=2.0 ** 8))
        ref, sc0 = run_aligned(protocol, x, lambda a: f(a))
    assert np.abs(out - fn(x)).max() < tol and np.abs(ref - fn(x)).max() < tol
    assert sc["rounds"] == sc0["rounds"] - 3 and sc["bytes_sent"] < sc0["bytes_sent"]
    # beside the polynomial (mpcache.branches): the same values and bytes, the signs'
    # rounds inside the polynomial's
    out2, sc2 = run_aligned(protocol, x, lambda a: f(a, bound=2.0 ** 8))
    assert np.abs(out2 - fn(x)).max() < tol and sc2["bytes_sent"] == sc["bytes_sent"]
    levels = {"silu": 4, "gelu": 3}[name]         # the polynomial's, x^2 included
    assert sc2["rounds"] == 2 * levels + (2 if protocol == "rep3" else 1)


@EX
@given(n=st.integers(2, 3000), seed=st.integers(0, 2 ** 16), ties=st.booleans())
def test_bounded_argmax_is_exact(protocol, n, seed, ties):
    """argmax with a public bound (the logits'): the exact first-index argmax, with
    fewer or equal rounds than the 64-bit tree."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-500, 500, (1, n))
    if ties:
        x = np.round(x / 100) * 100
    out, sc = run_aligned(protocol, x, lambda a: a.argmax(axis=-1, bound=2.0 ** 9))
    want = np.zeros_like(x)
    want[0, np.argmax(x[0])] = 1
    assert np.array_equal(np.round(out), want)
    _, sc0 = run_aligned(protocol, x, lambda a: a.argmax(axis=-1))
    assert sc["rounds"] <= sc0["rounds"] and sc["bytes_sent"] < sc0["bytes_sent"]


def test_bounded_argmax_vocabulary_rounds(protocol):
    """SmolLM2's vocabulary argmax (49152 logits, bound 2^9: 30-bit exact comparisons):
    fewer tree digits on every level."""
    x = np.random.default_rng(0).normal(size=(1, 49152)) * 5
    out, sc = run_aligned(protocol, x, lambda a: a.argmax(axis=-1, bound=2.0 ** 9))
    assert np.argmax(out[0]) == np.argmax(x[0]) and out.sum() == 1
    _, sc0 = run_aligned(protocol, x, lambda a: a.argmax(axis=-1))
    print(protocol, sc0["rounds"], "->", sc["rounds"])
    assert sc["rounds"] <= sc0["rounds"] - 6
    with pytest.raises(ValueError, match="bound"):
        run_aligned(protocol, x[:, :8], lambda a: a.argmax(axis=-1, bound=1.0, method="select"))

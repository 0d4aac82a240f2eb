"""Bounded max (``amax(x, bound=B)``, softmax's ``score_bound``): for values with a public
bound |x| <= B the comparison tree runs on ``select.bound_bits(B, f)`` bits -- the same
results as the 64-bit tree, on both protocols, at the cost ``max_tree_cost(nbits=)``
says, with fewer rounds and bytes; a bad bound is refused."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mpcache import branches
from mpcache.functions import approx as A
from mpcache.functions import select as S
from mpcache.mpc.costs import max_tree_cost
from mpcache.testing import run_aligned

EX = settings(max_examples=8, deadline=None)
F_BITS = 18


def test_bound_bits():
    assert S.bound_bits(None, F_BITS) == 64
    assert S.bound_bits(2.0 ** 11, F_BITS) == 32      # differences < 2^30: 32 bits
    assert S.bound_bits(2.0 ** 11 - 1, F_BITS) == 31
    assert S.bound_bits(0.0, F_BITS) == 2
    assert S.bound_bits(2.0 ** 60, F_BITS) == 64
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="bound"):
            S.bound_bits(bad, F_BITS)


@EX
@given(rows=st.integers(1, 3), n=st.integers(1, 40), bound=st.sampled_from([1.0, 100.0, 2.0 ** 11]),
       ties=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_bounded_max_equals_plaintext(protocol, rows, n, bound, ties, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-bound, bound, (rows, n))
    if ties:
        x = np.round(x * 4 / bound) * bound / 4        # many equal values, and +-bound
    out, _ = run_aligned(protocol, x, lambda a: a.max(axis=-1, bound=bound))
    assert np.allclose(out, x.max(-1), atol=2.0 ** -F_BITS)
    out, _ = run_aligned(protocol, x, lambda a: a.min(axis=-1, bound=bound))
    assert np.allclose(out, x.min(-1), atol=2.0 ** -F_BITS)


@pytest.mark.parametrize("n,rows", [(64, 1), (2049, 9)])
def test_bounded_max_cost(protocol, n, rows):
    """Softmax's row max at a decoding step's shape (9 heads x 2049 cached rows) with the
    score bound of SmolLM2 (2^11, 32 bits): one tree round fewer per level (27 -> 22)."""
    x = np.random.default_rng(n).normal(size=(rows, n)) * 30
    nbits = S.bound_bits(2.0 ** 11, F_BITS)
    out, sc = run_aligned(protocol, x, lambda a: a.max(axis=-1, bound=2.0 ** 11))
    assert np.allclose(out, x.max(-1), atol=2.0 ** -F_BITS)
    fan = (S.MAX_FANIN, S.FANIN4_MAX_VALUES, S.FANIN8_MAX_VALUES)
    want = max_tree_cost(n, rows, 1, *fan, nbits=nbits)
    full = max_tree_cost(n, rows, 1, *fan)
    extra = protocol == "rep3"                           # re-sharing to replicated
    assert sc["rounds"] == want["rounds"] + extra
    assert sc["bytes_sent"] == want["bytes"] + 8 * rows * extra
    levels = {64: 2, 2049: 5}[n]                       # 2049: 4, 4, 4, 8, 5 per group
    assert full["rounds"] - want["rounds"] == levels     # one tree round per level
    assert want["bytes"] < full["bytes"]


def test_bounded_softmax_same_as_unbounded(protocol):
    x = np.random.default_rng(3).normal(size=(3, 50)) * 8
    want = np.exp(x - x.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    out, sc = run_aligned(protocol, x, lambda a: A.softmax(a, score_bound=2.0 ** 11))
    ref, sc0 = run_aligned(protocol, x, lambda a: A.softmax(a))
    assert np.abs(out - want).max() < 2e-4
    assert np.abs(ref - want).max() < 2e-4
    assert sc["rounds"] < sc0["rounds"] and sc["bytes_sent"] < sc0["bytes_sent"]


def test_bounded_exp_clip(protocol):
    """exp's clip comparison on x in [-2^12, 0] (softmax's x - max with S = 2^11): 32-bit
    comparisons, the same values (e^x; exactly 0 below -14), fewer rounds and bytes."""
    assert S.bound_bits(2.0 ** 12 + 14, F_BITS, pairwise=False) == 32
    x = -np.concatenate([np.linspace(0, 20, 40), [2.0 ** 12, 14.5, 13.9]])[None, :]
    with branches.sequential():          # the clip's own rounds (not hidden beside exp's)
        out, sc = run_aligned(protocol, x, lambda a: A.exp(a, clip_bound=2.0 ** 12))
        ref, sc0 = run_aligned(protocol, x, lambda a: A.exp(a))
    want = np.where(x >= -14, np.exp(x), 0.0)
    assert np.abs(out - want).max() < 1e-4 and np.abs(ref - want).max() < 1e-4
    assert sc["rounds"] == sc0["rounds"] - 1 and sc["bytes_sent"] < sc0["bytes_sent"]
    out2, sc2 = run_aligned(protocol, x, lambda a: A.exp(a, clip_bound=2.0 ** 12))
    assert np.abs(out2 - out).max() < 1e-3 and sc2["bytes_sent"] == sc["bytes_sent"]
    assert sc2["rounds"] < sc["rounds"]

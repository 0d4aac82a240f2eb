"""max/min, argmax/argmin, top-k, one_hot and gather on both protocols: exact results
against the plaintext contract of mpcache.nn.functional (ties -> lower index, top-k rows in
ascending index order), negatives, zeros, range edges; asserted rounds and bytes."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mpcache
from mpcache.nn import functional as F
from mpcache.testing import run_op
from mpcache.functions import select as S
from mpcache.functions import topk as T
from mpcache.mpc import compare_core as V
from mpcache.mpc.costs import cmp_levels, max_tree_cost

EX = settings(max_examples=8, deadline=None)
EDGE = float(2**26 - 1)

# a coarse grid (many ties) plus edges of the fixed-point range
VALUES = st.one_of(st.integers(-8, 8).map(lambda k: k / 4.0),
                   st.sampled_from([0.0, EDGE, -EDGE, 2.0**-18, -2.0**-18]))


@st.composite
def matrices(draw, max_rows=3, max_n=12):
    shape = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_n)))
    return draw(hnp.arrays(np.float64, shape, elements=VALUES))


def run(protocol, fn, *xs, integer=(), seed=None):
    def job(p):
        ins = [p.share(x if p.id == i % 2 else None, i % 2, integer=i in integer)
               for i, x in enumerate(xs)]
        out = fn(p, *ins)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return [p.reveal(o) for o in outs]
    return mpcache.Session(protocol, seed=seed).run(job).output


@EX
@given(x=matrices(), axis=st.sampled_from([0, 1, -1, None]), keep=st.booleans())
def test_max_min(protocol, x, axis, keep):
    mx, mn = run(protocol, lambda p, a: [a.max(axis=axis, keepdims=keep),
                                         a.min(axis=axis, keepdims=keep)], x)
    assert np.array_equal(mx, x.max(axis=axis, keepdims=keep))
    assert np.array_equal(mn, x.min(axis=axis, keepdims=keep))


@EX
@given(x=matrices(), axis=st.sampled_from([0, 1, -1]))
def test_argmax_argmin(protocol, x, axis):
    out = run(protocol, lambda p, a: [a.argmax(axis), a.argmin(axis),
                                      a.argmax(axis, method="select"),
                                      a.argmin(axis, method="select")], x)
    want_max = F.argmax_onehot(x, axis)
    want_min = F.argmax_onehot(-x, axis)
    for got, want in zip(out, [want_max, want_min, want_max, want_min]):
        assert got.dtype == np.int64
        assert np.array_equal(got, want)


@EX
@given(x=matrices(max_n=16), data=st.data())
def test_top_k_contract(protocol, x, data):
    axis = data.draw(st.sampled_from([0, 1, -1]))
    k = data.draw(st.integers(0, x.shape[axis]))
    (got,) = run(protocol, lambda p, a: a.top_k(k, axis=axis), x)
    assert np.array_equal(got, F.top_k_onehot(x, k, axis=axis))


@EX
@given(x=matrices(max_n=16), data=st.data())
def test_top_k_unordered_same_rows_fewer_rounds(protocol, x, data):
    """``ordered=False``: the same set of one-hot rows as the contract (any order), with
    no sort: fewer rounds and bytes than the ordered top-k on the same shuffle."""
    k = data.draw(st.integers(0, x.shape[1]))
    (got,) = run(protocol, lambda p, a: a.top_k(k, ordered=False), x)
    want = F.top_k_onehot(x, k)
    assert got.shape == want.shape
    assert np.array_equal(np.sort(got.argmax(-1), -1), want.argmax(-1))
    assert np.array_equal(got.sum(-1), np.ones(want.shape[:-1], np.int64))
    if k >= 2 and k < x.shape[1]:
        fast = cost(protocol, lambda p, a: a.top_k(k, ordered=False), x, seed=4)
        full = cost(protocol, lambda p, a: a.top_k(k), x, seed=4)
        assert fast["rounds"] < full["rounds"]
        assert fast["bytes_sent"] < full["bytes_sent"]


def test_top_k_all_pairs_batch_one_level(protocol, monkeypatch):
    """A batch whose all-pairs comparisons fit ``ALL_PAIRS_PER_LEVEL`` (3 rows of 30: 1305)
    is selected in ONE revealed level (a decoding step's top-k over 30 clusters of 3 KV
    heads); with the rule off it takes pivot levels: more rounds, fewer bytes."""
    import threading
    x = np.random.default_rng(7).normal(size=(3, 30))
    levels = []
    real = T._reveal_lt

    def counted(pair, d, *a, **kw):
        if threading.current_thread().name == "mpcache-P0":
            levels.append(d.size)
        return real(pair, d, *a, **kw)
    monkeypatch.setattr(T, "_reveal_lt", counted)
    (got,) = run(protocol, lambda p, a: a.top_k(4, ordered=False), x, seed=3)
    assert levels == [3 * 30 * 29 // 2]
    assert np.array_equal(np.sort(got.argmax(-1), -1), F.top_k_indices(x, 4))
    one = cost(protocol, lambda p, a: a.top_k(4, ordered=False), x, seed=3)
    monkeypatch.setattr(T, "ALL_PAIRS_PER_LEVEL", 0)
    levels.clear()
    piv = cost(protocol, lambda p, a: a.top_k(4, ordered=False), x, seed=3)
    assert len(levels) >= 2
    assert one["rounds"] < piv["rounds"]
    assert one["bytes_sent"] > piv["bytes_sent"]


@pytest.mark.parametrize("n,k", [(300, 17), (64, 63), (33, 1)])
def test_top_k_distinct_and_ties(protocol, n, k):
    rng = np.random.default_rng(n)
    x = np.stack([rng.normal(size=n) * 1e3, np.round(rng.normal(size=n))])   # row 2: ties
    (got,) = run(protocol, lambda p, a: a.top_k(k), x)
    assert np.array_equal(got, F.top_k_onehot(x, k))


def test_top_k_integers_and_3d(protocol):
    rng = np.random.default_rng(5)
    x = rng.integers(-2**40, 2**40, size=(2, 3, 20))
    got, g2 = run(protocol, lambda p, a: [a.top_k(2, axis=1), a.top_k(5)], x, integer=(0,))
    assert np.array_equal(got, F.top_k_onehot(x, 2, axis=1).astype(np.int64))
    assert np.array_equal(g2, F.top_k_onehot(x, 5).astype(np.int64))


@EX
@given(data=st.data())
def test_one_hot_and_gather(protocol, data):
    n = data.draw(st.integers(1, 40))
    idx = data.draw(hnp.arrays(np.int64, (data.draw(st.integers(1, 4)),),
                               elements=st.integers(0, n - 1)))
    X = data.draw(hnp.arrays(np.float64, (n, 3), elements=VALUES))
    oh, g, gp = run(protocol, lambda p, i, xs: [mpcache.one_hot(i, n),
                                               mpcache.gather(mpcache.one_hot(i, n), xs),
                                               mpcache.one_hot(i, n).gather(X)],
                    idx, X, integer=(0,))
    assert np.array_equal(oh, F.one_hot(idx, n, dtype=np.int64))
    assert np.array_equal(g, X[idx])
    assert np.array_equal(gp, X[idx])


def test_gather_top_k_rows_keep_order(protocol):
    """The MPCache use: top-k over cluster scores, then gather cluster rows in order."""
    rng = np.random.default_rng(3)
    scores, K = rng.normal(size=(2, 40)), rng.normal(size=(2, 40, 8))
    (got,) = run(protocol, lambda p, s, k: mpcache.gather(s.top_k(6), k), scores, K)
    idx = F.top_k_indices(scores, 6)
    assert np.allclose(got, np.take_along_axis(K, idx[..., None], axis=1), atol=2**-17)


# -- costs ----------------------------------------------------------------------------------------
def cost(protocol, fn, *xs, integer=(), seed=None):
    """Cost of ``fn`` in scope "op", entered with the parties' round clocks in sync."""
    def job(p):
        ins = [p.share(x if p.id == i % 2 else None, i % 2, integer=i in integer)
               for i, x in enumerate(xs)]
        p.reveal(p.share(np.zeros(1) if p.id == 0 else None, 0))
        with p.scope("op"):
            fn(p, *ins)
    return mpcache.Session(protocol, seed=seed).run(job).scope("op")


def _tree_cost(n, payload, rows=1):
    """(rounds, bytes) of the comparison tree over n values (mpc/costs.max_tree_cost at
    the tree's fan-in)."""
    c = max_tree_cost(n, rows, payload, S.MAX_FANIN, S.FANIN4_MAX_VALUES, S.FANIN8_MAX_VALUES)
    return c["rounds"], c["bytes"]


def test_max_over_64_cost(protocol):
    """Fan-in 8: 2 levels (64 -> 8 -> 1) x (1 masked opening + 3 tree rounds + 1 AND7
    lookup round) = 10 rounds (fan-in 4: 3 levels, 15; the binary tree: 6 levels x 4 =
    24), + 1 re-sharing round in rep3; about 1.8 kB per party (binary 1.2 kB; SPU ABY3:
    78 actions, 4 kB)."""
    sc = cost(protocol, lambda p, a: a.max(), np.random.default_rng(0).normal(size=64))
    rounds, nbytes = _tree_cost(64, 1)
    assert rounds == 10
    assert max_tree_cost(64, fanin=4)["rounds"] == 15
    assert max_tree_cost(64, fanin=2)["rounds"] == 24
    extra = protocol == "rep3"
    assert sc["rounds"] == rounds + extra
    assert sc["bytes_sent"] == nbytes + 8 * extra
    assert sc["bytes_sent"] < 4000


def test_argmax_1024_cost(protocol):
    """Tree carrying the index (2 payload values), then one_hot: 1 round, 2 bytes of the
    masked index to each receiver (rep3: to both other parties)."""
    sc = cost(protocol, lambda p, a: a.argmax(), np.random.default_rng(1).normal(size=1024))
    rounds, nbytes = _tree_cost(1024, 2)
    assert rounds == 20        # 1024 -> 128 -> 16 -> 2 (fan-in 8) -> 1; fan-in 4: 25; binary: 40
    assert max_tree_cost(1024, payload=2, fanin=4)["rounds"] == 25
    assert max_tree_cost(1024, payload=2, fanin=2)["rounds"] == 40
    assert sc["rounds"] == rounds + 1
    assert sc["bytes_sent"] == nbytes + (4 if protocol == "rep3" else 2)
    assert sc["bytes_sent"] < 0.38e6 / 5          # SPU ABY3: 0.38 MB


def test_top_k_1024_cost(protocol):
    """Shuffle + revealed selection: the level count depends on the (seeded) shuffle; the
    budgets are SPU ABY3's top-k figures (0.12 MB, 59 actions)."""
    x = np.random.default_rng(2).normal(size=1024)
    for seed in (1, 2):
        sc = cost(protocol, lambda p, a: a.top_k(64), x, seed=seed)
        assert sc["rounds"] < 59
        assert sc["bytes_sent"] < 0.12e6


@pytest.mark.parametrize("k,n,d", [(64, 1024, 64), (3, 10, 5)])
def test_gather_cost(protocol, k, n, d):
    """Integer one-hot @ fixed X: no truncation; rep3 = output size, add2 = Beaver."""
    rng = np.random.default_rng(0)
    oh = np.eye(n, dtype=np.int64)[rng.integers(0, n, k)]
    sc = cost(protocol, lambda p, o, x: mpcache.gather(o, x), oh, rng.normal(size=(n, d)),
              integer=(0,))
    assert sc["rounds"] == 1
    if protocol == "rep3":
        assert sc["bytes_sent"] == 8 * k * d
        assert sc["offline_bytes_sent"] == 0
    else:
        assert sc["bytes_sent"] == 8 * (k * n + n * d)
        assert sc["offline_bytes_sent"] == 8 * k * d


def test_one_hot_cost(protocol):
    """Open idx - r mod N (uint16 for N = 1024): 1 round; preprocessing 8 N per row."""
    m, n = 64, 1000
    sc = cost(protocol, lambda p, i: mpcache.one_hot(i, n), np.arange(m), integer=(0,))
    assert sc["rounds"] == 1
    assert sc["bytes_sent"] == (4 if protocol == "rep3" else 2) * m
    assert sc["offline_bytes_sent"] >= 8 * 1024 * m


# -- errors ---------------------------------------------------------------------------------------
def test_errors(protocol):
    def job(p):
        a = p.share(np.arange(6.0).reshape(2, 3), 0)
        i = p.share(np.array([1, 2]), 0, integer=True)
        for bad in (lambda: a.max(axis=2), lambda: a.argmax(axis=-3), lambda: a.top_k(2, 5)):
            with pytest.raises(ValueError, match="axis"):
                bad()
        with pytest.raises(ValueError, match="k=4"):
            a.top_k(4)
        with pytest.raises(ValueError):
            a.top_k(-1)
        with pytest.raises(TypeError):
            a.top_k(1.5)
        with pytest.raises(ValueError, match="integer"):
            mpcache.one_hot(a, 3)                       # fixed-point "index"
        with pytest.raises(ValueError):
            mpcache.one_hot(i, 0)
        with pytest.raises(TypeError):
            mpcache.one_hot(np.array([1]), 3)
        oh = mpcache.one_hot(i, 3)
        with pytest.raises(ValueError, match="cannot index"):
            mpcache.gather(oh, a)                       # 3 entries vs 2 rows
        with pytest.raises(ValueError, match="ring-integer"):
            mpcache.gather(a, a.T)
        with pytest.raises(ValueError):
            a.argmax(method="bogus")
        return True
    assert mpcache.Session(protocol).run(job).output


def test_gather_mixing_sessions():
    store = {}

    def first(p):
        store[p.id] = p.share(np.ones((4, 2)), 0)

    def second(p):
        oh = mpcache.one_hot(p.share(np.array([1]), 0, integer=True), 4)
        with pytest.raises(mpcache.SessionMismatch):
            mpcache.gather(oh, store[p.id])
        return True
    mpcache.Session("rep3").run(first)
    assert mpcache.Session("rep3").run(second).output


def test_big_batches_unfused_path(protocol):
    """Batches above compare_core.FUSE_MAX_BATCH finish the tree and use plain b2a / bit
    injection: same results."""
    rng = np.random.default_rng(9)
    x = np.round(rng.normal(size=(2, 4200)) * 8) / 8
    mx, am, r, e = run(protocol, lambda p, a: [a.max(), a.argmax(), a.relu(), a.eq(0.125)], x)
    assert np.array_equal(mx, x.max(-1))
    assert np.array_equal(am, F.argmax_onehot(x))
    assert np.array_equal(r, np.maximum(x, 0))
    assert np.array_equal(e, (x == 0.125).astype(np.int64))


def test_top_k_key_range_is_checked():
    """Keys x * 2^l + index must not wrap: a public bound that does not fit is refused
    before any message is sent, and a fitting one is accepted."""
    x = np.linspace(-5, 5, 300)

    def run(**kw):
        return run_op("rep3", lambda p, a: a.top_k(3, **kw).sum(axis=-2), x)[0]

    with pytest.raises(ValueError, match="would wrap"):
        run(bound=2.0 ** 40)
    out = run(bound=100.0)
    assert np.array_equal(np.nonzero(out)[0], [297, 298, 299])


@pytest.mark.parametrize("n", [2, 3, 5, 6, 7, 9, 10, 17, 26])
def test_max_tree_fanin_8_4_and_2_agree(protocol, n, monkeypatch):
    """Every group shape of a fan-in-8 or fan-in-4 level (full groups with a last group of
    2..fan-1, or a single value passing through; one group of up to 9; many ties) gives
    the plaintext max/argmax, as the binary tree does, at the cost max_tree_cost says."""
    x = np.round(np.random.default_rng(n).normal(size=(2, n)) * 2) / 4
    for fanin in (8, 4, 2):
        monkeypatch.setattr(S, "MAX_FANIN", fanin)
        mx, am = run(protocol, lambda p, a: [a.max(), a.argmax()], x)
        assert np.array_equal(mx, x.max(-1))
        assert np.array_equal(am, F.argmax_onehot(x))
        sc = cost(protocol, lambda p, a: a.max(), x)
        want = max_tree_cost(n, 2, 1, fanin, S.FANIN4_MAX_VALUES)
        assert sc["rounds"] == want["rounds"] + (protocol == "rep3")
        assert sc["bytes_sent"] == want["bytes"] + 8 * 2 * (protocol == "rep3")


def test_max_tree_wide_levels_stay_binary(protocol, monkeypatch):
    """Levels over more than FANIN4_MAX_VALUES values take binary levels (fewer dealt
    bytes), then fan-in 8: same results, the cost max_tree_cost says."""
    monkeypatch.setattr(S, "FANIN4_MAX_VALUES", 40)
    x = np.round(np.random.default_rng(5).normal(size=(2, 50)) * 2) / 4
    mx, am = run(protocol, lambda p, a: [a.max(), a.argmax()], x)
    assert np.array_equal(mx, x.max(-1))
    assert np.array_equal(am, F.argmax_onehot(x))
    sc = cost(protocol, lambda p, a: a.max(), x)
    want = max_tree_cost(50, 2, 1, S.MAX_FANIN, 40)
    assert want["rounds"] == 4 + 4 + 5 + 4          # 50 -> 25 -> 13 binary, 8: 2, binary 1
    assert sc["rounds"] == want["rounds"] + (protocol == "rep3")
    assert sc["bytes_sent"] == want["bytes"] + 8 * 2 * (protocol == "rep3")

"""One-hot rows as two small one-hots (functions/factored.py) and the factored top-k: the
rows equal the dense one-hot (plaintext and both protocols), the products equal the dense
products, the block width minimises the words add2 opens, the top-k's two one-hots open in
one round, and bad input is refused."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpcache
from mpcache.functions.factored import FactoredOneHot, block_width, factor_indices
from mpcache.nn import functional as F

EX = settings(max_examples=8, deadline=None)


def _dense(index, n):
    out = np.zeros(index.shape + (n,), np.int64)
    np.put_along_axis(out, index[..., None], 1, axis=-1)
    return out


@st.composite
def layouts(draw):
    n = draw(st.integers(1, 40))
    k = draw(st.integers(1, n))
    h = draw(st.integers(1, 3))
    n2 = draw(st.sampled_from([1, 2, 4, 8, 64]))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    index = np.stack([rng.choice(n, k, replace=False) for _ in range(h)])
    return n, n2, index, rng


@EX
@given(case=layouts(), w=st.integers(1, 3))
def test_plaintext_factors_are_the_dense_rows(case, w):
    n, n2, index, rng = case
    g = FactoredOneHot.from_indices(index, n, n2)
    dense = _dense(index, n)
    h, k = index.shape
    assert g.shape == dense.shape and g.n1 == -(-n // n2)
    np.testing.assert_array_equal(g.dense(), dense)
    np.testing.assert_array_equal(g.sum(axis=-2), dense.sum(axis=-2))
    x = rng.normal(size=(h, w, n))
    p = rng.normal(size=(h, w, k))
    np.testing.assert_allclose(g.contract(x), x @ dense.transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(g.scatter(p), p @ dense, atol=1e-12)
    y = rng.normal(size=(h, n, 2))
    np.testing.assert_allclose(g @ y, dense @ y, atol=1e-12)


def test_block_width_minimises_the_opened_words():
    for n, m in ((506, 4), (1018, 4), (93, 4), (2000, 1), (7, 3), (1, 1)):
        n2 = block_width(n, m)
        cost = lambda b: -(-n // b) + b + 2 * m * -(-n // b)   # noqa: E731
        assert n2 & (n2 - 1) == 0
        assert cost(n2) == min(cost(1 << e) for e in range(0, 14))
    assert (block_width(506, 4), block_width(1018, 4)) == (64, 128)
    with pytest.raises(ValueError, match="n >= 1 and m >= 1"):
        block_width(0, 4)


def test_bad_factors_refused():
    with pytest.raises(ValueError, match="do not tile"):
        FactoredOneHot(np.zeros((1, 2, 3 + 4), np.int64), 3, 4, 20)
    with pytest.raises(ValueError, match="factors of width 6"):
        FactoredOneHot(np.zeros((1, 2, 6), np.int64), 3, 4, 10)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        factor_indices(np.array([[5]]), 5, 2)
    g = FactoredOneHot.from_indices(np.array([[1, 3]]), 5, 2)
    with pytest.raises(ValueError, match="sums over its rows only"):
        g.sum(axis=-1)
    with pytest.raises(ValueError, match="pass ordered=False"):
        F.top_k_onehot(np.arange(6.0), 2, factor=2)


def _top_k_job(party, x, k, n2, w):
    xs = party.share(x if party.id == 0 else None, owner=0)
    with party.scope("topk"):
        g = xs.top_k(k, ordered=False, factor=n2)
    g.persist()
    h, n = x.shape
    y = party.share(np.arange(h * w * n, dtype=np.float64).reshape(h, w, n) / 64
                    if party.id == 0 else None, owner=0)
    p = party.share(np.arange(h * w * k, dtype=np.float64).reshape(h, w, k) / 8
                    if party.id == 0 else None, owner=0)
    return (g.reveal(to=0), g.parts.reveal(to=0), g.sum(axis=-2).reveal(to=0),
            g.contract(y).reveal(to=0), g.scatter(p).reveal(to=0))


@EX
@given(seed=st.integers(0, 2 ** 16), n=st.integers(2, 40), n2=st.sampled_from([2, 4, 8]),
       w=st.integers(1, 2), data=st.data())
def test_secret_factored_top_k(protocol, seed, n, n2, w, data):
    """The secret top-k's factors are one-hot rows whose outer products are the dense
    top-k's rows (as a set: the order is the secret shuffle's), and the secret products
    equal the plaintext ones."""
    k = data.draw(st.integers(1, n))
    rng = np.random.default_rng(seed)
    x = rng.integers(-4, 5, size=(2, n)) / 4.0          # ties: the lower index wins
    res = mpcache.Session(protocol, seed=seed).run(_top_k_job, x, k, n2, w)
    dense, parts, ind, con, sca = res.output
    want = F.top_k_indices(x, k, axis=-1)
    np.testing.assert_array_equal(np.sort(np.argmax(dense, -1), -1), want)
    n1 = -(-n // n2)
    assert parts.shape == (2, k, n1 + n2)
    assert (parts[..., :n1].sum(-1) == 1).all() and (parts[..., n1:].sum(-1) == 1).all()
    np.testing.assert_array_equal(ind, _dense(want, n).sum(-2))
    y = np.arange(2 * w * n, dtype=np.float64).reshape(2, w, n) / 64
    p = np.arange(2 * w * k, dtype=np.float64).reshape(2, w, k) / 8
    np.testing.assert_allclose(con, y @ dense.transpose(0, 2, 1), atol=1e-4)
    np.testing.assert_allclose(sca, p @ dense, atol=1e-4)


def _onehot_open(protocol, factor):
    x = np.random.default_rng(3).normal(size=(3, 200))

    def job(party):
        xs = party.share(x if party.id == 0 else None, owner=0)
        xs.top_k(10, ordered=False, factor=factor)
    return mpcache.Session(protocol, seed=0).run(job).scope("topk/onehot")


def test_factored_top_k_opens_both_indices_in_one_round(protocol):
    """Both one-hots of a row open together: the same one round as the dense top-k's
    one-hot, twice its bytes (one 1-byte index opening per factor: N <= 256 here)."""
    dense, fact = _onehot_open(protocol, None), _onehot_open(protocol, 16)
    assert fact["rounds"] == dense["rounds"] == 1
    assert fact["bytes_sent"] == 2 * dense["bytes_sent"]


def test_factored_top_k_bad_input(protocol):
    def job(party, **kw):
        xs = party.share(np.zeros((2, 8)) if party.id == 0 else None, owner=0)
        xs.top_k(3, **kw)
    for kw, msg in (({"factor": 4}, "pass ordered=False"),
                    ({"factor": 0, "ordered": False}, "positive integer"),
                    ({"factor": 2.5, "ordered": False}, "positive integer")):
        with pytest.raises(ValueError, match=msg):
            mpcache.Session(protocol, seed=0).run(job, **kw)

"""Persistent right operands beyond 2-D weights (mpcache/mpc/persistent.py): batched operands,
views of persisted tensors, partially persisted buffers (the KV cache), and decoding steps
with a persisted cache prefix -- same values as the ordinary path on both protocols; add2
stops opening the persisted part (8 bytes per element per party), rep3 costs the same."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mpcache

E = 8


def _share(p, x, owner, integer=False):
    return p.share(x if p.id == owner else None, owner, integer=integer)


# ------------------------------------------------------------------ batched operands
@settings(max_examples=8)
@given(h=st.integers(1, 3), m=st.integers(1, 4), k=st.integers(1, 6), q=st.integers(1, 6),
       bcast=st.booleans(), seed=st.integers(0, 2**16))
def test_batched_persist_same_values_and_bytes(h, m, k, q, bcast, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (1 if bcast else h, m, k))
    xi = rng.integers(-9, 9, x.shape)
    w = rng.uniform(-2, 2, (h, k, q))
    for protocol in ("rep3", "add2"):
        def job(p):
            W, W2 = _share(p, w, 1), _share(p, w, 1)
            with p.scope("persist"):
                W.persist()
            X, Xi = _share(p, x, 0), _share(p, xi, 0, integer=True)
            with p.scope("plain_ring"):
                r0 = Xi @ W2
            with p.scope("pers_ring"):
                r1 = Xi @ W
            with p.scope("plain_fixed"):
                y0 = X @ W2
            with p.scope("pers_fixed"):
                y1 = X @ W
            return [t.reveal(0) for t in (r0, r1, y0, y1)]
        res = mpcache.Session(protocol).run(job)
        r0, r1, y0, y1 = res.output
        np.testing.assert_array_equal(r0, r1)                     # exact ring products
        assert np.max(np.abs(y1 - x @ w)) < 1e-4
        assert np.max(np.abs(y1 - y0)) <= 2 * 2.0 ** -18          # truncation: +-1 ulp
        pr, pf = res.scope("pers_ring"), res.scope("pers_fixed")
        qr, qf = res.scope("plain_ring"), res.scope("plain_fixed")
        if protocol == "add2":
            assert qr["bytes_sent"] - pr["bytes_sent"] == E * w.size
            assert qf["bytes_sent"] - pf["bytes_sent"] == E * w.size
            assert pr["bytes_sent"] == E * x.size and pr["rounds"] == 1
            assert res.scope("persist")["bytes_sent"] == E * w.size
        else:
            assert (pr["bytes_sent"], pf["bytes_sent"]) == (qr["bytes_sent"], qf["bytes_sent"])
            assert (pr["rounds"], pf["rounds"]) == (qr["rounds"], qf["rounds"])


# ------------------------------------------------------------------ views
VIEWS = {
    # name: (view of K [h, n, d], left operand shape for an integer product with the view)
    "transpose": (lambda K: K.transpose((0, 2, 1)), (2, 3, 4)),            # q @ K^T
    "slice": (lambda K: K[:, 2:7], (2, 3, 5)),
    "slice_reshape": (lambda K: K[:, 1:9].reshape(2, 4, 8), (1, 3, 4)),   # cluster blocks
    "fancy": (lambda K: K[:, np.array([0, 5, 5, 9])], (2, 1, 4)),
    "swapaxes": (lambda K: K.swapaxes(-1, -2), (2, 1, 4)),
    "copy_T": (lambda K: K.copy().T.T, (2, 2, 10)),
}


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_views_of_persisted_tensor(protocol, view):
    rng = np.random.default_rng(7)
    k = rng.uniform(-3, 3, (2, 10, 4))
    fn, lshape = VIEWS[view]
    x = rng.integers(-5, 5, lshape)

    def job(p):
        K, K2 = _share(p, k, 0), _share(p, k, 0)
        K.persist()
        V = fn(K)
        assert V.persisted
        X = _share(p, x, 1, integer=True)
        with p.scope("plain"):
            a = X @ fn(K2)
        with p.scope("pers"):
            b = X @ V
        return a.reveal(0), b.reveal(0)
    res = mpcache.Session(protocol).run(job)
    a, b = res.output
    np.testing.assert_array_equal(a, b)
    want = x @ np.asarray(fn(k) if view != "copy_T" else k)
    np.testing.assert_allclose(b, want, atol=1e-4)
    saved = res.scope("plain")["bytes_sent"] - res.scope("pers")["bytes_sent"]
    n_right = int(np.prod(np.shape(fn(k) if view != "copy_T" else k)))
    assert saved == (E * n_right if protocol == "add2" else 0)


def test_value_changing_ops_drop_the_state(protocol):
    def job(p):
        K = _share(p, np.ones((2, 3, 3)), 0).persist()
        return [t.persisted for t in (K + 1.0, K * 2, -K, K * K, K.sum(axis=0),
                                      K.transpose((0, 2, 1)).reshape(2, 9), K.with_frac(0))]
    out = mpcache.Session(protocol).run(job).output
    assert out == [False] * 5 + [True, True]


# ------------------------------------------------------------------ partial coverage
def test_grown_buffer_and_concatenation_open_only_fresh_rows(protocol):
    """A persisted prefix grown with new rows (the KV cache) and a concatenation of a
    persisted and a fresh part: add2 opens only the fresh rows; values unchanged."""
    rng = np.random.default_rng(3)
    h, n, t, d = 2, 9, 3, 4
    k, new = rng.uniform(-2, 2, (h, n, d)), rng.uniform(-2, 2, (h, t, d))
    q = rng.uniform(-2, 2, (h, 1, d))
    oh = np.zeros((1, 2, n + t), np.int64)
    oh[0, 0, 1], oh[0, 1, n + 1] = 1, 1
    full = np.concatenate([k, new], axis=1)

    def job(p):
        K, N, Q = _share(p, k, 0), _share(p, new, 0), _share(p, q, 1)
        O = _share(p, oh, 1, integer=True)
        buf = K.persist()
        buf = N[:, :1].grow_into(buf, n)             # regrow: capacity > n + 1
        buf = N[:, 1:].grow_into(buf, n + 1)         # in place
        kv = buf[:, :n + t]
        cat = mpcache.concatenate([K[:, :4], N, K[:, 4:]], axis=1)
        with p.scope("scores"):
            s = Q @ kv.transpose((0, 2, 1))
        with p.scope("gather"):
            g = O @ kv
        with p.scope("cat"):
            c = O @ cat
        return s.reveal(0), g.reveal(0), c.reveal(0)
    res = mpcache.Session(protocol).run(job)
    s, g, c = res.output
    np.testing.assert_allclose(s, q @ full.transpose(0, 2, 1), atol=1e-4)
    np.testing.assert_allclose(g, oh @ full, atol=1e-5)
    cat_plain = np.concatenate([k[:, :4], new, k[:, 4:]], axis=1)
    np.testing.assert_allclose(c, oh @ cat_plain, atol=1e-5)
    if protocol == "add2":
        fresh = E * h * t * d
        assert res.scope("scores")["bytes_sent"] == E * q.size + fresh + E * h * (n + t)
        assert res.scope("gather")["bytes_sent"] == E * 2 * (n + t) + fresh
        assert res.scope("cat")["bytes_sent"] == E * 2 * (n + t) + fresh


PATTERNS = ("cols", "rows", "scattered")


def _fresh_pattern(kind, rng, h, k, n):
    m = np.zeros((h, k, n), bool)
    if kind == "cols":
        m[:, :, rng.choice(n, rng.integers(1, n + 1), replace=False)] = True
    elif kind == "rows":
        m[:, rng.choice(k, rng.integers(1, k + 1), replace=False), :] = True
    else:
        m[rng.random(m.shape) < 0.3] = True
        m[0, 0, 0] = True
        m[-1, -1, -1] = False
    return m


@settings(max_examples=12)
@given(kind=st.sampled_from(PATTERNS), h=st.integers(1, 3), m=st.integers(1, 3),
       k=st.integers(1, 5), n=st.integers(1, 6), bcast=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fresh_lines_patch_equals_the_general_path(kind, h, m, k, n, bcast, seed):
    """Fresh elements that are whole rows or columns of W (a grown KV cache) are patched
    into the product (persistent.FreshLines) instead of copying W's arrays: the SAME ring
    values, bytes and rounds as the general path, on any pattern, and the right product."""
    from mpcache.mpc import add2, persistent
    rng = np.random.default_rng(seed)
    w = rng.integers(-50, 50, (h, k, n))
    x = rng.integers(-50, 50, (1 if bcast else h, m, k))
    fresh = _fresh_pattern(kind, rng, h, k, n)
    lines = persistent.fresh_lines(fresh)
    if kind != "scattered":              # (whole W fresh is both: either axis serves)
        assert lines is not None
        assert lines.take(fresh).size == fresh.sum() and lines.take(fresh).all()

    def job(p):
        W = _share(p, w, 1, integer=True).persist()
        st_ = W._persist
        W._persist = persistent.Persisted(st_.arrays, fresh[None])   # mark them fresh
        X = _share(p, x, 0, integer=True)
        with p.scope("op"):
            y = X @ W
        return y.reveal(0)

    out = {}
    for use_lines in (True, False):
        orig = add2.fresh_lines
        if not use_lines:
            add2.fresh_lines = lambda f: None
        try:
            res = mpcache.Session("add2", seed=seed).run(job)
        finally:
            add2.fresh_lines = orig
        out[use_lines] = (res.output, res.scope("op")["bytes_sent"], res.scope("op")["rounds"])
    assert np.array_equal(out[True][0], out[False][0])
    assert out[True][1:] == out[False][1:] == (E * (x.size + int(fresh.sum())), 1)
    np.testing.assert_array_equal(out[True][0], x @ w)


def test_fully_unpersisted_buffer_rows_are_fresh_after_overwrite():
    """Rows overwritten in a persisted buffer are new values: they must be masked afresh
    (the old B there is never used again), and the product stays right."""
    k = np.arange(24, dtype=float).reshape(1, 6, 4) / 10

    def job(p):
        K = _share(p, k, 0).persist()
        K = _share(p, np.full((1, 2, 4), 5.0), 0).grow_into(K, 2)    # overwrite rows 2, 3
        X = _share(p, np.ones((1, 1, 6), np.int64), 1, integer=True)
        with p.scope("op"):
            y = X @ K
        return y.reveal(0)
    res = mpcache.Session("add2").run(job)
    want = k.copy()
    want[:, 2:4] = 5.0
    np.testing.assert_allclose(res.output, np.ones((1, 1, 6)) @ want, atol=1e-5)
    assert res.scope("op")["bytes_sent"] == E * (6 + 2 * 4)


# ------------------------------------------------------------------ errors, freshness
def test_bad_input(protocol):
    def job(p):
        v = _share(p, np.ones(5), 0)
        with pytest.raises(ValueError, match="matrix or a batch of matrices"):
            v.persist()
        with pytest.raises(ValueError, match="matmul shape mismatch"):
            _share(p, np.ones((2, 3)), 0) @ _share(p, np.ones((2, 3)), 1).persist()
        return True
    assert mpcache.Session(protocol).run(job).output


def test_each_persist_draws_a_fresh_mask():
    """Two persisted tensors holding the SAME value open different F = W - B (fresh B);
    persisting a fully persisted tensor again opens nothing."""
    def job(p):
        a, b = _share(p, np.ones((3, 3)), 0), _share(p, np.ones((3, 3)), 0)
        a.persist(), b.persist()
        with p.scope("again"):
            a.persist()
        if p.id == 2:
            return None
        return np.array_equal(a._persist.arrays["F"], b._persist.arrays["F"])
    res = mpcache.Session("add2").run(job)
    assert res.outputs[0] is False and res.outputs[1] is False
    assert res.scope("again")["bytes_sent"] == 0

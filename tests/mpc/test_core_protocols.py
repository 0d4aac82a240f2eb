"""reveal(op(share(x))) == op(x): exactly on the ring, within tolerance in fixed point,
for both protocols, over random shapes and values including negatives, zeros and edges."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mpcache
from mpcache import kernels
from mpcache.runtime import Session
from mpcache.testing import assert_close, fixed_arrays, ring_arrays, run_op

ULP = 2.0**-18
EX = settings(max_examples=15)


@EX
@given(x=ring_arrays())
def test_share_reveal_ring_exact(protocol, x):
    for owner in (0, 1):
        out, _ = run_op(protocol, lambda p, a: a, x, integer=(0,), owners=(owner,))
        assert np.array_equal(out, x)


@EX
@given(x=fixed_arrays(lo=-2.0**25, hi=2.0**25))
def test_share_reveal_fixed(protocol, x):
    out, _ = run_op(protocol, lambda p, a: a, x)
    assert_close(out, x, atol=ULP)


@EX
@given(data=st.data())
def test_ring_add_sub_neg_mul_exact(protocol, data):
    shape = data.draw(hnp.array_shapes(max_dims=3, max_side=5))
    x, y = data.draw(ring_arrays(shape)), data.draw(ring_arrays(shape))
    with np.errstate(over="ignore"):
        expect = [x + y, x - y, -x, x * y, x * 7 - 3]
    out, _ = run_op(protocol, lambda p, a, b: mpcache.stack(
        [a + b, a - b, -a, a * b, a * 7 - 3]), x, y, integer=(0, 1))
    assert np.array_equal(out, np.stack(expect))


@EX
@given(data=st.data())
def test_fixed_mul_add_public(protocol, data):
    shape = data.draw(hnp.array_shapes(max_dims=3, max_side=5))
    x = data.draw(fixed_arrays(shape, lo=-3000, hi=3000))
    y = data.draw(fixed_arrays(shape, lo=-3000, hi=3000))
    c = data.draw(st.floats(-100, 100))
    out, _ = run_op(protocol, lambda p, a, b: mpcache.stack([a * b, a + b, a * c, a + c, c - a]),
                    x, y)
    # each encoding rounds by ULP/2, truncation adds at most 1 ULP
    mag = np.abs(x).max() + np.abs(y).max() + abs(c)
    assert_close(out[0], x * y, atol=(mag + 4) * ULP, what="mul")
    assert_close(out[1], x + y, atol=2 * ULP, what="add")
    assert_close(out[2], x * c, atol=(mag + 4) * ULP, what="mul public")
    assert_close(out[3], x + c, atol=2 * ULP, what="add public")
    assert_close(out[4], c - x, atol=2 * ULP, what="rsub public")


@EX
@given(data=st.data())
def test_broadcasting_products(protocol, data):
    m, n = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    x = data.draw(fixed_arrays((m, 1), lo=-50, hi=50))
    y = data.draw(fixed_arrays((n,), lo=-50, hi=50))
    out, _ = run_op(protocol, lambda p, a, b: a * b + a, x, y)
    assert_close(out, x * y + x, atol=(100 + 6) * ULP)


@EX
@given(data=st.data())
def test_matmul_ring_exact(protocol, data):
    m, k, n = (data.draw(st.integers(1, 6)) for _ in range(3))
    x, y = data.draw(ring_arrays((m, k))), data.draw(ring_arrays((k, n)))
    out, _ = run_op(protocol, lambda p, a, b: a @ b, x, y, integer=(0, 1))
    with np.errstate(over="ignore"):
        assert np.array_equal(out, (x.view(np.uint64) @ y.view(np.uint64)).view(np.int64))


@EX
@given(data=st.data())
def test_matmul_fixed(protocol, data):
    batch = data.draw(st.sampled_from([(), (2,)]))
    m, k, n = (data.draw(st.integers(1, 8)) for _ in range(3))
    x = data.draw(fixed_arrays(batch + (m, k), lo=-40, hi=40))
    y = data.draw(fixed_arrays((k, n), lo=-40, hi=40))
    out, _ = run_op(protocol, lambda p, a, b: a @ b, x, y)
    assert_close(out, x @ y, atol=(80 * k + 4) * ULP)


@EX
@given(data=st.data())
def test_matmul_with_public(protocol, data):
    m, k, n = (data.draw(st.integers(1, 6)) for _ in range(3))
    x = data.draw(fixed_arrays((m, k), lo=-40, hi=40))
    w = data.draw(fixed_arrays((k, n), lo=-40, hi=40))
    v = data.draw(fixed_arrays((k,), lo=-40, hi=40))
    wi = data.draw(hnp.arrays(np.int64, (k, n), elements=st.integers(-50, 50)))
    res = run_op(protocol, lambda p, a: mpcache.concatenate(
        [(a @ w).reshape(-1), (w.T @ a.T).reshape(-1), (a @ v).reshape(-1),
         (a @ wi).reshape(-1), (a[0] @ w).reshape(-1), (v @ a.T).reshape(-1)]), x)[0]
    expect = np.concatenate([(x @ w).ravel(), (w.T @ x.T).ravel(), (x @ v).ravel(),
                             (x @ wi).ravel(), (x[0] @ w).ravel(), (v @ x.T).ravel()])
    assert_close(res, expect, atol=(80 * k + 4) * ULP)


@EX
@given(data=st.data())
def test_structural_ops(protocol, data):
    shape = data.draw(hnp.array_shapes(min_dims=2, max_dims=3, max_side=5))
    x = data.draw(fixed_arrays(shape, lo=-100, hi=100))

    def op(p, a):
        parts = [a.T.reshape(-1), a.transpose(1, 0, *range(2, a.ndim)).reshape(-1),
                 a[..., ::-1].reshape(-1), a[0].reshape(-1), a.sum(axis=0).reshape(-1),
                 a.sum(axis=-1, keepdims=True).reshape(-1), a.sum().reshape(1),
                 a.mean(axis=1).reshape(-1), mpcache.concatenate([a, a], axis=1).reshape(-1),
                 a.expand_dims(0).squeeze(0).reshape(-1), a.swapaxes(0, -1).reshape(-1)]
        return mpcache.concatenate(parts)
    out, _ = run_op(protocol, op, x)
    expect = np.concatenate([
        x.T.ravel(), x.transpose(1, 0, *range(2, x.ndim)).ravel(), x[..., ::-1].ravel(),
        x[0].ravel(), x.sum(0).ravel(), x.sum(-1, keepdims=True).ravel(), [x.sum()],
        x.mean(1).ravel(), np.concatenate([x, x], 1).ravel(), x.ravel(),
        np.swapaxes(x, 0, -1).ravel()])
    # mean multiplies by the public 1/n, encoded to ULP/2: error <= |sum| ULP/2 + 1 ULP
    assert_close(out, expect, atol=(np.abs(x).sum() + x.size * 2) * ULP)


@pytest.mark.parametrize("v", [2.0**25 - 1, -(2.0**25) + 1, 0.0, ULP, -ULP])
def test_truncation_exact_at_range_edges(protocol, v):
    """The exact truncation holds up to |x| < 2^62 in the ring (|product| < 2^26 here)."""
    x = np.array([v, v / 3, 1.0], dtype=np.float64)
    y = np.array([1.0, 3.0, v])
    out, _ = run_op(protocol, lambda p, a, b: a * b, x, y)
    assert_close(out, x * y, atol=(abs(v) + 8) * ULP)


def test_truncation_never_fails_on_many_values(protocol):
    """Local (SecureML-style) truncation would fail about once per 2^17 products of this
    size; the dealer-assisted exact truncation must not fail at all."""
    rng = np.random.default_rng(7)
    x = rng.uniform(-1000, 1000, 200_000)
    y = rng.uniform(-1000, 1000, 200_000)
    out, _ = run_op(protocol, lambda p, a, b: a * b, x, y)
    assert np.max(np.abs(out - x * y)) < (2000 + 4) * ULP


def test_integer_and_fixed_mix(protocol):
    onehot = np.array([[0, 1, 0], [1, 0, 0]])
    table = np.array([[1.5, -2.0], [0.25, 4.0], [7.0, -8.5]])
    out, res = run_op(protocol, lambda p, h, t: (h @ t) + h.sum(axis=1, keepdims=True),
                      onehot, table, integer=(0,))
    assert_close(out, onehot @ table + 1, atol=ULP)


def test_different_fixed_point_configs(protocol):
    for f in (8, 12, 24):
        sess = mpcache.Session(protocol, fxp=mpcache.FixedPoint(f))
        x = np.array([1.25, -3.5])
        out, _ = run_op(protocol, lambda p, a: a * a * 0.5, x, session=sess)
        assert_close(out, x * x * 0.5, atol=8 * 2.0**-f)


def test_grow_into_matches_concatenate(protocol):
    rng = np.random.default_rng(0)
    chunks = [rng.uniform(-5, 5, (2, t, 3)) for t in (4, 1, 1, 20, 1)]

    def job(p):
        buf, n = None, 0
        for c in chunks:
            s = p.share(c if p.id == 0 else None, 0)
            buf = s if buf is None else s.grow_into(buf, n)
            n += c.shape[1]
        return p.reveal(buf[:, :n], 0)
    got = mpcache.Session(protocol).run(job).output
    assert_close(got, np.concatenate(chunks, axis=1), atol=ULP)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity: Linux only")
def test_latency_bound_blocks_share_one_core_unless_turned_off(monkeypatch):
    """Inside Party.latency_bound() the online parties run on one core (cheap hand-offs)
    and add2's dealer on the others; outside, and with MPCACHE_PIN=0 or pin=False, the
    scheduler is left alone; the caller's own affinity is never changed."""
    mine = os.sched_getaffinity(0)
    core = {min(mine)}

    def job(p):
        outside = os.sched_getaffinity(0)
        with p.latency_bound():
            inside = os.sched_getaffinity(0)
        return outside, inside, os.sched_getaffinity(0)

    res = Session("rep3", pin=True).run(job)
    assert res.outputs == [(mine, core, mine)] * 3
    res = Session("add2", pin=True).run(job)
    assert [o[1] for o in res.outputs] == [core, core, (mine - core) or mine]

    def side(p):                  # the online parties' big products may use the other cores
        with p.latency_bound():
            inside = getattr(kernels._SIDE, "cores", None)
        return inside, getattr(kernels._SIDE, "cores", None)

    other = frozenset(mine - core) or None
    assert Session("rep3", pin=True).run(side).outputs == [(other, None)] * 3
    assert Session("add2", pin=True, processes=()).run(side).outputs == \
        [(other, None), (other, None), (None, None)]
    assert Session("add2", pin=False).run(side).outputs == [(None, None)] * 3
    assert os.sched_getaffinity(0) == mine
    assert Session("add2", pin=False).run(job).outputs == [(mine, mine, mine)] * 3
    monkeypatch.setenv("MPCACHE_PIN", "0")
    assert Session("rep3").run(job).outputs == [(mine, mine, mine)] * 3

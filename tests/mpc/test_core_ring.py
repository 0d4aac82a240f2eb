"""Ring, fixed point and the local ring matmul kernel."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpcache import kernels
from mpcache.kernels import matmul_shape, ring_matmul
from mpcache.ring import FixedPoint, FixedPointRangeError, arshift, encode_int, to_signed

u64 = st.integers(0, 2**64 - 1)


def u64_arrays(shape):
    return hnp.arrays(np.uint64, shape, elements=u64)


MODES = pytest.mark.parametrize("mode", kernels.MODES)


@MODES
@settings(max_examples=40)
@given(data=st.data(), m=st.integers(1, 20), k=st.integers(1, 40), n=st.integers(1, 9),
       batch=st.sampled_from([(), (2,), (3, 1)]))
def test_ring_matmul_exact(mode, data, m, k, n, batch):
    a = data.draw(u64_arrays(batch + (m, k)))
    b = data.draw(u64_arrays((k, n)))
    assert np.array_equal(ring_matmul(a, b, mode), np.matmul(a, b))


@MODES
@settings(max_examples=30)
@given(data=st.data(), m=st.integers(1, 5), k=st.integers(1, 20), n=st.integers(1, 30),
       batches=st.sampled_from([((), ()), ((3,), (3,)), ((1,), (4,)), ((4,), (1,)),
                                ((2, 1), (1, 3))]))
def test_ring_matmul_batched_and_transposed(mode, data, m, k, n, batches):
    """Batched operands broadcast like numpy; a right operand stored transposed (``K.T``,
    read as dot products by the direct kernel) gives the same result."""
    a = data.draw(u64_arrays(batches[0] + (m, k)))
    bt = data.draw(u64_arrays(batches[1] + (n, k)))
    b = np.swapaxes(bt, -1, -2)
    assert np.array_equal(ring_matmul(a, b, mode), np.matmul(a, b))
    assert np.array_equal(ring_matmul(a, np.ascontiguousarray(b), mode), np.matmul(a, b))


@MODES
@pytest.mark.parametrize("m,k,n", [(64, 300, 70), (5, 2000, 9), (16, 3, 4096), (40, 65, 33),
                                   # wide outputs (kernels._WIDE_N): 8 rows of b per pass,
                                   # k with and without a remainder, across a row tile
                                   (1, 8, 2048), (17, 19, 2051), (3, 777, 3072)])
def test_ring_matmul_exact_larger(mode, m, k, n):
    rng = np.random.default_rng(m * k)
    a = rng.integers(0, 2**64, (m, k), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (k, n), dtype=np.uint64, endpoint=False)
    assert np.array_equal(ring_matmul(a, b, mode), a @ b)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity: Linux only")
@settings(max_examples=15, deadline=None)
@given(data=st.data(), m=st.integers(1, 4), k=st.integers(1, 30), n=st.integers(1, 20),
       batch=st.sampled_from([(), (3,), (70,)]))
def test_side_core_products_are_the_same_products(data, m, k, n, batch):
    """Inside kernels.side_core(), products of at least SIDE_CORE_MACS multiply-adds run on
    the worker thread (counted here) and give numpy's exact result; outside, none do."""
    a = data.draw(u64_arrays(batch + (m, k)))
    b = data.draw(u64_arrays((k, n)))
    calls = []
    orig = kernels.SIDE_CORE.run

    def counting(fn):
        ran = orig(fn)
        calls.append(ran)
        return ran

    side = (os.sched_getaffinity(0) - {min(os.sched_getaffinity(0))}) or os.sched_getaffinity(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "SIDE_CORE_MACS", 1)
        mp.setattr(kernels.SIDE_CORE, "run", counting)
        assert np.array_equal(ring_matmul(a, b), np.matmul(a, b))
        assert calls == [False]                       # outside a side_core block
        with kernels.side_core(side):
            assert np.array_equal(ring_matmul(a, b), np.matmul(a, b))
        assert calls == [False, True]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity: Linux only")
@settings(max_examples=15, deadline=None)
@given(data=st.data(), m=st.integers(1, 3), k=st.integers(1, 40), n=st.integers(1, 30),
       transposed=st.booleans(), idle=st.booleans())
def test_products_split_between_side_core_and_caller(data, m, k, n, transposed, idle):
    """While the probe says every other party on the caller's core waits, a big single
    product is split in halves (side core + caller; halves of k, or of n for a right
    operand stored transposed, K.T): still numpy's exact result.  Otherwise it is not."""
    a = data.draw(u64_arrays((m, k)))
    b = data.draw(u64_arrays((n, k))).T if transposed else data.draw(u64_arrays((k, n)))
    split = []
    orig = kernels.SIDE_CORE.run

    def counting(fn, own=None):
        ran = orig(fn, own=own)
        split.append(own is not None and ran)
        return ran

    side = (os.sched_getaffinity(0) - {min(os.sched_getaffinity(0))}) or os.sched_getaffinity(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "SIDE_CORE_MACS", 1)
        mp.setattr(kernels.SIDE_CORE, "run", counting)
        with kernels.side_core(side, lambda: idle):
            assert np.array_equal(ring_matmul(a, b), np.matmul(a, b))
    assert split == [idle]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity: Linux only")
@pytest.mark.parametrize("idle", [False, True])
def test_side_core_work_is_reported_to_its_caller(idle):
    """The worker's CPU time on a caller's product reaches the caller's ``on_cpu`` (once
    per job, whole or split): work done off the caller's own clock is still counted."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 2**64, (64, 512), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (512, 256), dtype=np.uint64, endpoint=False)
    side = os.sched_getaffinity(0)
    got = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kernels, "SIDE_CORE_MACS", 1)
        with kernels.side_core(side, lambda: idle, got.append):
            assert np.array_equal(ring_matmul(a, b), np.matmul(a, b))
        assert np.array_equal(ring_matmul(a, b), np.matmul(a, b))   # outside: no report
    assert len(got) == 1 and 0.0 < got[0] < 5.0, got


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity: Linux only")
def test_side_core_busy_or_failing_worker():
    """A second product while the worker is busy runs in its own thread; an error raised
    on the worker reaches the caller, and the worker keeps serving."""
    import threading
    side = os.sched_getaffinity(0)
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(10)

    def other_party():
        with kernels.side_core(side):
            kernels.SIDE_CORE.run(slow)

    with kernels.side_core(side):
        t = threading.Thread(target=other_party)
        t.start()
        assert started.wait(10)
        assert kernels.SIDE_CORE.run(lambda: None) is False      # busy: caller runs it
        release.set()
        t.join(10)

        def boom():
            raise ValueError("kernel failed")
        with pytest.raises(ValueError, match="kernel failed"):
            kernels.SIDE_CORE.run(boom)
        assert kernels.SIDE_CORE.run(lambda: None) is True


def test_ring_matmul_chunks_inner_dimension(monkeypatch):
    monkeypatch.setattr(kernels, "_K_CHUNK", 7)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**64, (40, 30), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (30, 50), dtype=np.uint64, endpoint=False)
    assert np.array_equal(ring_matmul(a, b, "limb"), a @ b)


@MODES
def test_ring_matmul_worst_case_operands(mode):
    a = np.full((8, 4096), 2**64 - 1, dtype=np.uint64)
    b = np.full((4096, 8), 2**64 - 1, dtype=np.uint64)
    assert np.array_equal(ring_matmul(a, b, mode), a @ b)


def test_ring_matmul_vectors_and_errors(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, (7,), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (7, 5), dtype=np.uint64, endpoint=False)
    assert np.array_equal(ring_matmul(a, b), a @ b)
    assert np.array_equal(ring_matmul(b.T, a), b.T @ a)
    with pytest.raises(ValueError, match="shape mismatch"):
        ring_matmul(b, b)
    monkeypatch.setenv("MPCACHE_MATMUL", "blas")
    with pytest.raises(ValueError, match="MPCACHE_MATMUL"):
        ring_matmul(a, b)


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=2),
                  elements=st.floats(-2**25, 2**25, allow_nan=False)))
def test_fixed_point_roundtrip(x):
    fx = FixedPoint(18)
    assert np.all(np.abs(fx.decode(fx.encode(x)) - x) <= 0.5 / fx.scale)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 2.0**26, -(2.0**27)])
def test_fixed_point_rejects_bad_values(bad):
    with pytest.raises(FixedPointRangeError):
        FixedPoint(18).encode(np.array([1.0, bad]))


def test_fixed_point_config():
    assert FixedPoint(12).max_value == 2.0**38
    with pytest.raises(ValueError):
        FixedPoint(40)


@given(st.integers(-2**63, 2**63 - 1), st.integers(0, 62))
def test_signed_view_and_arshift(v, k):
    u = encode_int(np.array([v]))
    assert int(to_signed(u)[0]) == v
    assert int(to_signed(arshift(u, k))[0]) == v >> k


@MODES
def test_ring_matmul_views_of_a_larger_buffer(mode):
    """``q @ K.T`` where K is the filled part of a cache buffer with spare capacity."""
    rng = np.random.default_rng(5)
    buf = rng.integers(0, 2**64, (3, 50, 8), dtype=np.uint64, endpoint=False)
    keys = buf[:, :37]
    q = rng.integers(0, 2**64, (3, 2, 8), dtype=np.uint64, endpoint=False)
    kt = keys.transpose(0, 2, 1)
    assert np.array_equal(ring_matmul(q, kt, mode), np.matmul(q, kt))
    p = rng.integers(0, 2**64, (3, 2, 37), dtype=np.uint64, endpoint=False)
    assert np.array_equal(ring_matmul(p, keys, mode), np.matmul(p, keys))


@MODES
def test_ring_matmul_many_small_batches(mode):
    rng = np.random.default_rng(6)
    a = rng.integers(0, 2**64, (300, 1, 5), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (300, 5, 2), dtype=np.uint64, endpoint=False)
    assert np.array_equal(ring_matmul(a, b, mode), np.matmul(a, b))
    bt = rng.integers(0, 2**64, (300, 2, 5), dtype=np.uint64, endpoint=False)
    assert np.array_equal(ring_matmul(a, bt.transpose(0, 2, 1), mode),
                          np.matmul(a, bt.transpose(0, 2, 1)))


@settings(max_examples=40)
@given(data=st.data())
def test_matmul_shape_follows_numpy(data):
    """matmul_shape from shapes alone equals numpy's result shape (1-D, batched,
    broadcast batches), and refuses what numpy refuses."""
    k = data.draw(st.integers(1, 4))
    batch = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, max_side=3))
    sa = data.draw(st.sampled_from([(k,), (2, k), batch + (3, k)]))
    sb = data.draw(st.sampled_from([(k,), (k, 5), batch[-1:] + (k, 2)]))
    want = np.matmul(np.zeros(sa, np.int8), np.zeros(sb, np.int8)).shape
    assert matmul_shape(sa, sb) == want
    with pytest.raises(ValueError, match="mismatch"):
        matmul_shape(sa, (k + 1, 2))


def test_bench_ops_uncached_matvec_rows(monkeypatch):
    """``mpcache bench ops``' out-of-cache 1-row products: exact, one row per shape, with
    the matrix bytes read per second (small shapes here; the bench uses a gpt2 step's)."""
    from mpcache.apps.bench import ops
    monkeypatch.setattr(ops, "MATVEC_SHAPES", ((3, 5), (17, 2050)))
    monkeypatch.setattr(ops, "MATVEC_BYTES", 1 << 12)
    rows = ops._decode_matvec_rows(repeat=2, seed=1)
    assert [r["shape"] for r in rows] == ["1x3x5", "1x17x2050"]
    for r in rows:
        assert r["op"] == "ring_matvec_uncached" and r["max_abs_err"] == 0.0
        assert r["seconds"] > 0 and r["matrix_gb_per_s"] > 0
        assert "GB/s" in ops._fmt(r)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), w=st.integers(1, 8), low=st.integers(1, 64), eq=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_comparison_table_kernels_equal_numpy(n, w, low, eq, seed):
    """kernels.table_leaves / dealt_rows (compare_core.masked_digits' lookups) against the
    numpy expressions they replace, for every digit width, bit count and table kind."""
    from mpcache.mpc.compare_core import _digit_tables
    rng = np.random.default_rng(seed)
    w = min(w, low)
    D, nout = -(-low // w), 1 if eq else 2
    tb = ((1 << w) * nout + 7) // 8
    c = rng.integers(0, 2 ** 64, n, dtype=np.uint64, endpoint=False)
    tab = rng.integers(0, 256, (D, n, tb), dtype=np.uint8)
    lowmask = np.uint64(2 ** 64 - 1) if low == 64 else np.uint64((1 << low) - 1)
    sh = (np.arange(D, dtype=np.uint64) * np.uint64(w))[:, None]
    digit = ((((c & lowmask) << np.uint64(D * w - low))[None, :] >> sh)
             & np.uint64((1 << w) - 1)).astype(np.int64)
    q = digit[..., None] * nout + np.arange(nout)
    want = (np.take_along_axis(tab, q >> 3, axis=2) >> (q & 7).astype(np.uint8)) & 1
    assert np.array_equal(kernels.table_leaves(c, tab, w, low, nout), want)
    table = _digit_tables(w, "eq" if eq else "lt")
    assert np.array_equal(kernels.dealt_rows(c, table, w, low, tab), table[digit] ^ tab)

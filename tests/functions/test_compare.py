"""Boolean sharing, conversions and comparisons on both protocols: exact results against
numpy (values on a fixed-point grid, so no rounding ties), negatives, zeros, range edges,
plus asserted rounds and bytes (formulas in docs/nonlinear-compare.md)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mpcache
from mpcache.booltensor import BoolTensor
from mpcache.functions import compare as C
from mpcache.functions import convert as CV
from mpcache.mpc import compare_core as V
from mpcache.mpc.costs import cmp_cost
from mpcache.testing import assert_close, run_op

EX = settings(max_examples=12, deadline=None)
F = 18
EDGE = float(2**26 - 1)           # just inside the encodable range


def grid_arrays(shape, lo=-EDGE, hi=EDGE):
    """Floats that are exact in fixed point (multiples of 2^-10), edges included."""
    elems = st.one_of(st.integers(int(lo * 1024), int(hi * 1024)).map(lambda k: k / 1024.0),
                      st.sampled_from([0.0, lo, hi, 1.0, -1.0, 2.0**-10, -2.0**-10]))
    return hnp.arrays(np.float64, shape, elements=elems)


SHAPES = hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=5)


@EX
@given(data=st.data())
def test_compare_secret_secret(protocol, data):
    shape = data.draw(SHAPES)
    x = data.draw(grid_arrays(shape))
    y = data.draw(st.one_of(grid_arrays(shape), st.just(x.copy())))   # ties included
    out, _ = run_op(protocol, lambda p, a, b: mpcache.stack(
        [a < b, a <= b, a > b, a >= b, a.eq(b), a.ne(b), C.ltz(a), C.msb(b)]), x, y)
    expect = np.stack([x < y, x <= y, x > y, x >= y, x == y, x != y, x < 0, y < 0])
    assert np.array_equal(out, expect.astype(np.int64))


@EX
@given(data=st.data())
def test_compare_public(protocol, data):
    shape = data.draw(SHAPES)
    x = data.draw(grid_arrays(shape, -1e6, 1e6))
    c = data.draw(st.integers(-2**20, 2**20)) / 1024.0
    out, _ = run_op(protocol, lambda p, a: mpcache.stack(
        [a < c, a <= c, a > c, a >= c, c < a, a.eq(c), a < 3]), x)
    expect = np.stack([x < c, x <= c, x > c, x >= c, c < x, x == c, x < 3])
    assert np.array_equal(out, expect.astype(np.int64))


@EX
@given(data=st.data())
def test_compare_ring_integers(protocol, data):
    """Ring integers anywhere with |a - b| < 2^63 (the documented domain)."""
    shape = data.draw(SHAPES)
    ints = st.one_of(st.integers(-2**62, 2**62 - 1), st.sampled_from([0, 1, -1, -2**62]))
    x = data.draw(hnp.arrays(np.int64, shape, elements=ints))
    y = data.draw(hnp.arrays(np.int64, shape, elements=ints))
    out, _ = run_op(protocol, lambda p, a, b: mpcache.stack([a < b, a.eq(b), a >= b]), x, y,
                    integer=(0, 1))
    assert np.array_equal(out, np.stack([x < y, x == y, x >= y]).astype(np.int64))


@EX
@given(data=st.data())
def test_msb_full_ring(protocol, data):
    shape = data.draw(SHAPES)
    ints = st.one_of(st.integers(-2**63, 2**63 - 1),
                     st.sampled_from([0, -1, 2**63 - 1, -2**63, 2**62, -2**62]))
    x = data.draw(hnp.arrays(np.int64, shape, elements=ints))
    out, _ = run_op(protocol, lambda p, a: C.msb(a), x, integer=(0,))
    assert np.array_equal(out, (x < 0).astype(np.int64))


@EX
@given(data=st.data())
def test_relu_abs_clip_minmax_select(protocol, data):
    shape = data.draw(SHAPES)
    x = data.draw(grid_arrays(shape, -1e5, 1e5))
    y = data.draw(grid_arrays(shape, -1e5, 1e5))
    out, _ = run_op(protocol, lambda p, a, b: mpcache.stack(
        [a.relu(), a.abs(), a.clip(-2.5, 7.0), a.clip(lo=0.0), a.clip(hi=-1.0),
         C.maximum(a, b), C.minimum(a, b), C.where(a < b, a, b), (a > b).select(a, 1.5),
         C.where(a < 0, 2.0, -3.0)]), x, y)
    expect = np.stack([np.maximum(x, 0), np.abs(x), np.clip(x, -2.5, 7.0), np.maximum(x, 0),
                       np.minimum(x, -1.0), np.maximum(x, y), np.minimum(x, y),
                       np.where(x < y, x, y), np.where(x > y, x, 1.5),
                       np.where(x < 0, 2.0, -3.0)])
    assert_close(out, expect, atol=1e-9)


def test_relu_keeps_integers_integer(protocol):
    x = np.array([-5, 0, 7, -2**40, 2**40])
    out, _ = run_op(protocol, lambda p, a: mpcache.stack([a.relu(), abs(a)]), x, integer=(0,))
    assert out.dtype == np.int64
    assert np.array_equal(out, np.stack([np.maximum(x, 0), np.abs(x)]))


def test_comparison_result_is_ring_integer(protocol):
    def job(p):
        a = p.share(np.array([1.0, -2.0]), 0)
        c = a < 0.0
        assert c.frac == 0
        return p.reveal(c * a)          # integer x fixed: exact, no truncation
    out = mpcache.Session(protocol).run(job).output
    assert_close(out, [0.0, -2.0])


# -- boolean sharing and conversions ---------------------------------------------------------
@EX
@given(x=hnp.arrays(np.int64, SHAPES, elements=st.integers(-2**63, 2**63 - 1)))
def test_a2b_b2a(protocol, x):
    def job(p):
        a = p.share(x if p.id == 0 else None, 0, integer=True)
        b = CV.a2b(a)
        return b.reveal(), CV.b2a(b, bit=63).reveal(), CV.b2a(b >> 5).reveal()
    words, top, bit5 = mpcache.Session(protocol).run(job).output
    u = x.view(np.uint64)
    assert np.array_equal(words, u)
    assert np.array_equal(top, (u >> np.uint64(63)).astype(np.int64))
    assert np.array_equal(bit5, ((u >> np.uint64(5)) & np.uint64(1)).astype(np.int64))


@EX
@given(data=st.data())
def test_bool_tensor_gates(protocol, data):
    shape = data.draw(SHAPES)
    words = hnp.arrays(np.uint64, shape, elements=st.integers(0, 2**64 - 1))
    x, y = data.draw(words), data.draw(words)

    def job(p):
        a = BoolTensor.share(p, x if p.id == 0 else None, 0)
        b = BoolTensor.share(p, y if p.id == 1 else None, 1)
        outs = [a & b, a ^ b, a | b, ~a, a << 3, b >> 7, a ^ np.uint64(12345), a & np.uint64(255)]
        return [t.reveal() for t in outs]
    out = mpcache.Session(protocol).run(job).output
    expect = [x & y, x ^ y, x | y, ~x, x << np.uint64(3), y >> np.uint64(7),
              x ^ np.uint64(12345), x & np.uint64(255)]
    for o, e in zip(out, expect):
        assert np.array_equal(o, e)


# -- costs ----------------------------------------------------------------------------------------
def _cost(protocol, op, *inputs, integer=()):
    """Cost of ``op`` in scope "op", entered with all parties' round clocks in sync."""
    def job(p):
        xs = [p.share(x if p.id == i % 2 else None, i % 2, integer=i in integer)
              for i, x in enumerate(inputs)]
        p.reveal(p.share(np.zeros(1) if p.id == 0 else None, 0))     # sync the clocks
        with p.scope("op"):
            op(p, *xs)
    return mpcache.Session(protocol).run(job).scope("op")


@pytest.mark.parametrize("n", [1, 64, 100, 512, 5000])
@pytest.mark.parametrize("op", ["msb", "relu", "eq"])
def test_compare_cost_formula(protocol, n, op):
    """Bytes, rounds and dealt bytes of a batch of comparisons == costs.cmp_cost
    (the formulas in docs/nonlinear-compare.md)."""
    x = np.linspace(-5, 5, n)
    fn = {"msb": lambda p, a: C.msb(a), "relu": lambda p, a: a.relu(),
          "eq": lambda p, a: a.eq(0.5)}[op]
    sc = _cost(protocol, fn, x)
    c = cmp_cost(op, n, protocol)
    assert (sc["bytes_sent"], sc["rounds"], sc["offline_bytes_sent"]) == \
        (c["bytes"], c["rounds"], c["offline"])


def test_lt_64_cost_by_hand(protocol):
    """lt over 64 values (8-bit digits for batches <= 512): open c = d + rho (64 bits),
    leaves by table lookup (local), tree 8 -> 4 -> 2 -> 1 opens 11 + 5 + 2 bits, b2a 1 bit:
    83 bits = 10.4 bytes per value; 1 + 3 + 1 rounds (+1 round and 8 bytes/value in
    rep3).  Dealt per value: 8 tables of 256 x 2 bits, the sign bit, 7 + 3 + 1 AND bits,
    r_A (8 bytes).  With compare.FUSE_SIGN_B2A: 1 + 2 + 1 rounds, same online bytes."""
    n = 64
    sc = _cost(protocol, lambda p, a, b: a < b, np.linspace(-5, 5, n), np.zeros(n))
    extra = 8 * n if protocol == "rep3" else 0
    assert sc["bytes_sent"] == 83 * n // 8 + extra
    if V.FUSE_SIGN_B2A:
        assert sc["rounds"] == 4 + (protocol == "rep3")
        assert sc["offline_bytes_sent"] == n * (8 * 64 + 64) + (1 + 10) * n // 8
    else:
        assert sc["rounds"] == 5 + (protocol == "rep3")
        assert sc["offline_bytes_sent"] == n * (8 * 64 + 8) + (1 + 11) * n // 8


def test_fused_sign_to_ring_matches(protocol):
    """The fused form (last AND + bit-to-ring in one round) gives the same bits."""
    x = np.linspace(-7, 7, 57)

    def job(p):
        a = p.share(x, 0)
        pair, u = C.to_pair(a)
        return C.from_pair(p, V.sign_to_ring(pair, V.msb_bits(pair, u, last=False)), a.shape,
                           0).reveal()
    assert np.array_equal(mpcache.Session(protocol).run(job).output, (x < 0).astype(np.int64))


def test_a2b_rounds(protocol):
    """Kogge-Stone A2B: (rep3: P0's input round +) generate + log2(64) levels."""
    sc = _cost(protocol, lambda p, a: CV.b2a(CV.a2b(a), 63), np.arange(8), integer=(0,))
    # + b2a: 1 round (rep3: +1 re-sharing)
    assert sc["rounds"] == {"rep3": 8 + 2, "add2": 7 + 1}[protocol]


def test_eq_cost(protocol):
    n = 64
    sc = _cost(protocol, lambda p, a, b: a.eq(b), np.zeros(n), np.ones(n))
    c = cmp_cost("eq", n, protocol)
    assert (sc["rounds"], sc["bytes_sent"], sc["offline_bytes_sent"]) == \
        (c["rounds"], c["bytes"], c["offline"])
    # open c (8 bytes), AND tree over 8 digit-equalities: (4 + 2) ANDs x 2 bits, then the
    # last AND fused with bit-to-ring (3 bits)
    assert sc["bytes_sent"] == n * (64 + 12 + 3) // 8 + (8 * n if protocol == "rep3" else 0)
    assert sc["rounds"] == 4 + (protocol == "rep3")


# -- errors ---------------------------------------------------------------------------------------
def test_errors(protocol):
    def job(p):
        a = p.share(np.array([1.0, 2.0]), 0)
        with pytest.raises(TypeError):
            C.msb(np.array([1.0]))
        with pytest.raises(ValueError):
            C.where(a, a, a)                  # fixed-point condition
        with pytest.raises(TypeError):
            C.lt(1.0, 2.0)
        with pytest.raises(ValueError):
            a.clip(3.0, 1.0)
        return True
    assert mpcache.Session(protocol).run(job).output


def test_mixing_sessions_fails():
    store = {}

    def first(p):
        store[p.id] = p.share(np.array([1.0]), 0)

    def second(p):
        b = p.share(np.array([1.0]), 0)
        with pytest.raises(mpcache.SessionMismatch):
            _ = b < store[p.id]
        return True
    mpcache.Session("rep3").run(first)
    assert mpcache.Session("rep3").run(second).output


def test_engine_digit_widths_and_reference_circuit(protocol):
    """msb by masked digits for every digit width == the bit-level carry circuit == numpy;
    small-range signs (nbits < 64) and the zero test on low bits."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-2**63, 2**63 - 1, 200, dtype=np.int64),
                        np.array([0, -1, 1, 2**63 - 1, -2**63, 2**62, -2**62])])
    small = rng.integers(-500, 500, 64)

    def job(p):
        a = p.share(x if p.id == 0 else None, 0, integer=True)
        b = p.share(small if p.id == 1 else None, 1, integer=True)
        pair, u = C.to_pair(a)
        _, v = C.to_pair(b)
        outs = [pair.reveal_bits(V.msb_bits(pair, u, digit=w)) for w in (1, 3, 4, 8)]
        top = ((u >> np.uint64(63)) & np.uint64(1)).astype(np.uint8) if pair.role != "D" \
            else np.zeros(u.size, np.uint8)
        outs.append(pair.reveal_bits(top ^ V.carry_bits(pair, u, 63)))
        outs.append(pair.reveal_bits(V.msb_bits(pair, v, nbits=11)))          # |v| < 2^10
        outs.append(pair.reveal_bits(V.zero_bits(pair, v, nbits=11, digit=4)))
        return outs
    out = mpcache.Session(protocol).run(job).output
    for o in out[:5]:
        assert np.array_equal(o, (x < 0).astype(np.uint8))
    assert np.array_equal(out[5], (small < 0).astype(np.uint8))
    assert np.array_equal(out[6], (small == 0).astype(np.uint8))

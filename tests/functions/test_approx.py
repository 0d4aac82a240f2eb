"""Non-linear approximations (exp, reciprocal, rsqrt, softmax, GELU, SiLU) on both
protocols: hypothesis accuracy tests at the documented bounds, plus asserted round
counts so that a depth regression fails.  Sizes are small except the softmax rows
(1024, as in the accuracy target)."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import mpcache
from mpcache import branches
from mpcache.functions import approx as A
from mpcache.functions import poly as P
from mpcache.ring import FixedPoint
from mpcache.testing import run_op

compare = pytest.importorskip("mpcache.functions.compare")
from mpcache.functions import convert as CV       # noqa: E402
from mpcache.functions import reciprocal as RC    # noqa: E402
from mpcache.mpc import compare_core as V          # noqa: E402

ULP = 2.0 ** -18
_erf = np.vectorize(math.erf)


def q(x):
    """The fixed-point encoding of the input (what the protocol actually sees)."""
    return np.round(np.asarray(x, np.float64) * 2 ** 18) / 2 ** 18


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=64)


def arrays(lo, hi, n_max=24):
    return hnp.arrays(np.float64, st.integers(1, n_max), elements=floats(lo, hi))


def log_arrays(lo, hi, n_max=24):
    """Positive values spread over [lo, hi] on a log scale."""
    return hnp.arrays(np.float64, st.integers(1, n_max),
                      elements=floats(math.log(lo), math.log(hi)).map(math.exp))


EX = settings(max_examples=6, deadline=None)


def _ltz_rounds(protocol, n):
    _, res = run_op(protocol, lambda p, a: compare.ltz(a), np.linspace(-3, 3, n))
    return res.scope("op")["rounds"]


def _branched(protocol, poly, lt, finish=0):
    """Rounds of a polynomial of ``poly`` rounds beside a comparison (mpcache.branches):
    the comparison's rounds before its bit injection (``lt``: a fused ltz's rounds, less
    its injection and, rep3, its re-sharing; ``finish``: rounds that finish the sign
    first) run in the polynomial's rounds, then the injection."""
    tail = 2 if protocol == "rep3" else 1
    return max(poly, lt - tail + finish) + tail


# -------------------------------------------------------------------------------------
# exp
# -------------------------------------------------------------------------------------
@EX
@given(x=arrays(-20.0, 0.0))
def test_exp_accuracy(protocol, x):
    out, _ = run_op(protocol, lambda p, a: a.exp(), x)
    ref = np.where(q(x) >= -14.0, np.exp(q(x)), 0.0)
    assert np.max(np.abs(out - ref)) <= 1e-3


def test_exp_grid_and_clip(protocol):
    x = np.concatenate([np.linspace(-14, 0, 701), [-14.5, -20, -100, -1e4, -6e7]])
    out, res = run_op(protocol, lambda p, a: a.exp(), x)
    ref = np.where(x >= -14.0, np.exp(x), 0.0)
    assert np.max(np.abs(out - ref)) <= 1e-4          # measured ~2e-5
    assert np.all(out[-5:] == 0.0)                     # clipped exactly to 0
    # 5 levels (poly degree 8: 3, two squarings) = 10 rounds; the clip's sign beside
    # them (a branch), then one bit injection (what ltz's b2a round costs)
    assert res.scope("op")["rounds"] == _branched(protocol, 10, _ltz_rounds(protocol, x.size))
    with branches.sequential():                         # one after the other: the sum
        _, res = run_op(protocol, lambda p, a: a.exp(), x)
    assert res.scope("op")["rounds"] == 10 + _ltz_rounds(protocol, x.size)


def test_exp_no_clip_rounds_bytes(protocol):
    x = np.linspace(-14, 0, 1024)
    out, res = run_op(protocol, lambda p, a: a.exp(clip=False), x)
    assert np.max(np.abs(out - np.exp(x))) <= 1e-4
    sc = res.scope("op")
    assert sc["rounds"] == 10
    # rep3: 6 truncated outputs x 16 B; add2: 6 Beaver products x 16 B + 6 truncations x 8 B
    assert sc["bytes_sent"] == (96 if protocol == "rep3" else 144) * x.size


def test_exp_knobs(protocol):
    x = np.linspace(-14, 0, 301)
    out, res = run_op(protocol, lambda p, a: a.exp(degree=16, squarings=0, clip=False), x)
    assert np.max(np.abs(out - np.exp(x))) <= 1e-4
    assert res.scope("op")["rounds"] == 8
    x = np.linspace(-6, 6, 301)
    out, _ = run_op(protocol, lambda p, a: a.exp(lo=-6, hi=6, squarings=4, clip=False,
                                                 out_frac=24), x)
    assert np.max(np.abs(out - np.exp(x)) / np.exp(x)) <= 1e-3


# -------------------------------------------------------------------------------------
# reciprocal and rsqrt
# -------------------------------------------------------------------------------------
@EX
@given(x=log_arrays(1e-2, 1e4))
def test_reciprocal_accuracy(protocol, x):
    out, _ = run_op(protocol, lambda p, a: a.reciprocal(), x)
    ref = 1.0 / q(x)
    # relative 1e-3, or the output resolution (1/x < 2^-8 has few bits at f = 18)
    assert np.all(np.abs(out - ref) <= 1e-3 * ref + 2 * ULP)


@EX
@given(x=log_arrays(1e-2, 1e4))
def test_reciprocal_relative_with_wide_output(protocol, x):
    out, _ = run_op(protocol, lambda p, a: a.reciprocal(out_frac=32), x)
    ref = 1.0 / q(x)
    assert np.max(np.abs(out - ref) / ref) <= 1e-3


@EX
@given(x=log_arrays(1e-3, 1e4))
def test_rsqrt_accuracy(protocol, x):
    out, _ = run_op(protocol, lambda p, a: a.rsqrt(), x)
    ref = 1.0 / np.sqrt(q(x))
    assert np.max(np.abs(out - ref) / ref) <= 1e-3


def test_reciprocal_rsqrt_rounds_and_knobs(protocol):
    x = np.exp(np.linspace(math.log(1e-2), math.log(1e4), 257))
    base = {}
    for name, kw in (("r", {}), ("r8", {"degree": 8}), ("rn", {"iterations": 1}),
                     ("s", {}), ("sn", {"iterations": 1})):
        fn = (lambda p, a, kw=kw: a.reciprocal(out_frac=32, **kw)) if name[0] == "r" else \
            (lambda p, a, kw=kw: a.rsqrt(out_frac=32, **kw))
        out, res = run_op(protocol, fn, x)
        ref = 1 / q(x) if name[0] == "r" else 1 / np.sqrt(q(x))
        err = np.max(np.abs(out - ref) / ref)
        assert err <= (1e-3 if name in ("r", "s") else 5e-5), (name, err)
        base[name] = res.scope("op")["rounds"]
    # 257 values x 45 positions: above THERMOMETER_MAX, so the top bit takes A2B + 6
    # prefix-OR levels + injection (+ re-sharing), then normalise (1 level) + degree-4
    # polynomial (2) + un-normalise (1): 15 rounds after A2B
    _, ra = run_op(protocol, lambda p, a: CV.a2b(a), x)
    # (a standalone A2B's first round can overlap the input sharing in the round count)
    assert 15 <= base["r"] - ra.scope("op")["rounds"] <= 16
    # knobs cost exactly their levels: degree 8 adds one level, a Newton step two
    assert base["r8"] == base["r"] + 2
    assert base["rn"] == base["r"] + 4
    assert base["sn"] == base["s"] + 4
    assert base["r"] == base["s"]


# -------------------------------------------------------------------------------------
# softmax
# -------------------------------------------------------------------------------------
def _softmax(x, axis=-1):
    z = x - x.max(axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis, keepdims=True)


@settings(max_examples=3, deadline=None)
@given(x=hnp.arrays(np.float64, (1, 1024), elements=floats(-20.0, 20.0)))
def test_softmax_rows_1024(protocol, x):
    out, _ = run_op(protocol, lambda p, a: a.softmax(axis=-1), x)
    assert np.max(np.abs(out - _softmax(q(x)))) <= 2e-3


def test_softmax_adversarial_rows(protocol):
    """Rows where exp's errors would add up: one max and 1023 entries far below it."""
    rows = [np.r_[20.0, np.full(1023, 8.0)],            # e^-12 each: sum ~ 1.006
            np.r_[20.0, np.full(1023, 6.5)],            # just above the clip
            np.r_[20.0, np.full(1023, -20.0)],          # all clipped
            np.full(1024, 3.0),                         # all equal
            np.linspace(-20, 20, 1024)]
    x = np.stack(rows)
    out, _ = run_op(protocol, lambda p, a: a.softmax(axis=-1), x)
    assert np.max(np.abs(out - _softmax(q(x)))) <= 2e-3


def test_softmax_axis_and_bounded(protocol):
    rng = np.random.default_rng(1)
    x = rng.uniform(-4, 4, (3, 5, 2))
    out, _ = run_op(protocol, lambda p, a: a.softmax(axis=1), x)
    assert np.max(np.abs(out - _softmax(q(x), axis=1))) <= 2e-3
    x = rng.uniform(-6, 6, (4, 64))
    out, res = run_op(protocol, lambda p, a: a.softmax(axis=-1, method="bounded", bound=6.0),
                      x)
    assert np.max(np.abs(out - _softmax(q(x)))) <= 2e-3


def test_softmax_one_reciprocal_per_row(protocol):
    """The reciprocal runs on [rows, 1], not per element: its scope inside softmax costs
    exactly a standalone reciprocal of a [rows, 1] tensor at 2f fraction bits (with the
    row-sum range promise [0.5, 2n] that softmax passes) with the exponentials [rows, n]
    folded in (``times``), and the fold saves one truncating level (2 rounds) against
    ``reciprocal(s) * e``."""
    x = np.random.default_rng(2).uniform(-5, 5, (3, 256))

    def job(p, a):
        with p.scope("sm"):
            return a.softmax(axis=-1)
    _, r1 = run_op(protocol, job, x)

    def folded(p, a, e):
        return RC.reciprocal(P.scale_pow2(a, 18), x_range=(0.5, 512),
                             times=P.scale_pow2(e, 18))

    def separate(p, a, e):
        r = RC.reciprocal(P.scale_pow2(a, 18), x_range=(0.5, 512))
        return P.run_level([P.Dot([(r, P.scale_pow2(e, 18))])], 36)[0]
    e = np.full((3, 256), 1 / 256)
    _, r2 = run_op(protocol, folded, np.ones((3, 1)), e)
    _, r3 = run_op(protocol, separate, np.ones((3, 1)), e)
    assert r1.scope("op/sm/recip")["bytes_sent"] == r2.scope("op")["bytes_sent"]
    assert r2.scope("op")["rounds"] == r3.scope("op")["rounds"] - 2
    # (scope rounds are entry-to-exit across parties; entering after the exp may skew by 1)
    assert abs(r1.scope("op/sm/recip")["rounds"] - r2.scope("op")["rounds"]) <= 1


@pytest.mark.parametrize("rows,n", [(1, 5), (3, 300)])
def test_reciprocal_times_fold(protocol, rows, n):
    """``reciprocal(s, times=t)`` = t / s within the reciprocal's relative error (plus an
    ulp), for row sums across the promised range [0.5, 2n], as softmax uses it."""
    rng = np.random.default_rng(rows)
    t = rng.uniform(0, 1, (rows, n))
    s = np.exp(rng.uniform(np.log(0.6), np.log(1.9 * n), (rows, 1)))
    out, _ = run_op(protocol, lambda p, a, b: RC.reciprocal(
        P.scale_pow2(a, 18), x_range=(0.5, 2 * n), times=P.scale_pow2(b, 18)), s, t)
    assert np.all(np.abs(out - t / s) <= 1e-3 * (t / s) + 2.0 ** -17)


def test_softmax_rounds_compose(protocol):
    """softmax = row max + exp + one reciprocal per row + one product: no extra rounds.
    Exact pieces: exp = 10 + ltz rounds; reciprocal as asserted above."""
    x = np.random.default_rng(4).uniform(-20, 20, (2, 1024))
    _, rs = run_op(protocol, lambda p, a: a.softmax(axis=-1), x)
    _, rm = run_op(protocol, lambda p, a: A.rowmax(a, -1), x)
    _, re = run_op(protocol, lambda p, a: A.exp(a - 25.0, out_frac=36), x)
    _, rr = run_op(protocol, lambda p, a: RC.reciprocal(P.scale_pow2(a, 18),
                                                         x_range=(0.5, 2048)), np.ones((2, 1)))
    assert re.scope("op")["rounds"] == _branched(protocol, 10, _ltz_rounds(protocol, x.size))
    pieces = rm.scope("op")["rounds"] + re.scope("op")["rounds"] + rr.scope("op")["rounds"]
    assert rs.scope("op")["rounds"] <= pieces + 2 + 1      # + final product (2), skew (1)
    assert rs.scope("op")["rounds"] <= (126 if protocol == "rep3" else 122)


def _wsoftmax(x, w):
    e = np.exp(x - x.max(-1, keepdims=True)) * w
    return e / e.sum(-1, keepdims=True)


@settings(max_examples=4, deadline=None)
@given(x=hnp.arrays(np.float64, (2, 40), elements=floats(-12.0, 12.0)),
       w=hnp.arrays(np.int64, (2, 40), elements=st.integers(0, 4)))
def test_weighted_softmax_secret_and_public_weights(protocol, x, w):
    """``weights``: ``w e^x / sum w e^x`` for integer weights (an entry standing for w
    equal rows; MPCache's cluster summaries), secret ring integers or public; the row max
    sits at a weight >= 1 entry (the caller's promise, made true here)."""
    w = w.copy()
    w[np.arange(2), np.argmax(q(x), axis=-1)] = 1
    out, res = run_op(protocol, lambda p, a, b: a.softmax(axis=-1, weights=b, weight_bound=4),
                      x, w, integer=(1,))
    assert np.max(np.abs(out - _wsoftmax(q(x), w))) <= 2e-3
    pub, _ = run_op(protocol, lambda p, a: a.softmax(axis=-1, weights=w, weight_bound=4), x)
    assert np.max(np.abs(pub - _wsoftmax(q(x), w))) <= 2e-3


def test_weighted_softmax_costs_one_product_and_checks_its_weights(protocol):
    """Secret weights add one elementwise product (no truncation: 1 round, the weights
    have no fraction bits) to the plain softmax; public ones add nothing; fixed-point or
    negative weights are refused."""
    x = np.random.default_rng(5).uniform(-6, 6, (3, 64))
    w = np.random.default_rng(6).integers(1, 5, (3, 64))

    def job(weights):
        def op(p, a, *b):
            with p.scope("sm"):
                return a.softmax(axis=-1, weights=b[0] if b else weights, weight_bound=4)
        return op
    _, plain = run_op(protocol, lambda p, a: a.softmax(axis=-1), x)
    _, sec = run_op(protocol, job(None), x, w, integer=(1,))
    _, pub = run_op(protocol, job(w), x)
    assert sec.scope("op/sm/weights")["rounds"] == 1
    assert sec.scope("op/sm/weights")["bytes_sent"] > 0
    assert pub.scope("op/sm/weights")["bytes_sent"] == 0
    assert pub.scope("op")["rounds"] == plain.scope("op")["rounds"]
    for bad in (np.full((3, 64), 0.5), -w):
        with pytest.raises(Exception, match="non-negative integers"):
            run_op(protocol, job(bad), x)
    with pytest.raises(Exception, match="non-negative integers"):
        run_op(protocol, job(None), x, w.astype(float))


# -------------------------------------------------------------------------------------
# GELU and SiLU
# -------------------------------------------------------------------------------------
def _gelu(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def _silu(x):
    return x / (1 + np.exp(-x))


@EX
@given(x=arrays(-8.0, 8.0))
def test_gelu_accuracy(protocol, x):
    out, _ = run_op(protocol, lambda p, a: a.gelu(), x)
    assert np.max(np.abs(out - _gelu(q(x)))) <= 1e-2


@EX
@given(x=arrays(-8.0, 8.0))
def test_silu_accuracy(protocol, x):
    out, _ = run_op(protocol, lambda p, a: a.silu(), x)
    assert np.max(np.abs(out - _silu(q(x)))) <= 1e-2


def test_activations_grid_and_rounds(protocol):
    x = np.concatenate([np.linspace(-8, 8, 801), [-1e4, -50, 50, 1e4]])
    lt = _ltz_rounds(protocol, 2 * x.size)
    for fn, ref, bound, levels in ((lambda p, a: a.gelu(), _gelu, 4e-3, 3),
                                   (lambda p, a: a.silu(), _silu, 8e-3, 4)):
        out, res = run_op(protocol, fn, x)
        assert np.max(np.abs(out - ref(x))) <= bound
        # the two signs are finished (mid = NOT(c_hi XOR c_lo) combines them) beside the
        # polynomial (a branch) and then injected in one round
        assert res.scope("op")["rounds"] == _branched(protocol, 2 * levels, lt,
                                                      V.FUSE_SIGN_B2A)
        with branches.sequential():          # one after the other: one round more than
            out, res = run_op(protocol, fn, x)    # the polynomial and a fused ltz
        assert res.scope("op")["rounds"] == 2 * levels + lt + V.FUSE_SIGN_B2A


@EX
@given(x=arrays(-12.0, 12.0))
def test_tanh_sigmoid_accuracy(protocol, x):
    out, _ = run_op(protocol, lambda p, a: mpcache.stack([a.tanh(), a.sigmoid()]), x)
    assert np.max(np.abs(out[0] - np.tanh(q(x)))) <= 3e-3
    assert np.max(np.abs(out[1] - 0.5 * (1 + np.tanh(q(x) / 2)))) <= 2e-3


def test_top_bit_methods_agree_and_the_thermometer_costs_its_formula(protocol):
    """Few values (a decoding step's norms, softmax rows): the thermometer, exactly
    topbit_cost and 8 rounds before the result; many values: A2B.  Same result bits."""
    x = np.exp(np.linspace(math.log(1e-2), math.log(1e4), 20))
    klo, khi = RC._window(FixedPoint().frac_bits, None)
    assert x.size * (khi + 2 - klo) <= RC.THERMOMETER_MAX
    outs = {}
    for method in ("thermometer", "a2b"):
        def fn(p, a, method=method):
            R, = RC.top_bit_weights(a, [RC._pow2_weights(40, khi + 1)], khi + 1, klo, method)
            return R
        outs[method], res = run_op(protocol, fn, x, integer=())
        if method == "thermometer":
            want = RC.topbit_cost(x.size, khi + 1, klo, 1, protocol)
            tb = res.scope("op/topbit")
            assert (tb["bytes_sent"], tb["rounds"]) == (want["bytes"], want["rounds"])
    np.testing.assert_array_equal(outs["thermometer"], outs["a2b"])
    out, res = run_op(protocol, lambda p, a: a.reciprocal(out_frac=32), x)
    assert np.max(np.abs(out - 1 / q(x)) * q(x)) <= 1e-3
    assert res.scope("op")["rounds"] - res.scope("op/topbit")["rounds"] == 8
    with pytest.raises(ValueError, match="method"):
        run_op(protocol, lambda p, a: RC.top_bit_weights(a, [RC._pow2_weights(40, 44)], 44,
                                                         0, "bits")[0], x)


def test_reciprocal_x_range_saves_bytes(protocol):
    x = np.array([1.0, 3.5, 100.0, 1023.0])
    out, r1 = run_op(protocol, lambda p, a: a.reciprocal(out_frac=32), x)
    out2, r2 = run_op(protocol, lambda p, a: a.reciprocal(out_frac=32, x_range=(0.5, 2048)), x)
    assert np.max(np.abs(out2 - 1 / x) * x) <= 1e-3
    # fewer thresholds (14 instead of 45 octaves), and the promised window's thermometer
    # is shorter and coarse (RC.thermometer_bits): fewer tree rounds, its formula exact
    assert r2.scope("op")["rounds"] < r1.scope("op")["rounds"]
    assert r2.scope("op/topbit")["bytes_sent"] < r1.scope("op/topbit")["bytes_sent"] / 2.5
    klo, khi = RC._window(FixedPoint().frac_bits, (0.5, 2048))
    sub = RC._pieces(x, (klo, khi), None)
    assert sub == RC.SUB_LINEAR                    # 4 x (32 x 14 + 1) comparisons
    # the linear guess's weights (alpha, beta) and the un-normalisation's
    want = RC.topbit_cost(x.size, khi + 1, klo, 3, protocol, sub, promise=True)
    got = r2.scope("op/topbit")
    assert (got["bytes_sent"], got["rounds"]) == (want["bytes"], want["rounds"])
    assert RC.thermometer_bits(khi + 1, klo, False) == (64, 0)
    assert RC.thermometer_bits(khi + 1, klo, True) == (khi + 2, klo - RC.THERMO_REL_BITS)


def test_coarse_thermometer_near_every_threshold(protocol):
    """x at and just below every quarter-octave threshold of a promised window: the
    coarse thermometer may take the next piece there, the result keeps its error bound."""
    klo, khi = RC._window(FixedPoint().frac_bits, (0.5, 64.0))
    f = FixedPoint().frac_bits
    taus = np.array(RC._thresholds(klo, khi + 1, RC.SUB), dtype=np.float64) / 2.0 ** f
    taus = taus[(taus >= 0.5) & (taus <= 64.0)]
    x = np.concatenate([taus, taus * (1 - 2.0 ** -9), taus * (1 - 2.0 ** -20)])
    x = x[x >= 0.5]                                   # inside the promise
    out, _ = run_op(protocol, lambda p, a: a.reciprocal(out_frac=32, x_range=(0.5, 64.0)), x)
    assert np.max(np.abs(out - 1 / q(x)) * q(x)) <= 1e-3


# -------------------------------------------------------------------------------------
# engine pieces
# -------------------------------------------------------------------------------------
def test_poly_eval_degrees(protocol):
    rng = np.random.default_rng(3)
    t = np.linspace(-1, 1, 101)
    for D, levels in ((1, 1), (2, 1), (3, 2), (4, 2), (7, 3), (8, 3), (12, 4), (16, 4)):
        c = rng.uniform(-1, 1, D + 1) / (D + 1)
        out, res = run_op(protocol, lambda p, a: P.poly_eval(a, c), t)
        assert np.max(np.abs(out - np.polyval(c[::-1], q(t)))) <= (2e-5 if D <= 8 else 6e-5), D
        # an affine map is a truncation only: add2 truncates in 1 round, rep3 in 2
        expect = 1 if (D == 1 and protocol == "add2") else 2 * levels
        assert res.scope("op")["rounds"] == expect, D


def test_fit_poly_is_least_squares():
    c = P.fit_poly(np.exp, -1.0, 1.0, 6)
    x = np.linspace(-1, 1, 1001)
    # near-minimax: the degree-6 minimax error of e^x on [-1, 1] is about 3e-6
    assert np.max(np.abs(np.polyval(c[::-1], x) - np.exp(x))) < 5e-6


def test_nothing_revealed_but_output(protocol):
    """Every message is a protocol message of a sub-protocol; no 'reveal' tag appears
    inside the non-linear ops."""
    x = np.array([-3.0, -0.5, 0.0])

    def job(p):
        a = p.share(x if p.id == 0 else None, 0)
        tags = []
        orig = p.transport.send

        def spy(to, payload, tag, offline=False):
            tags.append(tag)
            return orig(to, payload, tag, offline)
        p.transport.send = spy
        a.exp()
        (a + 4.0).reciprocal()
        (a + 4.0).rsqrt()
        a.gelu()
        p.transport.send = orig
        return tags
    res = mpcache.Session(protocol).run(job)
    for tags in res.outputs:
        assert not any("reveal" in t for t in tags)

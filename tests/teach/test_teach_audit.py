"""View audit (mpcache.audit, re-exported by mpcache.testing) over every op, every owner
and every observer on both protocols; negative controls (a mask patched out must FAIL the
audit, including the three openings that leaked before their masks were added); and
protocol_property."""
import numpy as np
import pytest

import mpcache

from mpcache import prg
from mpcache.tensor import SecretTensor
from mpcache.testing import ViewLeak, assert_view_indistinguishable, protocol_property
from mpcache.mpc.costs import cost

N = 2048
rng = np.random.default_rng(7)
A0 = np.zeros(N)
A1 = np.full(N, 1234.5678)
B0 = np.zeros(N)
B1 = rng.uniform(-100, 100, N)


def _has(name):
    return hasattr(SecretTensor, name)


def _persist(p, x, y):
    w = y.reshape(32, 64)
    w.persist()
    return x.reshape(64, 32) @ w


N8 = 8192           # comparisons send packed bits: 8192 bits = 1024 bytes per block
C0, C1 = np.zeros(N8), rng.uniform(-100, 100, N8)
D0, D1 = np.zeros(N8), rng.uniform(-100, 100, N8)


def _gather(p, x, y):
    oh = x.reshape(16, 128).argmax(axis=-1)        # secret one-hot rows [16, 128]
    return oh @ y.reshape(128, 16)


def _factored_gather(p, x, y):
    """add2's factored selection (functions/factored.py): top-k's two small one-hots,
    persisted, a score selection and a scatter through them."""
    g = x.reshape(16, 128).top_k(4, ordered=False, factor=16).persist()
    return g.scatter(g.contract(y.reshape(16, 1, 128)))


# op name -> (op, secrets_a, secrets_b, integer, needs[, audit keyword arguments])
OPS = {
    "share": (lambda p, x: x, A0, A1, (), None),
    "mul_fixed": (lambda p, x, y: x * y, (A0, B0), (A1, B1), (), None),
    "mul_ring": (lambda p, x, y: x * y, (A0.astype(np.int64), B0.astype(np.int64)),
                 (A1.astype(np.int64), B1.astype(np.int64)), (0, 1), None),
    "matmul_fixed": (lambda p, x, y: x.reshape(32, 64) @ y.reshape(64, 32),
                     (A0, B0), (A1, B1), (), None),
    "matmul_ring": (lambda p, x, y: x.reshape(32, 64) @ y.reshape(64, 32),
                    (A0.astype(np.int64), B0.astype(np.int64)),
                    (A1.astype(np.int64), B1.astype(np.int64)), (0, 1), None),
    "trunc": (lambda p, x: x * 0.5, A0, A1, (), None),
    "persistent_matmul": (_persist, (A0, B0), (A1, B1), (), None),
    "lt": (lambda p, x, y: x < y, (C0, D0), (C1, D1), (), "__lt__"),
    "relu": (lambda p, x: x.relu(), C0, C1, (), "relu"),
    "where": (lambda p, x, y: mpcache.where(x < y, x, y), (C0, D0), (C1, D1), (), "__lt__"),
    "eq": (lambda p, x, y: x.eq(y), (C0, D0), (C1, C1), (), "eq"),
    "one_hot": (lambda p, x: x.one_hot(64), np.zeros(256, np.int64),
                np.arange(256, dtype=np.int64) % 64, (0,), "one_hot"),
    "exp": (lambda p, x: x.exp(), A0 - 3, np.full(N, -1.5), (), "exp"),
    "rsqrt": (lambda p, x: x.rsqrt(), A0 + 1, np.full(N, 37.5), (), "rsqrt"),
    "gelu": (lambda p, x: x.gelu(), A0, B1 / 20, (), "gelu"),
    "silu": (lambda p, x: x.silu(), A0, B1 / 20, (), "silu"),
    "reciprocal": (lambda p, x: x.reciprocal(), A0 + 1, np.full(N, 37.5), (), "reciprocal"),
    "softmax": (lambda p, x: x.reshape(32, 64).softmax(axis=-1), A0, B1 / 10, (), "softmax"),
    "max": (lambda p, x: x.reshape(256, 32).max(axis=-1), C0, C1, (), "max"),
    "max_bounded": (lambda p, x: x.reshape(256, 32).max(axis=-1, bound=128.0), C0, C1, (),
                    "max"),          # 32-bit openings mod 2^nbits (select.bound_bits)
    "softmax_bounded": (lambda p, x: x.reshape(32, 64).softmax(axis=-1, score_bound=16.0),
                        A0, B1 / 10, (), "softmax"),
    # weighted softmax (MPCache's rest='mean'): secret ring-integer weights, one product
    "softmax_weighted": (lambda p, x, w: x.reshape(32, 64).softmax(
        axis=-1, score_bound=16.0, weights=w.reshape(32, 64), weight_bound=4),
        (A0, np.ones(N, np.int64)), (B1 / 10, 1 + np.arange(N, dtype=np.int64) % 4), (1,),
        "softmax"),
    "max_coarse": (lambda p, x: x.reshape(256, 32).max(axis=-1, bound=128.0, tol=2.0), C0, C1,
                   (), "max"),       # coarse trees: the same openings (select.coarse_drop)
    "silu_bounded": (lambda p, x: x.silu(bound=256.0), A0, B1 / 20, (), "silu"),
    "argmax": (lambda p, x: x.reshape(256, 32).argmax(axis=-1), C0, C1, (), "argmax"),
    "argmax_bounded": (lambda p, x: x.reshape(256, 32).argmax(axis=-1, bound=128.0), C0, C1,
                       (), "argmax"),
    "gather": (_gather, (A0, B0), (A1, B1), (), "argmax"),
    # top-k's number of selection levels depends on the random shuffle (simulatable):
    # compare the blocks that line up
    "top_k": (lambda p, x: x.reshape(4, 2048).top_k(16), C0 + np.arange(N8) % 7, C1, (),
              "top_k", {"strict_structure": False}),
    "top_k_factored": (lambda p, x: x.reshape(4, 2048).top_k(16, ordered=False,
                                                             factor=64).parts,
                       C0 + np.arange(N8) % 7, C1, (), "top_k", {"strict_structure": False}),
    "gather_factored": (_factored_gather, (A0, B0), (A1, B1), (), "top_k",
                        {"strict_structure": False}),
}


def _available(needs):
    if needs is None:
        return True
    if needs == "__lt__":
        return SecretTensor.__lt__ is not object.__lt__
    return _has(needs)


def _cases():
    """(protocol, owner, observer): every owner of the inputs (add2: the dealer owns no
    data) and every party that owns none of them, the dealer included."""
    out = []
    for proto, owners in (("rep3", (0, 1, 2)), ("add2", (0, 1))):
        for o in owners:
            out += [pytest.param(proto, o, obs, id=f"{proto}-owner{o}-P{obs}")
                    for obs in range(3) if obs != o]
    return out


@pytest.mark.parametrize("proto,owner,observer", _cases())
@pytest.mark.parametrize("op", sorted(OPS))
def test_view_audit_every_op(proto, owner, observer, op):
    fn, sa, sb, integer, needs, *kw = OPS[op]
    kw = kw[0] if kw else {}
    if not _available(needs):
        pytest.skip(f"SecretTensor.{needs} is not in this build yet")
    rep = assert_view_indistinguishable(proto, fn, sa, sb, observer=observer, owner=owner,
                                        integer=integer, **kw)
    assert rep.tested or rep.determined
    assert rep.min_p >= rep.threshold


@pytest.mark.parametrize("observer", [1, 0])
def test_view_audit_fails_when_a_mask_is_removed(protocol, observer, monkeypatch):
    """Negative control: with every PRG draw zeroed the shares and openings carry the
    secret in the clear, and the audit must say so."""
    monkeypatch.setattr(prg.PRG, "ring", lambda self, shape: np.zeros(shape, np.uint64))
    owner = 1 - observer
    with pytest.raises(ViewLeak, match="depends on the secret"):
        assert_view_indistinguishable(protocol, lambda p, x, y: x * y, (A0, B0), (A1, B1),
                                      observer=observer, owner=owner)


def test_view_audit_fails_when_one_opening_is_unmasked(monkeypatch):
    """A subtler bug: only P0's half of the truncation mask is dropped.  Every message
    alone still looks uniform (P0's opening is x_0 + 2^62, and x_0 is uniform to P1), but
    with P1's own component x_1 it gives x + 2^62: the pairwise sums catch it."""
    from mpcache.mpc import truncation as tr
    real = tr.p0_mask

    def leaky(prg_p2, shape):
        ra, s0, m0 = real(prg_p2, shape)
        return np.zeros_like(ra), s0, m0
    monkeypatch.setattr(tr, "p0_mask", leaky)
    with pytest.raises(ViewLeak, match="trunc.open"):
        assert_view_indistinguishable("rep3", lambda p, x: x.truncate(3), A0, A1, observer=1)
    # ...and a single run without P1's own randomness fixed and without pairs does not
    # see it (why both are there)
    assert_view_indistinguishable("rep3", lambda p, x: x.truncate(3), A0, A1, observer=1,
                                  pairs=False, freeze=False, runs=1)


def test_view_audit_sees_a_small_opening(monkeypatch):
    """No block is too small: an 8-value truncation whose P0 mask is dropped is caught
    by the exact check (P1's view, with its own randomness fixed, is then pinned down by
    the secret)."""
    from mpcache.mpc import truncation as tr
    real = tr.p0_mask

    def leaky(prg_p2, shape):
        ra, s0, m0 = real(prg_p2, shape)
        return np.zeros_like(ra), s0, m0
    x0, x1 = np.zeros(8), np.full(8, 3.25)
    assert_view_indistinguishable("rep3", lambda p, x: x.truncate(3), x0, x1, observer=1)
    monkeypatch.setattr(tr, "p0_mask", leaky)
    with pytest.raises(ViewLeak, match="trunc.open"):
        assert_view_indistinguishable("rep3", lambda p, x: x.truncate(3), x0, x1,
                                      observer=1)


def test_observer_must_not_own_the_secret():
    with pytest.raises(ValueError, match="owns an input"):
        assert_view_indistinguishable("rep3", lambda p, x: x, A0, A1, observer=0, owner=0)


# -- protocol_property: a user's own protocol, property-tested on both protocols ----------------
def _poly(p, x):
    """A user's protocol: 3x^2 - x + 0.5, one fixed-point product."""
    return (x * x) * 3 - x + 0.5


test_user_polynomial = protocol_property(
    _poly, lambda x: 3 * x * x - x + 0.5, values=(-30, 30), atol=1e-3, max_examples=10,
    budget=lambda proto, s: {"bytes": cost(proto, "mul_fixed", n=int(np.prod(s)))["bytes"],
                             "rounds": 2},
    exact_budget=True, name="test_user_polynomial")


def test_protocol_property_matmul_fixed_shapes():
    prop = protocol_property(lambda p, x, y: x @ y, lambda x, y: x @ y, n_inputs=2,
                             shapes=((3, 4), (4, 2)), values=(-10, 10), atol=1e-3,
                             max_examples=5,
                             budget={"rep3": {"bytes": 2 * 8 * 6, "rounds": 2},
                                     "add2": {"bytes": 8 * (12 + 8 + 6), "rounds": 2}},
                             exact_budget=True)
    prop()


def test_protocol_property_catches_a_wrong_reference():
    prop = protocol_property(lambda p, x: x * 2, lambda x: x * 3, values=(1, 10),
                             max_examples=5)
    with pytest.raises(AssertionError):
        prop()


def test_protocol_property_catches_a_blown_budget():
    prop = protocol_property(lambda p, x: x * x, lambda x: x * x, values=(-5, 5), atol=1e-3,
                             max_examples=3, budget=lambda proto, s: {"rounds": 1})
    with pytest.raises(AssertionError, match="budget"):
        prop()


def test_view_audit_fails_when_comparison_masks_are_removed(monkeypatch):
    """add2 shares inputs without sending any share value, so here the leak the audit
    finds is in the comparison's own openings (the truth-table digits x ^ r)."""
    if not _available("__lt__"):
        pytest.skip("comparisons are not in this build yet")
    monkeypatch.setattr(prg.PRG, "ring", lambda self, shape: np.zeros(shape, np.uint64))
    with pytest.raises(ViewLeak, match=r"cmp\."):
        assert_view_indistinguishable("add2", lambda p, x, y: x < y, (C0, D0), (C1, D1),
                                      observer=1)


# -- the three openings that leaked before their masks were added --------------------------------
def _topk_rows(ordered):
    return lambda p, x: x.reshape(256, 16).top_k(4, ordered=ordered)


def _reveal_signs(p, x):
    from mpcache.mpc.pair import pair_of
    from mpcache.functions.topk import _reveal_lt
    _reveal_lt(pair_of(p), p.protocol.to_pair(x.data).reshape(-1))


_ROWS = np.tile(np.arange(16.0), 256)           # every row keeps its last four entries
OLD_LEAKS = {
    # rep3 top-k: P0 opens the selected indices (P2's half of the one-hot opening)
    "topk_indices_to_P0": ("ring", ("rep3", _topk_rows(False), _ROWS,
                                    rng.uniform(-100, 100, _ROWS.size)),
                           dict(observer=0, owner=1, strict_structure=False),
                           r"onehot\.open"),
    "topk_sorted_indices_to_P0": ("ring", ("rep3", _topk_rows(True), _ROWS,
                                           rng.uniform(-100, 100, _ROWS.size)),
                                  dict(observer=0, owner=1, strict_structure=False),
                                  r"onehot\.open"),
    # the same opening for the factored top-k's two indices (one message, two moduli)
    "topk_factored_indices_to_P0": ("ring", ("rep3", lambda p, x: x.reshape(256, 16).top_k(
        4, ordered=False, factor=4).parts, _ROWS, rng.uniform(-100, 100, _ROWS.size)),
        dict(observer=0, owner=1, strict_structure=False), r"onehot\.open"),
    # add2: raw shares of a revealed product reach the dealer (same product, other factors)
    "add2_reveal_to_dealer": ("reveal", ("add2", lambda p, x, y: x * y,
                                         (np.full(N, 2, np.int64), np.full(N, 3, np.int64)),
                                         (np.full(N, 3, np.int64), np.full(N, 2, np.int64))),
                              dict(observer=2, owner=0, integer=(0, 1), reveal_outputs=True),
                              r"add2\.reveal"),
    # revealed comparison bits: raw bit shares reach the dealer (same signs)
    "reveal_bits_to_dealer_add2": ("bits", ("add2", _reveal_signs, np.full(N, 0.5),
                                            np.full(N, 3000.25)),
                                   dict(observer=2, owner=1), r"cmp\.reveal"),
    "reveal_bits_to_dealer_rep3": ("bits", ("rep3", _reveal_signs, np.full(N, 0.5),
                                            np.full(N, 3000.25)),
                                   dict(observer=0, owner=1), r"cmp\.reveal"),
}


@pytest.mark.parametrize("unmasked", [False, True], ids=["masked", "unmasked"])
@pytest.mark.parametrize("leak", sorted(OLD_LEAKS))
def test_view_audit_sees_the_old_leaks(monkeypatch, leak, unmasked):
    """Each of these openings passes the audit as it is, and fails it with its mask
    removed (the engine before the fix): the audit, run for every owner and observer,
    would have found them."""
    from mpcache.mpc import add2 as add2_mod
    from mpcache.mpc.pair import Pair
    kind, args, kw, where = OLD_LEAKS[leak]
    if unmasked:
        if kind == "reveal":
            monkeypatch.setattr(add2_mod.Add2, "reveal_mask",
                                lambda self, shape: np.zeros(shape, np.uint64))
        else:
            real = Pair.ab_mask
            zero_bits = kind == "bits"

            def ab_mask(self, shape, bits=False):
                if bits == zero_bits:
                    return np.zeros(shape, np.uint8 if bits else np.uint64)
                return real(self, shape, bits)
            monkeypatch.setattr(Pair, "ab_mask", ab_mask)
        with pytest.raises(ViewLeak, match=where):
            assert_view_indistinguishable(*args, **kw)
    else:
        assert_view_indistinguishable(*args, **kw)

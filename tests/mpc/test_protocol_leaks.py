"""Regression tests for three openings that told a party more than the opened value.

Each test keeps the attack: it runs on the engine as it is (the attack must fail) and on
the engine with the mask that closes the leak removed (the attack must succeed), so the
test shows both that the attack is real and that the mask stops it.

1. rep3 top-k / one_hot: the helper P0 opened every selected index (it follows P1's
   share, which is a message P0 dealt in the shuffle, and P2's half of the one-hot
   opening was masked only by P0's own preprocessing value).
2. add2 reveal: the dealer P2 received raw shares of a revealed Beaver product and,
   knowing the triple, solved for both factors.
3. Pair.reveal_bits: the dealer received raw bit shares of revealed comparisons, which
   depend on more than the comparison's result.
"""
import numpy as np
import pytest

import mpcache
from mpcache.mpc import add2 as add2_mod
from mpcache.functions import select as sel
from mpcache.functions import topk
from mpcache.mpc.pair import Pair, pair_of
from mpcache.testing import ViewLeak, assert_view_indistinguishable

RING = np.uint64


def _unmasked(monkeypatch, ring=False, bits=False, reveal=False):
    """The engine before the fixes: the chosen masks are zero."""
    real = Pair.ab_mask

    def ab_mask(self, shape, bits_=False):
        if (bits_ and bits) or (not bits_ and ring):
            return np.zeros(shape, np.uint8 if bits_ else RING)
        return real(self, shape, bits_)
    monkeypatch.setattr(Pair, "ab_mask", lambda self, shape, bits=False: ab_mask(self, shape, bits))
    if reveal:
        monkeypatch.setattr(add2_mod.Add2, "reveal_mask",
                            lambda self, shape: np.zeros(shape, RING))


# -- 1. P0 recovers the indices rep3's top-k selects -------------------------------------------
def _p0_follows_p1(monkeypatch, recovered):
    """P0's attack, written as a patch of the code P0 runs.  In the shuffle, P1's final
    share is the message P0 dealt it ("...bd"): P0 keeps that instead of its zero
    placeholder, so every public step after it (picking the selected positions, the
    revealed sort's reordering) runs on P1's share at P0 too.  At the one-hot opening P0
    adds P2's half plus the preprocessing value it dealt P2 ("rep3.onehot.r") to P1's
    share: the selected index."""
    real_shuffle, real_open = topk.shuffle, sel._open_mod
    dealt = {}

    def shuffle(pair, X, tag="shuffle"):
        out = real_shuffle(pair, X, tag)
        if pair.role == "D":
            return dealt[tag + ".bd"].reshape(X.shape)
        return out

    def open_mod(pair, v, N, to_dealer, tag="onehot.open"):
        out = real_open(pair, v, N, to_dealer, tag)
        if pair.role == "D":
            b = dealt["from P2 " + tag]
            guess = (v + b + dealt["rep3.onehot.r"]) & RING(N - 1)   # v: P1's share here
            recovered.append(guess.astype(np.int64))
        return out

    def watch(direction, peer, msg, path):
        if direction == "send":
            dealt[msg.tag] = np.asarray(msg.payload).astype(RING)
        else:
            dealt[f"from P{peer} {msg.tag}"] = np.asarray(msg.payload).astype(RING)

    monkeypatch.setattr(topk, "shuffle", shuffle)
    monkeypatch.setattr(sel, "_open_mod", open_mod)
    return watch


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("old", [True, False], ids=["unmasked", "masked"])
def test_p0_cannot_recover_topk_indices(monkeypatch, ordered, old):
    rng = np.random.default_rng(3)
    x = rng.uniform(-50, 50, (6, 40))
    k = 5
    want = [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in x]
    if old:
        _unmasked(monkeypatch, ring=True)
    recovered = []
    watch = _p0_follows_p1(monkeypatch, recovered)

    def job(p):
        if p.id == 0:
            p.transport.observers.append(watch)
        xs = p.share(x if p.id == 1 else None, owner=1)
        return p.reveal(xs.top_k(k, ordered=ordered).sum(axis=-2))

    res = mpcache.Session("rep3", processes=()).run(job)
    got = recovered[-1].reshape(6, k)
    hits = sum(len(set(r.tolist()) & w) for r, w in zip(got, want))
    if old:
        assert hits == 6 * k, f"the attack should recover every index, got {hits}/{6 * k}"
    else:
        # a guess uniform over the 64 slots hits one of the 5 chosen indices with
        # probability 5/64: about 2.3 of 30; the attack must do no better than chance
        assert hits <= 10, f"P0 recovered {hits}/{6 * k} selected indices"
    out = np.asarray(res.output)
    assert np.array_equal(out, np.stack([np.isin(np.arange(40), list(w)) for w in want]))


# -- 2. the add2 dealer solves a revealed product for its factors -------------------------------
def _solve_factors(z, z0, a, b, a0, b0, c0, lim=64):
    """Given the product z = x y, P0's share z0 = c0 + e b0 + a0 f + e f (e = x - a,
    f = y - b) and the triple, find (x, y) with |x|, |y| < lim, or None."""
    with np.errstate(over="ignore"):
        return _search(z, z0, a, b, a0, b0, c0, lim)


def _ring(v: int):
    return RING(v % (1 << 64))


def _search(z, z0, a, b, a0, b0, c0, lim):
    for x in range(-lim + 1, lim):
        e = _ring(x) - a
        for y in range(-lim + 1, lim):
            f = _ring(y) - b
            if _ring(x) * _ring(y) == z and c0 + e * b0 + a0 * f + e * f == z0:
                return x, y
    return None


@pytest.mark.parametrize("old", [True, False], ids=["unmasked", "masked"])
def test_dealer_cannot_solve_a_revealed_product(monkeypatch, old):
    xs = np.array([3, -7, 12, 5, -9, 21, 2, -30], np.int64)
    ys = np.array([11, 4, -6, -13, 8, 2, -25, 3], np.int64)
    if old:
        _unmasked(monkeypatch, reveal=True)
    seen = {}

    def job(p):
        if p.id == 2:
            seen["draws"] = []
            real_ring = p.prg_next.ring, p.prg_prev.ring
            # the dealer's own triple draws: k_2 (with P0) gives a0, b0, c0, k_1 a1, b1
            for i, g in enumerate((p.prg_next, p.prg_prev)):
                g.ring = (lambda f, i: lambda shape: seen["draws"].append((i, f(shape)))
                          or seen["draws"][-1][1])(real_ring[i], i)
            p.transport.observers.append(
                lambda d, peer, msg, path: seen.__setitem__(f"{d} P{peer} {msg.tag}",
                                                            np.asarray(msg.payload)))
        x = p.share(xs if p.id == 0 else None, owner=0, integer=True)
        y = p.share(ys if p.id == 1 else None, owner=1, integer=True)
        return p.reveal(x * y)

    res = mpcache.Session("add2", processes=()).run(job)
    z = np.asarray(res.output).astype(np.int64)
    assert np.array_equal(z, xs * ys)
    k2 = [v for i, v in seen["draws"] if i == 0]
    k1 = [v for i, v in seen["draws"] if i == 1]
    a0, b0, c0 = k2[0], k2[1], k2[2]
    a1, b1 = k1[0], k1[1]
    z0 = seen["recv P0 add2.reveal"].astype(RING)
    with np.errstate(over="ignore"):
        a_, b_ = a0 + a1, b0 + b1
    solved = [_solve_factors(_ring(int(z[i])), z0[i], a_[i], b_[i], a0[i], b0[i],
                             c0[i], lim=32) for i in range(len(xs))]
    right = sum(s == (int(xs[i]), int(ys[i])) for i, s in enumerate(solved))
    if old:
        assert right == len(xs), f"the attack should solve every product, got {right}"
    else:
        assert right == 0, f"the dealer solved {right} of {len(xs)} products"


# -- 3. revealed comparison bits: the dealer tells apart differences of one sign -----------------
def _reveal_signs(p, x):
    pair = pair_of(p)
    topk._reveal_lt(pair, p.protocol.to_pair(x.data).reshape(-1))


@pytest.mark.parametrize("protocol,dealer", [("add2", 2), ("rep3", 0)])
@pytest.mark.parametrize("old", [True, False], ids=["unmasked", "masked"])
def test_dealer_cannot_tell_same_sign_comparisons_apart(monkeypatch, protocol, dealer, old):
    """With its own randomness fixed, the dealer's view of revealing [x < 0] for x = 0.5
    and for x = 3000.25 (both non-negative: the same revealed bits) must be the same
    distribution.  Unmasked, it is a fixed message that differs: the dealer tells the two
    apart with certainty (the attack is the audit's exact check)."""
    if old:
        _unmasked(monkeypatch, bits=True)
    args = (protocol, _reveal_signs, np.full(4096, 0.5), np.full(4096, 3000.25))
    if old:
        with pytest.raises(ViewLeak, match=r"topk\.cmp\.reveal.*pinned down"):
            assert_view_indistinguishable(*args, observer=dealer, owner=1)
    else:
        assert_view_indistinguishable(*args, observer=dealer, owner=1)

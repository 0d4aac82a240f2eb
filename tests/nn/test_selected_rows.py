"""Attention over secretly chosen clusters without gathering them (nn/selected_rows.py):
selecting score columns (lazy) gives the scores and context of gathering rows, in
plaintext and under both protocols; the cost rule picks the path that moves fewer words;
rep3 bytes and rounds of each path are asserted; bad layouts are refused."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpcache
from mpcache.functions.factored import FactoredOneHot
from mpcache.nn.selected_rows import SelectedRows, attention_context, attention_scores
from mpcache.mpc.costs import cost

H, C, NC, S, GAP, W, K = 2, 4, 6, 4, 3, 5, 2
N = S + NC * C + GAP + W
B = S + K * C + W


def _case(seed, r, d):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(H, N, d))
    G = np.zeros((H, K, NC))
    for h in range(H):
        G[h, np.arange(K), np.sort(rng.choice(NC, K, replace=False))] = 1.0
    q = rng.normal(size=(H, r, d))
    p = rng.random(size=(H, r, B))
    p /= p.sum(-1, keepdims=True)
    return x, G, q, p


def _gathered(x, G):
    d = x.shape[2]
    mid = (G @ x[:, S:S + NC * C].reshape(H, NC, C * d)).reshape(H, K * C, d)
    return np.concatenate([x[:, :S], mid, x[:, N - W:]], axis=1)


@pytest.mark.parametrize("lazy", [True, False, None])
def test_plaintext_paths_agree(lazy):
    x, G, q, p = _case(0, 3, 8)
    rows = SelectedRows(x, G, S, NC, C, W, lazy=lazy)
    ref = _gathered(x, G)
    assert rows.shape == ref.shape
    np.testing.assert_allclose(attention_scores(q, rows), q @ ref.transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(attention_context(p, rows), p @ ref, atol=1e-12)


def test_cost_rule():
    x, G, _, _ = _case(0, 1, 8)
    rows = SelectedRows(x, G, S, NC, C, W)
    # lazy iff r * P < k * c * d  (P = NC * C = 24, k c d = 2 * 4 * 8 = 64)
    assert rows.lazy(2) and not rows.lazy(3)
    assert SelectedRows(x, G, S, NC, C, W, lazy=False).lazy(1) is False


def test_bad_layouts_refused():
    x, G, _, _ = _case(0, 1, 8)
    with pytest.raises(ValueError, match="one-hot over 6 clusters, pool has 5"):
        SelectedRows(x, G, S, NC - 1, C, W)
    with pytest.raises(ValueError, match="overlaps the recent window"):
        SelectedRows(x, G, S, NC, C, W + GAP + 1)


def _job(party, x, G, q, p, lazy):
    own = party.id == 0
    xs = party.share(x if own else None, owner=0)
    Gs = party.share(G if own else None, owner=0, integer=True)
    qs = party.share(q if own else None, owner=0)
    ps = party.share(p if own else None, owner=0)
    rows = SelectedRows(xs, Gs, S, NC, C, W, lazy=lazy)
    with party.scope("scores"):
        sc = attention_scores(qs, rows)
    with party.scope("context"):
        cx = attention_context(ps, rows)
    return sc.reveal(to=0), cx.reveal(to=0)


@settings(max_examples=4)
@given(seed=st.integers(0, 2 ** 16), r=st.sampled_from([1, 3]), d=st.sampled_from([4, 8]))
def test_secret_lazy_equals_gathered(protocol, seed, r, d):
    x, G, q, p = _case(seed, r, d)
    ref = _gathered(x, G)
    out = {}
    for lazy in (True, False):
        res = mpcache.Session(protocol, seed=0).run(_job, x, G, q, p, lazy)
        out[lazy] = res.output
        np.testing.assert_allclose(out[lazy][0], q @ ref.transpose(0, 2, 1), atol=2e-4)
        np.testing.assert_allclose(out[lazy][1], p @ ref, atol=2e-4)
    # same selected ring values before one truncation: the two paths agree to an ulp
    np.testing.assert_allclose(out[True][0], out[False][0], atol=2 * 2.0 ** -18)
    np.testing.assert_allclose(out[True][1], out[False][1], atol=2 * 2.0 ** -18)


@pytest.mark.parametrize("lazy", [True, False])
def test_rep3_bytes_and_rounds(lazy):
    """Per party (max): lazy scores = exact q.x^T over the whole cache, the gap rows
    included (re-share) + exact G @ pool scores (re-share) + one truncation of the B
    selected; lazy context = exact scatter G^T p (re-share) + fused product with x.
    Gathered: G @ blocks (re-share) + fused product, for K and for V."""
    r, d = 3, 8
    x, G, q, p = _case(1, r, d)
    res = mpcache.Session("rep3", seed=0).run(_job, x, G, q, p, lazy)
    sc, cx = res.scope("scores"), res.scope("context")
    P, rows = NC * C, N
    if lazy:
        want_s = [cost("rep3", "matmul_ring", m=H * r, q=rows),
                  cost("rep3", "matmul_ring", m=H * K, q=r * C),
                  cost("rep3", "trunc", n=H * r * B)]
        want_c = [cost("rep3", "matmul_ring", m=H * P, q=r),
                  cost("rep3", "matmul_fixed", m=H * r, q=d)]
    else:
        want_s = [cost("rep3", "matmul_ring", m=H * K, q=C * d),
                  cost("rep3", "matmul_fixed", m=H * r, q=B)]
        want_c = [cost("rep3", "matmul_fixed", m=H * r, q=d)]   # rows gathered once
    assert sc["bytes_sent"] == sum(c["bytes"] for c in want_s)
    assert sc["rounds"] == sum(c["rounds"] for c in want_s)
    assert cx["bytes_sent"] == sum(c["bytes"] for c in want_c)
    assert cx["rounds"] == sum(c["rounds"] for c in want_c)


def _per_query_head_case(seed, g, r, d):
    """H KV heads, g one-hots (query heads) per KV head, consecutive per group."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(H, N, d))
    G = np.zeros((H * g, K, NC))
    for h in range(H * g):
        G[h, np.arange(K), np.sort(rng.choice(NC, K, replace=False))] = 1.0
    q = rng.normal(size=(H * g, r, d))
    p = rng.random(size=(H * g, r, B))
    p /= p.sum(-1, keepdims=True)
    xr = x[np.repeat(np.arange(H), g)]                       # the reference repeats x
    mid = (G @ xr[:, S:S + NC * C].reshape(H * g, NC, C * d)).reshape(H * g, K * C, d)
    ref = np.concatenate([xr[:, :S], mid, xr[:, N - W:]], axis=1)
    return x, G, q, p, ref


@pytest.mark.parametrize("lazy", [True, False])
def test_per_query_head_one_hots_read_their_kv_head(lazy, protocol):
    """One-hots per query head over a shared KV head: the grouped products (no copy of
    the cache per query head) equal the repeated-cache reference, plaintext and secret."""
    x, G, q, p, ref = _per_query_head_case(3, 3, 1, 8)
    rows = SelectedRows(x, G, S, NC, C, W, lazy=lazy)
    assert rows.shape == ref.shape
    np.testing.assert_allclose(attention_scores(q, rows), q @ ref.transpose(0, 2, 1), atol=1e-12)
    np.testing.assert_allclose(attention_context(p, rows), p @ ref, atol=1e-12)
    sc, cx = mpcache.Session(protocol, seed=0).run(_job, x, G, q, p, lazy).output
    np.testing.assert_allclose(sc, q @ ref.transpose(0, 2, 1), atol=2e-4)
    np.testing.assert_allclose(cx, p @ ref, atol=2e-4)
    with pytest.raises(ValueError, match="one-hot heads over"):
        SelectedRows(x, G[:3], S, NC, C, W)


def test_add2_opens_the_one_hot_once():
    """add2, lazy path: the one-hot is the persisted RIGHT operand of both selections
    (scores: (G pool)^T = pool^T G^T; context: (G^T p)^T = p^T G), so its k NC words per
    head are opened once (``persist``, one round) and each product opens only its left
    operand -- instead of G in each Beaver product."""
    r, d = 1, 8
    x, G, q, p = _case(1, r, d)
    res = mpcache.Session("add2", seed=0).run(_job, x, G, q, p, True)
    sg, cg = res.scope("scores/gather"), res.scope("context/gather")
    assert (sg["bytes_sent"], sg["rounds"]) == (8 * H * K * NC + 8 * H * r * C * NC, 2)
    assert (cg["bytes_sent"], cg["rounds"]) == (8 * H * r * C * K, 1)


# -- a factored one-hot (functions/factored.py): add2's cheaper lazy selection -----------------
NCF, KF, N2 = 29, 3, 8                   # 29 clusters: 4 blocks of 8, the last one padded
NF = S + NCF * C + W


def _factored_case(seed, r, d):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(H, NF, d))
    idx = np.stack([rng.choice(NCF, KF, replace=False) for _ in range(H)])  # any row order
    q = rng.normal(size=(H, r, d))
    p = rng.random(size=(H, r, S + KF * C + W))
    p /= p.sum(-1, keepdims=True)
    G = np.zeros((H, KF, NCF))
    np.put_along_axis(G, idx[..., None], 1.0, axis=-1)
    return x, idx, G, q, p


def _factored_job(party, x, idx, G, q, p, lazy, factored):
    own = party.id == 0
    xs = party.share(x if own else None, owner=0)
    if factored:
        f = FactoredOneHot.from_indices(idx, NCF, N2)
        g = FactoredOneHot(party.share(f.parts if own else None, owner=0, integer=True),
                           f.n1, f.n2, NCF)
    else:
        g = party.share(G if own else None, owner=0, integer=True)
    qs = party.share(q if own else None, owner=0)
    ps = party.share(p if own else None, owner=0)
    rows = SelectedRows(xs, g, S, NCF, C, W, lazy=lazy)
    assert rows.factored == factored
    with party.scope("scores"):
        sc = attention_scores(qs, rows)
    with party.scope("context"):
        cx = attention_context(ps, rows)
    return sc.reveal(to=0), cx.reveal(to=0)


@pytest.mark.parametrize("lazy", [True, False])
def test_factored_one_hot_same_scores_and_context(lazy, protocol):
    """Plaintext: the factored selection equals the dense one exactly; secret (both
    protocols): the same ring values before the one truncation (an ulp apart)."""
    x, idx, G, q, p = _factored_case(5, 1, 8)
    fac = SelectedRows(x, FactoredOneHot.from_indices(idx, NCF, N2), S, NCF, C, W, lazy=lazy)
    dense = SelectedRows(x, G, S, NCF, C, W, lazy=lazy)
    np.testing.assert_allclose(attention_scores(q, fac), attention_scores(q, dense), atol=1e-12)
    np.testing.assert_allclose(attention_context(p, fac), attention_context(p, dense),
                               atol=1e-12)
    out = [mpcache.Session(protocol, seed=0).run(_factored_job, x, idx, G, q, p, lazy,
                                                 f).output for f in (False, True)]
    np.testing.assert_allclose(out[1][0], out[0][0], atol=2 * 2.0 ** -18)
    np.testing.assert_allclose(out[1][1], out[0][1], atol=2 * 2.0 ** -18)
    np.testing.assert_allclose(out[1][0], attention_scores(q, dense), atol=2e-4)


def test_add2_factored_bytes_and_rounds():
    """add2, lazy path, per party: the factors persisted once (k (n1 + n2) words per head,
    1 round); scores: the padded pool columns (r c n1 n2) and the intermediate
    (k r c n1) open in two products; context: p (k r c) and the intermediate (k r c n1).
    Against the dense one-hot's k NC + r c NC and k r c: fewer words, one more round each."""
    r, d = 1, 8
    x, idx, G, q, p = _factored_case(1, r, d)
    n1 = -(-NCF // N2)
    got = {}
    for f in (False, True):
        res = mpcache.Session("add2", seed=0).run(_factored_job, x, idx, G, q, p, True, f)
        got[f] = [(res.scope(s)["bytes_sent"], res.scope(s)["rounds"])
                  for s in ("scores/gather", "context/gather")]
    words = H * KF * (n1 + N2) + H * r * C * n1 * N2 + H * KF * r * C * n1
    assert got[True] == [(8 * words, 3), (8 * (H * KF * r * C + H * r * C * n1 * KF), 2)]
    assert got[False] == [(8 * (H * KF * NCF + H * r * C * NCF), 2), (8 * H * r * C * KF, 1)]


def test_gather_factor_rule():
    """Factored only for secret add2 scores, on the lazy path, when it opens fewer words."""
    from mpcache.nn.selected_rows import gather_factor, lazy_pays

    class Proto:
        def __init__(self, opens):
            self.products_open_operands = opens

    class Scores:                      # a stand-in: the rule reads only the protocol
        def __init__(self, opens):
            self.party = type("P", (), {"protocol": Proto(opens)})()

    assert gather_factor(np.zeros((1, 506)), 506, 45, 4, 64) is None      # plaintext
    assert gather_factor(Scores(False), 506, 45, 4, 64) is None           # rep3
    assert gather_factor(Scores(True), 506, 45, 4, 64) == 64              # add2 at 2048
    assert not lazy_pays(1, 93, 4, 9, 8)
    assert gather_factor(Scores(True), 93, 9, 4, 8) is None               # gathered path
    assert gather_factor(Scores(True), 20, 9, 4, 64) is None              # too small to pay

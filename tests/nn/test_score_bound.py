"""The public bounds from the weights (nn.private.score_bound_exponent,
act_bound_exponent): every attention score, every MLP pre-activation and every logit stays
below 2^e whatever the hidden state (hypothesis: random weights with gains and biases,
hidden states of any scale, both architectures); the private model announces the three
exponents in one message and its layers use them; the estimate's constants match the
weights."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mpcache
from mpcache.nn.kv_cache import KVCache
from mpcache.nn.private import (act_bound_exponent, col_bound_exponent, score_bound_exponent,
                                share_decoder)
from mpcache.nn.transformer import Decoder, DecoderConfig, random_weights


class _ScoreSpy:
    """A policy that reads the whole cache and records the largest |score|."""

    def __init__(self):
        self.worst = 0.0

    def view(self, cache, layer, query):
        keys, values = cache.keys(layer), cache.values(layer)
        nkv, g = keys.shape[0], query.shape[0] // keys.shape[0]
        q = np.asarray(query).reshape(nkv, g * query.shape[1], -1)
        self.worst = max(self.worst, float(np.abs(q @ np.asarray(keys).transpose(0, 2, 1)).max()))
        return keys, values, cache.positions(layer)


def _config(arch):
    return DecoderConfig(vocab_size=16, hidden_size=24, n_layers=2, n_heads=4,
                         n_kv_heads=2 if arch == "llama" else 4, head_dim=6, mlp_hidden=16,
                         arch=arch, max_positions=64, dtype="float64")


@settings(max_examples=12, deadline=None)
@given(arch=st.sampled_from(["llama", "gpt2"]), seed=st.integers(0, 2 ** 16),
       std=st.sampled_from([0.02, 0.5, 3.0]), log_scale=st.integers(-6, 12),
       t=st.integers(1, 6))
def test_scores_stay_inside_the_bound(arch, seed, std, log_scale, t):
    cfg = _config(arch)
    w = random_weights(cfg, seed, std=std)
    rng = np.random.default_rng(seed)
    for name in w:                         # non-trivial gains and norm biases
        if "norm" in name:
            w[name] = w[name] + rng.normal(0, 2.0, w[name].shape)
    e = score_bound_exponent(cfg, w)
    dec = Decoder(cfg, w)
    spy = _ScoreSpy()
    for i, block in enumerate(dec.blocks):
        cache = KVCache(cfg.n_layers, spy)
        x = rng.standard_normal((t, cfg.hidden_size)) * 2.0 ** log_scale
        x[0] *= 50.0                        # an outlier row (attention-sink-like)
        block.attn(block.attn_norm(x), np.arange(t), cache, i)
    assert spy.worst <= 2.0 ** e
    assert spy.worst > 2.0 ** (e - 12)     # a bound, not a vacuous one


@settings(max_examples=12, deadline=None)
@given(arch=st.sampled_from(["llama", "gpt2"]), seed=st.integers(0, 2 ** 16),
       std=st.sampled_from([0.02, 0.5, 3.0]), log_scale=st.integers(-6, 12),
       tied=st.booleans())
def test_activations_and_logits_stay_inside_their_bounds(arch, seed, std, log_scale, tied):
    """The MLP's pre-activation (SiLU's gate, GELU's fc output) and the logits, through
    the model's own norm and linears, on hidden states of any scale with an outlier row."""
    import dataclasses
    cfg = dataclasses.replace(_config(arch), tie_embeddings=tied)
    w = random_weights(cfg, seed, std=std)
    rng = np.random.default_rng(seed)
    for name in w:
        if "norm" in name:
            w[name] = w[name] + rng.normal(0, 2.0, w[name].shape)
    e_act, e_logit = act_bound_exponent(cfg, w)
    dec = Decoder(cfg, w)
    worst_act = worst_logit = 0.0
    for block in dec.blocks:
        x = rng.standard_normal((5, cfg.hidden_size)) * 2.0 ** log_scale
        x[0] *= 50.0
        h = block.mlp_norm(x)
        pre = block.mlp.gate(h) if arch == "llama" else block.mlp.fc(h)
        worst_act = max(worst_act, float(np.abs(pre).max()))
        worst_logit = max(worst_logit, float(np.abs(dec.logits(x)).max()))
    assert worst_act <= 2.0 ** e_act and worst_logit <= 2.0 ** e_logit
    assert worst_act > 2.0 ** (e_act - 12) and worst_logit > 2.0 ** (e_logit - 12)


def test_private_model_announces_and_uses_the_bound():
    cfg = _config("llama")
    w = random_weights(cfg, 1, std=0.5)
    e = score_bound_exponent(cfg, w)
    ea, el = act_bound_exponent(cfg, w)

    def job(p):
        dec = share_decoder(p, cfg, w if p.id == 1 else None, owner=1)
        fixed = share_decoder(p, cfg, w if p.id == 1 else None, owner=1, score_bound=3,
                              act_bounds=(4, 5))
        none = share_decoder(p, cfg, w if p.id == 1 else None, owner=1, score_bound=None,
                             act_bounds=None)
        return [[[b.attn.score_bound, b.mlp.act_bound, b.col_bound] for b in d.blocks]
                + [d.logit_bound] for d in (dec, fixed, none)]
    res = mpcache.Session("rep3").run(job)
    ec = col_bound_exponent(cfg, w)
    for out in res.outputs:
        assert out == [[[2.0 ** e, 2.0 ** ea, 2.0 ** ec]] * 2 + [2.0 ** el],
                       [[8.0, 16.0, None]] * 2 + [32.0], [[None, None, None]] * 2 + [None]]
    assert res.scope("public")["rounds"] == 1                  # one announcement


def test_column_bound_holds_and_folds_each_norm_into_its_linear():
    """col_bound_exponent bounds every column norm of the norm-fed linears (gains folded);
    a private decoder with it folds each norm into its linear (layers.norm_then): the same
    greedy token as plaintext, 2 rounds fewer per norm than without the bound."""
    from mpcache.nn import private as P
    cfg = _config("llama")
    w = random_weights(cfg, 2, std=0.5)
    ec = col_bound_exponent(cfg, w)
    for i in range(cfg.n_layers):
        for norm, lin in (("attn_norm", "attn.q"), ("attn_norm", "attn.v"),
                          ("mlp_norm", "mlp.up")):
            W, _ = P._folded_columns(w, f"layers.{i}.{norm}", f"layers.{i}.{lin}")
            assert np.linalg.norm(W, axis=0).max() < 2.0 ** ec
    dec0 = Decoder(cfg, w)
    ids = np.arange(5) % cfg.vocab_size
    want = int(np.argmax(dec0.prefill(ids)))

    def job(p, col):
        dec = share_decoder(p, cfg, w if p.id == 1 else None, owner=1,
                            act_bounds=("weights", "weights", "weights" if col else None))
        oh = P.share_prompt(p, ids, cfg.vocab_size)
        with p.scope("prefill"):
            logits = dec.prefill(oh)
        return p.reveal(dec.greedy_token(logits)), dec.blocks[0].col_bound

    got = {}
    for col in (True, False):
        res = mpcache.Session("rep3").run(job, col)
        tok, cb = res.outputs[0]
        assert int(round(float(tok))) == want and (cb is not None) == col
        got[col] = res.scope("prefill")["rounds"]
    assert got[False] - got[True] == 2 * (2 * cfg.n_layers + 1)


def test_unknown_architecture_has_no_bound():
    assert score_bound_exponent(_config("llama"), None) is None
    assert act_bound_exponent(_config("llama"), None) == (None, None)


@pytest.mark.slow
def test_estimate_constants_match_the_weights():
    """``estimate.ARCHS``' exponents are the ones ``bench decode``'s models announce."""
    from mpcache.estimate import ARCHS
    from mpcache.nn.smollm2 import load_smollm2
    from mpcache.nn.transformer import random_gpt2_small
    lm = load_smollm2("float32")
    assert score_bound_exponent(lm.config, lm.model.weights) == ARCHS["smollm2"]["score_bound_log2"]
    assert act_bound_exponent(lm.config, lm.model.weights) == \
        (ARCHS["smollm2"]["act_bound_log2"], ARCHS["smollm2"]["logit_bound_log2"])
    dec = random_gpt2_small(seed=0)
    assert score_bound_exponent(dec.config, dec.weights) == \
        ARCHS["gpt2-small-random"]["score_bound_log2"]
    assert act_bound_exponent(dec.config, dec.weights) == \
        (ARCHS["gpt2-small-random"]["act_bound_log2"],
         ARCHS["gpt2-small-random"]["logit_bound_log2"])
    assert col_bound_exponent(lm.config, lm.model.weights) == ARCHS["smollm2"]["col_bound_log2"]
    assert col_bound_exponent(dec.config, dec.weights) == \
        ARCHS["gpt2-small-random"]["col_bound_log2"]

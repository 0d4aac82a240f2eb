"""The attention scores' public bound (nn.private.score_bound_exponent): every score of
every layer stays below 2^e whatever the hidden state (hypothesis: random weights with
gains and biases, hidden states of any scale, both architectures); the private model
announces e and its attention uses it; the estimate's constants match the weights."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mpcache
from mpcache.nn.kv_cache import KVCache
from mpcache.nn.private import score_bound_exponent, share_decoder
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


def test_private_model_announces_and_uses_the_bound():
    cfg = _config("llama")
    w = random_weights(cfg, 1, std=0.5)
    e = score_bound_exponent(cfg, w)

    def job(p):
        dec = share_decoder(p, cfg, w if p.id == 1 else None, owner=1)
        fixed = share_decoder(p, cfg, w if p.id == 1 else None, owner=1, score_bound=3)
        none = share_decoder(p, cfg, w if p.id == 1 else None, owner=1, score_bound=None)
        return [[b.attn.score_bound for b in d.blocks] for d in (dec, fixed, none)]
    for out in mpcache.Session("rep3").run(job).outputs:
        assert out == [[2.0 ** e] * 2, [8.0] * 2, [None] * 2]


def test_unknown_architecture_has_no_bound():
    assert score_bound_exponent(_config("llama"), None) is None


@pytest.mark.slow
def test_estimate_constants_match_the_weights():
    """``estimate.ARCHS``' exponents are the ones ``bench decode``'s models announce."""
    from mpcache.estimate import ARCHS
    from mpcache.nn.smollm2 import load_smollm2
    from mpcache.nn.transformer import random_gpt2_small
    lm = load_smollm2("float32")
    assert score_bound_exponent(lm.config, lm.model.weights) == ARCHS["smollm2"]["score_bound_log2"]
    dec = random_gpt2_small(seed=0)
    assert score_bound_exponent(dec.config, dec.weights) == \
        ARCHS["gpt2-small-random"]["score_bound_log2"]

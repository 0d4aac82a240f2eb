"""Decoder-only transformer (LLaMA-style and GPT-2-style) with a KV cache.

One code path for plaintext and MPC: the layers only use the operations allowed in
:mod:`mpcache.nn.layers`; weights in the ``weights`` dict may be numpy arrays or secret
tensors.  Weight names (all Linear weights ``[in, out]``)::

    embed [V, H]    pos_embed [P, H] (gpt2)    lm_head [H, V] (untied only)
    final_norm.weight / .bias (bias: gpt2)
    layers.{i}.attn_norm.weight/.bias   layers.{i}.mlp_norm.weight/.bias
    layers.{i}.attn.{q,k,v,o}.weight/.bias (biases optional)
    layers.{i}.mlp.{gate,up,down}.weight (llama)   layers.{i}.mlp.{fc,proj}.weight/.bias (gpt2)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import functional as F
from .kv_cache import KVCache
from .layers import (Attention, Embedding, GeluMLP, LayerNorm, Linear, RMSNorm, RoPE,
                     SwiGLU, fold_norm_gain, norm_then, twin_bits)

__all__ = ["DecoderConfig", "Decoder", "random_weights", "weight_shapes", "gpt2_small_config",
           "random_gpt2_small"]


@dataclass
class DecoderConfig:
    """Architecture (public).  ``arch='llama'``: RMSNorm, RoPE, GQA, SwiGLU; ``'gpt2'``:
    LayerNorm, learned positions, GELU MLP, MHA, biases."""

    vocab_size: int
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_hidden: int | None = None
    arch: str = "llama"
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_positions: int = 2048
    tie_embeddings: bool = True
    norm_prescale: float = 1.0      # see layers.RMSNorm: keeps x^2 in fixed-point range
    dtype: str = "float64"          # plaintext compute dtype, also of public constants

    def __post_init__(self):
        if self.arch not in ("llama", "gpt2"):
            raise ValueError(f"unknown arch {self.arch!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.n_heads
        if self.mlp_hidden is None:
            self.mlp_hidden = 4 * self.hidden_size
        if self.arch == "gpt2" and self.n_kv_heads != self.n_heads:
            raise ValueError("gpt2 arch uses multi-head attention (n_kv_heads == n_heads)")

    @property
    def np_dtype(self):
        return np.dtype(self.dtype)


class Block:
    """Pre-norm residual block: ``h = x + attn(norm(x)); h + mlp(norm(h))``.

    *Prescaled twins* (secret x, a norm prescale a = 2^-k < 1): a norm squares ``a x``,
    whose truncation would cost 2 rounds of its own before the norm.  But ``a h = a x +
    a attn(...)``: ``a x`` is truncated beside the whole attention (a branch,
    mpcache.branches) and ``a attn(...)`` is the o-projection's product truncated by k
    more bits beside its own truncation (:meth:`Linear.__call__` ``twin``), so the MLP
    norm's prescale costs no round; the same for the next block's attention norm (and the
    final norm) with the down-projection.  SmolLM2: 37 of 61 norms (a = 1/32, 1/16,
    1/2), rep3 74 rounds per step; bytes: a second opening of the o/down outputs."""

    #: A public bound on the column norms of the (folded) linears the norms feed
    #: (``nn.private.col_bound_exponent``); with it each norm is folded into its linear
    #: (``layers.norm_then``: 2 rounds fewer per norm).  None: norm, then linear.
    col_bound = None

    def __init__(self, attn_norm, attn, mlp_norm, mlp):
        self.attn_norm, self.attn, self.mlp_norm, self.mlp = attn_norm, attn, mlp_norm, mlp

    def _attention(self, x, xs, positions, cache, layer, twin=None):
        if self.attn.qkv is not None:       # (norm_then: the norm, then q|k|v without a bound)
            qkv = norm_then(self.attn_norm, x, self.attn.qkv, self.col_bound, xs)
            return self.attn(x, positions, cache, layer, twin=twin, qkv=qkv)
        h_in = self.attn_norm(x) if xs is None else self.attn_norm(x, prescaled=xs)
        return self.attn(h_in, positions, cache, layer, twin=twin)

    def _mlp(self, h, hs, twin=None):
        pre = getattr(self.mlp, "gate_up", None) or getattr(self.mlp, "fc", None)
        if pre is not None:
            return self.mlp(h, twin=twin, pre=norm_then(self.mlp_norm, h, pre,
                                                        self.col_bound, hs))
        m_in = self.mlp_norm(h) if hs is None else self.mlp_norm(h, prescaled=hs)
        return self.mlp(m_in, twin=twin)

    def __call__(self, x, positions, cache, layer, xs=None, next_k: int | None = None):
        """``xs``: ``attn_norm.prescale * x`` made by the previous block (or None);
        ``next_k``: also return the output / 2^next_k (the next norm's prescaled input).
        Returns ``(out, out / 2^next_k or None)``."""
        k = twin_bits(self.mlp_norm, x)
        if k is None:
            h, hs = x + self._attention(x, xs, positions, cache, layer), None
        else:
            (att, att_k), x_k = F.parallel(
                x, lambda: self._attention(x, xs, positions, cache, layer, twin=k),
                lambda: _scaled(x, k))
            h, hs = x + att, x_k + att_k
        if next_k is None:
            return h + self._mlp(h, hs), None
        (mo, mo_k), h_k = F.parallel(h, lambda: self._mlp(h, hs, twin=next_k),
                                     lambda: _scaled(h, next_k))
        return h + mo, h_k + mo_k


def _scaled(x, k: int):
    """x / 2^k: one truncation, in its own scope (it runs beside a sub-block: its rounds
    overlap the sub-block's)."""
    with F.scope(x, "prescale"):
        return x * (2.0 ** -k)


class Decoder:
    """A decoder over a weight dict.  ``prefill``/``decode_step`` keep ``self.cache``.

    Only the last position goes through the final norm and LM head during generation (the
    other rows are never needed), which matters under MPC where the head is V wide.
    """

    def __init__(self, config: DecoderConfig, weights: dict):
        self.config = c = config
        self.weights = w = weights
        dt = c.np_dtype
        self.embed = Embedding(w["embed"])
        self.pos_embed = w.get("pos_embed")
        rope = None
        if c.arch == "llama":
            rope = RoPE(c.head_dim, c.rope_theta, c.max_positions, dtype=dt)
        self.rope = rope
        self.blocks = []
        for i in range(c.n_layers):
            p = f"layers.{i}."
            lin = lambda n: Linear(w[p + n + ".weight"], w.get(p + n + ".bias"))  # noqa: E731
            attn = Attention(lin("attn.q"), lin("attn.k"), lin("attn.v"), lin("attn.o"),
                             c.n_heads, c.n_kv_heads, c.head_dim, rope=rope, dtype=dt)
            if c.arch == "llama":
                mlp = SwiGLU(lin("mlp.gate"), lin("mlp.up"), lin("mlp.down"))
            else:
                mlp = GeluMLP(lin("mlp.fc"), lin("mlp.proj"))
            # fused q/k/v and gate/up (secret weights): keep only the fused copy alive
            for n, part in (("attn.q", attn.q), ("attn.k", attn.k), ("attn.v", attn.v),
                            ("mlp.gate", getattr(mlp, "gate", None)),
                            ("mlp.up", getattr(mlp, "up", None))):
                if part is not None and (attn.qkv is not None if n.startswith("attn")
                                         else getattr(mlp, "gate_up", None) is not None):
                    w[p + n + ".weight"] = part.weight
            self.blocks.append(Block(self._norm(p + "attn_norm"), attn,
                                     self._norm(p + "mlp_norm"), mlp))
        self.final_norm = self._norm("final_norm")
        self.lm_head_weight = w["embed"].T if c.tie_embeddings else w["lm_head"]  # [H, V]
        self.lm_head_bias = None
        if all(b.attn.qkv is not None for b in self.blocks) and \
                self.final_norm.weight is not None and \
                not F.is_plain(self.final_norm.weight) and not F.is_plain(self.lm_head_weight):
            self._fold_norm_gains()
        # onehot @ arange(V): integer so MPC multiplies exactly (no truncation)
        self.token_values = np.arange(c.vocab_size, dtype=np.int64)
        #: a public bound on |logits| (the owner's, ``nn.private.act_bound_exponent``):
        #: the greedy argmax compares on fewer bits; None: none known
        self.logit_bound = None
        self.cache: KVCache | None = None
        #: Optional progress callback ``on_layer(i, n_layers)`` after each block.
        self.on_layer = None

    def _fold_norm_gains(self) -> None:
        """Under MPC, every norm's gain (and LayerNorm bias) moves into the linear that
        reads it, once (:func:`~mpcache.nn.layers.fold_norm_gain`): q|k|v, gate|up (or fc)
        and the LM head.  A norm then costs rep3 15 instead of 19 rounds (11 with the fifth
        pass's linear pieces, twins and :func:`~mpcache.nn.layers.norm_then`).  The ``weights``
        dict then holds the folded linears under their names (views of the fused
        weights), so the unfolded copies are freed: build a second Decoder from the
        owner's weights, not from this dict."""
        w = self.weights
        for i, blk in enumerate(self.blocks):
            p = f"layers.{i}."
            att, mlp = blk.attn, blk.mlp
            fold_norm_gain(blk.attn_norm, att.qkv)
            att.q, att.k, att.v = att.qkv.parts
            names = [("attn.q", att.q), ("attn.k", att.k), ("attn.v", att.v)]
            if getattr(mlp, "gate_up", None) is not None:
                fold_norm_gain(blk.mlp_norm, mlp.gate_up)
                mlp.gate, mlp.up = mlp.gate_up.parts
                names += [("mlp.gate", mlp.gate), ("mlp.up", mlp.up)]
            else:
                fold_norm_gain(blk.mlp_norm, mlp.fc)
                names += [("mlp.fc", mlp.fc)]
            for n, lin in names:
                w[p + n + ".weight"] = lin.weight
        head = Linear(self.lm_head_weight)
        fold_norm_gain(self.final_norm, head)
        self.lm_head_weight, self.lm_head_bias = head.weight, head.bias
        if not self.config.tie_embeddings:
            w["lm_head"] = head.weight

    def _norm(self, name):
        c, w = self.config, self.weights
        if c.arch == "llama":
            return RMSNorm(w[name + ".weight"], c.norm_eps, c.norm_prescale)
        return LayerNorm(w[name + ".weight"], w[name + ".bias"], c.norm_eps, c.norm_prescale)

    # ------------------------------------------------------------------ forward
    def new_cache(self, policy=None) -> KVCache:
        return KVCache(self.config.n_layers, policy=policy)

    def hidden_states(self, tokens, cache: KVCache):
        """Run ``tokens`` (int ids [T], or a one-hot [T, V]) at positions ``cache.n_seen..``
        through all blocks, appending to ``cache``; returns the last block's output [T, H]
        (before the final norm)."""
        return self._hidden(tokens, cache)[0]

    def _hidden(self, tokens, cache: KVCache):
        """:meth:`hidden_states` and the final norm's prescaled input (or None)."""
        with F.scope(tokens, "embed"):
            x = self.embed(tokens, dtype=self.config.np_dtype)
        t = int(x.shape[0])
        if t == 0:
            raise ValueError("no tokens")
        positions = np.arange(cache.n_seen, cache.n_seen + t, dtype=np.int64)
        if positions[-1] >= self.config.max_positions:
            raise ValueError(f"sequence exceeds max_positions={self.config.max_positions}")
        if self.pos_embed is not None:
            x = x + self.pos_embed[cache.n_seen:cache.n_seen + t]
        x, xs = self._blocks(x, positions, cache)
        cache.n_seen += t
        return x, xs

    def _blocks(self, x, positions, cache):
        """The blocks; returns (out, final_norm.prescale * out when a block made it)."""
        xs, n = None, len(self.blocks)
        for i, block in enumerate(self.blocks):
            nxt = self.blocks[i + 1].attn_norm if i + 1 < n else self.final_norm
            x, xs = block(x, positions, cache, i, xs=xs, next_k=twin_bits(nxt, x))
            if self.on_layer is not None:
                self.on_layer(i, n)
        return x, xs

    def logits(self, h, hs=None):
        """Final norm + LM head on hidden rows ``h`` [T, H] -> [T, V] (``hs``: the final
        norm's prescaled input, when the last block made it)."""
        col = self.blocks[0].col_bound if self.blocks else None
        if col is not None and not F.is_plain(h):
            head = Linear(self.lm_head_weight, self.lm_head_bias)
            with F.scope(h, "lm_head"):
                return norm_then(self.final_norm, h, head, col, hs)
        hn = self.final_norm(h) if hs is None else self.final_norm(h, prescaled=hs)
        with F.scope(hn, "lm_head"):
            y = hn @ self.lm_head_weight
            return y if self.lm_head_bias is None else y + self.lm_head_bias

    def forward(self, tokens, cache: KVCache, all_logits: bool = False):
        """Logits of the last position [V] (or of every position [T, V])."""
        h, hs = self._hidden(tokens, cache)
        if all_logits:
            return self.logits(h, hs)
        t = int(h.shape[0])
        return self.logits(h[t - 1:t], None if hs is None else hs[t - 1:t]).reshape(
            self.config.vocab_size)

    def prefill(self, token_ids, policy=None, all_logits: bool = False):
        """Start a fresh cache, run the prompt, return the last position's logits [V]."""
        self.cache = self.new_cache(policy)
        return self.forward(token_ids, self.cache, all_logits=all_logits)

    def decode_step(self, token):
        """One token (an int id or a one-hot [V] / [1, V]) through the cache -> logits [V].

        Only the new token is computed; the prefix lives in ``self.cache``."""
        if self.cache is None:
            raise RuntimeError("call prefill() before decode_step()")
        if _is_scalar_id(token):
            token = [int(token)]
        elif len(token.shape) == 1:
            token = token.reshape(1, self.config.vocab_size)
        return self.forward(token, self.cache)

    # ------------------------------------------------------------------ greedy
    def greedy_onehot(self, logits):
        """One-hot of the argmax (stays secret under MPC; feed it to ``decode_step``), on
        :attr:`logit_bound`'s shorter comparisons when one is known."""
        return F.argmax_onehot(logits, axis=-1, bound=self.logit_bound)

    def greedy_token(self, logits):
        """``argmax_onehot(logits) @ arange(V)``: the token id (a secret scalar under MPC)."""
        return self.greedy_onehot(logits) @ self.token_values

    def generate(self, prompt_ids, max_new_tokens: int, stop_ids=(), policy=None) -> list:
        """Plaintext greedy generation (the output is revealed, so stopping is allowed)."""
        logits = self.prefill(np.asarray(prompt_ids, dtype=np.int64), policy=policy)
        out = []
        stop = set(int(s) for s in stop_ids)
        for _ in range(max_new_tokens):
            tok = int(round(float(self.greedy_token(logits))))
            if tok in stop:
                break
            out.append(tok)
            if len(out) == max_new_tokens:
                break
            logits = self.decode_step(tok)
        return out


def _is_scalar_id(token) -> bool:
    return isinstance(token, (int, np.integer)) or (
        isinstance(token, np.ndarray) and token.dtype.kind in "iu" and token.size == 1)


# ---------------------------------------------------------------------- random models
def weight_shapes(config: DecoderConfig) -> dict:
    """Every weight name of the architecture and its shape, in a fixed order.

    The architecture is public, so parties that hold no weights (under MPC) know from this
    alone which tensors the model owner will share."""
    c = config
    gpt2 = c.arch == "gpt2"
    out = {"embed": (c.vocab_size, c.hidden_size)}
    if gpt2:
        out["pos_embed"] = (c.max_positions, c.hidden_size)
    if not c.tie_embeddings:
        out["lm_head"] = (c.hidden_size, c.vocab_size)

    def norm(name):
        out[name + ".weight"] = (c.hidden_size,)
        if gpt2:
            out[name + ".bias"] = (c.hidden_size,)

    q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    for i in range(c.n_layers):
        p = f"layers.{i}."
        norm(p + "attn_norm")
        norm(p + "mlp_norm")
        shapes = {"attn.q": (c.hidden_size, q_out), "attn.k": (c.hidden_size, kv_out),
                  "attn.v": (c.hidden_size, kv_out), "attn.o": (q_out, c.hidden_size)}
        if gpt2:
            shapes.update({"mlp.fc": (c.hidden_size, c.mlp_hidden),
                           "mlp.proj": (c.mlp_hidden, c.hidden_size)})
        else:
            shapes.update({"mlp.gate": (c.hidden_size, c.mlp_hidden),
                           "mlp.up": (c.hidden_size, c.mlp_hidden),
                           "mlp.down": (c.mlp_hidden, c.hidden_size)})
        for name, shape in shapes.items():
            out[p + name + ".weight"] = shape
            if gpt2:
                out[p + name + ".bias"] = (shape[1],)
    norm("final_norm")
    return out


def random_weights(config: DecoderConfig, seed: int = 0, std: float = 0.02) -> dict:
    """Seeded random weights (GPT-2 init: N(0, std), residual projections scaled by
    1/sqrt(2 n_layers), norms at gain 1 / bias 0, small random biases)."""
    c = config
    rng = np.random.default_rng(seed)
    dt = c.np_dtype
    gpt2 = c.arch == "gpt2"
    res_std = std / np.sqrt(2 * c.n_layers)

    def normal(shape, s):
        return (rng.standard_normal(shape, dtype=np.float32) * s).astype(dt)

    w = {}
    for name, shape in weight_shapes(c).items():
        if "norm" in name:
            if name.endswith(".bias"):
                w[name] = np.zeros(shape, dtype=dt)
            else:
                w[name] = 1.0 + normal(shape, 0.1 if not gpt2 else 0.0)
        elif name == "pos_embed":
            w[name] = normal(shape, 0.01)
        elif name.endswith(".bias"):
            w[name] = normal(shape, 0.01)
        else:
            residual = any(r in name for r in ("attn.o", "mlp.proj", "mlp.down"))
            w[name] = normal(shape, res_std if residual else std)
    return w


def gpt2_small_config(vocab_size: int = 50257, n_layers: int = 12, max_positions: int = 1024,
                      dtype: str = "float32") -> DecoderConfig:
    """GPT-2 small: 12 layers, hidden 768, 12 heads, MLP 3072, vocab 50257, 1024 positions."""
    return DecoderConfig(vocab_size=vocab_size, hidden_size=768, n_layers=n_layers, n_heads=12,
                         n_kv_heads=12, head_dim=64, mlp_hidden=3072, arch="gpt2",
                         norm_eps=1e-5, max_positions=max_positions, tie_embeddings=True,
                         dtype=dtype)


def random_gpt2_small(vocab_size: int = 50257, seed: int = 0, n_layers: int = 12,
                      max_positions: int = 1024, dtype: str = "float32") -> Decoder:
    """A seeded random-weight GPT-2-small-shaped decoder (the cost benchmark model)."""
    cfg = gpt2_small_config(vocab_size, n_layers, max_positions, dtype)
    return Decoder(cfg, random_weights(cfg, seed))

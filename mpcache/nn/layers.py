"""Transformer layers written once for plaintext numpy and for secret-shared tensors.

Rules (so the same code runs under MPC): activations only meet python operators, reshape,
``transpose(axes)``, ``.T``, public slicing/indexing, ``.sum``, :mod:`functional`, and public
numpy constants / python floats.  Weights may be numpy arrays or secret tensors.  Shapes,
positions and masks are public (architecture and token count are public in MPCache's
threat model), so python control flow on them is fine.

Conventions: activations are ``[T, hidden]`` (no batch); Linear weights are ``[in, out]``;
per-head tensors are ``[heads, T, head_dim]``; ``@`` on 3-D operands is a batched matmul
over the leading (head) axis, as in numpy.
"""
from __future__ import annotations

import math

import numpy as np

from . import functional as F
from .selected_rows import attention_context, attention_scores

__all__ = [
    "MASK_VALUE", "Embedding", "Linear", "FusedLinear", "fold_norm_gain", "RMSNorm",
    "LayerNorm", "RoPE", "SwiGLU", "GeluMLP", "Attention", "causal_mask",
]

#: Additive mask for disallowed (future) keys.  Finite on purpose: fixed point cannot hold
#: -inf, and after softmax's max-subtraction exp() of anything below about -14 is 0 anyway.
MASK_VALUE = -1.0e4


class Embedding:
    """Token embedding as a private lookup: ``one_hot(tokens) @ E``.

    Under MPC the token ids are the client's secret, so ``E[id]`` (an index) would leak them.
    A one-hot ``[T, V]`` times ``E [V, H]`` is one matmul, and in replicated 3PC a matmul
    costs its OUTPUT size (T x H ring elements sent), not V x H, so the lookup is as cheap as
    any linear layer's output.  ``tokens`` is either integer ids (the plaintext client path:
    the one-hot is built here) or an already one-hot ``[T, V]`` tensor (e.g. the secret result
    of ``argmax_onehot`` fed back during decoding, never revealed).

    With plaintext integer ids AND a numpy table, ``fast_plaintext`` uses ``E[ids]``: exactly
    equal to the one-hot product (each row has a single 1), without a [T, V] x [V, H] matmul.
    """

    fast_plaintext = True

    def __init__(self, weight):
        self.weight = weight  # [V, H]
        self.vocab_size = int(weight.shape[0])

    def __call__(self, tokens, dtype=np.float64):
        if _is_int_ids(tokens):
            ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
            if self.fast_plaintext and isinstance(self.weight, np.ndarray):
                if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                    raise ValueError(f"token id out of range [0, {self.vocab_size})")
                return self.weight[ids]
            # public ids with secret weights: an INTEGER one-hot multiplies exactly under MPC
            tokens = F.one_hot(ids, self.vocab_size,
                               dtype=dtype if F.is_plain(self.weight) else np.int64)
        return tokens @ self.weight


def _is_int_ids(tokens) -> bool:
    if isinstance(tokens, (int, np.integer)):
        return True
    if isinstance(tokens, (list, tuple)):
        return all(isinstance(t, (int, np.integer)) for t in tokens)
    return isinstance(tokens, np.ndarray) and tokens.dtype.kind in "iu"


class Linear:
    """``x @ W (+ b)`` with ``W`` stored ``[in, out]`` (so no transpose on the hot path)."""

    def __init__(self, weight, bias=None):
        self.weight = weight
        self.bias = bias
        self._bias_k = {}        # k -> bias / 2^k (a twin's bias, made once)

    def __call__(self, x, twin: int | None = None):
        """``twin`` (k): also return the output / 2^k, truncated beside the product in the
        same rounds (``F.matmul_twin``; a downstream norm's prescale, :class:`Block`)."""
        with F.scope(x, "linear"):
            if twin is None:
                y = x @ self.weight
                return y if self.bias is None else y + self.bias
            y, yk = F.matmul_twin(x, self.weight, twin)
            if self.bias is None:
                return y, yk
            return y + self.bias, yk + self._scaled_bias(twin)

    def finish(self, y):
        """The output from the product ``y = x @ W`` made elsewhere (:func:`norm_then`)."""
        return y if self.bias is None else y + self.bias

    def _scaled_bias(self, k: int):
        """bias / 2^k, once per k (a secret bias: one truncation, the first time)."""
        if k not in self._bias_k:
            self._bias_k[k] = self.bias * (2.0 ** -k)
        return self._bias_k[k]


class FusedLinear:
    """Linears that read the same input as ONE product ``x @ [W_1 | W_2 | ...]`` (q, k, v;
    gate, up): under MPC one opening and one truncation for all of them -- rep3 2 rounds
    instead of 2 per linear (q/k/v 6 -> 2, gate/up 4 -> 2), add2 2 instead of 2 per
    linear and ``x`` opened once instead of once per linear (fewer bytes); the same
    output elements, so rep3's bytes do not change.

    The weights are concatenated ONCE here (a local op on shares; a persisted weight's
    state is concatenated with it), and :attr:`parts` are Linears over views of the fused
    weight (the same values, no second copy) for code that wants one of them alone."""

    def __init__(self, linears):
        ws = [lin.weight for lin in linears]
        self.sizes = [int(w.shape[-1]) for w in ws]
        self.weight = F.concatenate(ws, axis=1)
        bs = [lin.bias for lin in linears]
        self.bias = None
        if any(b is not None for b in bs):
            self.bias = F.concatenate([b if b is not None else np.zeros(n)
                                       for b, n in zip(bs, self.sizes)], axis=0)
        self.bounds = np.cumsum([0] + self.sizes)
        self.parts = self.make_parts()

    def make_parts(self):
        """Linears over views of the fused weight (and bias), one per fused linear."""
        return [Linear(self.weight[:, a:b], None if self.bias is None else self.bias[a:b])
                for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    @staticmethod
    def applies(linears) -> bool:
        """Fuse only Linears with secret weights (under MPC; plaintext keeps its own
        products, bit for bit) of the same input width."""
        if not all(isinstance(lin, Linear) for lin in linears):
            return False
        ws = [lin.weight for lin in linears]
        return (not any(F.is_plain(w) for w in ws) and len({int(w.shape[0]) for w in ws}) == 1
                and all(getattr(w, "ndim", 0) == 2 for w in ws))

    def __call__(self, x):
        with F.scope(x, "linear"):
            return self.finish(x @ self.weight)

    def finish(self, y):
        """The parts' outputs from the product ``y = x @ W`` made elsewhere."""
        if self.bias is not None:
            y = y + self.bias
        return [y[:, a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:])]


def norm_then(norm, x, linear, col_bound: float | None, prescaled=None):
    """``linear(norm(x))`` -- for a secret x, a gain-folded norm and a public bound
    ``col_bound`` on the norms of the linear's weight columns, with the norm *folded into
    the linear*: ``z = (a x) @ W`` runs beside the sum of squares (a branch,
    mpcache.branches) and takes the place of ``a x`` in rsqrt's un-normalisation
    (``rsqrt(times=z, times_bound=col_bound)``: ``|(a x) . W_j| <= ||a x|| ||W_j||``), so
    ``z / rms`` is the linear's output: the linear's own truncating level is gone (rep3
    and add2 2 rounds per norm).  Otherwise (plaintext, a gain, no bound): the norm,
    then the linear."""
    if F.is_plain(x) or col_bound is None or norm.weight is not None or \
            not isinstance(norm, (RMSNorm, LayerNorm)):
        h = norm(x) if prescaled is None else norm(x, prescaled=prescaled)
        return linear(h)
    with F.scope(x, "norm"):
        xs, n, a = norm.prescaled_input(x, prescaled)

        def product():
            with F.scope(x, "linear"):
                return xs @ linear.weight

        z, sq = F.parallel(x, product, lambda: (xs * xs).sum(axis=-1, keepdims=True))
        y = F.rsqrt(sq + n * norm.eps * a * a, scale=float(np.sqrt(n)), times=z,
                    times_bound=max(1.0, float(col_bound)))
    return linear.finish(y)


def _square_and_gain(xs, x, g):
    """``(xs * xs, x * g)``: two independent products, stacked into ONE product when both
    sides are secret (one truncating level under MPC instead of two)."""
    if F.is_plain(x) == F.is_plain(g):
        both = F.stack([xs, x]) * F.stack([xs, F.broadcast_to(g, x.shape)])
        return both[0], both[1]
    return xs * xs, x * g


#: False: every norm truncates its own prescaled input (for comparisons of the two).
TWINS = True


def twin_bits(norm, x) -> int | None:
    """k when ``norm``'s prescale is 2^-k (k >= 1) and ``x`` is secret: the prescaled
    input then comes from the producer's product (:class:`Block`); else None."""
    if not TWINS or F.is_plain(x):
        return None
    a = float(getattr(norm, "prescale", 1.0))
    if not 0.0 < a < 1.0:
        return None
    k = -math.log2(a)
    return int(k) if float(k).is_integer() else None


def _prescaled(x, a: float):
    """``a x`` for a norm's public prescale: a power of two >= 1 is an integer multiple of
    the shares (local, exact: no truncation, 2 rounds fewer; SmolLM2's early layers take
    2..128); a < 1 truncates (one fixed-point product)."""
    if a == 1.0:
        return x
    if a > 1.0 and float(a).is_integer() and int(a) & (int(a) - 1) == 0:
        return x * np.int64(int(a))
    return x * a


class RMSNorm:
    """``x * rsqrt(mean(x^2) + eps) * g``: one mean, one rsqrt per row under MPC.

    ``prescale`` (public, default 1) squares ``a*x`` instead of ``x`` and corrects after the
    rsqrt -- identical maths, but it keeps ``x^2`` inside a fixed-point ring: SmolLM2's
    residual stream reaches |x| ~ 2.4e4 and mean(x^2) ~ 1e6 on its attention-sink token,
    whose square overflows Z_2^64 at 18 fractional bits, while layer 0 has mean(x^2) ~ 6e-3
    (so one scale does not fit all layers: set ``block.attn_norm.prescale`` per layer).

    Written as ``(x g) * (a sqrt(n)) / sqrt(sum((a x)^2) + n eps a^2)``: the 1/n of the
    mean and the prescale correction are public and ride in rsqrt's ``scale`` (free), and
    ``x g`` does not wait for the rsqrt -- it shares a product level with the square.
    Under MPC: [x a] + 1 level + rsqrt + 1 level (rep3: 19 rounds with a prescale, 17
    without; was 34 with separate mean, r a, x r and * g levels and the A2B top bit).

    *Gain folded* (``weight is None``; :func:`fold_norm_gain` moves g into the next
    linear's weights once at setup, ``(x r g) @ W = (x r) @ (diag(g) W)``): the result is
    ``rsqrt(sum (a x)^2 + n eps a^2, scale=sqrt(n), times=a x)``, the normalised x
    folded into rsqrt's un-normalisation (``(a x)^2 <= sum`` bounds it without any
    bound on g): [x a] + 1 level (the square) + top bit + 3 levels (normalise with u =
    a x 2^(c - k/2), the piecewise quadratic guess of ``rsqrt``, ``u * p(a)``); rep3 19
    -> 15 rounds with a prescale (17 -> 13 without), add2 17 -> 13.  Since the fifth
    rounds pass (docs/rounds.md): the guess rides in the normalisation's level (linear
    pieces: rep3 13 with a truncated prescale, 11 without), the prescale comes as a twin
    of the product before (:class:`~mpcache.nn.transformer.Block`) or is a local shift,
    and :func:`norm_then` folds the norm into the linear it feeds (11 rounds for both)."""

    def __init__(self, weight, eps: float = 1e-5, prescale: float = 1.0):
        self.weight, self.eps, self.prescale = weight, float(eps), float(prescale)

    def prescaled_input(self, x, prescaled=None):
        """(a x, n, a): the input whose squares the norm sums."""
        a = self.prescale
        return (_prescaled(x, a) if prescaled is None else prescaled), int(x.shape[-1]), a

    def __call__(self, x, prescaled=None):
        """``prescaled``: ``prescale * x`` when the caller has it (:class:`Block`)."""
        with F.scope(x, "norm"):
            xs, n, a = self.prescaled_input(x, prescaled)
            if self.weight is None:                   # gain folded into the next linear
                return F.rsqrt((xs * xs).sum(axis=-1, keepdims=True) + n * self.eps * a * a,
                               scale=float(np.sqrt(n)), times=xs)
            sq, xg = _square_and_gain(xs, x, self.weight)
            r = F.rsqrt(sq.sum(axis=-1, keepdims=True) + n * self.eps * a * a,
                        scale=a * float(np.sqrt(n)))
            return xg * r


def fold_norm_gain(norm, linear) -> None:
    """Move a norm's gain g (and a LayerNorm's bias b) into the linear that reads the
    norm's output, ONCE at setup: ``W' = diag(g) W`` and ``c' = b W + c`` (under MPC one
    product over W's elements and one [1, d] x W product, not per token; ``W'`` is
    persisted again).  Then ``norm.weight`` (and ``bias``) is None and the norm saves its
    un-normalisation level (:class:`RMSNorm`; the gain rode free in the square's level,
    but without a public bound on g it cannot ride in the normalisation's).  ``linear``: a
    :class:`Linear` or :class:`FusedLinear` (its parts are re-made as views of W')."""
    g, b = norm.weight, getattr(norm, "bias", None)
    W = linear.weight
    Wn = F.broadcast_to(g.reshape(-1, 1), W.shape) * W
    if not F.is_plain(Wn):
        Wn.persist()
    c = linear.bias
    if b is not None:
        bw = (b.reshape(1, -1) @ W).reshape(-1)
        c = bw if c is None else c + bw
    linear.weight, linear.bias = Wn, c
    if isinstance(linear, FusedLinear):
        linear.parts = linear.make_parts()
    norm.weight = None
    if b is not None:
        norm.bias = None


class LayerNorm:
    """``(x - mean) * rsqrt(var + eps) * g + b`` (variance of the centred x, as PyTorch).
    ``prescale``, the folded 1/n and the folded gain (and bias: ``b @ W`` joins the next
    linear's bias) as in :class:`RMSNorm`."""

    def __init__(self, weight, bias, eps: float = 1e-5, prescale: float = 1.0):
        self.weight, self.bias, self.eps, self.prescale = weight, bias, float(eps), float(prescale)

    def prescaled_input(self, x, prescaled=None, xc=None):
        """(a (x - mean x), n, a): the input whose squares the norm sums (``xc``: x's
        centred copy when the caller has it)."""
        a = self.prescale
        if prescaled is None:
            xc = x - F.mean(x, axis=-1, keepdims=True) if xc is None else xc
            xs = _prescaled(xc, a)
        else:
            xs = prescaled - F.mean(prescaled, axis=-1, keepdims=True)
        return xs, int(x.shape[-1]), a

    def __call__(self, x, prescaled=None):
        """``prescaled``: ``prescale * x`` when the caller has it (:class:`Block`)."""
        with F.scope(x, "norm"):
            if self.weight is None:        # gain and bias folded (RMSNorm, fold_norm_gain)
                xs, n, a = self.prescaled_input(x, prescaled)
                return F.rsqrt((xs * xs).sum(axis=-1, keepdims=True) + n * self.eps * a * a,
                               scale=float(np.sqrt(n)), times=xs)
            xc = x - F.mean(x, axis=-1, keepdims=True)
            xs, n, a = self.prescaled_input(x, prescaled, xc)
            sq, xg = _square_and_gain(xs, xc, self.weight)
            r = F.rsqrt(sq.sum(axis=-1, keepdims=True) + n * self.eps * a * a,
                        scale=a * float(np.sqrt(n)))
            return xg * r + self.bias


class RoPE:
    """Rotary position embedding, "rotate-half" (GPT-NeoX / HF LLaMA) form.

    Pairs are (i, i + head_dim/2).  llama.cpp's GGUF converter permutes the rows of Q and K
    so that its own kernel can rotate ADJACENT pairs (2i, 2i+1); the SmolLM2 loader undoes
    that permutation at load time (as HF's GGUF loader does), so weights match the HF layout
    and this form.  Positions are public, so cos/sin are public numpy tables and RoPE costs
    two public-constant products, a local negation and a concatenate -- no interaction
    beyond truncation under MPC.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, max_positions: int = 2048,
                 dtype=np.float64):
        if head_dim % 2:
            raise ValueError("RoPE needs an even head_dim")
        self.head_dim = head_dim
        half = head_dim // 2
        inv_freq = 1.0 / (theta ** (np.arange(half, dtype=np.float64) * 2.0 / head_dim))
        ang = np.arange(max_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
        cos, sin = np.cos(ang), np.sin(ang)
        self.cos = np.concatenate([cos, cos], axis=1).astype(dtype)      # [P, hd]
        # sign of rotate_half folded in: rot(x) = [-x2, x1] -> [x2, x1] * [-sin, sin]
        self.sin = np.concatenate([-sin, sin], axis=1).astype(dtype)

    def __call__(self, x, positions, scale: float = 1.0):
        """``x``: [heads, T, head_dim]; ``positions``: public int array [T]."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and positions.max() >= self.cos.shape[0]:
            raise ValueError(f"position {positions.max()} beyond the RoPE table "
                             f"({self.cos.shape[0]}); raise max_positions")
        half = self.head_dim // 2
        swapped = F.concatenate([x[:, :, half:], x[:, :, :half]], axis=2)
        # one truncation under MPC; ``scale`` folds attention's 1/sqrt(d) into the tables
        return F.weighted_sum([(x, self.cos[positions] * scale),
                               (swapped, self.sin[positions] * scale)])

    def pair(self, q, k, positions, q_scale: float = 1.0):
        """``(self(q, positions, q_scale), self(k, positions))`` with ONE truncation for
        both under MPC: q [nh, T, hd] and k [nkv, T, hd] are rotated as one [nh + nkv, T,
        hd] tensor with per-head public scales in the tables.  Rounds: rep3 2 (was 4 for
        two separate truncations), add2 1 (was 2); bytes unchanged (the same elements)."""
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and positions.max() >= self.cos.shape[0]:
            raise ValueError(f"position {positions.max()} beyond the RoPE table "
                             f"({self.cos.shape[0]}); raise max_positions")
        nq = int(q.shape[0])
        both = F.concatenate([q, k], axis=0)
        half = self.head_dim // 2
        swapped = F.concatenate([both[:, :, half:], both[:, :, :half]], axis=2)
        sc = np.ones((nq + int(k.shape[0]), 1, 1))
        sc[:nq] = q_scale
        out = F.weighted_sum([(both, self.cos[positions] * sc),
                              (swapped, self.sin[positions] * sc)])
        return out[:nq], out[nq:]


class SwiGLU:
    """LLaMA MLP: ``down(silu(gate(x)) * up(x))``; gate and up as one
    :class:`FusedLinear` product under MPC (rep3 2 rounds instead of 4)."""

    def __init__(self, gate: Linear, up: Linear, down: Linear):
        self.gate, self.up, self.down = gate, up, down
        #: a public bound on |gate(x)| (the owner's, ``nn.private.act_bound_exponent``):
        #: SiLU's comparisons get shorter; None: none known
        self.act_bound = None
        self.gate_up = None
        if FusedLinear.applies([gate, up]):
            self.gate_up = FusedLinear([gate, up])
            self.gate, self.up = self.gate_up.parts

    def __call__(self, x, twin: int | None = None, pre=None):
        """``twin`` (k): also the output / 2^k (:meth:`Linear.__call__`).  ``pre``: the
        (gate, up) outputs made by the caller (:func:`norm_then`)."""
        if pre is not None:
            g, u = pre
        elif self.gate_up is not None:
            g, u = self.gate_up(x)
        else:
            g, u = self.gate(x), self.up(x)
        with F.scope(x, "mlp_act"):
            h = F.silu_times(g, u, self.act_bound)
        return self.down(h, twin)


class GeluMLP:
    """GPT-2 MLP: ``proj(gelu(fc(x)))``."""

    def __init__(self, fc: Linear, proj: Linear):
        self.fc, self.proj = fc, proj
        #: a public bound on |fc(x)| (as ``SwiGLU.act_bound``)
        self.act_bound = None

    def __call__(self, x, twin: int | None = None, pre=None):
        """``twin`` (k): also the output / 2^k (:meth:`Linear.__call__`).  ``pre``: the
        fc output made by the caller (:func:`norm_then`)."""
        h = self.fc(x) if pre is None else pre
        with F.scope(x, "mlp_act"):
            h = F.gelu(h, self.act_bound)
        return self.proj(h, twin)


def causal_mask(q_positions, k_positions, dtype=np.float64):
    """Public additive mask [T_q, S]: 0 where key position <= query position, else MASK_VALUE.

    Built from positions (not from index order) so it stays right after eviction.
    Returns None when nothing is masked (the usual decode step) to skip the addition.
    """
    q = np.asarray(q_positions, dtype=np.int64)[:, None]
    k = np.asarray(k_positions, dtype=np.int64)[None, :]
    bad = k > q
    if not bad.any():
        return None
    return np.where(bad, MASK_VALUE, 0.0).astype(dtype)


class Attention:
    """Causal self-attention with grouped-query heads and a KV cache.

    GQA without copying K/V: query head h uses KV head h // group (HF's repeat_kv and
    llama.cpp's broadcast agree on this), so ``q [n_heads, T, hd]`` reshapes for free into
    ``[n_kv, group*T, hd]`` and scores are ONE batched matmul against ``K^T [n_kv, hd, S]``.
    The 1/sqrt(hd) scale multiplies q (smaller than the scores when S is large).
    """

    def __init__(self, q: Linear, k: Linear, v: Linear, o: Linear, n_heads: int,
                 n_kv_heads: int, head_dim: int, rope: RoPE | None = None, dtype=np.float64):
        if n_heads % n_kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")
        self.q, self.k, self.v, self.o = q, k, v, o
        self.qkv = None     # q, k, v as one product under MPC (rep3 2 rounds instead of 6)
        if FusedLinear.applies([q, k, v]):
            self.qkv = FusedLinear([q, k, v])
            self.q, self.k, self.v = self.qkv.parts
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.group = n_heads // n_kv_heads
        self.rope = rope
        self.scale = 1.0 / float(np.sqrt(head_dim))
        self.dtype = dtype
        #: public bound on |score| of an unmasked step (set by the private model from the
        #: owner's weights, ``nn.private.score_bound_exponent``): softmax's max then
        #: compares on fewer bits.  None: no bound known (plaintext ignores it anyway).
        self.score_bound = None

    def __call__(self, x, positions, cache, layer: int, twin: int | None = None, qkv=None):
        """``x`` [T, hidden] at public absolute ``positions`` [T]; returns [T, hidden]
        (``twin`` k: and the output / 2^k, :meth:`Linear.__call__`).  ``qkv``: the
        projections made by the caller (the norm folded into them, :func:`norm_then`);
        ``x`` is then only the tensor the scopes are counted on."""
        positions = np.asarray(positions, dtype=np.int64)
        t, nh, nkv, hd, g = positions.shape[0], self.n_heads, self.n_kv_heads, self.head_dim, self.group
        if qkv is not None:
            q, k, v = qkv
        else:
            q, k, v = self.qkv(x) if self.qkv is not None else (self.q(x), self.k(x), self.v(x))
        q = q.reshape(t, nh, hd).transpose((1, 0, 2))             # [nh, T, hd]
        k = k.reshape(t, nkv, hd).transpose((1, 0, 2))            # [nkv, T, hd]
        v = v.reshape(t, nkv, hd).transpose((1, 0, 2))
        with F.scope(x, "rope"):
            if self.rope is not None:
                q, k = self.rope.pair(q, k, positions, self.scale)     # one truncation
            else:
                q = q * self.scale
        cache.append(layer, k, v, positions)
        keys, values = cache.view(layer, q, score_bound=self.score_bound)
        k_pos = cache.view_positions(layer)

        # a policy may hand every query head its own rows ([n_heads, S, hd]); else per KV head
        hk = nh if int(keys.shape[0]) == nh else nkv
        gk = nh // hk
        with F.scope(x, "attn_scores"):
            scores = attention_scores(q.reshape(hk, gk * t, hd), keys)      # [hk, gk*T, S]
        bound = self.score_bound
        if k_pos is not None:
            mask = causal_mask(positions, k_pos, self.dtype)
            if mask is not None:                          # public decision on public data
                bound = None                              # masked scores leave the bound
                s = int(k_pos.shape[0])                   # rows are ordered (group, T)
                scores = (scores.reshape(hk, gk, t, s) + mask).reshape(hk, gk * t, s)
        elif t > 1:
            raise ValueError("policy returned no positions for a multi-token query")
        summary = cache.view_summary(layer) if hasattr(cache, "view_summary") else None
        if summary is not None:               # weighted entries beside the rows
            return self._with_summary(x, q, scores, values, summary, bound, cache, layer,
                                      twin)
        with F.scope(x, "softmax"):
            probs = F.softmax(scores, axis=-1, score_bound=bound)
        cache.observe(layer, probs)
        with F.scope(x, "attn_context"):
            ctx = attention_context(probs, values)                    # [hk, gk*T, hd]
        return self._out(ctx, t, twin)

    def _with_summary(self, x, q, scores, values, summary, bound, cache, layer, twin):
        """One decode step that also attends to weighted summary entries (a policy's view
        of the rows it does not read: ``KVCache.view_summary``): their scores per KV head
        (``q @ K_sum^T``), ONE weighted softmax over rows and entries together, and
        ``p_rows @ V + p_sum @ V_sum``.  The entries' keys are means of keys, so their
        scores keep the attention's bound."""
        sk, sv, sw, wb = summary
        nh, nkv, hd, g = self.n_heads, self.n_kv_heads, self.head_dim, self.group
        hk, rows, s = int(scores.shape[0]), int(scores.shape[1]), int(scores.shape[2])
        if int(q.shape[1]) != 1:
            raise ValueError("summary entries are for single-token decode steps")
        m = int(sk.shape[1])
        with F.scope(x, "attn_scores"):
            ssc = attention_scores(q.reshape(nkv, g, hd), sk).reshape(hk, rows, m)
            both = F.concatenate([scores, ssc], axis=-1)
        ones = np.ones((hk, 1, s), dtype=np.int64)        # the rows: weight 1 each
        with F.scope(x, "softmax"):
            probs = F.softmax(both, axis=-1, score_bound=bound,
                              weights=F.concatenate([ones, sw], axis=-1), weight_bound=wb)
        cache.observe(layer, probs[:, :, :s])
        with F.scope(x, "attn_context"):
            ctx = attention_context(probs[:, :, :s], values)
            ctx = ctx + (probs[:, :, s:].reshape(nkv, g, m) @ sv).reshape(hk, rows, hd)
        return self._out(ctx, 1, twin)

    def _out(self, ctx, t, twin):
        nh, hd = self.n_heads, self.head_dim
        ctx = ctx.reshape(nh, t, hd).transpose((1, 0, 2)).reshape(t, nh * hd)
        return self.o(ctx) if twin is None else self.o(ctx, twin)

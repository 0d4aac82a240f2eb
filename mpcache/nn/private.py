"""Private inference: the model owner's weights and the client's prompt stay secret-shared.

Roles (the MPCache threat model): the **client** (P0 by default) holds the prompt and is
the only party that learns the generated token ids; the **model owner** (P1 by default)
holds the weights.  The architecture, the prompt length and the number of generated
tokens are public.  The same :class:`~mpcache.nn.transformer.Decoder` code runs here,
with :class:`~mpcache.tensor.SecretTensor` weights instead of numpy arrays.

Decoding loop: ``onehot = argmax_onehot(logits)`` stays secret and is fed straight back
as the next token's embedding (``onehot @ E``: an integer-by-fixed ring matmul, no
truncation, cost = output size); ``onehot @ arange(V)`` is revealed to the client only.
The client then announces whether to continue (one public bit per step): stopping at an
end-of-turn token tells P1 and P2 the answer's length in tokens.  ``fixed_length=True``
hides it: every party runs exactly ``max_new_tokens`` steps (no announcement at all) and
the client discards what follows the first end-of-turn token, paying for the padding
steps (docs/protocols.md, "Output length").

Norm prescales: SmolLM2's residual stream reaches |x| ~ 2.4e4 on its attention-sink
token, whose square leaves the fixed-point range.  :func:`calibrate_prescales` picks, per
norm, a public power of two from a plaintext run on a *public* calibration text (never
the user's prompt), such that mean((a x)^2) stays inside rsqrt's accurate range.  The
scales are public model metadata chosen by the model owner (like SPU's/PUMA's fixed
scales); they reveal only the order of magnitude of activations on public text.
"""
from __future__ import annotations

import dataclasses
import json
import mmap

import numpy as np

from ..pages import MADV_DONTNEED, advise, available
from . import functional as F
from .transformer import Decoder, DecoderConfig, weight_shapes

#: Target upper bound for mean((a x)^2) (rsqrt is accurate on [1e-3, 1e4]).
PRESCALE_TARGET = 1.0e3


def norm_modules(dec: Decoder) -> dict:
    """name -> norm object (RMSNorm or LayerNorm) of a decoder, in a fixed order."""
    out = {}
    for i, b in enumerate(dec.blocks):
        out[f"layers.{i}.attn_norm"] = b.attn_norm
        out[f"layers.{i}.mlp_norm"] = b.mlp_norm
    out["final_norm"] = dec.final_norm
    return out


class _Recorder:
    def __init__(self, norm, centred: bool):
        self.norm, self.centred, self.max_ms, self.min_ms, self.max_abs = norm, centred, 0.0, np.inf, 0.0

    def __call__(self, x):
        a = np.asarray(x, dtype=np.float64)
        if self.centred:
            a = a - a.mean(axis=-1, keepdims=True)
        ms = (a * a).mean(axis=-1)
        self.max_ms = max(self.max_ms, float(ms.max()))
        self.min_ms = min(self.min_ms, float(ms.min()))
        self.max_abs = max(self.max_abs, float(np.abs(a).max()))
        return self.norm(x)


def calibrate_prescales(dec: Decoder, token_ids, target: float = PRESCALE_TARGET) -> dict:
    """Per-norm power-of-two prescales from a plaintext run over public ``token_ids``.

    Returns ``{norm name: {"prescale": a, "max_ms": ..., "min_ms": ..., "max_abs": ...}}``
    with ``a = 2^k`` the largest power of two such that ``a^2 max mean(x^2) <= target``."""
    mods = norm_modules(dec)
    centred = dec.config.arch == "gpt2"
    recs = {n: _Recorder(m, centred) for n, m in mods.items()}
    _swap_norms(dec, recs)
    try:
        dec.prefill(np.asarray(token_ids, dtype=np.int64))
    finally:
        _swap_norms(dec, {n: r.norm for n, r in recs.items()})
        dec.cache = None
    out = {}
    for n, r in recs.items():
        k = int(np.floor(0.5 * np.log2(target / max(r.max_ms, 1e-30))))
        k = int(np.clip(k, -20, 8))
        out[n] = {"prescale": float(2.0 ** k), "max_ms": r.max_ms, "min_ms": r.min_ms,
                  "max_abs": r.max_abs}
    return out


def _swap_norms(dec: Decoder, new: dict) -> None:
    for i, b in enumerate(dec.blocks):
        b.attn_norm = new[f"layers.{i}.attn_norm"]
        b.mlp_norm = new[f"layers.{i}.mlp_norm"]
    dec.final_norm = new["final_norm"]


def apply_prescales(dec: Decoder, prescales: dict) -> None:
    for n, m in norm_modules(dec).items():
        if n in prescales:
            m.prescale = float(prescales[n]["prescale"] if isinstance(prescales[n], dict)
                               else prescales[n])


def send_public(party, public: dict | None, owner: int = 1, client: int = 0) -> dict:
    """The model owner tells the others the model's public part (set-up, scope "public").

    ``public`` (at the owner only): ``{"config": DecoderConfig fields, "prescales": {norm:
    float}, "tokenizer": JSON, "chat_template": str, "special": {name: id}}``.  The helper
    (neither owner nor client) receives the architecture and prescales only; the client
    also the tokenizer, chat template and special ids (what it needs to encode its prompt
    and decode its answer).  No weight value is in it.  Returns what this party knows."""
    tag = "setup.public"
    with party.scope("public"):
        if party.id == owner:
            for other in range(3):
                if other == owner:
                    continue
                doc = public if other == client else {k: public[k] for k in
                                                      ("config", "prescales")}
                raw = np.frombuffer(json.dumps(doc).encode("utf-8"), dtype=np.uint8)
                party.send(other, np.array([raw.size], dtype=np.int64), tag + ".size")
                party.send(other, raw, tag)
            return public
        n = int(party.recv(owner, tag + ".size", (1,))[0])
        return json.loads(bytes(np.asarray(party.recv(owner, tag, (n,)), dtype=np.uint8)))


def _base(arr: np.ndarray) -> np.ndarray:
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


def release_zero_pages(tensors) -> int:
    """Give back the memory of all-zero share components (rep3: a non-owner holds a public
    zero for the owner's input, ``x_{o+2} = 0``) without changing any value or view.

    For each distinct C-contiguous base array of ``tensors`` (secret tensors; views such
    as a fused weight's parts lead to their base), every component slot that is all zero
    has its whole interior pages dropped with ``madvise(MADV_DONTNEED)``: Linux then
    reads them as zeros from the shared zero page, taking no resident memory.  This
    halves those parties' weight memory.  Returns the bytes released (0 where ``madvise``
    is unavailable)."""
    if not available():
        return 0
    seen, released = set(), 0
    for t in tensors:
        d = _base(t.data)
        if id(d) in seen or d.ndim < 2 or d.shape[0] < 2 or not d.flags.c_contiguous \
                or not d.flags.writeable or d[0].nbytes < 4 * _PAGE:
            continue
        seen.add(id(d))
        for j in range(d.shape[0]):
            if not d[j].any():
                released += _dont_need(d[j])
    return released


def _dont_need(a: np.ndarray) -> int:
    return advise(a, MADV_DONTNEED, inward=True)


_PAGE = mmap.PAGESIZE


def folded_shapes(config: DecoderConfig) -> dict:
    """The tensors the owner shares, in order, when it folds every norm's gain (and a
    LayerNorm's bias) into the linear that reads the norm, in plaintext before sharing:
    :func:`weight_shapes` without the norms' tensors, with an untied ``lm_head`` (the
    final norm's gain folded into the head) first.  Public: it follows from the config."""
    out = {"lm_head": (config.hidden_size, config.vocab_size)}
    out.update((k, v) for k, v in weight_shapes(config).items()
               if "_norm." not in k and k != "lm_head")
    return out


#: linear weight name suffix -> the norm that feeds it (layer-local), for the fold
_FED_BY = {"attn.q": "attn_norm", "attn.k": "attn_norm", "attn.v": "attn_norm",
           "mlp.gate": "mlp_norm", "mlp.up": "mlp_norm", "mlp.fc": "mlp_norm"}


def _folded_tensor(w: dict, config: DecoderConfig, name: str) -> np.ndarray:
    """The owner's plaintext tensor ``name`` of :func:`folded_shapes` (float64):
    ``W' = diag(g) W`` for a linear fed by a norm with gain g, ``c' = b W + c`` for its
    bias (LayerNorm bias b), the rest as they are."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)        # noqa: E731
    if name == "lm_head":
        head = w["embed"].T if config.tie_embeddings else w["lm_head"]
        return f64(w["final_norm.weight"]).reshape(-1, 1) * f64(head)
    parts = name.split(".")
    if parts[0] == "layers" and ".".join(parts[2:4]) in _FED_BY:
        norm = f"layers.{parts[1]}.{_FED_BY['.'.join(parts[2:4])]}"
        lin = ".".join(parts[:4])
        W = f64(w[lin + ".weight"])
        if parts[4] == "weight":
            return f64(w[norm + ".weight"]).reshape(-1, 1) * W
        c = f64(w[lin + ".bias"])
        return c + f64(w[norm + ".bias"]) @ W if norm + ".bias" in w else c
    return f64(w[name])


class _Releasing(dict):
    """The secret weight dict: every tensor put in it gives back its all-zero components'
    pages at once -- also those the Decoder stores while it is built (a fused q|k|v or
    gate|up weight is a fresh concatenation: released layer by layer, not all at the end,
    which keeps the peak memory down)."""

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if value is not None and hasattr(value, "data"):
            release_zero_pages([value])


def _drop_done(weights: dict, name: str) -> None:
    """Forget the owner's plaintext ``name`` once shared; a linear's weight goes with its
    bias (a LayerNorm bias folds through the unfolded weight: ``b W + c``)."""
    if name.endswith(".weight") and name[:-len("weight")] + "bias" in weights:
        return
    weights.pop(name, None)
    if name.endswith(".bias"):
        weights.pop(name[:-len("bias")] + "weight", None)


def share_decoder(party, config: DecoderConfig, weights: dict | None = None, owner: int = 1,
                  prescales: dict | None = None, consume: bool = False,
                  fold_norms: bool = True, score_bound="weights",
                  act_bounds="weights") -> Decoder:
    """Secret-share the owner's weights into a Decoder running on secret tensors.

    Every party calls this with the public ``config``; only ``owner`` passes ``weights``.
    The other parties build the same skeleton from the config alone.

    ``fold_norms`` (default): the owner folds every norm's gain (and LayerNorm bias) into
    the linear that reads it, in plaintext, and shares the folded tensors
    (:func:`folded_shapes`): the same layout the Decoder would otherwise build under MPC
    at set-up (``Decoder._fold_norm_gains``: a secret product over every folded weight),
    here with no MPC work and no second copy; the norms then hold no gain.  The folded
    LM head is its own ``[H, V]`` tensor.  ``fold_norms=False``: the raw tensors
    (:func:`weight_shapes`); a tied LM head is then the embedding's transposed view.

    ``consume``: the owner pops each plaintext tensor from ``weights`` once it is no
    longer needed (the caller holds no other reference: the plaintext leaves memory as it
    is shared).  Shares with a public zero component give its pages back
    (:func:`release_zero_pages`).

    ``score_bound``: ``"weights"`` (default) -- the owner computes the attention scores'
    public bound exponent from its weights (:func:`score_bound_exponent`) and announces
    it (set-up scope "public", one round, 8 bytes to each); an int -- that exponent,
    public and passed by every party (the cost estimate's twins); None -- no bound.
    ``act_bounds``: the same for the MLP activation's input and the logits
    (:func:`act_bound_exponent`) and for the column norms of the linears the norms feed
    (:func:`col_bound_exponent`): ``"weights"``, a pair (no column bound: each norm,
    then its linear) or a triple of ints, or None.  The owner's "weights" values go out in ONE
    announcement (32 bytes to each)."""
    fold = fold_norms and config.arch in ("llama", "gpt2")
    shapes = folded_shapes(config) if fold else weight_shapes(config)
    acts = act_bounds if isinstance(act_bounds, (tuple, list)) else (act_bounds,) * 3
    acts = tuple(acts) + ((None,) if len(acts) == 2 else ())        # (act, logit[, col])
    given = [score_bound, *acts]
    es = [-1 if g is None else None if g == "weights" else int(g) for g in given]
    if any(e is None for e in es):
        with party.scope("public"):
            mine = [-1] * 4
            if party.id == owner:
                mine = [score_bound_exponent(config, weights),
                        *act_bound_exponent(config, weights),
                        col_bound_exponent(config, weights)]
                mine = [-1 if e is None else int(e) for e in mine]
            told = announce_ints(party, mine, owner)
        es = [t if e is None else e for e, t in zip(es, told)]
    sw = _Releasing()
    with party.scope("share_weights"):
        for name, shape in shapes.items():
            w = None
            if party.id == owner:
                w = _folded_tensor(weights, config, name) if fold else \
                    np.asarray(weights[name], dtype=np.float64)
                if consume:
                    _drop_done(weights, name)
                if tuple(w.shape) != tuple(shape):
                    raise ValueError(f"weight {name} has shape {w.shape}, architecture says "
                                     f"{shape}")
            sw[name] = party.share(w, owner=owner)       # zero pages released there
            del w
    if consume and party.id == owner:
        weights.clear()                         # the norms' gains (folded), anything else
    cfg = dataclasses.replace(config, dtype="float64")
    if fold:
        cfg = dataclasses.replace(cfg, tie_embeddings=False)
        for name in weight_shapes(config):
            if "_norm." in name:
                sw[name] = None                 # gain (and bias) are in the next linear
    with party.scope("persist_weights"):
        for name, t in sw.items():
            if t is not None and t.ndim == 2 and name != "pos_embed":  # matmul operands
                t.persist()
    dec = Decoder(cfg, sw)
    set_bounds(dec, es)
    release_zero_pages([t for t in dec.weights.values() if t is not None])
    if prescales:
        apply_prescales(dec, prescales)
    return dec


def set_bounds(dec: Decoder, exponents) -> None:
    """Give ``dec`` the public bound exponents ``[score, act, logit, col]`` (-1: none;
    a list of three: no column bound): the attentions' ``score_bound``, the MLPs'
    ``act_bound``, the decoder's ``logit_bound`` and the blocks' ``col_bound`` become
    2^e (or None)."""
    es = [int(e) for e in exponents] + [-1] * (4 - len(exponents))
    e_score, e_act, e_logit, e_col = es
    two = lambda e: float(2.0 ** e) if e >= 0 else None      # noqa: E731
    for block in dec.blocks:
        block.attn.score_bound = two(e_score)
        block.mlp.act_bound = two(e_act)
        block.col_bound = two(e_col)
    dec.logit_bound = two(e_logit)


def get_bounds(dec: Decoder) -> list:
    """The bound exponents ``[score, act, logit, col]`` :func:`set_bounds` gave (-1:
    none)."""
    def one(values):
        values = set(values)
        v = values.pop() if len(values) == 1 else None
        return -1 if v is None else int(round(np.log2(v)))
    return [one(b.attn.score_bound for b in dec.blocks),
            one(b.mlp.act_bound for b in dec.blocks), one([dec.logit_bound]),
            one(b.col_bound for b in dec.blocks)]


#: Relative slack of the score bound over the plaintext weights' bound: the private
#: forward pass computes the normalised x and q, k with relative errors below ~1e-3
#: (rsqrt 2e-4; fixed point), far inside it.
SCORE_BOUND_SLACK = 1.01


def score_bound_exponent(config: DecoderConfig, weights: dict) -> int | None:
    """The owner's public score bound, as one exponent e for the whole model: every
    attention score of every layer (no mask) satisfies |q . k| / sqrt(d) < 2^e, whatever
    the input.  Why it holds: a norm's output before its gain has ||x_hat|| <= sqrt(H)
    (RMSNorm: x / rms(x); LayerNorm: (x - mean) / std; a prescale changes nothing), so
    with the gain folded into W (``W' = diag(g) W``, bias ``c' = b W + c``) each head's
    ``||q_h|| <= sigma_max(W'_q,h) sqrt(H) + ||c'_q,h||`` (RoPE is a rotation), the same
    for k, and |score| <= ||q_h|| ||k_h|| / sqrt(d); e = ceil(log2(max * slack)).

    What it reveals: one integer, the order of magnitude of the largest attention logit
    the weights allow (like the norms' prescales, a coarse public property of the model).
    What it buys: softmax's row max and exp's clip compare on ``select.bound_bits``
    bits (SmolLM2: e = 11, 32-bit comparisons, 6 rounds fewer per layer).  None for an
    architecture without the norm-then-linear layout."""
    if config.arch not in ("llama", "gpt2") or weights is None:
        return None
    H, d = config.hidden_size, config.head_dim
    group = config.n_heads // config.n_kv_heads
    worst = 0.0
    for i in range(config.n_layers):
        norms = {}
        for part, heads in (("q", config.n_heads), ("k", config.n_kv_heads)):
            W, c = _folded_columns(weights, f"layers.{i}.attn_norm", f"layers.{i}.attn.{part}")
            norms[part] = [np.linalg.norm(W[:, h * d:(h + 1) * d], 2) * np.sqrt(H)
                           + np.linalg.norm(c[h * d:(h + 1) * d]) for h in range(heads)]
        for h in range(config.n_heads):
            worst = max(worst, norms["q"][h] * norms["k"][h // group] / np.sqrt(d))
    return int(np.ceil(np.log2(max(worst, 1.0) * SCORE_BOUND_SLACK)))


def _folded_columns(weights: dict, norm: str, lin: str, W=None):
    """(W', c') of ``lin`` with ``norm``'s gain and bias folded in (``W' = diag(g) W``,
    ``c' = b W + c``), float64."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)        # noqa: E731
    W = f64(weights[lin + ".weight"] if W is None else W)
    c = f64(weights[lin + ".bias"]) if lin + ".bias" in weights else np.zeros(W.shape[1])
    if norm + ".bias" in weights:
        c = c + f64(weights[norm + ".bias"]) @ W
    return f64(weights[norm + ".weight"]).reshape(-1, 1) * W, c


def act_bound_exponent(config: DecoderConfig, weights: dict) -> tuple:
    """The owner's public bounds on the MLP activation's input (SiLU's gate, GELU's fc
    output) and on the logits, as exponents (e_act, e_logit): every such value is below
    2^e in magnitude, whatever the input.  Why: a norm's output before its gain has
    ||x_hat|| <= sqrt(H) (as in :func:`score_bound_exponent`), and output j of the
    folded linear is ``x_hat . W'[:, j] + c'_j``, so |.| <= sqrt(H) ||W'[:, j]|| + |c'_j|
    (Cauchy-Schwarz per column: tight); e = ceil(log2(max * slack)).

    What it reveals: two integers, the orders of magnitude the weights allow for the MLP's
    pre-activations and for the logits.  What it buys: SiLU/GELU compare on
    ``bound_bits(2^e + T)`` bits with coarse thresholds (``functions.activations``), and
    the greedy argmax on ``bound_bits(2^e)`` exact bits.  (None, None) for an
    architecture without the norm-then-linear layout."""
    if config.arch not in ("llama", "gpt2") or weights is None:
        return None, None
    H = config.hidden_size
    lin = "mlp.gate" if config.arch == "llama" else "mlp.fc"
    worst = 0.0
    for i in range(config.n_layers):
        W, c = _folded_columns(weights, f"layers.{i}.mlp_norm", f"layers.{i}.{lin}")
        worst = max(worst, float((np.linalg.norm(W, axis=0) * np.sqrt(H) + np.abs(c)).max()))
    head = weights.get("lm_head")
    if head is None or config.tie_embeddings:
        head = np.asarray(weights["embed"], dtype=np.float64).T
    W, c = _folded_columns(weights, "final_norm", "lm_head", head)
    logit = float((np.linalg.norm(W, axis=0) * np.sqrt(H) + np.abs(c)).max())
    return tuple(int(np.ceil(np.log2(max(v, 1.0) * SCORE_BOUND_SLACK))) for v in (worst, logit))


def col_bound_exponent(config: DecoderConfig, weights: dict) -> int | None:
    """The owner's public bound on the column norms of every linear a norm feeds (q|k|v,
    gate|up or fc, the LM head), with the norm's gain folded in, as one exponent e:
    ``||W'[:, j]|| < 2^e`` for every column j.  Why it matters: a norm folded into its
    linear (``nn.layers.norm_then``) puts ``z = (a x) @ W'`` where rsqrt expected ``a x``,
    and ``|z_j| <= ||a x|| ||W'[:, j]||`` (Cauchy-Schwarz) keeps the un-normalised
    product in range whatever the input.

    What it reveals: one integer, the order of magnitude of the largest weight column
    (the score and activation bounds already reveal products of such norms).  What it
    buys: the linear after each norm has no truncating level of its own (2 rounds per
    norm).  None for an architecture without the norm-then-linear layout."""
    if config.arch not in ("llama", "gpt2") or weights is None:
        return None
    lins = (("attn_norm", ("attn.q", "attn.k", "attn.v")),
            ("mlp_norm", ("mlp.gate", "mlp.up") if config.arch == "llama" else ("mlp.fc",)))
    worst = 0.0
    for i in range(config.n_layers):
        for norm, parts in lins:
            for part in parts:
                W, _ = _folded_columns(weights, f"layers.{i}.{norm}", f"layers.{i}.{part}")
                worst = max(worst, float(np.linalg.norm(W, axis=0).max()))
    head = weights.get("lm_head")
    if head is None or config.tie_embeddings:
        head = np.asarray(weights["embed"], dtype=np.float64).T
    W, _ = _folded_columns(weights, "final_norm", "lm_head", head)
    worst = max(worst, float(np.linalg.norm(W, axis=0).max()))
    return max(0, int(np.ceil(np.log2(max(worst, 1e-30) * SCORE_BOUND_SLACK))))


def share_bytes(dec: Decoder) -> int:
    """Bytes of this party's weight shares, all-zero components not counted (their pages
    are given back: :func:`release_zero_pages`)."""
    seen, total = set(), 0
    for t in dec.weights.values():
        if t is None:
            continue
        d = _base(t.data)
        if id(d) in seen or 0 in d.strides:
            continue
        seen.add(id(d))
        if d.ndim < 2 or d.shape[0] < 2:
            total += d.nbytes
            continue
        total += sum(d[j].nbytes for j in range(d.shape[0]) if d[j].any())
    return total


def share_prompt(party, token_ids, vocab_size: int, client: int = 0):
    """The client's prompt as a secret integer one-hot [T, V] (shape public)."""
    oh = None
    if party.id == client:
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("empty prompt")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"token id out of range [0, {vocab_size})")
        oh = F.one_hot(ids, vocab_size, dtype=np.int64)
    return party.share(oh, owner=client, integer=True)


def announce_ints(party, values, src: int) -> list:
    """Party ``src`` makes a few small public integers known to all (one message each;
    every party passes a list of the same length)."""
    n = len(values)
    if party.id == src:
        for other in range(3):
            if other != src:
                party.send(other, np.asarray(values, dtype=np.int64), "control.announce")
        return [int(v) for v in values]
    return [int(v) for v in party.recv(src, "control.announce", (n,))]


def announce(party, value: int, src: int) -> int:
    """Party ``src`` makes a small public integer known to all (control flow)."""
    return announce_ints(party, [value], src)[0]


def private_generate(party, dec: Decoder, prompt_onehot, max_new_tokens: int, stop_ids=(),
                     client: int = 0, on_token=None, policy=None,
                     on_prefill_layer=None, persist_cache: bool | None = None,
                     fixed_length: bool = False, forward=None, after_forward=None,
                     after_prefill=None) -> list | None:
    """Greedy private generation.  Returns the token ids at the client, None elsewhere.

    Scopes: "prefill", then "decode" per step (the breakdown inside comes from the layers'
    own scopes).  ``on_token(step, token_id)`` is called at the client as tokens arrive;
    ``on_prefill_layer(i, n)`` after each layer of the prefill; ``after_prefill(dec)``
    once the prefill's cache is complete (outside every scope).

    ``persist_cache``: after the prefill, persist the prompt's K/V (``KVCache.persist``,
    scope "prefill/persist_cache"): add2 opens them once instead of at every decode step
    (the same tokens).  Default (None): when at least two decode steps will reuse them
    (``max_new_tokens > 2``); it costs one step's worth of cache openings.

    ``fixed_length``, ``forward``, ``after_forward``: see :func:`private_decode`."""
    dec.on_layer = on_prefill_layer
    try:
        with party.scope("prefill"):
            logits = dec.prefill(prompt_onehot, policy=policy)
            if persist_cache is None:
                persist_cache = max_new_tokens > 2
            if persist_cache:
                with party.scope("persist_cache"):
                    dec.cache.persist()
    finally:
        dec.on_layer = None
    if after_prefill is not None:
        after_prefill(dec)
    return private_decode(party, dec, logits, max_new_tokens, stop_ids, client, on_token,
                          fixed_length=fixed_length, forward=forward,
                          after_forward=after_forward)


def private_decode(party, dec: Decoder, logits, max_new_tokens: int, stop_ids=(),
                   client: int = 0, on_token=None, fixed_length: bool = False, first=None,
                   forward=None, after_forward=None) -> list | None:
    """The greedy decoding loop over ``dec.cache`` (already filled), starting from the
    secret ``logits`` of the last prompt position (or, ``first = (onehot, token_id)``, from
    a first token the client already holds: its id at the client, its secret one-hot
    everywhere).  Scope "decode" per step.  Returns the ids at the client, None elsewhere.

    ``fixed_length=False``: after each token the client announces one public bit, continue
    or stop (an end-of-turn token in ``stop_ids``, or ``max_new_tokens`` reached): P1 and
    P2 learn the answer's length.  ``fixed_length=True``: all parties run exactly
    ``max_new_tokens`` steps with no announcement; the client keeps the tokens up to and
    including the first end-of-turn token and drops the rest (computed, never revealed to
    anyone but the client, never shown).

    ``forward(onehot) -> logits`` replaces ``dec.decode_step`` (the caller's measuring
    wrapper); ``after_forward(step, onehot)`` runs after each step's "decode" scope closes
    (e.g. the same step on another cache, measured apart)."""
    stop = {int(s) for s in stop_ids}
    forward = forward or dec.decode_step
    out, ended = [], False
    for step in range(max_new_tokens):
        with party.latency_bound(), party.scope("decode"):    # many small rounds: one core
            if step == 0 and first is not None:
                oh, tid = first
            else:
                with party.scope("sample"):
                    oh = dec.greedy_onehot(logits)
                    tid = (oh @ dec.token_values).reveal(to=client)
            if party.id == client and not ended:
                tid = int(tid)
                out.append(tid)
                ended = tid in stop
                if on_token is not None:
                    on_token(step, tid)
            last = step + 1 >= max_new_tokens
            if fixed_length:
                more = not last
            else:
                more = int(party.id == client and not ended and not last)
                more = announce(party, more, client)
            if not more:
                break
            oh = oh.reshape(1, dec.config.vocab_size)
            logits = forward(oh)
        if after_forward is not None:
            with party.latency_bound():
                after_forward(step, oh)
    return out if party.id == client else None

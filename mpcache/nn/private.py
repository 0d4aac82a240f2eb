"""Private inference: the model owner's weights and the client's prompt stay secret-shared.

Roles (the MPCache threat model): the **client** (P0 by default) holds the prompt and is
the only party that learns the generated token ids; the **model owner** (P1 by default)
holds the weights.  The architecture, the prompt length and the number of generated
tokens are public.  The same :class:`~mpcache.nn.transformer.Decoder` code runs here,
with :class:`~mpcache.tensor.SecretTensor` weights instead of numpy arrays.

Decoding loop: ``onehot = argmax_onehot(logits)`` stays secret and is fed straight back
as the next token's embedding (``onehot @ E``: an integer-by-fixed ring matmul, no
truncation, cost = output size); ``onehot @ arange(V)`` is revealed to the client only.
The client then announces whether to continue (one public bit: stopping at an
end-of-turn token reveals the answer's length, as any deployment would).

Norm prescales: SmolLM2's residual stream reaches |x| ~ 2.4e4 on its attention-sink
token, whose square leaves the fixed-point range.  :func:`calibrate_prescales` picks, per
norm, a public power of two from a plaintext run on a *public* calibration text (never
the user's prompt), such that mean((a x)^2) stays inside rsqrt's accurate range.  The
scales are public model metadata chosen by the model owner (like SPU's/PUMA's fixed
scales); they reveal only the order of magnitude of activations on public text.
"""
from __future__ import annotations

import dataclasses

import numpy as np

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


def share_decoder(party, config: DecoderConfig, weights: dict | None = None, owner: int = 1,
                  prescales: dict | None = None) -> Decoder:
    """Secret-share the owner's weights into a Decoder running on secret tensors.

    Every party calls this with the public ``config``; only ``owner`` passes ``weights``.
    A tied LM head is stored once more as a contiguous ``[H, V]`` share so the per-token
    head matmul reads memory in order (costs memory, not communication)."""
    shapes = weight_shapes(config)
    sw = {}
    with party.scope("share_weights"):
        for name, shape in shapes.items():
            w = None
            if party.id == owner:
                w = np.asarray(weights[name], dtype=np.float64)
                if tuple(w.shape) != tuple(shape):
                    raise ValueError(f"weight {name} has shape {w.shape}, architecture says "
                                     f"{shape}")
            sw[name] = party.share(w, owner=owner)
    cfg = config
    if config.tie_embeddings:
        sw["lm_head"] = sw["embed"].T.copy()
        cfg = dataclasses.replace(config, tie_embeddings=False)
    with party.scope("persist_weights"):
        for name, t in sw.items():
            if t.ndim == 2 and name != "pos_embed":    # right operands of matmuls
                t.persist()
    cfg = dataclasses.replace(cfg, dtype="float64")
    dec = Decoder(cfg, sw)
    if prescales:
        apply_prescales(dec, prescales)
    return dec


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


def announce(party, value: int, src: int) -> int:
    """Party ``src`` makes a small public integer known to all (control flow)."""
    if party.id == src:
        for other in range(3):
            if other != src:
                party.send(other, np.array([value], dtype=np.int64), "control.announce")
        return int(value)
    return int(party.recv(src, "control.announce", (1,))[0])


def private_generate(party, dec: Decoder, prompt_onehot, max_new_tokens: int, stop_ids=(),
                     client: int = 0, on_token=None, policy=None,
                     on_prefill_layer=None, persist_cache: bool | None = None) -> list | None:
    """Greedy private generation.  Returns the token ids at the client, None elsewhere.

    Scopes: "prefill", then "decode" per step (the breakdown inside comes from the layers'
    own scopes).  ``on_token(step, token_id)`` is called at the client as tokens arrive;
    ``on_prefill_layer(i, n)`` after each layer of the prefill.

    ``persist_cache``: after the prefill, persist the prompt's K/V (``KVCache.persist``,
    scope "prefill/persist_cache"): add2 opens them once instead of at every decode step
    (the same tokens).  Default (None): when at least two decode steps will reuse them
    (``max_new_tokens > 2``); it costs one step's worth of cache openings."""
    stop = {int(s) for s in stop_ids}
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
    out = []
    for step in range(max_new_tokens):
        with party.latency_bound(), party.scope("decode"):    # many small rounds: one core
            with party.scope("sample"):
                oh = dec.greedy_onehot(logits)
                tid = (oh @ dec.token_values).reveal(to=client)
            if party.id == client:
                tid = int(tid)
                out.append(tid)
                if on_token is not None:
                    on_token(step, tid)
            more = 0
            if party.id == client:
                more = int(tid not in stop and step + 1 < max_new_tokens)
            more = announce(party, more, client)
            if not more:
                break
            logits = dec.decode_step(oh.reshape(1, dec.config.vocab_size))
    return out if party.id == client else None

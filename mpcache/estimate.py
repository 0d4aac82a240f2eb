"""``mpcache estimate``: bytes, rounds and offline bytes of one private decoding step of a
model we do not run, from measured per-op costs and the cost formulas.

    mpcache estimate --arch llama-7b --context 4096 8192 --protocol rep3
    mpcache estimate --arch smollm2 --context 256 --protocol both --json est.json
    mpcache estimate --arch my_model.json --context 1024        # a custom architecture

Method (design choice: compose measured ops, never run the model).  A decoding step of
the private decoder (:meth:`mpcache.nn.transformer.Decoder.decode_step` plus the greedy
sample, as ``mpcache bench decode`` measures it in scope ``decode``) is the sequence

    embed          one-hot [1, V] @ E [V, d]            (E persisted)
    per layer      norm(d); q|k|v (one fused product), o; attention over S+1 cached rows
                   (RoPE or q-scale, cache append, scores, softmax, context);
                   norm(d); MLP linears (gate|up fused) and activation
    final          norm(d); LM head [d, V]; argmax one-hot over V; reveal the id

Every piece is run on random secret data by the same code the model runs (the
:mod:`mpcache.nn.layers` modules and :mod:`mpcache.nn.functional` ops, in a
:class:`mpcache.Session`), so its bytes, messages and rounds are the protocol's own:

* pieces whose size is cheap to run are measured **at the target shape**: norms,
  RoPE, the MLP activation over ``mlp_hidden``, softmax over ``[n_kv, group, S+1]``, the
  argmax over V;
* matrix products are affine in their dimensions (closed forms in
  :mod:`mpcache.mpc.costs`: an ``m x k @ k x q`` product costs a + b k + c q per
  party for m = 1), so a linear layer, the embedding and the LM head are measured at three
  small shapes and extrapolated; the attention's products are measured at two small cache
  lengths S and extrapolated in S (tests/apps/test_estimate.py checks both laws at a 4th
  point).

Bytes and offline bytes are summed **per party** and reported as the max over parties
(as the accounting does); rounds are summed along the step (every piece waits for the
previous one's output).  Norm prescales (a public power of two per norm, chosen by
calibration; see :func:`mpcache.nn.private.calibrate_prescales`) add one truncation to a
norm: ``prescaled`` says how many of the 2L+1 norms have one.

LAN/WAN seconds are the communication part only: ``rounds x RTT/2 + bytes / bandwidth``
with the presets of :mod:`mpcache.net.shaping` (compute is not modelled).

Measured per-op costs are cached (``$XDG_CACHE_HOME/mpcache/estimate-ops.json``), keyed by
a hash of the package's source, so a later estimate with the same code runs in a second.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

#: Architectures (public configs).  ``prescaled``: norms (of 2L+1) with a prescale below 1
#: as the calibration sets them (a power of two >= 1 is a local shift: free): SmolLM2 37
#: of 61 (``generate.prescales_for``, the scales ``bench decode`` uses; 10 more are >= 1),
#: gpt2-small-random all 25 (``calibrate_prescales`` on 256 random tokens, as ``bench
#: decode`` does); for the others all (an upper bound).  ``first_prescaled``: whether the
#: first layer's attention norm is one of them (it truncates its own input; every other
#: gets its prescaled input as a twin of the product before it, ``nn.transformer.Block``;
#: default: True when all are).  ``col_bound_log2``: the norm-fed linears' column-norm
#: bound exponent (``nn.private.col_bound_exponent``): with it each norm is folded into
#: its linear (``nn.layers.norm_then``).  ``score_bound_log2``: the attention scores'
#: public bound exponent the owner announces (``nn.private.score_bound_exponent``), known
#: for the two models ``bench decode`` runs (tests/apps/test_estimate.py recomputes both
#: from the weights); unknown (None: 64-bit comparisons, an upper bound) for the others.
#: ``act_bound_log2`` / ``logit_bound_log2``: the same for the MLP activation's input and
#: the logits (``nn.private.act_bound_exponent``).
GPT2_RANDOM_BOUND = 6       # bench decode's random_gpt2_small(seed=0)
GPT2_RANDOM_ACT_BOUNDS = (5, 5)
GPT2_RANDOM_COL_BOUND = 0
ARCHS = {
    "smollm2": dict(arch="llama", vocab_size=49152, hidden_size=576, n_layers=30, n_heads=9,
                    n_kv_heads=3, head_dim=64, mlp_hidden=1536, prescaled=37,
                    first_prescaled=False, score_bound_log2=11, act_bound_log2=8,
                    logit_bound_log2=9, col_bound_log2=4),
    "gpt2-small": dict(arch="gpt2", vocab_size=50257, hidden_size=768, n_layers=12,
                       n_heads=12, n_kv_heads=12, head_dim=64, mlp_hidden=3072,
                       prescaled="all"),
    "llama-7b": dict(arch="llama", vocab_size=32000, hidden_size=4096, n_layers=32,
                     n_heads=32, n_kv_heads=32, head_dim=128, mlp_hidden=11008,
                     prescaled="all"),
    "llama-3-8b": dict(arch="llama", vocab_size=128256, hidden_size=4096, n_layers=32,
                       n_heads=32, n_kv_heads=8, head_dim=128, mlp_hidden=14336,
                       prescaled="all"),
}
ARCHS["gpt2-small-random"] = dict(ARCHS["gpt2-small"], score_bound_log2=GPT2_RANDOM_BOUND,
                                  act_bound_log2=GPT2_RANDOM_ACT_BOUNDS[0],
                                  logit_bound_log2=GPT2_RANDOM_ACT_BOUNDS[1],
                                  col_bound_log2=GPT2_RANDOM_COL_BOUND)
KEYS = ("bytes_sent", "messages_sent", "offline_bytes_sent")
#: A policy's attention twin keeps the model's KV heads unless its secret cache (all
#: parties) would pass this many bytes; then fewer (bytes are scaled up by n_kv_heads /
#: twin heads; rounds are not scaled).
TWIN_CACHE_BYTES = 2.0e9
#: selecting layers beyond the first two whose MEAN change is the per-layer change
TWIN_EXTRA_LAYERS = 4
#: cache lengths at which the attention's products are measured (then affine in S)
S_POINTS = (16, 48)
#: shapes at which a product's affine law is measured: (k, q), (2k, q), (k, 2q)
K0 = Q0 = 8


def arch_config(arch) -> dict:
    """A preset name, a JSON file with the same keys, or a dict."""
    if isinstance(arch, dict):
        cfg = dict(arch)
    elif arch in ARCHS:
        cfg = dict(ARCHS[arch])
    elif str(arch).endswith(".json") and os.path.exists(arch):
        with open(arch) as fh:
            cfg = json.load(fh)
    else:
        raise ValueError(f"unknown --arch {arch!r}: one of {', '.join(sorted(ARCHS))} or a "
                         "JSON file")
    need = ("arch", "vocab_size", "hidden_size", "n_layers", "n_heads", "mlp_hidden")
    miss = [k for k in need if k not in cfg]
    if miss:
        raise ValueError(f"architecture lacks {', '.join(miss)}")
    cfg.setdefault("n_kv_heads", cfg["n_heads"])
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["n_heads"])
    cfg.setdefault("prescaled", "all")
    if cfg["arch"] not in ("llama", "gpt2"):
        raise ValueError(f"arch must be llama or gpt2, not {cfg['arch']!r}")
    return cfg


# -- measuring one piece ------------------------------------------------------------------
class Cost:
    """Per-party counters (bytes, messages, offline bytes) and rounds of a piece."""

    def __init__(self, per=None, rounds=0):
        self.per = per if per is not None else [{k: 0 for k in KEYS} for _ in range(3)]
        self.rounds = rounds

    def __add__(self, o):
        return Cost([{k: a[k] + b[k] for k in KEYS} for a, b in zip(self.per, o.per)],
                    self.rounds + o.rounds)

    def __mul__(self, n):
        return Cost([{k: a[k] * n for k in KEYS} for a in self.per], self.rounds * n)

    __rmul__ = __mul__

    def __sub__(self, o):
        return self + o * -1

    def affine(self, other, steps: float):
        """self + steps * (other - self): the value of an affine law at a new point."""
        d = other - self
        return Cost([{k: a[k] + steps * b[k] for k in KEYS} for a, b in zip(self.per, d.per)],
                    self.rounds + steps * d.rounds)

    def summary(self) -> dict:
        return {"bytes_per_party": int(round(max(p["bytes_sent"] for p in self.per))),
                "offline_bytes_per_party": int(round(max(p["offline_bytes_sent"]
                                                         for p in self.per))),
                "messages_per_party": int(round(max(p["messages_sent"] for p in self.per))),
                "rounds": int(round(self.rounds))}

    def to_json(self):
        return {"per": self.per, "rounds": self.rounds}

    @classmethod
    def from_json(cls, d):
        return cls(d["per"], d["rounds"])


def _code_hash() -> str:
    """Hash of the package's source: any change re-measures (cheap, except policy twins)."""
    root = pathlib.Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


class OpCosts:
    """Measures pieces on demand and caches them (in memory and, optionally, on disk)."""

    def __init__(self, path: str | None = "default", echo=None):
        if path == "default":
            base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
            path = os.path.join(base, "mpcache", "estimate-ops.json")
        self.path = path
        self.echo = echo
        self.version = _code_hash()
        self.table: dict = {}
        self.measured = 0
        if path and os.path.exists(path):
            try:
                with open(path) as fh:
                    doc = json.load(fh)
                if doc.get("version") == self.version:
                    self.table = doc.get("ops", {})
            except (OSError, ValueError):
                self.table = {}

    def save(self) -> None:
        if not self.path or not self.measured:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"version": self.version, "ops": self.table}, fh)
        os.replace(tmp, self.path)

    def get(self, protocol: str, name: str, **kw) -> Cost:
        key = json.dumps([protocol, name, kw], sort_keys=True)
        if key not in self.table:
            if self.echo:
                self.echo(f"  measuring {protocol} {name} {kw}")
            res = _run_piece(protocol, name, **kw)
            self.table[key] = {k: v.to_json() for k, v in res.items()}
            self.measured += 1
        return {k: Cost.from_json(v) for k, v in self.table[key].items()}


def _run_piece(protocol: str, name: str, **kw) -> dict:
    """Run piece ``name`` in a session; {"m": cost of scope m, sub-scope name: cost}."""
    from .accounting import scope_rounds, scope_totals
    from .runtime import Session
    job = _PIECES[name]
    res = Session(protocol, seed=0, processes=()).run(_piece_job, job, kw)
    out = {}
    paths = ["m"] + [f"m/{s}" for s in res.outputs[0]]
    for path in paths:
        per = [{k: scope_totals(st, path)[k] for k in KEYS} for st in res.stats]
        out[path.split("/")[-1] if path != "m" else "m"] = Cost(
            per, scope_rounds(res.stats, path))
    return out


def _piece_job(p, job, kw):
    rng = np.random.default_rng(0)
    subs = job(p, rng, **kw)
    return list(subs or ())


def _secret(p, rng, shape, owner=0, scale=1.0, integer=False):
    v = None
    if p.id == owner:
        v = (rng.integers(0, 2, shape) if integer else rng.standard_normal(shape) * scale)
    return p.share(v, owner=owner, integer=integer)


def _piece_linear(p, rng, k, q, bias, twin=False):
    """A linear; ``twin``: with its output / 2 beside (the next norm's prescaled input)."""
    from .nn.layers import Linear
    w = _secret(p, rng, (k, q), owner=1, scale=0.05)
    w.persist()
    b = _secret(p, rng, (q,), owner=1, scale=0.01) if bias else None
    x = _secret(p, rng, (1, k))
    lin = Linear(w, b)
    if twin and bias:
        lin._scaled_bias(1)                  # set-up: once per model, not per token
    with p.scope("m"):
        lin(x, 1 if twin else None)


def _norm_module(p, rng, arch, d, prescale):
    from .nn.layers import LayerNorm, RMSNorm
    g = _secret(p, rng, (d,), owner=1, scale=0.1)
    if arch == "gpt2":
        mod = LayerNorm(g, _secret(p, rng, (d,), owner=1, scale=0.01), 1e-5, prescale)
    else:
        mod = RMSNorm(g, 1e-5, prescale)
    # a private Decoder folds every norm's gain (and bias) into the next linear at setup
    # (layers.fold_norm_gain): the per-token norm has none
    mod.weight = None
    if arch == "gpt2":
        mod.bias = None
    return mod


def _piece_norm_linear(p, rng, arch, k, q, bias, prescale, given):
    """A norm folded into the linear it feeds (``layers.norm_then``); ``given``: its
    prescaled input is made before (a twin), else it prescales x itself."""
    from .nn.layers import Linear, norm_then
    mod = _norm_module(p, rng, arch, k, prescale)
    w = _secret(p, rng, (k, q), owner=1, scale=0.05)
    w.persist()
    b = _secret(p, rng, (q,), owner=1, scale=0.01) if bias else None
    x = _secret(p, rng, (1, k))
    xs = x * prescale if given else None
    with p.scope("m"):
        norm_then(mod, x, Linear(w, b), 2.0, xs)


def _piece_prescale(p, rng, d):
    """x / 2 beside a sub-block (a twin's other half, ``nn.transformer.Block``)."""
    x = _secret(p, rng, (1, d))
    with p.scope("m"):
        x * 0.5


def _piece_embed(p, rng, v, d):
    w = _secret(p, rng, (v, d), owner=1, scale=0.05)
    w.persist()
    oh = None
    if p.id == 0:
        oh = np.zeros((1, v), dtype=np.int64)
        oh[0, 1] = 1
    tok = p.share(oh, owner=0, integer=True)
    with p.scope("m"):
        tok @ w


def _piece_norm(p, rng, arch, d, prescale, given=False):
    mod = _norm_module(p, rng, arch, d, prescale)
    x = _secret(p, rng, (1, d))
    xs = x * prescale if given else None
    with p.scope("m"):
        mod(x) if xs is None else mod(x, prescaled=xs)


def _piece_attention(p, rng, arch, n_heads, n_kv_heads, head_dim, s, bound_log2=None):
    """Attention of one decode token over ``s`` cached rows (persisted, as after a
    prefill), the real :class:`~mpcache.nn.layers.Attention` with the linears left out;
    ``bound_log2``: the model's public score bound exponent (``score_bound_log2``)."""
    from .nn.kv_cache import KVCache
    from .nn.layers import Attention, RoPE
    cache = KVCache(1)
    kk = _secret(p, rng, (n_kv_heads, s, head_dim))
    vv = _secret(p, rng, (n_kv_heads, s, head_dim))
    cache.replace(0, kk, vv, np.arange(s, dtype=np.int64))
    cache.n_seen = s
    cache.persist()
    q = _secret(p, rng, (1, n_heads * head_dim))
    kn = _secret(p, rng, (1, n_kv_heads * head_dim))
    vn = _secret(p, rng, (1, n_kv_heads * head_dim))
    rope = RoPE(head_dim, 10000.0, s + 2) if arch == "llama" else None
    att = Attention(lambda x: q, lambda x: kn, lambda x: vn, lambda c: c, n_heads,
                    n_kv_heads, head_dim, rope)
    att.score_bound = None if bound_log2 is None else 2.0 ** bound_log2
    with p.scope("m"):
        att(q, np.array([s]), cache, 0)
    return ["softmax"]


def _piece_softmax(p, rng, rows, group, n, bound_log2=None):
    from .nn import functional as F
    x = _secret(p, rng, (rows, group, n), scale=2.0)
    with p.scope("m"):
        F.softmax(x, axis=-1, score_bound=None if bound_log2 is None else 2.0 ** bound_log2)


def _piece_mlp_act(p, rng, arch, n, bound_log2=None):
    from .nn import functional as F
    g = _secret(p, rng, (1, n))
    u = _secret(p, rng, (1, n), owner=1) if arch == "llama" else None
    b = None if bound_log2 is None else 2.0 ** bound_log2
    with p.scope("m"):
        F.silu_times(g, u, b) if arch == "llama" else F.gelu(g, b)


def _piece_sample(p, rng, v, bound_log2=None):
    from .nn import functional as F
    logits = _secret(p, rng, (v,), scale=3.0)
    with p.scope("m"):
        oh = F.argmax_onehot(logits, axis=-1,
                             bound=None if bound_log2 is None else 2.0 ** bound_log2)
        (oh @ np.arange(v, dtype=np.int64)).reveal(to=0)


_PIECES = {"linear": _piece_linear, "embed": _piece_embed, "norm": _piece_norm,
           "norm_linear": _piece_norm_linear, "prescale": _piece_prescale,
           "attention": _piece_attention, "softmax": _piece_softmax,
           "mlp_act": _piece_mlp_act, "sample": _piece_sample}


# -- composing a decoding step ---------------------------------------------------------------
def _affine2(ops, protocol, name, k, q, **kw) -> Cost:
    """A product's cost at (k, q) from three small measurements (affine in k and in q;
    also a norm folded into its linear: the norm's own work is affine in k, the folded
    levels in q)."""
    c00 = ops.get(protocol, name, **_kq(name, K0, Q0), **kw)["m"]
    c10 = ops.get(protocol, name, **_kq(name, 2 * K0, Q0), **kw)["m"]
    c01 = ops.get(protocol, name, **_kq(name, K0, 2 * Q0), **kw)["m"]
    return c00 + (c10 - c00) * ((k - K0) / K0) + (c01 - c00) * ((q - Q0) / Q0)


def _kq(name, k, q):
    return {"v": k, "d": q} if name == "embed" else {"k": k, "q": q}


def _attention(ops, protocol, cfg, s) -> Cost:
    """Attention over ``s`` cached rows + the new one: products affine in s (measured at
    S_POINTS), softmax measured at the target shape."""
    kw = dict(arch=cfg["arch"], n_heads=cfg["n_heads"], n_kv_heads=cfg["n_kv_heads"],
              head_dim=cfg["head_dim"])
    bkw = {} if cfg.get("score_bound_log2") is None else {"bound_log2":
                                                          int(cfg["score_bound_log2"])}
    a, b = (ops.get(protocol, "attention", s=x, **kw, **bkw) for x in S_POINTS)
    rest_a, rest_b = a["m"] - a["softmax"], b["m"] - b["softmax"]
    rest = rest_a.affine(rest_b, (s - S_POINTS[0]) / (S_POINTS[1] - S_POINTS[0]))
    g = cfg["n_heads"] // cfg["n_kv_heads"]
    sm = ops.get(protocol, "softmax", rows=cfg["n_kv_heads"], group=g, n=s + 1, **bkw)["m"]
    return rest + sm


def _no_rounds(c: Cost) -> Cost:
    """A piece that runs beside others (a branch): its bytes, none of its rounds."""
    return Cost(c.per, 0)


def _bound_kw(cfg, key) -> dict:
    """A piece's ``bound_log2`` keyword from the architecture's ``key`` (none if unknown)."""
    return {} if cfg.get(key) is None else {"bound_log2": int(cfg[key])}


def n_prescaled(cfg) -> int:
    """Norms with a prescale below 1."""
    total = 2 * cfg["n_layers"] + 1
    p = cfg.get("prescaled", "all")
    if p in (None, "none"):
        return 0
    if p == "all":
        return total
    return int(p)


def _first_prescaled(cfg) -> bool:
    """Whether the first norm (layer 0's attention norm: no product before it to make
    its prescaled input) is prescaled below 1."""
    v = cfg.get("first_prescaled")
    if v is None:
        return n_prescaled(cfg) == 2 * cfg["n_layers"] + 1
    return bool(v)


def estimate_step(cfg, context: int, protocol: str, ops: OpCosts | None = None) -> dict:
    """Predicted cost of one decoding step with ``context`` cached tokens (full cache)."""
    cfg = arch_config(cfg)
    ops = ops or OpCosts(None)
    d, L, V = cfg["hidden_size"], cfg["n_layers"], cfg["vocab_size"]
    nh, nkv, hd, ff = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"], cfg["mlp_hidden"]
    bias = cfg["arch"] == "gpt2"
    lin = lambda k, q, b=bias, **kw: _affine2(ops, protocol, "linear", k, q,  # noqa: E731
                                              bias=b, **kw)
    a = cfg["arch"]
    # norms below 1 get their prescaled input as a twin of the product before them
    # (o-proj, down-proj: a second truncation of its output, and the residual's own
    # truncation beside the sub-block: bytes, no rounds), except the first norm
    npre = n_prescaled(cfg)
    first = int(_first_prescaled(cfg) and npre > 0)
    twins = npre - first
    twin = _no_rounds(lin(nh * hd, d, twin=True) - lin(nh * hd, d)) + \
        _no_rounds(ops.get(protocol, "prescale", d=d)["m"])
    mlp_in = 2 * ff if a == "llama" else ff
    if cfg.get("col_bound_log2") is not None:
        # each norm folded into the linear it feeds (layers.norm_then)
        nl = lambda q, b, pre, given: _affine2(  # noqa: E731
            ops, protocol, "norm_linear", d, q, arch=a, bias=b, prescale=pre, given=given)
        normed = {"norm_qkv": nl(nh * hd + 2 * nkv * hd, bias, 1.0, False) * (L - first)
                  + nl(nh * hd + 2 * nkv * hd, bias, 0.5, False) * first,
                  "norm_mlp": nl(mlp_in, bias, 1.0, False) * L,
                  "norm_lm_head": nl(V, False, 1.0, False)}
    else:
        norm1 = ops.get(protocol, "norm", arch=a, d=d, prescale=0.5)["m"]
        norm0 = ops.get(protocol, "norm", arch=a, d=d, prescale=1.0)["m"]
        normed = {"norms": norm1 * first + norm0 * (2 * L + 1 - first),
                  # q, k, v as one product (layers.FusedLinear), gate and up as one
                  "qkv": lin(d, nh * hd + 2 * nkv * hd) * L,
                  "mlp_in": lin(d, mlp_in) * L, "lm_head": lin(d, V, False)}
    parts = {
        "embed": _affine2(ops, protocol, "embed", V, d),
        **normed,
        "attention": _attention(ops, protocol, cfg, context) * L,
        "o_proj": lin(nh * hd, d) * L,
        "mlp_out": lin(ff, d) * L,
        "twins": twin * twins,
        "mlp_act": ops.get(protocol, "mlp_act", arch=a, n=ff,
                           **_bound_kw(cfg, "act_bound_log2"))["m"] * L,
        "sample": ops.get(protocol, "sample", v=V, **_bound_kw(cfg, "logit_bound_log2"))["m"],
    }
    total = Cost()
    for c in parts.values():
        total = total + c
    ops.save()
    out = {"context": context, "protocol": protocol, **total.summary(),
           "breakdown": {k: v.summary() for k, v in parts.items()}}
    out["modelled_comm_seconds"] = comm_seconds(out["rounds"], out["bytes_per_party"])
    return out


def estimate(cfg, context: int, protocol: str, policy: str = "full", budget=None,
             ops: OpCosts | None = None, max_kv_heads: int | None = None) -> dict:
    """Predicted cost of one decoding step under ``policy`` (``NAME[:key=val,...]``, as
    ``bench decode --policy``): the full-cache step (:func:`estimate_step`) plus the
    policy's change per layer, measured on an attention twin (:func:`policy_delta`)."""
    full = estimate_step(cfg, context, protocol, ops)
    if policy in (None, "full"):
        return {**full, "policy": "full"}
    if budget is None:
        raise ValueError(f"policy {policy!r} needs --budget")
    cfg = arch_config(cfg)
    ops = ops or OpCosts(None)
    d = policy_delta(cfg, context, protocol, policy, budget, ops, max_kv_heads)
    b = dict(full["breakdown"])
    per = {k: full[k] for k in ("bytes_per_party", "offline_bytes_per_party", "rounds")}
    out = {**full, "policy": policy, "budget": budget, "full_cache": per,
           "twin": d["twin"]}
    for k in ("bytes_per_party", "offline_bytes_per_party", "rounds"):
        out[k] = int(round(full[k] + d[k]))
    b["policy_change"] = {k: int(round(d[k])) for k in ("bytes_per_party",
                                                         "offline_bytes_per_party", "rounds")}
    b["policy_change"]["messages_per_party"] = 0
    out["breakdown"] = b
    out["modelled_comm_seconds"] = comm_seconds(out["rounds"], out["bytes_per_party"])
    return out


def twin_kv_heads(cfg, context: int, cap: int | None = None) -> int:
    """KV heads of a policy's attention twin: the model's, or fewer where the twin's
    secret cache (K and V of ``2 + TWIN_EXTRA_LAYERS`` layers, three parties' two shares
    each) would pass :data:`TWIN_CACHE_BYTES`; ``cap`` (``--twin-kv-heads``) bounds it."""
    layers = 2 + TWIN_EXTRA_LAYERS
    per_head = layers * 2 * (context + 1) * cfg["head_dim"] * 8 * 6
    n = min(cfg["n_kv_heads"], max(1, int(TWIN_CACHE_BYTES // per_head)))
    return max(1, min(n, cap)) if cap else n


def policy_delta(cfg, context, protocol, policy, budget, ops, max_kv_heads=None):
    """A policy's change to one decoding step, from the same ``policy_cases_job`` code
    ``bench decode`` runs, on an *attention twin*: a random decoder with the target's head
    layout (KV heads: :func:`twin_kv_heads`, the group size kept), head dimension and
    context, and tiny hidden, MLP and vocabulary sizes, so that its full-cache and policy
    steps differ only in attention.  The twin's cache is random secret data of the
    policy's shapes, shared directly (no plaintext prefill: that alone took ~6 GB at 8K
    tokens); the policy's prefill-time state comes from :meth:`Policy.attach` on random
    attention statistics (:func:`_twin_case`).

    The policy's first ``D`` (``dense_layers``) layers read the full cache and change
    nothing; the twin runs without them (``dense_layers=0``), with 2 and ``2 + m``
    selecting layers (``m = TWIN_EXTRA_LAYERS``): the first two selecting layers'
    change ``c(2)`` and the MEAN change of ``m`` further layers, ``(c(2+m) - c(2)) / m``
    (top-k's number of levels is random, a few rounds per level: one layer's sample
    scaled by ~30 layers was up to 7% off), so ``change(L) = c(2) + (L - D - 2) (c(2+m)
    - c(2)) / m``.  When the twin has fewer heads than the model, the policy's attention
    (its change plus the twin's full attention, a composed piece) is scaled by
    ``n_kv_heads / twin heads`` in bytes (not in rounds) and the model's own full
    attention is taken off.  Costs are data-independent except where a kept count depends
    on data (MPCache's ``static_tau``: decided by the twin's random statistics, so not
    predicted) and top-k's level count (random, averaged as above)."""
    from .cli.model import parse_policy
    from .nn.policies import make_policy
    _, name, kw = parse_policy(policy)
    pol = make_policy(name, budget, **kw)
    dense = int(getattr(pol, "dense_layers", 0) or 0)
    nkv = twin_kv_heads(cfg, context, max_kv_heads)
    g = cfg["n_heads"] // cfg["n_kv_heads"]
    scale = cfg["n_kv_heads"] / nkv
    twin = dict(arch=cfg["arch"], vocab_size=32, hidden_size=8, n_heads=nkv * g,
                n_kv_heads=nkv, head_dim=cfg["head_dim"], mlp_hidden=8)
    m = TWIN_EXTRA_LAYERS
    c = {}
    bound = cfg.get("score_bound_log2")          # the twin runs at the model's score bound
    for layers in (2, 2 + m):
        key = dict(twin=twin, layers=layers, context=context, policy=policy, budget=budget,
                   dense=0 if dense else None, bound=bound)
        tkey = json.dumps([protocol, "policy_twin", key], sort_keys=True)
        got = ops.table.get(tkey)
        if got is None:
            if ops.echo:
                ops.echo(f"  measuring {protocol} policy twin {key}")
            got = _policy_twin(protocol, {**twin, "n_layers": layers}, context, policy,
                               budget, dense_off=bool(dense), bound_log2=bound)
            ops.table[tkey] = got
            ops.measured += 1
        c[layers] = got
    ops.save()
    sel = max(0, cfg["n_layers"] - dense)
    out = {"twin": {**twin, "kv_head_scale": scale, "layers": [2, 2 + m],
                    "dense_layers_skipped": dense}}
    # the policy's attention per layer in the twin = its change + the twin's full
    # attention (the composed piece, exact); only that is scaled to the model's heads,
    # and the model's own full attention (at its real head count) is taken off: so a
    # twin with fewer heads mis-sizes the policy's part only, never the full softmax's
    # dealt tables (whose digit width follows the batch size)
    a_twin = _attention(ops, protocol, {**twin, "score_bound_log2": bound}, context).summary()
    a_model = _attention(ops, protocol, cfg, context).summary()
    for k in ("bytes_per_party", "offline_bytes_per_party", "rounds"):
        f = scale if k != "rounds" else 1.0
        first = f * (c[2][k] + 2 * a_twin[k]) - 2 * a_model[k]       # two layers
        per = f * ((c[2 + m][k] - c[2][k]) / m + a_twin[k]) - a_model[k]
        out[k] = first / 2 * sel if sel < 2 else first + (sel - 2) * per
    return out


def _twin_case(cfg, context, name, budget, kw, rng) -> dict:
    """A ``policy_cases_job`` case for the twin ``cfg`` (a DecoderConfig): random K and V
    ``[n_kv, context, hd]`` per layer as the cache to share, and the plaintext policy's
    state after :meth:`Policy.attach` with random attention statistics of the shapes it
    asks for (:func:`mpcache.nn.policies.base.stat_key`), as a prefill would leave them."""
    from .apps.bench.decode import _state_only
    from .nn.kv_cache import KVCache
    from .nn.policies import make_policy
    from .nn.policies.base import stat_key
    L, nkv, hd = cfg.n_layers, cfg.n_kv_heads, cfg.head_dim
    cache = KVCache(L)
    for layer in range(L):
        k = rng.standard_normal((nkv, context, hd))
        v = rng.standard_normal((nkv, context, hd))
        cache.replace(layer, k, v, np.arange(context, dtype=np.int64))
    cache.n_seen = context
    plain = None
    if name != "full":
        plain = make_policy(name, budget, **kw)
        keys = {stat_key(w, context) for w in plain.stat_windows(context)}
        stats = [{key: (rng.random((1 if isinstance(key, tuple) and key[0] == "hmeanmax"
                                    else nkv, context)) / context) for key in keys}
                 for _ in range(L)]
        plain.attach(cache, stats, context)
    kv = [(np.array(cache.keys(i)), np.array(cache.values(i))) for i in range(L)]
    return {"n": context, "policy": name, "budget": budget, "kw": kw, "static": "plaintext",
            "steps": 1, "kv": kv, "lens": [cache.length(i) for i in range(L)],
            "next_token": int(rng.integers(0, cfg.vocab_size)),
            "plain_policy": _state_only(plain), "stats": None, "stats_shape": None}


def _policy_twin(protocol, twin, context, policy, budget, dense_off=False,
                 bound_log2=None) -> dict:
    """policy step minus full step of the twin (bytes/offline per party max, rounds); the
    two cases run one after the other in one session (one case's shares at a time)."""
    from .apps.bench.decode import policy_cases_job
    from .cli.model import parse_policy
    from .nn.private import calibrate_prescales
    from .nn.transformer import Decoder, DecoderConfig, random_weights
    from .runtime import Session
    _, name, kw = parse_policy(policy)
    if dense_off:
        kw = {**kw, "dense_layers": 0}
    cfg = DecoderConfig(**twin, max_positions=context + 16)
    dec = Decoder(cfg, random_weights(cfg, 0))
    rng = np.random.default_rng(0)
    pres = calibrate_prescales(dec, rng.integers(0, cfg.vocab_size, 32))
    full = _twin_case(cfg, context, "full", None, {}, np.random.default_rng(1))
    pol = _twin_case(cfg, context, name, budget, kw, np.random.default_rng(1))
    full["next_token"] = pol["next_token"]
    res = Session(protocol, seed=0, timeout=3600).run(policy_cases_job, dec.config,
                                                      dec.weights, pres, [full, pol],
                                                      score_bound=bound_log2)
    a, b = res.scope("c0/decode"), res.scope("c1/decode")
    return {"bytes_per_party": b["bytes_sent"] - a["bytes_sent"],
            "offline_bytes_per_party": b["offline_bytes_sent"] - a["offline_bytes_sent"],
            "rounds": b["rounds"] - a["rounds"]}


def comm_seconds(rounds: int, nbytes: int) -> dict:
    """LAN/WAN communication time: rounds x RTT/2 + bytes / bandwidth (no compute)."""
    from .net.shaping import model_latency
    return {net: model_latency(0.0, rounds, nbytes, net) for net in ("lan", "wan")}

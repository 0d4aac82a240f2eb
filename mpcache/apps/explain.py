"""``mpcache explain OP``: run one op on random data with tracing and narrate the protocol.

For every communication step (grouped by round and protocol tag) it prints what the
parties compute locally, who sends what to whom (bytes, dtype, shape), and one line on
what the receiver learns: a uniformly random masked value, the shape (public), dealer
randomness, or the revealed output.  The narration comes from :data:`TAGS`, a table from
message tags to explanations collected from the modules that send them (each protocol
module's own ``TAGS``: :data:`TAG_MODULES`); a tag missing from the table is printed as
such (never guessed).  The numbers come from a real traced run (:mod:`mpcache.trace`), and
the totals are checked against the cost formulas (:mod:`mpcache.mpc.costs`) when one
exists.

    mpcache explain mul --protocol rep3
    mpcache explain matmul --protocol add2 --shape 2x3x4
    mpcache explain softmax --protocol rep3 --shape 1x8

Docs: docs/teaching.md.  Everything here runs on random toy data with a fixed seed; the
optional ``--values`` flag prints share values (toy data only).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from .. import branches, checked, runtime
from ..functions import reciprocal, select, topk
from ..mpc import add2, base, compare_core, pair, rep3

# -- the tag table --------------------------------------------------------------------------
# kind: what the receiver learns, in one word: "random" (uniform, masked), "shape"
# (public metadata), "dealer" (correlated randomness, uniform to its receiver), "output"
# (a revealed value, by design), "key" (set-up).
LEARNS = {
    "random": "uniformly random values (masked): nothing about the data",
    "dealer": "dealer randomness, uniformly random to the receiver: nothing about the data",
    "shape": "the shape only (public under the threat model)",
    "output": "the revealed output (by design: the program asked to open it)",
    "key": "a PRG key it now shares with the sender (set-up, no data)",
    "pattern": "comparison outcomes between SHUFFLED keys (by design): the order pattern of "
               "a uniformly random permutation, independent of the data",
}


@dataclass
class TagInfo:
    title: str
    local: str            # what the parties compute locally before/for this message
    learns: str           # why the receiver learns only `kind`
    kind: str = "random"


#: The modules that send message tags, each narrating its own in a module-level ``TAGS``
#: table (tag or ``*`` pattern -> ``dict(title, local, learns, kind="random")``).
TAG_MODULES = (runtime, checked, base, rep3, add2, pair, compare_core, reciprocal, select,
               topk)


def collect_tags(modules=TAG_MODULES) -> dict[str, TagInfo]:
    """One table from the modules' ``TAGS``; a tag narrated by two modules is an error."""
    out: dict[str, TagInfo] = {}
    for mod in modules:
        for tag, entry in mod.TAGS.items():
            if tag in out:
                raise ValueError(f"message tag {tag!r} narrated twice ({mod.__name__})")
            info = TagInfo(**entry)
            if info.kind not in LEARNS:
                raise ValueError(f"{mod.__name__}: tag {tag!r} has unknown kind {info.kind!r}")
            out[tag] = info
    return out


TAGS: dict[str, TagInfo] = collect_tags()

UNKNOWN = TagInfo("(not in the tag table)", "see the protocol module's docstring",
                  "not narrated in any module's TAGS table (explain.TAG_MODULES): check the "
                  "protocol's docs and run the view audit (mpcache.testing)", "?")


def lookup(tag: str) -> TagInfo:
    """The explanation of a message tag: the exact entry, else the most specific matching
    pattern (the one with the most literal characters).  A branch's tag (``@0|...``,
    mpcache.branches) is explained as the step it carries."""
    tag = branches.strip(tag)
    if tag in TAGS:
        return TAGS[tag]
    hits = [pat for pat in TAGS if "*" in pat and fnmatch.fnmatchcase(tag, pat)]
    if not hits:
        return UNKNOWN
    return TAGS[max(hits, key=lambda p: len(p.replace("*", "")))]


# -- ops that can be explained --------------------------------------------------------------------
@dataclass
class OpSpec:
    doc: str
    default_shape: tuple
    inputs: callable            # shape -> list of (name, shape, owner, integer, lo, hi)
    run: callable               # (party, *secrets) -> secret result (or plaintext via reveal)
    reference: callable         # (*plain inputs) -> expected output
    cost: callable | None = None   # (protocol, shape) -> costs.cost(...) dict
    atol: float = 1e-3
    needs: tuple = ()           # SecretTensor attributes / functions the op needs
    prep: callable = None       # (party, *secrets) -> secrets, run in scope "input"
    notes: list = field(default_factory=list)


def _n(shape):
    return int(np.prod(shape))


def _c(op, **kw):
    def f(protocol, shape):
        from ..mpc.costs import cost
        return cost(protocol, op, **{k: v(shape) for k, v in kw.items()})
    return f


def _cmp(op):
    def f(protocol, shape):
        from ..mpc.costs import cmp_cost
        return cmp_cost(op, _n(shape), protocol)
    return f


def _mm_shapes(shape):
    if len(shape) != 3:
        raise ValueError("matmul takes --shape MxKxQ (X is M x K, Y is K x Q)")
    m, k, q = shape
    return (m, k), (k, q)


def _ops() -> dict:
    ops = {
        "share": OpSpec(
            "secret-share an input held by P0", (4,),
            lambda s: [("x", s, 0, False, -8, 8)],
            None, lambda x: x, _c("share", n=_n, ndim=len)),
        "reveal": OpSpec(
            "open a secret to every party", (4,),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x, lambda x: x, _c("reveal", n=_n)),
        "mul": OpSpec(
            "fixed-point product x * y (product + exact truncation)", (4,),
            lambda s: [("x", s, 0, False, -8, 8), ("y", s, 1, False, -8, 8)],
            lambda p, x, y: x * y, lambda x, y: x * y, _c("mul_fixed", n=_n)),
        "mul_ring": OpSpec(
            "ring (integer) product x * y: no truncation", (4,),
            lambda s: [("x", s, 0, True, -100, 100), ("y", s, 1, True, -100, 100)],
            lambda p, x, y: x * y, lambda x, y: x * y, _c("mul_ring", n=_n), atol=0),
        "matmul": OpSpec(
            "fixed-point matmul X @ Y (matmul + exact truncation)", (2, 3, 2),
            lambda s: [("X", _mm_shapes(s)[0], 0, False, -4, 4),
                       ("Y", _mm_shapes(s)[1], 1, False, -4, 4)],
            lambda p, x, y: x @ y, lambda x, y: x @ y,
            _c("matmul_fixed", m=lambda s: s[0], k=lambda s: s[1], q=lambda s: s[2])),
        "matmul_ring": OpSpec(
            "ring (integer) matmul X @ Y", (2, 3, 2),
            lambda s: [("X", _mm_shapes(s)[0], 0, True, -20, 20),
                       ("Y", _mm_shapes(s)[1], 1, True, -20, 20)],
            lambda p, x, y: x @ y, lambda x, y: x @ y,
            _c("matmul_ring", m=lambda s: s[0], k=lambda s: s[1], q=lambda s: s[2]), atol=0),
        "trunc": OpSpec(
            "x * 0.5: a public real costs one exact truncation", (4,),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x * 0.5, lambda x: x * 0.5, _c("trunc", n=_n)),
        "lt": OpSpec(
            "comparison x < y (a secret bit per element)", (4,),
            lambda s: [("x", s, 0, False, -8, 8), ("y", s, 1, False, -8, 8)],
            lambda p, x, y: x < y, lambda x, y: (x < y).astype(np.int64), _cmp("msb"),
            atol=0, needs=("__lt__",)),
        "relu": OpSpec(
            "ReLU max(x, 0)", (4,), lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.relu(), lambda x: np.maximum(x, 0), _cmp("relu"), needs=("relu",)),
        "eq": OpSpec(
            "equality x == y (a secret bit per element)", (4,),
            lambda s: [("x", s, 0, True, -2, 2), ("y", s, 1, True, -2, 2)],
            lambda p, x, y: x.eq(y), lambda x, y: (x == y).astype(np.int64), None, atol=0,
            needs=("eq",)),
        "rsqrt": OpSpec(
            "1 / sqrt(x)", (4,), lambda s: [("x", s, 0, False, 0.5, 8)],
            lambda p, x: x.rsqrt(), lambda x: 1 / np.sqrt(x), None, atol=0.01,
            needs=("rsqrt",)),
        "gelu": OpSpec(
            "GELU (piecewise polynomial)", (4,), lambda s: [("x", s, 0, False, -4, 4)],
            lambda p, x: x.gelu(),
            lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
            None, atol=0.02, needs=("gelu",)),
        "silu": OpSpec(
            "SiLU x * sigmoid(x) (piecewise polynomial)", (4,),
            lambda s: [("x", s, 0, False, -4, 4)],
            lambda p, x: x.silu(), lambda x: x / (1 + np.exp(-x)), None, atol=0.02,
            needs=("silu",)),
        "exp": OpSpec(
            "exp(x)", (4,), lambda s: [("x", s, 0, False, -6, 2)],
            lambda p, x: x.exp(), np.exp, None, atol=0.05, needs=("exp",)),
        "reciprocal": OpSpec(
            "1 / x", (4,), lambda s: [("x", s, 0, False, 0.5, 8)],
            lambda p, x: x.reciprocal(), lambda x: 1 / x, None, atol=0.01,
            needs=("reciprocal",)),
        "max": OpSpec(
            "maximum along the last axis (tree of comparisons)", (1, 8),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.max(axis=-1), lambda x: x.max(axis=-1), None, needs=("max",)),
        "argmax": OpSpec(
            "one-hot argmax along the last axis", (1, 8),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.argmax(axis=-1),
            lambda x: (x == x.max(axis=-1, keepdims=True)).astype(np.int64), None, atol=0,
            needs=("argmax",)),
        "gather": OpSpec(
            "gather = one-hot @ X: rows of X picked by a secret one-hot (here the argmax of "
            "secret scores, computed with the inputs)", (8, 4),
            lambda s: [("scores", (1, s[0]), 0, False, -8, 8), ("X", s, 1, False, -8, 8)],
            lambda p, oh, x: oh @ x,
            lambda sc, x: x[np.argmax(sc, axis=-1)], None, needs=("argmax",),
            prep=lambda p, sc, x: (sc.argmax(axis=-1), x)),
        "softmax": OpSpec(
            "softmax along the last axis (max, exp, sum, reciprocal)", (1, 8),
            lambda s: [("x", s, 0, False, -4, 4)],
            lambda p, x: x.softmax(axis=-1),
            lambda x: np.exp(x - x.max(-1, keepdims=True))
            / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True),
            None, atol=0.01, needs=("softmax",)),
        "softmax_bounded": OpSpec(
            "softmax with a public score bound 2^11 (a decoder's attention): 32-bit "
            "comparisons, the row max approximate by coarse comparisons (a 16-bit digit "
            "tree: one round fewer per level), softmax shifted by max + its public loss, "
            "exp's clip coarse too", (1, 8),
            lambda s: [("x", s, 0, False, -4, 4)],
            lambda p, x: x.softmax(axis=-1, score_bound=2.0 ** 11),
            lambda x: np.exp(x - x.max(-1, keepdims=True))
            / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True),
            None, atol=0.01, needs=("softmax",)),
        "silu_bounded": OpSpec(
            "SiLU with a public input bound 2^8 (a decoder's MLP): its two threshold signs "
            "on 28 bits, coarse (a 16-bit digit tree, thresholds moved in by 2^-7)", (4,),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.silu(bound=2.0 ** 8), lambda x: x / (1 + np.exp(-x)), None,
            atol=0.02, needs=("silu",)),
        "topk": OpSpec(
            "top-k (k=2) as a one-hot selection matrix [k, C]", (8,),
            lambda s: [("x", s, 0, False, -8, 8)],
            lambda p, x: x.top_k(2),
            lambda x: np.eye(x.shape[-1], dtype=np.int64)[np.sort(np.argsort(-x)[:2])],
            None, atol=0, needs=("top_k",)),
    }
    return ops


OPS = _ops()


def available(name: str) -> bool:
    from ..tensor import SecretTensor
    spec = OPS[name]
    return all(hasattr(SecretTensor, a) and (a != "__lt__" or SecretTensor.__lt__
                                             is not object.__lt__) for a in spec.needs)


def parse_shape(text: str | None) -> tuple | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.lower().replace(",", "x").split("x") if s)
    except ValueError:
        raise ValueError(f"bad --shape {text!r}: use e.g. 4, 2x3, 2x3x4") from None


# -- running and narrating ------------------------------------------------------------------------
@dataclass
class Explained:
    op: str
    protocol: str
    shape: tuple
    inputs: list
    output: object
    expected: object
    result: object              # RunResult (traced)
    text: str


def run_traced(op: str, protocol: str, shape=None, seed: int = 0, values: bool = False):
    """Run ``op`` on random inputs with tracing.  Scopes: "input", "op", "output"."""
    import mpcache
    spec = OPS[op]
    shape = tuple(shape) if shape else spec.default_shape
    rng = np.random.default_rng(seed)
    ins = []
    for name, s, owner, integer, lo, hi in spec.inputs(shape):
        if protocol == "add2" and owner == 2:
            owner = 0
        v = rng.integers(lo, hi + 1, s) if integer else np.round(rng.uniform(lo, hi, s), 3)
        ins.append((name, v, owner, integer))

    def job(p):
        if spec.run is None:                       # the op is sharing itself
            name, v, owner, integer = ins[0]
            with p.scope("op"):
                x = p.share(v if p.id == owner else None, owner=owner, integer=integer)
            with p.scope("output"):
                return p.reveal(x)
        with p.scope("input"):
            xs = [p.share(v if p.id == owner else None, owner=owner, integer=integer)
                  for name, v, owner, integer in ins]
            if spec.prep is not None:
                xs = spec.prep(p, *xs)
        if op == "reveal":
            with p.scope("op"):
                return p.reveal(xs[0])
        with p.scope("op"):
            y = spec.run(p, *xs)
        with p.scope("output"):
            return p.reveal(y)

    sess = mpcache.Session(protocol, seed=seed, trace=True, trace_values=values)
    res = sess.run(job)
    expected = spec.reference(*[v for _, v, _, _ in ins])
    return shape, ins, res, expected


def aligned_rounds(transcripts, scope: str) -> dict:
    """Round of every message sent under ``scope``, counted from the scope's start as if
    every party entered it at the same time (``{(sender, receiver, seq): round}``).

    The Lamport stamps on messages depend on each party's clock when it entered the
    scope (a party that only sent before may lag), so the same logical step can carry
    different stamps; replaying the scope's events with all clocks at 0 aligns them.
    Offline messages get the round before which their receiver used them."""
    inside = lambda s: s == scope or s.startswith(scope + "/")  # noqa: E731
    evs = [[e for e in t.events if inside(e.scope)] for t in transcripts]
    pos = [0] * len(evs)
    clock = [0] * len(evs)
    sent: dict = {}
    out: dict = {}
    progress = True
    while progress:
        progress = False
        for i, lst in enumerate(evs):
            while pos[i] < len(lst):
                e = lst[pos[i]]
                if e.direction == "send":
                    key = (e.party, e.peer, e.seq)
                    st = 0 if e.offline else clock[i] + 1
                    sent[key] = st
                    if not e.offline:
                        out[key] = st
                else:
                    key = (e.peer, e.party, e.seq)
                    if key not in sent:
                        # sent outside the scope (stamp 0 here) or not replayed yet
                        sender_has = any(x.direction == "send" and (x.party, x.peer, x.seq)
                                         == key for x in evs[e.peer])
                        if sender_has:
                            break
                        sent[key] = 0
                    clock[i] = max(clock[i], sent[key])
                    if e.offline:
                        out[key] = clock[i] + 1
                pos[i] += 1
                progress = True
    return out


def _message_groups(transcripts, scope: str):
    """Messages of ``scope`` (nested included) grouped by (aligned round, tag)."""
    inside = lambda s: s == scope or s.startswith(scope + "/")  # noqa: E731
    rounds = aligned_rounds(transcripts, scope)
    groups: dict = {}
    order = []
    for t in transcripts:
        for e in t.events:
            if e.direction != "send" or not inside(e.scope):
                continue
            rnd = rounds.get((e.party, e.peer, e.seq), 1)
            key = (rnd, not e.offline, e.tag)
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(e)
    return [(k, groups[k]) for k in sorted(order, key=lambda k: (k[0], k[1], order.index(k)))]


def _values_line(e, n=4):
    if e.values is None:
        return ""
    vs = ", ".join(f"{v:#018x}" if isinstance(v, int) and v > 9999 else str(v)
                   for v in e.values[:n])
    more = ", ..." if len(e.values) > n else ""
    return f"  values [{vs}{more}]"


def narrate(transcripts, scope: str, protocol: str, full_repeats: bool = False) -> list:
    """Lines narrating every message sent under ``scope``, round by round.  A tag seen
    before is printed on one line pointing back to its first explanation (unless
    ``full_repeats``); a change of sub-scope (e.g. ``op/max``) gets a header."""
    lines = []
    groups = _message_groups(transcripts, scope)
    if not groups:
        lines.append("    (no communication: every party computes locally)")
        return lines
    first_step: dict = {}
    cur_sub = None
    for step, ((rnd, online, tag), evs) in enumerate(groups, 1):
        sub = evs[0].scope[len(scope) + 1:] if evs[0].scope != scope else ""
        if sub != cur_sub and (sub or cur_sub):
            lines.append(f"  -- in scope {scope}/{sub}" if sub else f"  -- back in {scope}")
        cur_sub = sub
        info = lookup(tag)
        when = f"round {rnd}" if online else f"offline, used in round {rnd}"
        per_party: dict = {}
        for e in evs:
            per_party[e.party] = per_party.get(e.party, 0) + e.nbytes
        msgs = sorted(evs, key=lambda e: (e.party, e.peer))
        if tag in first_step and not full_repeats:
            links = ", ".join(f"P{e.party}->P{e.peer} {e.nbytes:,} B" for e in msgs)
            lines.append(f"  step {step} ({when}) {tag}: {links}  [as step {first_step[tag]}]")
            continue
        first_step.setdefault(tag, step)
        lines.append(f"  step {step} ({when}) {tag}: {info.title}")
        lines.append(f"    local:  {info.local}")
        for e in msgs:
            lines.append(f"    P{e.party} -> P{e.peer}: {e.nbytes:,} B ({e.elements:,} x "
                         f"{e.dtype}, shape {tuple(e.shape)})" + _values_line(e))
        lines.append(f"    bytes:  {sum(per_party.values()):,} in all; max per party "
                     f"{max(per_party.values()):,}" + (" (offline)" if not online else ""))
        learns = LEARNS.get(info.kind, "(not in the tag table: unexplained)")
        lines.append(f"    learns: {learns}" + (f" -- {info.learns}" if info.learns else ""))
    return lines


def explain(op: str, protocol: str = "rep3", shape=None, seed: int = 0,
            values: bool = False, show_io: bool = False, full: bool = False) -> Explained:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(sorted(OPS))}")
    if not available(op):
        raise NotImplementedError(f"op {op!r} needs SecretTensor.{'/'.join(OPS[op].needs)}, "
                                  "which this build does not have yet")
    spec = OPS[op]
    shape, ins, res, expected = run_traced(op, protocol, shape, seed, values)
    ts = res.transcripts
    out = res.output
    L = [f"mpcache explain {op} --protocol {protocol} --shape "
         f"{'x'.join(map(str, shape))}: {spec.doc}"]
    L.append("=" * len(L[0]))
    if protocol == "rep3":
        L.append("Sharing: replicated 3PC, x = x0 + x1 + x2 over Z_2^64; P_i holds "
                 "(x_i, x_{i+1}).  Keys: k_i shared by P_i and P_{i+1}.")
    else:
        L.append("Sharing: additive 2PC, x = x0 + x1 over Z_2^64 (P0, P1); P2 is a dealer of "
                 "correlated randomness and holds no shares.  Keys: k_0 = P0-P1, k_1 = P1-P2, "
                 "k_2 = P2-P0.")
    fb = 18
    L.append(f"Fixed point: {fb} fractional bits.  Inputs (random, seed {seed}):")
    for name, v, owner, integer in ins:
        L.append(f"  {name} {tuple(np.shape(v))} {'int' if integer else 'fixed'} owned by "
                 f"P{owner}: {_short(v)}")
    if values:
        L.append("!! share values shown: toy data only (trace_values=True) !!")
    if any(e.tag.startswith("@") for t in ts for e in t.events):
        L.append("Branches: a step tagged @i|... belongs to branch i of independent work "
                 "run in the same rounds as its siblings (mpcache/branches.py; e.g. exp's "
                 "clip comparison beside its polynomial): rounds count the longest branch.")
    L.append("")
    stats = res.stats
    from ..accounting import scope_rounds
    sections = [("input", "inputs: sharing"), ("op", f"the op: {op}"),
                ("output", "output: reveal")]
    for sc, title in sections:
        if sc != "op" and not show_io:
            c = res.scope(sc) if any(sc in s["scopes"] for s in stats) else None
            if c is not None:
                L.append(f"[{title}: {c['bytes_sent']:,} B/party, {c['rounds']} round(s); "
                         f"--io shows the steps]")
            continue
        L.append(f"[{title}]")
        L.extend(narrate(ts, sc, protocol, full_repeats=full))
        L.append("")
    c = res.scope("op")
    subs = {k: v for k, v in res.breakdown_under("op").items()
            if k != "other" or v["bytes_sent"] or v["offline_bytes_sent"]}
    if len(subs) > 1:
        L.append("Breakdown of the op by sub-scope (bytes per party, rounds, offline bytes):")
        for k, v in subs.items():
            L.append(f"  {k:<16} {v['bytes_sent']:>10,} B {v['rounds']:>4} rounds "
                     f"{v['offline_bytes_sent']:>10,} B offline")
    L.append(f"Totals of the op (from the accounting): {c['bytes_sent']:,} B per party "
             f"(max over parties), {c['rounds']} round(s), {c['offline_bytes_sent']:,} B "
             f"offline (dealer/helper).  crit. path rounds: {scope_rounds(stats, 'op')}")
    if spec.cost is not None:
        f = spec.cost(protocol, shape)
        ok = (f["bytes"], f["rounds"], f["offline"]) == (
            c["bytes_sent"], c["rounds"], c["offline_bytes_sent"])
        where = ("cost" if getattr(spec.cost, "__qualname__", "").startswith("_c.")
                 else "cmp_cost")
        L.append(f"Cost formula (mpcache/mpc/costs.py, {where}): {f['bytes']:,} B, {f['rounds']} "
                 f"round(s), {f['offline']:,} B offline -> "
                 + ("matches the measurement" if ok else "DIFFERS from the measurement"))
    err = float(np.max(np.abs(np.asarray(out, float) - np.asarray(expected, float)))) \
        if np.shape(out) == np.shape(expected) else float("nan")
    L.append(f"Revealed output: {_short(out)}")
    L.append(f"numpy reference: {_short(expected)}  (max abs error {err:.2g})")
    L.append("Only the output is revealed; every other message above is masked "
             "(checked statistically by mpcache.testing.assert_view_indistinguishable).")
    return Explained(op, protocol, shape, ins, out, expected, res, "\n".join(L))


def _short(v, n=8) -> str:
    a = np.asarray(v)
    flat = a.reshape(-1)
    if a.dtype.kind == "f":
        s = ", ".join(f"{x:.4g}" for x in flat[:n])
    else:
        s = ", ".join(str(x) for x in flat[:n])
    return f"[{s}{', ...' if flat.size > n else ''}]" + (f" shape {a.shape}" if a.ndim > 1
                                                        else "")

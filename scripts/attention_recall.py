"""Why does cluster selection lose accuracy on SmolLM2 where token top-k does not? (issue 6)

Attention recall: at the first answer token of RULER-style samples (plaintext SmolLM2, full
cache), for every layer and KV head, the share of the full attention mass (mean over the
group's query heads) that falls on the rows a selection reads with a budget of B rows.
Selections (dynamic only: no static eviction, so each is measured alone):

* ``oracle``   -- the B rows with the most attention (upper bound for any B-row choice),
* ``topk``     -- token top-k by the group-summed score ``(sum_g q_g) . k`` (policy topk),
* ``c{C}-{bound}`` -- MPCache's layout: sink + k clusters of C rows + recent window, the
  clusters chosen by the linearised bound (a = 0.6), Quest's exact max bound or the mean
  key (policies/mpcache_policy.py, one level),
* ``shared``   -- ``c16-linear`` of layer L-1 reused by layer L (cross-layer sharing, odd
  layers >= 3, as MPCache's leader pairs (2,3), (4,5), ...).

Usage: ``python scripts/attention_recall.py --task niah_single_number --context 2K
--samples 4 --budget 0.1 --json out/recall.json`` (plaintext, ~1 min per sample on 2 cores).
Prints the mean recall per method and per layer block; writes everything to JSON.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from mpcache.cli.eval import _context
from mpcache.nn.policies.base import Policy

SINK = 16


class Probe(Policy):
    """Full cache that records, at decode steps, each layer's query and keys."""

    name = "probe"

    def __init__(self):
        super().__init__(None)
        self.seen = {}

    def select(self, cache, layer, query):
        self.seen.setdefault(layer, (np.asarray(query), np.asarray(cache.keys(layer))))
        return cache.keys(layer), cache.values(layer)


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def cluster_rows(qs, K, B, c, bound, a=0.6):
    """Rows MPCache's one-level layout reads for summed query ``qs`` [d] over keys [n, d]."""
    n = K.shape[0]
    k = max(0, (B - SINK - c) // c)
    w = B - SINK - k * c
    nf = max(0, (n - w - SINK) // c)
    blk = K[SINK:SINK + nf * c].reshape(nf, c, -1)
    rmax, rmin = blk.max(1), blk.min(1)
    if bound == "linear":
        sc = (a * rmax + (1 - a) * rmin) @ qs
    elif bound == "exact_max":
        sc = np.maximum(rmax * qs, rmin * qs).sum(-1)
    else:
        sc = blk.mean(1) @ qs
    chosen = np.sort(np.argsort(-sc, kind="stable")[:k])
    rows = [np.arange(SINK)] + [SINK + j * c + np.arange(c) for j in chosen]
    rows.append(np.arange(n - w, n))
    return np.concatenate(rows)


def recall_per_head(q, K, B, methods, prev_rows=None):
    """q [g, d] (this KV head's query heads), K [n, d] -> {method: recall}, rows chosen."""
    p = _softmax(q @ K.T)                                  # [g, n]
    mass = p.mean(0)
    qs = q.sum(0)
    out, rows_of = {}, {}
    rows_of["oracle"] = np.argsort(-mass)[:B]
    rows_of["topk"] = np.argsort(-(K @ qs), kind="stable")[:B]
    for c, bound in methods:
        rows_of[f"c{c}-{bound}"] = cluster_rows(qs, K, B, c, bound)
    if prev_rows is not None:
        rows_of["shared"] = prev_rows
    for name, r in rows_of.items():
        out[name] = float(mass[r].sum())
    return out, rows_of["c16-linear"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="niah_single_number")
    ap.add_argument("--context", default=2048, type=_context, help="tokens, e.g. 2048 or 2K")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from mpcache.eval.tasks import TaskGenerator
    from mpcache.nn.smollm2 import load_smollm2

    lm = load_smollm2("float32")
    gen = TaskGenerator(lm, seed=0)
    methods = [(c, b) for c in (16, 8, 4) for b in ("linear", "exact_max", "mean_key")]
    per = []                                         # [sample][layer] -> {method: recall}
    for i in range(args.samples):
        s = gen.sample(args.task, args.context, i)
        ids = lm.encode(s.prompt)
        probe = Probe()
        cache = lm.model.new_cache(probe)
        logits = lm.model.forward(ids, cache)
        lm.model.forward([int(np.argmax(logits))], cache)     # first answer token
        B = int(round(args.budget * len(ids)))
        layers = []
        prev = None
        for layer in sorted(probe.seen):
            q, K = probe.seen[layer]                 # [nh, 1, d], [nkv, n, d]
            nkv = K.shape[0]
            qg = q.reshape(nkv, -1, q.shape[-1])
            share = layer >= 3 and layer % 2 == 1
            heads, rows = [], []
            for h in range(nkv):
                r, mine = recall_per_head(qg[h], K[h], B, methods,
                                          prev[h] if share else None)
                heads.append(r)
                rows.append(mine)
            prev = rows
            layers.append({m: float(np.mean([r[m] for r in heads])) for m in heads[0]})
        per.append(layers)
        print(f"sample {i}: {len(ids)} tokens, B = {B}", flush=True)
    names = list(per[0][0])
    mean = {m: float(np.mean([lay[m] for smp in per for lay in smp])) for m in names}
    shared = [lay for smp in per for j, lay in enumerate(smp) if "shared" in lay]
    mean["shared"] = float(np.mean([lay["shared"] for lay in shared]))
    mean["c16-linear (same layers as shared)"] = float(np.mean([lay["c16-linear"]
                                                                for lay in shared]))
    print(f"\nmean attention recall, {args.task} {args.context}, budget {args.budget}:")
    for m, v in mean.items():
        print(f"  {m:36s} {v:.3f}")
    nl = len(per[0])
    blocks = [(0, 2), (2, nl // 3), (nl // 3, 2 * nl // 3), (2 * nl // 3, nl)]
    print("\nper layer block (oracle / topk / c16-linear / c8-linear / c4-linear):")
    for lo, hi in blocks:
        vals = [np.mean([smp[j][m] for smp in per for j in range(lo, hi)])
                for m in ("oracle", "topk", "c16-linear", "c8-linear", "c4-linear")]
        print(f"  layers {lo:2d}-{hi - 1:2d}: " + " / ".join(f"{v:.3f}" for v in vals))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "mean": mean, "per_sample_layer": per}, f, indent=1)


if __name__ == "__main__":
    main()

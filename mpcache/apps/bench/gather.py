"""``mpcache bench gather``: token-level vs cluster-level selection + gather under MPC.

The MPCache paper's micro-benchmark (T = 1024 tokens, C = 64 clusters of T / C tokens,
head_dim 64): gathering the SAME number of kept tokens either token by token (a one-hot
[k_t, T] over tokens, k_t = budget T) or cluster by cluster (a one-hot [k_c, C] over
clusters, k_c = k_t C / T, applied to X viewed as [C, (T/C) d]).  Three stages are timed
separately (scopes), max over parties, rounds on the critical path:

* ``onehot``  -- one-hot rows from secret indices (``mpcache.one_hot``: 1 round online,
  plus dealt offline material of N = 2^ceil(log2 n) words per row);
* ``topk``    -- top-k one-hot from secret scores (``x.top_k``: shuffle + revealed pivot
  comparisons), the selection the decoding step really runs;
* ``gather``  -- ``onehot @ X`` (``mpcache.gather``): rep3 costs the OUTPUT (k_t d words
  either way), add2 a Beaver product (k n + n w words).

Reported: each stage, "index" = onehot + gather and "topk" = topk + gather, and the
token/cluster ratios of seconds, bytes and rounds.
"""
from __future__ import annotations

import numpy as np

from ...runtime import Session
from . import write_rows


def _job(party, T, C, d, k_t, seed):
    import mpcache
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(T, d)) if party.id == 0 else None
    s = rng.normal(size=(T,)) if party.id == 0 else None
    X = party.share(X, owner=0)
    scores = party.share(s, owner=0)
    w = T // C
    k_c = max(1, k_t // w)
    idx_t = party.share(np.sort(rng.choice(T, k_t, replace=False)) if party.id == 0 else None,
                        owner=0, integer=True)
    idx_c = party.share(np.sort(rng.choice(C, k_c, replace=False)) if party.id == 0 else None,
                        owner=0, integer=True)
    cl_scores = scores.reshape(C, w).sum(axis=1)          # local (a stand-in score per cluster)
    Xc = X.reshape(C, w * d)
    out = {}
    for level, n, idx, sc, Xl, k in (("token", T, idx_t, scores, X, k_t),
                                     ("cluster", C, idx_c, cl_scores, Xc, k_c)):
        with party.scope(level):
            with party.scope("onehot"):
                oh = mpcache.one_hot(idx, n)
            with party.scope("gather_index"):
                mpcache.gather(oh, Xl)
            with party.scope("topk"):
                oh2 = sc.top_k(k, axis=-1)
            with party.scope("gather_topk"):
                mpcache.gather(oh2, Xl)
        out[level] = k
    return out


def bench_gather(T=1024, C=64, d=64, budget=0.0625, protocols=("rep3", "add2"),
                 json_path=None, echo=print, seed=0, repeat=3) -> list:
    k_t = max(T // C, int(round(budget * T)) // (T // C) * (T // C))
    rows = []
    for protocol in protocols:
        runs = [Session(protocol, timeout=600).run(_job, T, C, d, k_t, seed)
                for _ in range(max(1, repeat))]
        res = runs[0]
        row = {"protocol": protocol, "tokens": T, "clusters": C, "head_dim": d,
               "kept_tokens": k_t, "kept_clusters": k_t // (T // C), "repeat": len(runs),
               "seconds_are": "best of repeat runs"}
        for level in ("token", "cluster"):
            st = {}
            for stage in ("onehot", "gather_index", "topk", "gather_topk"):
                sc = res.scope(f"{level}/{stage}")
                sc["seconds"] = min(r.scope(f"{level}/{stage}")["seconds"] for r in runs)
                st[stage] = {"seconds": sc["seconds"], "bytes_per_party": sc["bytes_sent"],
                             "offline_bytes_per_party": sc["offline_bytes_sent"],
                             "rounds": sc["rounds"]}
            for combo, parts in (("index+gather", ("onehot", "gather_index")),
                                 ("topk+gather", ("topk", "gather_topk"))):
                st[combo] = {k: sum(st[p][k] for p in parts) for k in st[parts[0]]}
            st["gather"] = st["gather_index"]
            row[level] = st
        row["ratio_token_over_cluster"] = {
            stage: {k: (row["token"][stage][k] / row["cluster"][stage][k]
                        if row["cluster"][stage][k] else None)
                    for k in ("seconds", "bytes_per_party", "offline_bytes_per_party", "rounds")}
            for stage in ("gather", "onehot", "index+gather", "topk", "topk+gather")}
        rows.append(row)
        for stage in ("gather", "index+gather", "topk+gather"):
            t, c = row["token"][stage], row["cluster"][stage]
            r = row["ratio_token_over_cluster"][stage]
            echo(f"{protocol} {stage:>13s}: token {t['seconds'] * 1e3:8.1f} ms "
                 f"{t['bytes_per_party'] / 1e3:9.1f} kB {t['rounds']:3d} rnd | cluster "
                 f"{c['seconds'] * 1e3:8.1f} ms {c['bytes_per_party'] / 1e3:9.1f} kB "
                 f"{c['rounds']:3d} rnd | ratio {r['seconds'] or 0:.1f}x time, "
                 f"{r['bytes_per_party'] or 0:.1f}x bytes")
    write_rows(rows, json_path)
    return rows

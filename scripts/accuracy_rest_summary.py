"""Plaintext reference for ``mpcache:rest=...``: MPCache's selection, with every cluster
it did NOT choose still attended, written the direct way (no weighted softmax).

Usage (the `mpcache` CLI with one more policy name, ``mprest``):
    python3 scripts/accuracy_rest_summary.py eval run --policy mprest:rest=mean \
        mprest:rest=lin --budget 0.05 0.1 --context 2048 --samples 10 --start 0 --json F

Each unchosen cluster of ``cluster`` rows is replaced by ``cluster`` copies of one summary
key and of its rows' mean value, so its softmax weight is ``cluster * e^(q . summary)``;
chosen clusters, the sink, the edge rows and the newest rows stay exact.  ``rest='mean'``:
the summary key is the rows' mean key -- what the policy knob ``mpcache:rest=mean`` computes
as one weighted softmax entry per cluster, on plaintext and under MPC (equal logits:
tests/nn/test_policies.py::test_rest_mean_equals_attention_over_cluster_means; the 2K
accuracy records of docs/eval/2k-rest.json were written by this script).  ``'lin'``: the
selection's own bracket ``a r_max + (1 - a) r_min`` as the summary key (its score is
already computed, but it can exceed the attention's score bound: not built under MPC).
Every other knob is MPCache's.  The attention reads every row through the copies here, so
this script measures accuracy only.
"""
import sys

import numpy as np

from mpcache.nn.policies import POLICIES, MPCache
from mpcache.nn.policies.base import expand_heads


class MPCacheRest(MPCache):
    name = "mprest"

    def __init__(self, budget=None, rest: str = "mean", **kw):
        super().__init__(budget, **kw)
        if rest not in ("mean", "lin"):
            raise ValueError("rest must be 'mean' or 'lin'")
        if rest == "lin" and self.bound != "linear":
            raise ValueError("rest='lin' reuses the linear bound: bound must be 'linear'")
        if self.levels != 1 or self.share_layers != "off":
            raise ValueError("this experiment supports levels=1 without layer sharing")
        self.rest = rest

    def select(self, cache, layer, query):
        keys, values = cache.keys(layer), cache.values(layer)
        n = int(keys.shape[1])
        if n <= self.B or self.dense(layer):
            return keys, values
        p = self.plan(n)
        sel = self._choose(layer, keys, query, p)
        if sel is None:
            return self._gather(keys, p, sel), self._gather(values, p, sel)
        nkv, d = int(keys.shape[0]), int(keys.shape[2])
        h = max(nkv, sel.heads)
        o, c, nf = self.origin, self.cluster, p["nf"]
        grid = slice(o, o + nf * c)
        bk = np.asarray(keys)[:, grid].reshape(nkv, nf, c, d)
        bv = np.asarray(values)[:, grid].reshape(nkv, nf, c, d)
        sk = bk.mean(2) if self.rest == "mean" else np.asarray(self._bnd[layer]["f"]["lin"][:, :nf])
        sk, sv = np.asarray(expand_heads(sk, h)), np.asarray(expand_heads(bv.mean(2), h))
        out = []
        for x, s in ((np.array(expand_heads(keys, h)), sk),
                     (np.array(expand_heads(values, h)), sv)):
            g = x[:, grid].reshape(h, nf, c, d)
            rest = ~sel.indicator(nf).astype(bool)                     # [h, nf] unchosen
            g[rest] = s[rest][:, None, :]
            x[:, grid] = g.reshape(h, nf * c, d)
            out.append(x)
        return out[0], out[1]


if __name__ == "__main__":
    from mpcache.cli import main

    POLICIES[MPCacheRest.name] = MPCacheRest      # the CLI's name for it
    sys.exit(main(sys.argv[1:]))

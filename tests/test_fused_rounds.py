"""Round-saving structure of a decoder layer under MPC: q/k/v and gate/up as one fused
product (nn.layers.FusedLinear), the norms' rsqrt with the normalised x folded into its
un-normalisation and the gain folded into the next linear (nn.layers.RMSNorm).  Values
equal the plaintext layer within the fixed-point error; rounds are exact counts."""
import numpy as np

import mpcache
from mpcache.nn import layers as L

H, NQ, NKV = 16, 16, 8


def _weights(seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.normal(size=s) / np.sqrt(s[0]) for n, s in
            dict(q=(H, NQ), k=(H, NKV), v=(H, NKV)).items()}, rng.normal(size=(2, H))


def test_fused_qkv_equals_separate_linears_in_two_rounds(protocol):
    W, x0 = _weights()

    def job(p):
        w = {n: p.share(a if p.id == 1 else None, 1).persist() for n, a in W.items()}
        x = p.share(x0 if p.id == 0 else None, 0)
        fused = L.FusedLinear([L.Linear(w["q"]), L.Linear(w["k"]), L.Linear(w["v"])])
        with p.scope("fused"):
            q, k, v = fused(x)
        return [t.reveal(to=0) for t in (q, k, v)]

    res = mpcache.Session(protocol).run(job)
    for got, n in zip(res.output, ("q", "k", "v")):
        np.testing.assert_allclose(got, x0 @ W[n], atol=1e-3)
    assert res.scope("fused")["rounds"] == 2          # one truncating product (was 6)

"""05 - one private attention head: secret Q, K, V -> scores, softmax, context.

Run: python examples/05_private_attention.py
Needs: SecretTensor.softmax, SecretTensor.max

    scores  = Q K^T / sqrt(d)      one matmul: MPC cost = the OUTPUT size (n_q x T)
    probs   = softmax(scores)      the non-linear part: most of the rounds
    context = probs V              one matmul: cost n_q x d

Q, K and V are secret (in a private LLM they come from the client's prompt times the
model owner's weights, so nobody sees them).  The 1/sqrt(d) scale is a public real: it
is folded into Q (one truncation) rather than applied to the larger score matrix.
"""
import numpy as np

import mpcache

rng = np.random.default_rng(0)
d = 64


def ref(q, k, v):
    s = q @ k.T / np.sqrt(d)
    e = np.exp(s - s.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


def job(p, q, k, v):
    Q = p.share(q if p.id == 0 else None, owner=0)
    K = p.share(k if p.id == 0 else None, owner=0)
    V = p.share(v if p.id == 0 else None, owner=0)
    with p.scope("attention"):
        with p.scope("scores"):
            S = (Q * (1.0 / np.sqrt(d))) @ K.T
        with p.scope("softmax"):
            P = S.softmax(axis=-1)
        with p.scope("context"):
            C = P @ V
    return p.reveal(C, to=0)


print(f"{'':6} {'T':>5} {'part':9} {'bytes/party':>12} {'rounds':>6} {'offline B':>10} "
      f"{'ms':>8}")
for protocol in ("rep3", "add2"):
    for T in (64, 512):
        q, k, v = rng.normal(0, 1, (1, d)), rng.normal(0, 1, (T, d)), rng.normal(0, 1, (T, d))
        res = mpcache.Session(protocol).run(job, q, k, v)
        for part in ("scores", "softmax", "context"):
            c = res.scope("attention/" + part)
            print(f"{protocol:6} {T:>5} {part:9} {c['bytes_sent']:>12,} {c['rounds']:>6} "
                  f"{c['offline_bytes_sent']:>10,} {c['seconds'] * 1e3:>8.1f}")
        tot = res.scope("attention")
        err = np.max(np.abs(res.output - ref(q, k, v)))
        print(f"{protocol:6} {T:>5} {'TOTAL':9} {tot['bytes_sent']:>12,} {tot['rounds']:>6} "
              f"{tot['offline_bytes_sent']:>10,} {tot['seconds'] * 1e3:>8.1f}   "
              f"max error {err:.1e}")
        assert err < 2e-2, err
print("Decoding reads the whole KV cache every step: T grows, and so do bytes and time. "
      "Example 06 selects a few clusters of the cache instead.")

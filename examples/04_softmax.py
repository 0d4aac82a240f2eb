"""04 - softmax on secrets: max, exp, sum, reciprocal, and where the cost goes.

Run: python examples/04_softmax.py
Needs: SecretTensor.softmax, SecretTensor.exp, SecretTensor.max, SecretTensor.reciprocal

softmax(x)_i = exp(x_i - max x) / sum_j exp(x_j - max x).  Under MPC each piece is a
protocol: max is a comparison tree, exp a polynomial/iterated-squaring approximation
(after clipping very negative inputs to 0), 1/sum a Newton iteration.  Subtracting the
max keeps every exp in (0, 1], which is what makes fixed point with 18 fractional bits
accurate enough.  See each step:  mpcache explain softmax --protocol rep3 --shape 1x8
"""
import numpy as np

import mpcache

rng = np.random.default_rng(0)
shapes = [(1, 64), (1, 1024), (12, 1024)]


def ref(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def job(p, x):
    s = p.share(x if p.id == 0 else None, owner=0)
    with p.scope("softmax"):
        y = s.softmax(axis=-1)
    with p.scope("pieces"):                  # the parts on their own, for the breakdown
        with p.scope("max"):
            m = s.max(axis=-1, keepdims=True)
        with p.scope("exp"):
            e = (s - m).exp()
        with p.scope("reciprocal"):
            e.sum(axis=-1, keepdims=True).reciprocal()
    return p.reveal(y, to=0)


print(f"{'':6} {'shape':>9} {'bytes/party':>12} {'rounds':>6} {'offline B':>10} {'ms':>8} "
      f"{'max err':>8}   pieces (bytes/rounds): max | exp | reciprocal")
for protocol in ("rep3", "add2"):
    for shape in shapes:
        x = rng.normal(0, 3, shape)
        res = mpcache.Session(protocol).run(job, x)
        c = res.scope("softmax")
        err = np.max(np.abs(res.output - ref(x)))
        pieces = " | ".join(f"{res.scope('pieces/' + k)['bytes_sent']:,}/"
                            f"{res.scope('pieces/' + k)['rounds']}"
                            for k in ("max", "exp", "reciprocal"))
        print(f"{protocol:6} {'x'.join(map(str, shape)):>9} {c['bytes_sent']:>12,} "
              f"{c['rounds']:>6} {c['offline_bytes_sent']:>10,} {c['seconds'] * 1e3:>8.1f} "
              f"{err:>8.1e}   {pieces}")
        assert err < 1e-2, err
print("Peers on this kind of machine (DESIGN.md): SPU SEMI2K softmax [1,1024] 0.71 MB, "
      "143 send actions; CrypTen 0.71 MB, 137 rounds.")

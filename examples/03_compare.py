"""03 - comparisons: x < y, ReLU, max and one-hot argmax on secrets, and what they cost.

Run: python examples/03_compare.py
Needs: SecretTensor.__lt__, SecretTensor.max, SecretTensor.argmax, SecretTensor.relu

A comparison is where secret sharing stops being cheap: x < y is the sign bit of x - y,
and extracting a bit from an arithmetic sharing needs a boolean circuit (A2B with a
parallel-prefix adder: about log2(64) = 6 AND rounds).  The result is a secret bit (a
ring integer 0/1), never revealed unless the program asks.  max over n values is a
tree of n - 1 comparisons in log2(n) levels; argmax returns a secret one-hot vector.
See what each step sends:  mpcache explain lt --protocol rep3
"""
import numpy as np

import mpcache

rng = np.random.default_rng(0)
n = 1024
a = rng.uniform(-50, 50, n)
b = rng.uniform(-50, 50, n)
rows = rng.uniform(-10, 10, (16, 64))


def job(p):
    x = p.share(a if p.id == 0 else None, owner=0)        # the client's values
    y = p.share(b if p.id == 1 else None, owner=1)        # the model owner's values
    r = p.share(rows if p.id == 0 else None, owner=0)
    with p.scope("lt"):
        bit = x < y                                       # secret bits, one per element
    with p.scope("relu"):
        pos = x.relu()
    with p.scope("max"):
        m = r.max(axis=-1)                                # 16 row maxima, 6 levels each
    with p.scope("argmax"):
        oh = r.argmax(axis=-1)                            # secret one-hot rows [16, 64]
    return p.reveal(bit), p.reveal(pos), p.reveal(m), p.reveal(oh)


print(f"{'':6} {'op':7} {'shape':>9} {'bytes/party':>12} {'rounds':>6} {'offline B':>10} "
      f"{'ms':>7}  check")
for protocol in ("rep3", "add2"):
    res = mpcache.Session(protocol).run(job)
    bit, pos, m, oh = res.output
    checks = {
        "lt": np.array_equal(np.asarray(bit).astype(bool), a < b),
        "relu": np.max(np.abs(pos - np.maximum(a, 0))) < 1e-3,
        "max": np.max(np.abs(m - rows.max(-1))) < 1e-3,
        "argmax": np.array_equal(np.argmax(np.asarray(oh), -1), rows.argmax(-1)),
    }
    shapes = {"lt": f"{n}", "relu": f"{n}", "max": "16x64", "argmax": "16x64"}
    for op in ("lt", "relu", "max", "argmax"):
        c = res.scope(op)
        print(f"{protocol:6} {op:7} {shapes[op]:>9} {c['bytes_sent']:>12,} {c['rounds']:>6} "
              f"{c['offline_bytes_sent']:>10,} {c['seconds'] * 1e3:>7.1f}  "
              f"{'ok' if checks[op] else 'WRONG'}")
    assert all(checks.values()), checks
print("Rounds, not bytes, dominate comparisons: on a WAN (40 ms RTT) each round costs 40 ms.")

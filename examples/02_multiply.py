"""02 - multiplication: ring integers vs fixed point, and what each costs.

Run: python examples/02_multiply.py
A ring (integer) product in rep3 sends one ring element per product per party in one
round.  A fixed-point product also needs a truncation by f bits; mpcache's is exact for
|x| < 2^62 (no failure probability) and costs a second round (docs/protocols.md).
"""
import numpy as np

import mpcache
from mpcache.mpc.costs import cost

n = 10_000
a = np.random.default_rng(0).uniform(-100, 100, n)
b = np.random.default_rng(1).uniform(-100, 100, n)


def job(p, integer):
    x = p.share((np.round(a) if integer else a) if p.id == 0 else None, 0, integer=integer)
    y = p.share((np.round(b) if integer else b) if p.id == 1 else None, 1, integer=integer)
    with p.scope("mul"):
        z = x * y
    return p.reveal(z, to=0)


for protocol in ("rep3", "add2"):
    for integer in (True, False):
        res = mpcache.Session(protocol).run(job, integer)
        sc = res.scope("mul")
        ref = np.round(a) * np.round(b) if integer else a * b
        kind = "ring" if integer else "fixed"
        f = cost(protocol, f"mul_{kind}", n=n)
        print(f"{protocol} {kind:5s} mul of {n}: max error {np.max(np.abs(res.output - ref)):.2e}, "
              f"{sc['bytes_sent'] / n:.0f} B/product/party (formula {f['bytes'] / n:.0f}), "
              f"{sc['rounds']} rounds, {sc['offline_bytes_sent'] / n:.0f} B/product offline, "
              f"{sc['seconds'] * 1e3:.1f} ms")

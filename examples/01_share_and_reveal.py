"""01 - share a secret, compute on it, reveal it, and see what it cost.

Run: python examples/01_share_and_reveal.py
The same job runs at three parties (threads here; processes with `mpcache launch`).
"""
import numpy as np

import mpcache


def job(p):
    # P0 (a client) owns x; P1 (a model owner) owns w. Other parties pass None.
    x = p.share(np.array([1.5, -2.0, 0.25]) if p.id == 0 else None, owner=0)
    w = p.share(np.array([[0.5], [0.25], [4.0]]) if p.id == 1 else None, owner=1)
    with p.scope("linear"):
        y = x @ w                       # secret x secret matmul
    with p.scope("scale"):
        z = y * 2 + 1.0                 # public integer mul is free; adding a constant too
    return p.reveal(z)                  # the only place a value is reconstructed


for protocol in ("rep3", "add2"):
    res = mpcache.Session(protocol).run(job)
    print(f"{protocol}: result {res.output}  (expected {np.array([1.5, -2.0, 0.25]) @ [0.5, 0.25, 4.0] * 2 + 1})")
    for name, c in res.breakdown().items():
        print(f"   scope {name:7s}: {c['bytes_sent']:4d} bytes/party, {c['rounds']} rounds, "
              f"{c['offline_bytes_sent']} offline bytes")
    print(f"   total: {res.bytes_per_party} bytes/party, {res.rounds} rounds")

"""Mean and spread of top-k's bytes, rounds and offline bytes over seeds.

top-k's number of selection levels depends on its random shuffle, so one run's cost is a
sample; comparing two builds of the engine needs the distribution.  Run it against any
checkout (``PYTHONPATH=/path/to/checkout python3 scripts/topk_cost_spread.py``)::

    python3 scripts/topk_cost_spread.py --n 1024 --k 64 --seeds 20 --json out.json
"""
import argparse
import json

import numpy as np

import mpcache


def spread(protocol: str, n: int, k: int, ordered: bool, seeds: int) -> dict:
    x = np.random.default_rng(0).uniform(-100, 100, n)
    rows = []
    for seed in range(seeds):
        def job(p):
            s = p.share(x if p.id == 1 else None, owner=1)
            with p.scope("op"):
                s.top_k(k, ordered=ordered)
        sc = mpcache.Session(protocol, seed=seed).run(job).scope("op")
        rows.append((sc["bytes_sent"], sc["rounds"], sc["offline_bytes_sent"]))
    a = np.array(rows, dtype=float)
    return {"protocol": protocol, "n": n, "k": k, "ordered": ordered, "seeds": seeds,
            "bytes_mean": a[:, 0].mean(), "bytes_sd": a[:, 0].std(),
            "rounds_mean": a[:, 1].mean(), "rounds_sd": a[:, 1].std(),
            "offline_mean": a[:, 2].mean()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--json")
    a = ap.parse_args()
    out = [spread(proto, a.n, a.k, ordered, a.seeds)
           for proto in ("rep3", "add2") for ordered in (True, False)]
    for r in out:
        print(f"{r['protocol']} ordered={r['ordered']!s:5}  bytes {r['bytes_mean']:9.0f} "
              f"+- {r['bytes_sd']:6.0f}  rounds {r['rounds_mean']:5.1f} +- "
              f"{r['rounds_sd']:4.1f}  offline {r['offline_mean']:9.0f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

"""``mpcache estimate``: the command line of :mod:`mpcache.estimate` (one row per
protocol x context x policy; ``--breakdown`` prints the pieces)."""
from __future__ import annotations

import json

from ..estimate import ARCHS, OpCosts, arch_config, estimate, n_prescaled


def register(sub) -> None:
    p = sub.add_parser("estimate", help="predict one private decoding step's bytes, rounds "
                       "and offline bytes for an architecture, without running the model",
                       description="Compose one decoding step from pieces measured by the "
                       "model's own code (at the target shape, or extrapolated along the "
                       "affine laws of matrix products).  Docs: docs/teaching.md")
    p.add_argument("--arch", required=True,
                   help=f"{', '.join(sorted(ARCHS))}, or a JSON file with arch, vocab_size, "
                   "hidden_size, n_layers, n_heads[, n_kv_heads, head_dim], mlp_hidden")
    p.add_argument("--context", type=int, nargs="+", required=True,
                   help="cached tokens before the step (one or more)")
    p.add_argument("--protocol", choices=["rep3", "add2", "both"], default="rep3")
    p.add_argument("--policy", nargs="+", default=["full"],
                   help="full (default) and/or KV-cache policies as `bench decode --policy` "
                   "takes them (NAME[:key=val,...], e.g. mpcache:preset=paper)")
    p.add_argument("--budget", type=float, help="policy budget (kept / prompt tokens)")
    p.add_argument("--prescaled", help="norms with a prescale (an int, 'all' or 'none'; "
                   "default: the preset's)")
    p.add_argument("--twin-kv-heads", type=int, default=None,
                   help="at most this many KV heads in a policy's attention twin (bytes "
                   "scaled up to the model's; default: the model's, fewer where the twin's "
                   "secret cache would pass 2 GB; fewer: less memory and time)")
    p.add_argument("--breakdown", action="store_true", help="also print the pieces")
    p.add_argument("--no-cache", action="store_true",
                   help="measure every piece again (no cache file)")
    p.add_argument("--json", dest="json_path", help="write the rows to this file")
    p.set_defaults(func=_cli)


def _cli(a) -> int:
    import sys
    try:
        cfg = arch_config(a.arch)
    except (ValueError, OSError) as e:
        print(f"mpcache estimate: {e}", file=sys.stderr)
        return 2
    if a.prescaled is not None:
        cfg["prescaled"] = a.prescaled
    ops = OpCosts(None if a.no_cache else "default",
                  echo=lambda s: print(s, file=sys.stderr))
    protos = ("rep3", "add2") if a.protocol == "both" else (a.protocol,)
    rows = []
    print(f"{a.arch}: {cfg['n_layers']} layers, hidden {cfg['hidden_size']}, heads "
          f"{cfg['n_heads']}/{cfg['n_kv_heads']} x {cfg['head_dim']}, MLP "
          f"{cfg['mlp_hidden']}, vocab {cfg['vocab_size']}, {n_prescaled(cfg)} of "
          f"{2 * cfg['n_layers'] + 1} norms prescaled"
          + (f"; budget {a.budget}" if a.budget else ""))
    print(f"{'protocol':<8} {'context':>7} {'policy':<22} {'MB/party':>10} {'rounds':>7} "
          f"{'offline MB':>11} {'LAN s':>8} {'WAN s':>8}   (comm only)")
    for proto in protos:
        for n in a.context:
            for pol in a.policy:
                try:
                    r = estimate(cfg, n, proto, pol, a.budget, ops, a.twin_kv_heads)
                except (ValueError, NotImplementedError) as e:
                    print(f"mpcache estimate: {e}", file=sys.stderr)
                    return 2
                r["arch"] = a.arch
                rows.append(r)
                m = r["modelled_comm_seconds"]
                print(f"{proto:<8} {n:>7} {pol[:22]:<22} {r['bytes_per_party'] / 1e6:>10.2f} "
                      f"{r['rounds']:>7} {r['offline_bytes_per_party'] / 1e6:>11.2f} "
                      f"{m['lan']:>8.2f} {m['wan']:>8.2f}")
            if a.breakdown:
                for k, v in r["breakdown"].items():
                    print(f"    {k:<12} {v['bytes_per_party'] / 1e6:>10.3f} MB "
                          f"{v['rounds']:>6} rounds {v['offline_bytes_per_party'] / 1e6:>10.3f}"
                          " MB offline")
    if a.json_path:
        with open(a.json_path, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0

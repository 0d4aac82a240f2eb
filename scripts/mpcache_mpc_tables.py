"""Tables for docs/mpcache-mpc.md (and its plot) from one folder of bench JSON files.

    python scripts/mpcache_mpc_tables.py out/s13c/final

Reads ``sweep_*.json`` and ``sweep4k_*.json`` (mpcache bench decode), ``ablation_*.json``,
``agree_*.json`` (mpcache bench agree-policy); every decode row is reduced to its fastest
step first (``best_of_steps``, as ``mpcache bench report``).  Writes the plot to
docs/img/mpcache-mpc-decode.png and prints the markdown.
"""
import glob
import json
import os
import sys

from mpcache.apps.bench.report import (ablation_table, best_of_steps, plot, ratio_table,
                                  split_table, table)

D = sys.argv[1] if len(sys.argv) > 1 else "out/s13c/final"


def load(pattern):
    rows = []
    for p in sorted(glob.glob(os.path.join(D, pattern))):
        rows += json.load(open(p))
    return rows


main = [best_of_steps(r) for r in load("sweep_*.json") + load("sweep4k_*.json")]
if main:
    for pol in ("mpcache", "mpcache:levels=1"):
        print(f"### Full cache / {pol} (5%)\n")
        print(ratio_table(main, pol))
        print(f"### Attention and the rest of the step ({pol})\n")
        print(split_table(main, pol))
    print("### Every row\n")
    print(table(main))
    os.makedirs("docs/img", exist_ok=True)
    plot(main, "docs/img/mpcache-mpc-decode.png")
abl = [best_of_steps(r) for r in load("ablation_*.json")]
if abl:
    print("### Selection overhead ablation\n")
    print(ablation_table(abl))
ag = load("agree_*.json")
if ag:
    print("### MPC vs plaintext MPCache, needle task\n")
    print("| protocol | prompt tokens | steps | same tokens | same clusters (steps) | same "
          "clusters given the MPC query (steps) | max query error | MPC text | plaintext text "
          "| answer | s/step (mean) |\n"
          "|---|---:|---:|---|---|---|---:|---|---|---|---:|")
    for r in ag:
        steps = [r["seconds"]] + [x["seconds"] for x in r.get("later_steps", [])]
        given = r.get("per_step_clusters_match_given_mpc_query")
        given = "--" if given is None else f"{sum(given)}/{len(given)}"
        err = r.get("query_rel_err_max")
        print(f"| {r['protocol']} | {r['prompt_tokens']} | {len(r['tokens'])} | "
              f"{r['token_matches_plaintext']} | {r.get('clusters_match_plaintext')} "
              f"({sum(r['per_step_clusters_match'])}/{len(r['per_step_clusters_match'])}) | "
              f"{given} | {'--' if err is None else f'{err:.2%}'} | "
              f"{r['mpc_text']!r} | {r['plaintext_text']!r} | {r['answers']} | "
              f"{sum(steps) / len(steps):.2f} |")

"""Usage: python3 scripts/compare_4k_levels1.py docs/eval/4k-levels1.json

Per task and on average, the one-level rows of the given file against the two-level
defaults and the full cache of docs/eval/4k-defaults.json on the same samples, and the
paired difference (mean +- standard error over samples) per budget."""
import json
import sys

import numpy as np

new = json.load(open(sys.argv[1]))["results"]
old = json.load(open("docs/eval/4k-defaults.json"))["results"]
one = {(r["id"], r["budget"]): r["score"] for r in new}
two = {(r["id"], r["budget"]): r["score"] for r in old if r["policy"] == "mpcache"}
full = {r["id"]: r["score"] for r in old if r["policy"] == "full"}
task = {r["id"]: r["task"] for r in new}
tasks = sorted(set(task.values()))
for b in (0.05, 0.1):
    ids = sorted(i for (i, bb) in one if bb == b and (i, b) in two and i in full)
    rows = {"full": full, "two levels": {i: two[(i, b)] for i in ids},
            "levels=1": {i: one[(i, b)] for i in ids}}
    print(f"budget {b}: {len(ids)} samples")
    print("| policy | " + " | ".join(tasks) + " | average |")
    for name, sc in rows.items():
        per = [100 * np.mean([sc[i] for i in ids if task[i] == t]) for t in tasks]
        print(f"| {name} | " + " | ".join(f"{v:.0f}" for v in per) + f" | {np.mean(per):.1f} |")
    d = 100 * np.array([one[(i, b)] - two[(i, b)] for i in ids])
    f = 100 * np.array([one[(i, b)] - full[i] for i in ids])
    se = lambda x: x.std(ddof=1) / np.sqrt(x.size)  # noqa: E731
    print(f"paired levels=1 - two levels: {d.mean():+.1f} +- {se(d):.1f}; "
          f"levels=1 - full: {f.mean():+.1f} +- {se(f):.1f}\n")

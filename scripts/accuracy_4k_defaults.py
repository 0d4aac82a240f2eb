"""Usage: python3 scripts/accuracy_4k_defaults.py OUT.json [START] [SAMPLES]

4K: full cache, the MPCache defaults and Quest (reference layout) at 5% and 10%, samples
0-4 of all six tasks; full-cache records of samples 0-1 already in docs/eval/4k-main.json
(same code path) are copied in first."""
import json, os, sys
from mpcache.eval.harness import parse_policy, run_eval
from mpcache.eval.tasks import TASKS
path = sys.argv[1]
specs = [parse_policy("full", None)] + [parse_policy(p, b) for p in ("mpcache", "quest")
                                         for b in (0.05, 0.1)]
start0 = int(sys.argv[2]) if len(sys.argv) > 2 else 0
if not os.path.exists(path):
    old = json.load(open("docs/eval/4k-main.json"))
    keep = [r for r in old["results"] if r["label"] == "full@full" and r["index"] >= start0]
    json.dump({"meta": {}, "results": keep}, open(path, "w"), indent=1)
start = int(sys.argv[2]) if len(sys.argv) > 2 else 0
samples = int(sys.argv[3]) if len(sys.argv) > 3 else 5
run_eval(specs, list(TASKS), [4096], samples, path, start=start)

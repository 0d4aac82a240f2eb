"""Usage: python3 scripts/accuracy_4k_levels1.py OUT.json [START] [SAMPLES]

4K check of the one-level selection: run_eval of ``mpcache:<the two-level defaults'
knobs>,levels=1`` at 5% and 10%, samples START..START+SAMPLES-1 (default 0-4) of all six
tasks at 4096 tokens (resumable).  Compared sample by sample with the two-level rows of
docs/eval/4k-defaults.json (same samples, same code path) in docs/mpcache-accuracy.md."""
import sys
from mpcache.eval.harness import parse_policy, run_eval
from mpcache.eval.tasks import TASKS
K = ("cluster=4,coarse=16,coarse_keep=0.5,dense_layers=2,edges=cover,levels=1,per_head=query,"
     "share_layers=False,static_keep=1.0")
start = int(sys.argv[2]) if len(sys.argv) > 2 else 0
samples = int(sys.argv[3]) if len(sys.argv) > 3 else 5
specs = [parse_policy("mpcache:" + K, b) for b in (0.05, 0.1)]
run_eval(specs, list(TASKS), [4096], samples, sys.argv[1], start=start)

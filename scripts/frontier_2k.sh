#!/bin/bash
# The frontier table and PNG: the 2K accuracy JSONs (docs/eval) joined with the cost rows of
# scripts/frontier_costs.sh (out/frontier/, gathered into docs/eval/frontier-2k-cost.json;
# without out/frontier/ -- a fresh checkout -- the committed cost rows are used as they are).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import json, glob
rows = []
for f in sorted(glob.glob("out/frontier/cost-*.json")):
    try:
        rows += json.load(open(f))
    except ValueError:
        pass
if rows:
    json.dump(rows, open("docs/eval/frontier-2k-cost.json", "w"), indent=1)
    print(len(rows), "cost rows")
else:
    print("no out/frontier/cost-*.json: using docs/eval/frontier-2k-cost.json as committed")
PY
# M4: the defaults' knobs as the accuracy files were written (levels was 2 then: the
# accuracy records carry no levels knob; its cost: mpcache:levels=2); L1 = the current
# defaults (levels=1); GR: per-KV-head selection, also written with two levels; G1: per-KV-head
# selection with one level (its cost: mpcache:per_head=group, measured when levels=1 was the default)
M4=mpcache:cluster=4,coarse=16,coarse_keep=0.5,dense_layers=2,edges=cover,per_head=query,share_layers=false,static_keep=1.0
L1=mpcache:cluster=4,coarse=16,coarse_keep=0.5,dense_layers=2,edges=cover,levels=1,per_head=query,share_layers=false,static_keep=1.0
GR=mpcache:cluster=4,coarse=16,coarse_keep=0.5,dense_layers=2,edges=cover,per_head=group,share_layers=false,static_keep=1.0
G1=mpcache:cluster=4,coarse=16,coarse_keep=0.5,dense_layers=2,edges=cover,levels=1,per_head=group,share_layers=false,static_keep=1.0
mpcache eval frontier --json docs/eval/2k-main.json docs/eval/2k-faithful.json \
    docs/eval/2k-faithful-b.json docs/eval/2k-token-max.json docs/eval/2k-accurate.json --override docs/eval/2k-select.json docs/eval/2k-levels1.json docs/eval/2k-group-levels1.json \
    --cost docs/eval/frontier-2k-cost.json \
    --alias mpcache:levels=2=$M4 mpcache:levels=1=$L1 mpcache:levels=2,per_head=group=$GR \
    mpcache:per_head=group=$G1 \
    --context 2K --budget 0.05 0.1 --policy full streaming h2o snapkv quest topk \
    mpcache:preset=paper $M4 $L1 $GR $G1 mpcache:bound=token_max \
    mpcache:bound=token_max,rest=mean \
    --out docs/eval/frontier-2k.png --md docs/eval/frontier-2k.md

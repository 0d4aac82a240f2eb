#!/bin/bash
# The frontier's cost rows: one private SmolLM2 decoding step at 2048 cached tokens per
# policy x budget x protocol (`mpcache bench decode`, 2 steps each; two policy groups per run
# to bound memory; add2 at 10% only).  Writes out/frontier/cost-PROTO-BUDGET-GROUP.json; a
# file already there is kept (re-run to fill the missing ones).  ~40 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p out/frontier
G1="full streaming h2o snapkv quest"
G2="topk mpcache mpcache:levels=1 mpcache:per_head=group mpcache:preset=paper"
# the two-level specs the 2K accuracy files were written with (levels was 2 then)
G3="mpcache:levels=2 mpcache:levels=2,per_head=group"
G4="mpcache:bound=token_max mpcache:bound=token_max,rest=mean"
for run in rep3:0.1 rep3:0.05 add2:0.1; do
  proto=${run%%:*}; b=${run##*:}
  for g in 1 2 3 4; do
    case $g in 1) P=$G1 ;; 2) P=$G2 ;; 3) P=$G3 ;; 4) P=$G4 ;; esac
    out=out/frontier/cost-$proto-$b-$g.json
    [ -s "$out" ] && continue
    mpcache bench decode --model smollm2 --context 2048 --protocol "$proto" --policy $P \
        --budget "$b" --steps 2 --json "$out"
  done
done

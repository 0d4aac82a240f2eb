"""Markdown table of full cache vs a policy from `mpcache bench decode --json` files:
bytes, rounds, measured seconds (best step) and modelled LAN / WAN seconds (measured
compute + the launch presets' rounds x RTT/2 + bytes / bandwidth), with the full / policy
ratios.  Usage: python scripts/ratio_table.py F.json [F2.json ...]"""
import json
import sys

from mpcache.apps.bench.report import best_of_steps
from mpcache.net.shaping import model_latency

print("| model | protocol | context | policy | MB / party | rounds | measured s | LAN s | WAN s "
      "| full / policy: bytes, rounds, measured, LAN, WAN |")
print("|---|---|---|---|---:|---:|---:|---:|---:|---|")
for path in sys.argv[1:]:
    d = json.load(open(path))
    rows = d if isinstance(d, list) else d.get("rows", d)
    full = {}
    for r in map(best_of_steps, rows):
        lan = model_latency(r["seconds"], r["rounds"], r["bytes_per_party"], "lan")
        wan = model_latency(r["seconds"], r["rounds"], r["bytes_per_party"], "wan")
        key = (r.get("model"), r.get("protocol"), r["context"])
        cells = (r["bytes_per_party"], r["rounds"], r["seconds"], lan, wan)
        if r["policy"] == "full":
            full[key] = cells
            ratio = ""
        else:
            f = full.get(key)
            ratio = ", ".join(f"{a / b:.2f}x" for a, b in zip(f, cells)) if f else ""
        print(f"| {r.get('model', '')} | {r.get('protocol', '')} | {r['context']} | {r.get('label', r['policy'])} "
              f"| {r['bytes_per_party'] / 1e6:.2f} | {r['rounds']} | {r['seconds']:.2f} "
              f"| {lan:.2f} | {wan:.1f} | {ratio} |")

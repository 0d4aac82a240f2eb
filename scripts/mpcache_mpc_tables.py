"""Tables for docs/mpcache-mpc.md from the issue-7 JSON files (out/issue7/*.json)."""
import json
import os
import sys

from mpcache.bench.report import ablation_table, plot, ratio_table, table

D = sys.argv[1] if len(sys.argv) > 1 else "out/issue7"


def load(name):
    p = os.path.join(D, name)
    return json.load(open(p)) if os.path.exists(p) else []


main = (load("decode_gpt2-small-random.json") + load("decode_smollm2.json")
        + load("decode_smollm2_rep3.json") + load("decode_smollm2_add2.json"))
print("### All policies, one decoding step\n")
print(table(main))
print("### Full cache / MPCache (5%)\n")
print(ratio_table(main))
if main:
    os.makedirs("docs/img", exist_ok=True)
    plot(main, "docs/img/mpcache-mpc-decode.png")
abl = load("ablation_gpt2.json") + load("ablation_smollm2.json")
if abl:
    print("### Selection overhead ablation\n")
    if not any("mpc_compose" in (r.get("label") or "") for r in abl):
        print("(FIRST run, before the composed gather and the pregrow fix: two-level rows "
              "gather the coarse clusters too; every row pays the first-append copy.)\n")
    print(ablation_table(abl))
st = load("static_secret_gpt2.json")
if st:
    print("### Static eviction on secrets (measured once)\n")
    print("| model | protocol | context | policy | static eviction s | MB/party | rounds | "
          "offline MB | decode step s | MB/party | token = plaintext |\n"
          "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for r in st:
        c = r.get("static_eviction_cost") or {"seconds": 0, "bytes_per_party": 0, "rounds": 0,
                                               "offline_bytes_per_party": 0}
        print(f"| {r['model']} | {r['protocol']} | {r['context']} | {r['policy']} | "
              f"{c['seconds']:.2f} | {c['bytes_per_party'] / 1e6:.2f} | {c['rounds']} | "
              f"{c['offline_bytes_per_party'] / 1e6:.1f} | {r['seconds']:.2f} | "
              f"{r['bytes_per_party'] / 1e6:.2f} | {r['token_matches_plaintext']} |")
    print()
ag = load("agree_needle.json") + load("agree_needle_rep3.json") + load("agree_needle_add2.json")
if ag:
    print("### MPC vs plaintext MPCache, needle task\n")
    print("| protocol | prompt tokens | steps | same tokens | same clusters (all steps, all "
          "selecting layers) | MPC text | plaintext text | answer | s/step (mean) |\n"
          "|---|---:|---:|---|---|---|---|---|---:|")
    for r in ag:
        steps = [r["seconds"]] + [x["seconds"] for x in r.get("later_steps", [])]
        print(f"| {r['protocol']} | {r['prompt_tokens']} | {len(r['tokens'])} | "
              f"{r['token_matches_plaintext']} | {r.get('clusters_match_plaintext')} "
              f"({sum(r['per_step_clusters_match'])}/{len(r['per_step_clusters_match'])}) | "
              f"{r['mpc_text']!r} | {r['plaintext_text']!r} | {r['answers']} | "
              f"{sum(steps) / len(steps):.2f} |")

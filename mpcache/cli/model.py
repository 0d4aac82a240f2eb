"""CLI: ``mpcache generate`` and ``mpcache bench decode|gather|report``."""
from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    g = sub.add_parser("generate", help="private generation on the packaged SmolLM2")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the question (stays in this process: the parties get "
                     "it secret-shared, party processes through a 0600 file)")
    src.add_argument("--prompt-file", help="read the prompt from this UTF-8 file ('-': stdin)")
    src.add_argument("--prompts", metavar="FILE", help="one prompt per line: the weights "
                     "are shared once, then each prompt is answered in turn")
    src.add_argument("--interactive", action="store_true", help="read prompts from stdin, "
                     "one a line, until an empty line or end of input (weights shared once)")
    g.add_argument("--max-new-tokens", type=int, default=16)
    g.add_argument("--protocol", choices=["rep3", "add2"], default="rep3")
    g.add_argument("--transport", choices=["local", "grpc"], default="local")
    g.add_argument("--context-file", help="a UTF-8 text placed before the prompt")
    g.add_argument("--raw", action="store_true", help="no chat template")
    g.add_argument("--policy", default="full",
                   help="KV-cache eviction: full, mpcache, streaming, h2o, snapkv, topk, quest; "
                        "NAME:key=val,... sets knobs (as in `bench decode`)")
    g.add_argument("--budget", type=float, default=None, help="kept / prompt tokens (0.1)")
    g.add_argument("--prefill", choices=["private", "client"], default="private",
                   help="private: the prompt is prefilled inside MPC (minutes for a chat "
                        "prompt, hours for thousands of tokens); client: the client "
                        "prefills in plaintext with its copy of the public packaged model "
                        "and shares the (evicted) cache -- the decoding steps stay private")
    g.add_argument("--no-compare-full", dest="compare_full", action="store_false",
                   help="do not measure each step again on the full cache")
    g.add_argument("--fixed-length", action="store_true",
                   help="always run --max-new-tokens steps and drop what follows the end "
                        "of the answer at the client: P1 and P2 do not learn its length")
    g.add_argument("--model", choices=["smollm2", "tiny-random"], default="smollm2",
                   help="tiny-random: SmolLM2's tokenizer, a 2-layer random decoder "
                        "(plumbing checks; its text is noise)")
    g.add_argument("--share-store", metavar="DIR", default="",
                   help="each party keeps its weight shares in DIR/p{id} (0600 files); a "
                        "later run loads them instead of re-sharing when all three are "
                        "intact and from one sharing (rep3 only; docs/network.md)")
    g.add_argument("--json", dest="json_path", help="write the cost summary here")
    g.set_defaults(func=_generate)

    bench = sub.choices["bench"]
    bsub = bench._defaults.get("_bench_sub") if hasattr(bench, "_defaults") else None
    if bsub is None:
        return
    d = bsub.add_parser("decode", help="one private decoding step after a prefill of N tokens")
    d.add_argument("--model", choices=["smollm2", "gpt2-small-random"], default="smollm2")
    d.add_argument("--context", type=int, nargs="+", default=[1024])
    d.add_argument("--protocol", choices=["rep3", "add2", "both"], default="rep3")
    d.add_argument("--policy", nargs="+", default=["full"],
                   help="one or more of full, mpcache, streaming, h2o, snapkv, topk, quest "
                        "(all in one session: weights shared once); NAME:key=val,... sets "
                        "policy options, e.g. mpcache:levels=1,share_layers=off")
    d.add_argument("--budget", type=float, default=None, help="kept / prompt tokens (0.05)")
    d.add_argument("--static", choices=["plaintext", "secret"], default="plaintext",
                   help="static eviction on the client's plaintext cache before sharing "
                        "(default) or on secrets inside MPC (measured as static_eviction)")
    d.add_argument("--steps", type=int, default=1, help="greedy decode steps per case")
    d.add_argument("--reveal-selection", action="store_true",
                   help="audit: reveal MPCache's chosen clusters and queries to the client "
                        "and compare with plaintext MPCache, also replayed with the MPC "
                        "queries (keeps each context's prefill in memory)")
    d.add_argument("--no-persist-cache", dest="persist_cache", action="store_false",
                   help="do not persist the shared KV-cache prefix (add2 then re-opens K/V "
                        "in every step's products; for comparison)")
    d.add_argument("--json", dest="json_path")
    d.set_defaults(func=_bench_decode)

    ga = bsub.add_parser("gather", help="token-level vs cluster-level one-hot gather cost")
    ga.add_argument("--tokens", type=int, default=1024)
    ga.add_argument("--clusters", type=int, default=64)
    ga.add_argument("--head-dim", type=int, default=64)
    ga.add_argument("--budget", type=float, default=0.0625,
                    help="fraction of tokens kept (k = budget x T tokens or clusters)")
    ga.add_argument("--protocol", choices=["rep3", "add2", "both"], default="both")
    ga.add_argument("--repeat", type=int, default=3, help="seconds: best of N runs")
    ga.add_argument("--json", dest="json_path")
    ga.set_defaults(func=_bench_gather)

    ag = bsub.add_parser("agree-policy", help="SmolLM2 needle task: MPC vs plaintext MPCache "
                         "(same clusters, same greedy tokens)")
    ag.add_argument("--task", default="niah_single_number")
    ag.add_argument("--context", type=int, default=1024)
    ag.add_argument("--index", type=int, default=0)
    ag.add_argument("--steps", type=int, default=16)
    ag.add_argument("--protocol", choices=["rep3", "add2", "both"], default="both")
    ag.add_argument("--policy", default="mpcache")
    ag.add_argument("--budget", type=float, default=0.05)
    ag.add_argument("--static", choices=["plaintext", "secret"], default="secret")
    ag.add_argument("--json", dest="json_path")
    ag.set_defaults(func=_bench_agree_policy)

    rp = bsub.add_parser("report", help="decode sweep -> markdown table + PNG plot")
    rp.add_argument("--out", required=True, help="output folder")
    rp.add_argument("--from-json", nargs="*", default=None,
                    help="bench decode JSON files to tabulate instead of running a sweep")
    rp.add_argument("--model", nargs="+", default=["gpt2-small-random", "smollm2"])
    rp.add_argument("--context", type=int, nargs="+", default=[512, 1024, 2048])
    rp.add_argument("--protocol", choices=["rep3", "add2", "both"], default="both")
    rp.add_argument("--policy", nargs="+", default=["full", "mpcache", "streaming", "h2o",
                                                     "snapkv", "topk"])
    rp.add_argument("--budget", type=float, default=0.05)
    rp.set_defaults(func=_bench_report)


def _generate(a) -> int:
    from ..apps.generate import Eviction, PromptError, build_request, read_context_file
    from ..apps.serve import prompt_source
    from ..apps.share_store import StoreRefused, refuse_unless_rep3
    from ..nn.smollm2 import ModelNotInstalled, load_public
    ev = Eviction(a.policy, a.budget, a.prefill, a.compare_full)
    try:
        ev.check()
        if a.share_store:
            refuse_unless_rep3(a.protocol)
        context = read_context_file(a.context_file) if a.context_file else None
        if a.prompt is not None or a.prompt_file is not None:
            prompts = [a.prompt if a.prompt is not None else sys.stdin.read()
                       if a.prompt_file == "-" else read_context_file(a.prompt_file)]
        else:
            prompts = prompt_source(prompts_file=a.prompts or "", interactive=a.interactive)
        if isinstance(prompts, list):       # check them all before any party starts
            tok = load_public()             # the tokenizer, no tensor read
            sizes = [build_request(tok, p, a.max_new_tokens, context,
                                   chat=not a.raw).prompt_ids.size for p in prompts]
    except (PromptError, ModelNotInstalled, StoreRefused) as e:
        print(f"mpcache generate: {e}", file=sys.stderr)
        return 2
    what = (f"{len(prompts)} prompt(s) of {', '.join(map(str, sizes))} tokens"
            if isinstance(prompts, list) else "prompts typed on stdin")
    print(f"[mpcache] {a.protocol}: {what} (secret, client P0), weights secret (model owner "
          f"P1, shared once), policy {a.policy}"
          + (f" at budget {a.budget}" if ev.name != "full" else "")
          + (", plaintext prefill at the client" if a.prefill == "client" else ""),
          file=sys.stderr)
    if a.transport == "grpc":
        return _generate_grpc(a, prompts if isinstance(prompts, list) else None)
    return _generate_local(a, prompts, context, ev)


def _generate_local(a, prompts, context, ev) -> int:
    from ..apps.generate import print_summary, summarize
    from ..apps.serve import cost_lines, peak_rss_mb, serve_job, setup_costs, answer_costs
    from ..runtime import Session
    res = Session(a.protocol, timeout=600.0).run(
        serve_job, prompts, a.max_new_tokens, context, a.raw, a.model, ev, a.fixed_length,
        share_store=a.share_store)
    outs = res.outputs
    answers = answer_costs(outs, res.timed)
    print()
    for line in cost_lines(outs, res.timed):
        print(f"[mpcache] {line}")
    steps = []
    if answers:
        from ..apps.generate import step_costs, step_lines
        steps = step_costs([o["answers"][0]["steps"] for o in outs], timed=res.timed)
        for line in step_lines(steps, len(answers[0]["tokens"])):
            print(f"[mpcache] {line}")
        print_summary(summarize(res, sum(len(r["tokens"]) for r in answers)))
    rss = peak_rss_mb()
    print(f"[mpcache] peak RSS of this process (all three parties): {rss:.0f} MB")
    if a.json_path:
        first = answers[0] if answers else {}
        with open(a.json_path, "w") as fh:       # the answers, never the prompts
            json.dump({"protocol": a.protocol, "transport": "local", "policy": a.policy,
                       "budget": a.budget, "prefill": a.prefill,
                       "fixed_length": a.fixed_length, "tokens": first.get("tokens"),
                       "text": first.get("text"), "steps": steps,
                       "setup": setup_costs(outs), "answers": answers,
                       "peak_rss_mb": rss}, fh, indent=1)
    return 0


def _generate_grpc(a, prompts) -> int:
    from ..apps.generate import run_grpc
    from ..apps.serve import answer_costs, setup_costs
    job = ["generate", "--max-new-tokens", str(a.max_new_tokens), "--policy", a.policy,
           "--budget", str(a.budget or 0.0), "--prefill", a.prefill,
           "--compare-full", str(int(a.compare_full)),
           "--fixed-length", str(int(a.fixed_length)), "--model", a.model]
    if a.context_file:
        job += ["--context-file", os.path.abspath(a.context_file)]
    if a.raw:
        job += ["--raw", "1"]
    if a.share_store:
        job += ["--share-store", os.path.abspath(a.share_store)]
    prompt = None
    if a.prompts:
        job += ["--prompts", os.path.abspath(a.prompts)]
    elif a.interactive:
        job += ["--interactive", "1"]
    else:
        prompt = prompts[0]
    res = run_grpc(job, a.protocol, prompt=prompt)
    for line in res.summary:
        print(f"[mpcache] {line}")
    if a.json_path:
        ok = all(res.outputs)
        answers = answer_costs(res.outputs) if ok else []
        first = answers[0] if answers else {}
        with open(a.json_path, "w") as fh:
            json.dump({"protocol": a.protocol, "transport": "grpc", "policy": a.policy,
                       "budget": a.budget, "prefill": a.prefill,
                       "fixed_length": a.fixed_length, "tokens": first.get("tokens"),
                       "text": first.get("text"), "answers": answers,
                       "setup": setup_costs(res.outputs) if ok else None,
                       "peak_rss_mb": [(o or {}).get("peak_rss_mb") for o in res.outputs],
                       "outputs": res.outputs, "summary": res.summary}, fh, indent=1,
                      default=str)
    return res.returncode


def parse_policy(spec: str):
    """``name`` or ``name:key=val,...`` -> (label, name, kwargs)."""
    name, _, opts = spec.partition(":")
    kw = {}
    for item in filter(None, opts.split(",")):
        k, _, v = item.partition("=")
        for conv in (int, float):
            try:
                v = conv(v)
                break
            except ValueError:
                pass
        else:
            v = {"true": True, "false": False}.get(v.lower(), v)
        kw[k] = v
    return spec, name, kw


def _bench_decode(a) -> int:
    from ..apps.bench.decode import bench_decode
    protos = ("rep3", "add2") if a.protocol == "both" else (a.protocol,)
    specs = [parse_policy(p) for p in a.policy]
    bench_decode(a.model, a.context, protos, specs[0][1], a.budget, a.json_path,
                 policies=specs, static=a.static, steps=a.steps,
                 reveal_selection=a.reveal_selection, persist_cache=a.persist_cache)
    return 0


def _bench_gather(a) -> int:
    from ..apps.bench.gather import bench_gather
    protos = ("rep3", "add2") if a.protocol == "both" else (a.protocol,)
    bench_gather(a.tokens, a.clusters, a.head_dim, a.budget, protos, a.json_path,
                 repeat=a.repeat)
    return 0


def _bench_agree_policy(a) -> int:
    from ..apps.bench.agree_policy import bench_agree_task
    protos = ("rep3", "add2") if a.protocol == "both" else (a.protocol,)
    _, name, kw = parse_policy(a.policy)
    rows = bench_agree_task(a.task, a.context, a.index, a.steps, protos, name, a.budget,
                            a.static, kw, a.json_path)
    return 0 if all(r["token_matches_plaintext"] and r.get("clusters_match_plaintext", True)
                    for r in rows) else 1


def _bench_report(a) -> int:
    from ..apps.bench.report import bench_report
    protos = ("rep3", "add2") if a.protocol == "both" else (a.protocol,)
    bench_report(a.out, a.from_json, a.model, a.context, protos,
                 [parse_policy(p) for p in a.policy], a.budget)
    return 0

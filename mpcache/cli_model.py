"""CLI: ``mpcache generate`` and ``mpcache bench decode``."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    g = sub.add_parser("generate", help="private generation on the packaged SmolLM2")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=16)
    g.add_argument("--protocol", choices=["rep3", "add2"], default="rep3")
    g.add_argument("--transport", choices=["local", "grpc"], default="local")
    g.add_argument("--context-file", help="a UTF-8 text placed before the prompt")
    g.add_argument("--raw", action="store_true", help="no chat template")
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
    d.add_argument("--policy", default="full")
    d.add_argument("--budget", type=float, default=None)
    d.add_argument("--json", dest="json_path")
    d.set_defaults(func=_bench_decode)


def _generate(a) -> int:
    from .generate import PromptError, build_request, print_summary, read_context_file, run_local
    from .nn.smollm2 import ModelNotInstalled, load_smollm2
    try:
        context = read_context_file(a.context_file) if a.context_file else None
        lm = load_smollm2("float64")
        req = build_request(lm, a.prompt, a.max_new_tokens, context, chat=not a.raw)
    except (PromptError, ModelNotInstalled) as e:
        print(f"mpcache generate: {e}", file=sys.stderr)
        return 2
    if a.transport == "grpc":
        from .generate import run_grpc
        job = ["generate", "--prompt", a.prompt, "--max-new-tokens", str(a.max_new_tokens)]
        if a.context_file:
            job += ["--context-file", a.context_file]
        if a.raw:
            job += ["--raw", "1"]
        res = run_grpc(job, a.protocol)
        out = res.outputs[0] or {}
        print(f"\n[mpcache] gRPC + mutual TLS, 3 processes: {out.get('text', '')!r}; peak RSS "
              f"per party: {[round((o or {}).get('peak_rss_mb', 0)) for o in res.outputs]} MB")
        if a.json_path:
            with open(a.json_path, "w") as fh:
                json.dump({"protocol": a.protocol, "transport": "grpc", "outputs": res.outputs,
                           "summary": res.summary}, fh, indent=1, default=str)
        return res.returncode
    print(f"[mpcache] {a.protocol}: prompt of {req.prompt_ids.size} tokens (secret, client P0), "
          f"weights secret (model owner P1)", file=sys.stderr)
    ids, summary = run_local(lm, req, a.protocol)
    from .generate import print_summary as _ps
    _ps(summary)
    if a.json_path:
        with open(a.json_path, "w") as fh:
            json.dump({"protocol": a.protocol, "tokens": ids, "text": lm.decode(ids),
                       **summary}, fh, indent=1)
    return 0


def _bench_decode(a) -> int:
    from .bench.decode import bench_decode
    protos = ("rep3", "add2") if a.protocol == "both" else (a.protocol,)
    bench_decode(a.model, a.context, protos, a.policy, a.budget, a.json_path)
    return 0

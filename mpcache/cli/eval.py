"""``mpcache eval``: accuracy of KV-cache policies on RULER-style tasks (plaintext SmolLM2).

    mpcache eval --policy full mpcache h2o --budget 0.05 0.1 --tasks niah_single_number \\
        --context 2K --samples 10 --json runs/2k.json
    mpcache eval plot --json runs/2k.json runs/4k.json --out acc.png
    mpcache eval table --json runs/2k.json runs/4k.json
    mpcache eval frontier --json runs/2k.json --cost decode_b005.json decode_b01.json \
        --context 2K --out frontier.png --md frontier.md

Policy specs take knobs: ``mpcache:bound=exact_max,levels=1``.  Runs are resumable: an
existing ``--json`` keeps its records and only missing (sample, policy@budget) pairs run.
"""
from __future__ import annotations

import sys

__all__ = ["register"]


def _context(text: str) -> int:
    t = text.strip().upper()
    return int(float(t[:-1]) * 1024) if t.endswith("K") else int(t)


def register(subparsers) -> None:
    from ..eval.tasks import TASKS, TaskConfig
    from ..nn.policies import POLICIES

    d = TaskConfig()
    p = subparsers.add_parser("eval", help="accuracy of KV-cache policies (plaintext SmolLM2)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("action", nargs="?", choices=["run", "plot", "table", "frontier"],
                   default="run", help="run (default), plot JSON results, print them as "
                   "markdown tables, or join them with MPC cost (frontier)")
    p.add_argument("--policy", nargs="+", default=None,
                   help=f"policy specs NAME[:knob=v,...] (run: default mpcache; frontier: "
                   f"only these); names: {', '.join(sorted(POLICIES))}")
    p.add_argument("--budget", nargs="+", type=float, default=None,
                   help="kept tokens / prompt tokens, e.g. 0.05 0.1 (ignored by full; run: "
                   "default 0.1; frontier: only these)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--context", nargs="+", type=_context, default=[2048],
                   help="prompt lengths in tokens (1K = 1024)")
    p.add_argument("--samples", type=int, default=10, help="samples per task and context")
    p.add_argument("--start", type=int, default=0, help="first sample index")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", nargs="+", help="results file (run: one; plot: several)")
    p.add_argument("--out", default=None, help="plot / frontier: output PNG "
                   "(default eval.png / frontier.png)")
    p.add_argument("--cost", nargs="+", help="frontier: `mpcache bench decode --json` files "
                   "(one decoding step's bytes, rounds, seconds per policy x budget)")
    p.add_argument("--md", help="frontier: also write the markdown table here")
    p.add_argument("--override", nargs="+", action="append", default=[], metavar="JSON",
                   help="frontier: later eval JSON files (repeatable); their records win, "
                   "and a spec they have replaces that spec's earlier records entirely "
                   "(a re-run under changed code), or only the specs in --replace")
    p.add_argument("--replace", nargs="+", default=None, metavar="SPEC",
                   help="frontier: only these specs (any budget) are replaced whole by "
                   "--override files; other labels merge sample by sample")
    p.add_argument("--model", default="smollm2", help="frontier: the cost rows' model")
    p.add_argument("--alias", nargs="+", default=(), metavar="MEASURED=SAME",
                   help="frontier: cost rows of spec MEASURED also stand for spec SAME (two "
                   "spellings of one knob set under the measured code, e.g. a bare name "
                   "and its defaults written out); marked in the table")
    p.add_argument("--protocol", nargs="+", default=["rep3", "add2"],
                   choices=["rep3", "add2"], help="frontier: protocols to tabulate")
    p.add_argument("--heatmap", nargs="*", help="plot: labels for depth x context heat maps")
    p.add_argument("--multikey", type=int, default=d.multikey)
    p.add_argument("--multivalue", type=int, default=d.multivalue)
    p.add_argument("--vt-hops", type=int, default=d.vt_hops)
    p.add_argument("--cwe-words", type=int, default=d.cwe_words)
    p.set_defaults(func=_run)


def _run(a) -> int:
    if a.action == "frontier":
        return _frontier(a)
    if a.action in ("plot", "table"):
        if not a.json:
            print(f"mpcache eval {a.action}: give --json FILE...", file=sys.stderr)
            return 2
        if a.action == "table":
            from ..eval.report import markdown_tables

            print(markdown_tables(a.json))
            return 0
        from ..eval.plot import plot

        print(plot(a.json, a.out or "eval.png", a.heatmap))
        return 0
    from ..eval.harness import parse_policy, run_eval
    from ..eval.tasks import TaskConfig

    if a.json and len(a.json) > 1:
        print("mpcache eval: one --json file per run", file=sys.stderr)
        return 2
    specs, seen = [], set()
    for name in a.policy or ["mpcache"]:
        for b in a.budget or [0.1]:
            s = parse_policy(name, b)
            if s.label not in seen:
                seen.add(s.label)
                specs.append(s)
    cfg = TaskConfig(multikey=a.multikey, multivalue=a.multivalue, vt_hops=a.vt_hops,
                     cwe_words=a.cwe_words)
    data = run_eval(specs, a.tasks, a.context, a.samples, a.json[0] if a.json else None,
                    seed=a.seed, config=cfg, start=a.start)
    _print_summary(data["summary"])
    return 0


def _print_summary(summary) -> None:
    for label, per_ctx in summary.items():
        for ctx, tasks in sorted(per_ctx.items()):
            cells = "  ".join(f"{t}={100 * v['mean']:.0f}" for t, v in sorted(tasks.items()))
            print(f"{label:<40} {ctx:>5}  {cells}")


def _frontier(a) -> int:
    if not a.json or not a.cost:
        print("mpcache eval frontier: give --json ACCURACY.json... and --cost DECODE.json...",
              file=sys.stderr)
        return 2
    from ..eval.frontier import frontier, front_members

    if len(a.context) != 1:
        print("mpcache eval frontier: one --context", file=sys.stderr)
        return 2
    rows, md = frontier(a.json, a.cost, a.out or "frontier.png", a.md, a.model, a.context[0],
                        tuple(a.protocol), a.policy, a.budget, a.override, a.replace,
                        a.alias)
    print(md)
    for p in a.protocol:
        for m in ("bytes", "lan"):
            print(f"Pareto front, {p}, {m}: {', '.join(front_members(rows, p, m)) or '-'}")
    return 0

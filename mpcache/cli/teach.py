"""Teaching and auditing commands: ``mpcache explain`` and ``mpcache trace show``.

    mpcache explain mul --protocol rep3              # narrate one op, step by step
    mpcache explain softmax --protocol rep3 --shape 1x8
    mpcache trace show run.jsonl                     # timeline per party + totals per scope

Any command can be traced: ``MPCACHE_TRACE=run.jsonl mpcache bench ops --only mul``
(every Session of the process appends to the file; metadata only, never share values).
Docs: docs/teaching.md.
"""
from __future__ import annotations

import sys


def register(sub) -> None:
    from ..apps.explain import OPS
    ex = sub.add_parser("explain", help="run one op on random data and narrate the protocol",
                        description="Run OP on random toy data with tracing and print, step "
                        "by step, what each party computes and sends, with rounds, bytes and "
                        "what the receiver learns.  Docs: docs/teaching.md")
    ex.add_argument("op", choices=sorted(OPS), help="the op to explain")
    ex.add_argument("--protocol", choices=["rep3", "add2"], default="rep3")
    ex.add_argument("--shape", help="e.g. 4, 1x8 (matmul: MxKxQ)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the random toy inputs")
    ex.add_argument("--io", action="store_true",
                    help="also narrate the input sharing and the output reveal")
    ex.add_argument("--full", action="store_true",
                    help="explain a repeated step in full every time")
    ex.add_argument("--values", action="store_true",
                    help="show share values in each message (toy data only)")
    ex.add_argument("--trace", metavar="FILE", help="also write the transcript to FILE")
    ex.add_argument("--html", metavar="FILE", help="also write the run as an HTML trace "
                    "view (self-contained; see `mpcache trace html`)")
    ex.set_defaults(func=_explain)

    tr = sub.add_parser("trace", help="read transcripts written with MPCACHE_TRACE / "
                        "Session(trace=FILE)")
    tsub = tr.add_subparsers(dest="trace_cmd", required=True)
    show = tsub.add_parser("show", help="timeline per party and totals per scope")
    show.add_argument("file")
    show.add_argument("--party", type=int, action="append", choices=[0, 1, 2],
                      help="only this party's timeline (repeatable)")
    show.add_argument("--scope", help="only events under this scope path")
    show.add_argument("--limit", type=int, help="at most N events per party")
    show.add_argument("--session", type=int, help="only the N-th session of the file (0-based)")
    show.add_argument("--totals", action="store_true", help="totals only, no timeline")
    show.add_argument("--tags", action="store_true", help="also totals per protocol step")
    show.set_defaults(func=_trace_show)
    from ..trace_html import register_html
    register_html(tsub)


def _explain(a) -> int:
    from ..apps.explain import available, explain, parse_shape
    from ..trace import VALUES_WARNING, traces_of
    if not available(a.op):
        print(f"mpcache explain: {a.op!r} is not available in this build yet",
              file=sys.stderr)
        return 2
    if a.values:
        print("WARNING: " + VALUES_WARNING, file=sys.stderr)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # printed once above
        try:
            ex = explain(a.op, a.protocol, parse_shape(a.shape), a.seed, a.values, a.io,
                         a.full)
        except ValueError as e:
            print(f"mpcache explain: {e}", file=sys.stderr)
            return 2
    print(ex.text)
    if a.trace:
        traces_of(ex.result, a.protocol, 18).write(a.trace)
        print(f"transcript written to {a.trace} (read it with: mpcache trace show {a.trace})")
    if a.html:
        from ..trace_html import write_html
        n = write_html(traces_of(ex.result, a.protocol, 18), a.html,
                       f"mpcache explain {a.op} --protocol {a.protocol} --shape "
                       f"{'x'.join(map(str, ex.shape))}")
        print(f"HTML view written to {a.html} ({n} messages)")
    return 0


def _trace_show(a) -> int:
    from ..trace import format_trace, read_for_command
    traces = read_for_command(a.file, "trace show")
    if traces is None:
        return 2
    if not traces:
        print(f"mpcache trace show: {a.file} holds no session", file=sys.stderr)
        return 2
    if a.session is not None:
        traces = traces[a.session:a.session + 1]
    bad = False
    for t in traces:
        if t.values:
            print("WARNING: this transcript holds share values (toy data only)",
                  file=sys.stderr)
        print(format_trace(t, timeline=not a.totals, tags=a.tags, parties=a.party,
                           scope=a.scope, limit=a.limit))
        if t.meta.get("merged"):
            from ..trace_parties import format_merge
            print(format_merge(t) + "\n")
        bad |= bool(t.stats) and bool(t.check()) or bool(t.meta.get("link_check"))
    return 1 if bad else 0

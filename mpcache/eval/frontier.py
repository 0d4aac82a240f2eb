"""The accuracy-cost frontier: plaintext accuracy joined with the MPC cost of one step.

``mpcache eval frontier --json ACC.json... --cost DECODE.json...`` reads

* accuracy: the results JSON of ``mpcache eval`` (task average at one prompt length, the
  mean over tasks of each task's mean score, as ``mpcache eval table`` prints it), and
* cost: the rows of ``mpcache bench decode --json`` (one private decoding step with N
  cached tokens: bytes per party, critical-path rounds, measured seconds -- the fastest
  of the row's steps, :func:`mpcache.apps.bench.report.best_of_steps` -- and the LAN/WAN
  latency modelled from them),

joins them per policy spec and budget, and writes a markdown table per protocol and a
PNG (accuracy against bytes per step and against modelled LAN seconds) with the Pareto
front marked.

Matching: a policy is its spec string ``NAME[:knob=value,...]`` plus its budget, both
sides normalised by :func:`mpcache.eval.harness.parse_policy` (knobs sorted, ``false`` /
``off`` -> ``False``, numbers parsed), so ``mpcache:static_keep=1.0,share_layers=false``
on the command line of either tool is the same policy.  Knobs only the MPC glue reads
(:data:`mpcache.nn.mpc_policies.MPC_KNOBS`) change the cost, not the plaintext choice: a cost
row with them takes the accuracy of the spec without them.  A spec means what the code
meant when it ran: a bare ``mpcache`` joins whatever the two files measured as the
defaults, so both files should come from the same code (``--alias`` lends a cost row to
another spelling of the same knobs; ``--override``/``--replace`` keep a re-run spec's
records apart from the old code's).

Pareto front (per protocol, per cost measure): a row with both sides is on it when no
other such row is at least as accurate and at most as costly, and strictly better in
one.  Rows whose accuracy covers fewer tasks, or fewer samples of a task, than the most
complete rows are left out of the front (their average is over another sample set) and
marked so.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..apps.bench.report import best_of_steps
from .harness import parse_policy
from .plot import _matplotlib, load_results, task_averages
from .report import _order

__all__ = ["merged_results", "accuracy_rows", "apply_aliases", "cost_rows", "join", "pareto",
           "frontier_markdown", "plot_frontier", "frontier", "front_members"]

#: Cost measures the front is drawn over: row key -> column title.
MEASURES = {"bytes": "bytes / party", "lan": "modelled LAN s"}


def _mpc_knobs():
    from ..nn.mpc_policies import MPC_KNOBS
    return MPC_KNOBS


def spec_key(name: str, knobs: dict, budget) -> str:
    """The normalised ``spec@budget`` label of a policy (``full@full`` for the full cache)."""
    text = name + (":" + ",".join(f"{k}={v}" for k, v in knobs.items()) if knobs else "")
    b = None if budget in (None, "full") else round(float(budget), 6)
    return parse_policy(text, b).label


def _split(text: str) -> tuple:
    name, _, rest = text.partition(":")
    knobs = dict(item.split("=", 1) for item in filter(None, rest.split(",")))
    return name.strip(), {k.strip(): v.strip() for k, v in knobs.items()}


def _spec_of(label: str) -> str:
    """The normalised spec of a ``spec@budget`` label, without the budget."""
    return spec_key(*_split(label.rsplit("@", 1)[0]), None).rsplit("@", 1)[0]


def merged_results(paths, overrides=(), replace=None) -> list:
    """The eval records of ``paths``, then of each group of files in ``overrides`` in
    turn, merged per (sample, label) with later files winning; except that a label the
    group has keeps ONLY that group's records when its spec is in ``replace`` (every
    label of the group when ``replace`` is None): a spec re-run under changed code must
    not be averaged with samples of the old code."""
    res = {(r["id"], r["label"]): r for r in load_results(paths)}
    want = None if replace is None else {_spec_of(s + "@full") for s in replace}
    for group in overrides:
        new = load_results(group)
        drop = {r["label"] for r in new if want is None or _spec_of(r["label"]) in want}
        res = {k: r for k, r in res.items() if k[1] not in drop}
        res.update({(r["id"], r["label"]): r for r in new})
    return list(res.values())


def accuracy_rows(paths, context: int, overrides=(), replace=None) -> dict:
    """``{spec@budget: {"accuracy", "tasks", "n"}}`` at one prompt length (accuracy in %);
    ``overrides``, ``replace``: see :func:`merged_results`."""
    out = {}
    for (ctx, name, b), v in task_averages(merged_results(paths, overrides, replace)).items():
        if ctx != context:
            continue
        pol, knobs = _split(name)
        out[spec_key(pol, knobs, b)] = {"accuracy": 100 * v["mean"], "tasks": v["tasks"],
                                        "n": v["n"]}
    return out


def cost_rows(paths, model: str, context: int) -> dict:
    """``{(spec@budget, protocol): cost}`` of the decode rows of one model and context.
    ``cost["plain_key"]``: the spec without MPC-only knobs, whose accuracy the row takes;
    ``bytes`` and ``rounds`` are the first step's, ``bytes_range`` / ``rounds_range`` span
    all timed steps (top-k's revealed comparisons follow a random shuffle, so a selecting
    policy's counts vary a little from step to step; the full cache grows a row per step).
    A later file wins on a duplicate."""
    mpc = _mpc_knobs()
    out = {}
    for p in paths:
        for r in json.loads(Path(p).read_text()):
            if r.get("model") != model or r.get("context") != context:
                continue
            steps = [r] + list(r.get("later_steps", []))
            r = best_of_steps(r)
            kw = dict(r.get("policy_kw") or {})
            ms = r.get("modelled_seconds", {})
            out[(spec_key(r["policy"], kw, r["budget"]), r["protocol"])] = {
                "plain_key": spec_key(r["policy"], {k: v for k, v in kw.items()
                                                    if k not in mpc}, r["budget"]),
                "bytes": r["bytes_per_party"], "rounds": r["rounds"],
                "seconds": r["seconds"], "steps_timed": r.get("steps_timed", 1),
                "lan": ms.get("lan"), "wan": ms.get("wan"),
                "rows_read": r.get("rows_read_per_step"),
                "bytes_range": (min(t["bytes_per_party"] for t in steps),
                                max(t["bytes_per_party"] for t in steps)),
                "rounds_range": (min(t["rounds"] for t in steps),
                                 max(t["rounds"] for t in steps)),
                "tokens_match": r.get("token_matches_plaintext"), "source": str(p)}
    return out


def apply_aliases(cost: dict, aliases) -> dict:
    """``aliases``: ``"MEASURED=SAME"`` pairs of specs (no budget).  Every cost row of
    MEASURED also stands for SAME at the same budget and protocol, unless SAME has its own
    row; for two spellings of one knob set under the code the cost was measured with
    (bytes and rounds follow the knobs, not the spelling).  The copy records
    ``alias_of``, and the table says so."""
    out = dict(cost)
    for pair in aliases or ():
        measured, same = _alias_sides(pair)
        m = spec_key(*_split(measured), None).rsplit("@", 1)[0]
        a = spec_key(*_split(same), None).rsplit("@", 1)[0]
        for (k, proto), c in cost.items():
            spec, _, b = k.rpartition("@")
            if spec == m and (f"{a}@{b}", proto) not in cost:
                out[(f"{a}@{b}", proto)] = dict(c, plain_key=f"{a}@{b}", alias_of=k)
    return out


def _alias_sides(pair: str) -> tuple:
    """Split ``MEASURED=SAME`` at the ``=`` after which a policy name starts (knobs hold
    ``=`` too: ``mpcache:levels=1=mpcache:cluster=4,...``)."""
    from ..nn.policies import POLICIES
    for i, ch in enumerate(pair):
        if ch == "=" and pair[i + 1:].split(":", 1)[0] in POLICIES:
            return pair[:i], pair[i + 1:]
    raise ValueError(f"alias {pair!r}: expected MEASURED=SAME, SAME a policy spec")


def pareto(points) -> list:
    """For ``(accuracy, cost)`` pairs (None where a side is missing): True where no other
    complete pair is at least as accurate and at most as costly and better in one."""
    full = [(i, a, c) for i, (a, c) in enumerate(points) if a is not None and c is not None]
    on = [None] * len(points)
    for i, a, c in full:
        on[i] = not any(a2 >= a and c2 <= c and (a2 > a or c2 < c) for _, a2, c2 in full)
    return on


def join(acc: dict, cost: dict, protocols, specs=None, budgets=None) -> list:
    """One row per spec@budget present on either side (optionally only these specs --
    normalised, without budget -- and budgets; the full cache is always kept), with
    ``accuracy`` (None: no accuracy), ``cost[protocol]`` (absent: not measured), and
    ``front[(protocol, measure)]`` (None: not eligible)."""
    keys = set(acc) | {k for k, _ in cost}
    plain = {k: c["plain_key"] for (k, _), c in cost.items()}
    if specs is not None:
        want = {spec_key(*_split(s), None).rsplit("@", 1)[0] for s in specs}
        keys = {k for k in keys if k.rsplit("@", 1)[0] in want or k == "full@full"}
    if budgets is not None:
        bs = {round(float(b), 6) for b in budgets}
        keys = {k for k in keys if k.endswith("@full") or float(k.rsplit("@", 1)[1]) in bs}
    most = max((len(v["tasks"]) for v in acc.values()), default=0)
    most_n = max((min(v["n"]) for v in acc.values()), default=0)
    rows = []
    for k in sorted(keys, key=_order):
        a = acc.get(plain.get(k, k))
        row = {"label": k, "accuracy": a["accuracy"] if a else None,
               "tasks": len(a["tasks"]) if a else 0, "n": a["n"] if a else [],
               "complete_tasks": bool(a) and len(a["tasks"]) == most
               and min(a["n"]) >= most_n,
               "cost": {p: cost[(k, p)] for p in protocols if (k, p) in cost}, "front": {}}
        rows.append(row)
    for p in protocols:
        for m in MEASURES:
            pts = [(r["accuracy"] if r["complete_tasks"] else None,
                    r["cost"][p][m] if p in r["cost"] else None) for r in rows]
            for r, on in zip(rows, pareto(pts)):
                r["front"][(p, m)] = on
    return rows


def _missing(r, p) -> str:
    if r["accuracy"] is None:
        return "no accuracy"
    if p not in r["cost"]:
        return "no MPC cost"
    if not r["complete_tasks"]:
        return f"accuracy on {r['tasks']} tasks, n = {'/'.join(map(str, r['n']))}: not on front"
    if r["cost"][p].get("alias_of"):
        return f"both (cost measured as {r['cost'][p]['alias_of']})"
    return "both"


def _spread(c) -> str:
    """(max - min) / first step over the timed steps, bytes and rounds, in %."""
    (b0, b1), (r0, r1) = c["bytes_range"], c["rounds_range"]
    return f"{100 * (b1 - b0) / c['bytes']:.1f}% / {100 * (r1 - r0) / c['rounds']:.1f}%"


def _mark(on) -> str:
    return "" if on is None else ("**yes**" if on else "no")


def frontier_markdown(rows, protocols, title="") -> str:
    """One table per protocol: accuracy, cost of one decoding step, and front membership;
    ``sides`` says which rows lack accuracy or MPC cost (their cells are '-')."""
    full = {p: next((r["cost"][p] for r in rows if r["label"] == "full@full"
                     and p in r["cost"]), None) for p in protocols}
    out = [title] if title else []
    for p in protocols:
        out.append(f"\n**{p}** (front: no row with both sides is at least as accurate and "
                   "at most as costly, better in one)\n")
        out.append("| policy@budget | accuracy % | tasks x n | rows read | MB / party | "
                   "full / policy bytes | rounds | steps' spread bytes / rounds | "
                   "s (best of k) | LAN s | WAN s | front: bytes | front: LAN | sides |")
        out.append("|---|---:|---|---:|---:|---:|---:|---|---|---:|---:|---|---|---|")
        for r in rows:
            acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.1f}"
            tn = f"{r['tasks']} x {'/'.join(map(str, r['n']))}" if r["tasks"] else "-"
            c = r["cost"].get(p)
            if c:
                f = full[p]
                ratio = f"{f['bytes'] / c['bytes']:.2f}x" if f and c["bytes"] else "-"
                cells = (f"{c['rows_read']} | {c['bytes'] / 1e6:.1f} | {ratio} | "
                         f"{c['rounds']} | {_spread(c)} | "
                         f"{c['seconds']:.2f} (k={c['steps_timed']}) | "
                         f"{c['lan']:.2f} | {c['wan']:.1f}")
            else:
                cells = " | ".join("-" * 8)
            out.append(f"| {r['label']} | {acc} | {tn} | {cells} | "
                       f"{_mark(r['front'].get((p, 'bytes')))} | "
                       f"{_mark(r['front'].get((p, 'lan')))} | {_missing(r, p)} |")
    return "\n".join(out) + "\n"


_MARKERS = "os^vDPX<>hpd*H8"


def plot_frontier(rows, out: str, protocols, title="") -> str:
    """Accuracy against bytes per step and against modelled LAN seconds (log x), one row
    of panels per protocol; one marker per policy spec, budgets annotated, the Pareto
    front drawn as a step line through its points (ringed)."""
    plt = _matplotlib()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    specs = []                       # the specs with at least one point to draw
    for r in rows:
        s = r["label"].rsplit("@", 1)[0]
        if s not in specs and r["accuracy"] is not None and any(p in r["cost"]
                                                                 for p in protocols):
            specs.append(s)
    style = {s: (_MARKERS[i % len(_MARKERS)], f"C{i % 10}") for i, s in enumerate(specs)}
    drawn = set()
    fig, axes = plt.subplots(len(protocols), len(MEASURES), squeeze=False,
                             figsize=(6.2 * len(MEASURES), 4.4 * len(protocols) + 1.2))
    for i, p in enumerate(protocols):
        for j, (m, mtitle) in enumerate(MEASURES.items()):
            ax = axes[i][j]
            scale = 1e6 if m == "bytes" else 1.0
            for s in specs:
                pts = sorted(((r["cost"][p][m] / scale, r["accuracy"], r["label"],
                               r["complete_tasks"])
                              for r in rows if r["label"].rsplit("@", 1)[0] == s
                              and r["accuracy"] is not None and p in r["cost"]))
                if not pts:
                    continue
                drawn.add(s)
                mk, col = style[s]
                ax.plot([q[0] for q in pts], [q[1] for q in pts], color=col, lw=0.8,
                        ls="-" if len(pts) > 1 else "none")
                for x, y, lab, full_n in pts:        # hollow: fewer tasks / samples
                    ax.plot([x], [y], marker=mk, color=col, ms=6, ls="none",
                            fillstyle="full" if full_n else "none")
                    b = lab.rsplit("@", 1)[1]
                    ax.annotate("full" if b == "full" else f"{100 * float(b):g}%", (x, y),
                                textcoords="offset points", xytext=(4, 3), fontsize=6,
                                color=col)
            front = sorted((r["cost"][p][m] / scale, r["accuracy"]) for r in rows
                           if r["front"].get((p, m)))
            if front:
                ax.step([x for x, _ in front], [y for _, y in front], where="post",
                        color="k", lw=1, alpha=0.5, ls="--")
                ax.scatter([x for x, _ in front], [y for _, y in front], s=110,
                           facecolors="none", edgecolors="k", lw=1)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("MB per party per step" if m == "bytes" else mtitle + " per step")
            ax.set_ylabel("accuracy, task average (%)")
            ax.set_title(f"{p}: accuracy vs {mtitle}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=10)
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], marker=style[s][0], color=style[s][1], ls="none", label=s)
               for s in specs if s in drawn]
    handles.append(Line2D([], [], marker="o", ms=10, mfc="none", mec="k", ls="none",
                          label="Pareto front"))
    handles.append(Line2D([], [], marker="o", mfc="none", mec="gray", ls="none",
                          label="hollow: accuracy on fewer tasks / samples (off the front)"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=6, frameon=False)
    n_leg = (len(handles) + 1) // 2
    fig.tight_layout(rect=(0, min(0.45, 0.017 * n_leg + 0.02), 1, 1))
    fig.savefig(out, dpi=110, bbox_inches="tight")   # long labels: keep the whole legend
    plt.close(fig)
    return out


def frontier(acc_paths, cost_paths, out_png=None, out_md=None, model="smollm2",
             context=2048, protocols=("rep3", "add2"), specs=None, budgets=None,
             overrides=(), replace=None, aliases=()) -> tuple:
    """Join, tabulate and plot; returns ``(rows, markdown)``."""
    acc = accuracy_rows(acc_paths, context, overrides, replace)
    cost = apply_aliases(cost_rows(cost_paths, model, context), aliases)
    if not acc and not cost:
        raise SystemExit(f"no accuracy at context {context} and no {model} cost rows at "
                         f"{context} in the files given")
    rows = join(acc, cost, protocols, specs, budgets)
    srcs = ", ".join(map(str, acc_paths)) + "".join(
        f"; then {', '.join(map(str, g))}" for g in overrides) + (
        "" if not overrides else "; re-run specs replaced whole: " +
        ("all in the later files" if replace is None else ", ".join(replace)))
    title = (f"{model}, {context} tokens: plaintext accuracy ({srcs})"
             f" vs MPC cost of one decoding step ({', '.join(map(str, cost_paths))})")
    md = frontier_markdown(rows, protocols, title)
    if out_md:
        Path(out_md).write_text(md)
    if out_png:
        plot_frontier(rows, out_png, protocols, f"{model}, {context} cached tokens")
    return rows, md


def front_members(rows, protocol: str, measure: str = "bytes") -> list:
    """Labels on the front of one protocol and measure, cheapest first."""
    on = [r for r in rows if r["front"].get((protocol, measure))]
    return [r["label"] for r in sorted(on, key=lambda r: r["cost"][protocol][measure])]

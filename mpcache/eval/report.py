"""Markdown tables from eval JSON files (``mpcache eval table --json FILES...``)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .plot import load_results
from .tasks import TASKS

__all__ = ["markdown_tables", "budget_table"]

SHORT = {"niah_single_number": "NIAH num", "niah_single_word": "NIAH word",
         "niah_multikey": "multikey", "niah_multivalue": "multivalue", "vt": "VT",
         "cwe": "CWE"}


def _order(label: str):
    name, _, budget = label.rpartition("@")
    base = name.split(":")[0]
    rank = ["full", "streaming", "h2o", "snapkv", "quest", "topk", "mpcache"]
    return (rank.index(base) if base in rank else 99, name,
            -1.0 if budget == "full" else float(budget))


def markdown_tables(paths, labels=None, names=None) -> str:
    """One table per context: rows policy@budget, columns tasks (mean score %, n) and the
    task average; a row's average is over the tasks it has.  ``labels``: the rows to show
    (in that order when given as a list); ``names``: ``{config: short name}`` for the row
    titles (``config`` = a label without its ``@budget``)."""
    res = load_results(paths)
    per = defaultdict(list)
    for r in res:
        per[(r["context"], r["label"], r["task"])].append(r["score"])
    out = []
    for ctx in sorted({r["context"] for r in res}):
        rows = sorted({lab for (c, lab, _) in per if c == ctx}, key=_order)
        if labels:
            have = set(rows)
            rows = [r for r in labels if r in have]
        tasks = [t for t in TASKS if any((ctx, lab, t) in per for lab in rows)]
        out.append(f"\n**context {ctx}** (score %, string-match-all; n = samples per task)\n")
        out.append("| policy@budget | " + " | ".join(SHORT.get(t, t) for t in tasks) +
                   " | avg | n |")
        out.append("|---" * (len(tasks) + 3) + "|")
        for lab in rows:
            cells, means, ns = [], [], set()
            for t in tasks:
                v = per.get((ctx, lab, t))
                if v:
                    cells.append(f"{100 * np.mean(v):.0f}")
                    means.append(np.mean(v))
                    ns.add(len(v))
                else:
                    cells.append("-")
            n = "/".join(str(x) for x in sorted(ns))
            cfg, _, b = lab.rpartition("@")
            title = f"{names[cfg]}@{b}" if names and cfg in names else lab
            out.append(f"| {title} | " + " | ".join(cells) +
                       f" | **{100 * np.mean(means):.1f}** | {n} |")
    return "\n".join(out) + "\n"


def budget_table(paths, rows, budgets, context: int = 2048) -> str:
    """Task averages side by side per budget: ``rows`` are ``(name, config)`` pairs where
    ``config`` is a label without its ``@budget`` (``"full"`` for the full cache, read at
    every budget).  A cell is the mean over the tasks the config has at that budget, with
    the samples per task; ``-`` where it was not run."""
    res = load_results(paths)
    per = defaultdict(list)
    for r in res:
        if r["context"] == context:
            per[(r["label"], r["task"])].append(r["score"])
    head = "| config | " + " | ".join(f"{100 * b:g}%" for b in budgets) + " |"
    out = [head, "|---" * (len(budgets) + 1) + "|"]
    for name, cfg in rows:
        cells = []
        for b in budgets:
            lab = "full@full" if cfg == "full" else f"{cfg}@{b}"
            means = [np.mean(per[(lab, t)]) for t in TASKS if per.get((lab, t))]
            ns = sorted({len(per[(lab, t)]) for t in TASKS if per.get((lab, t))})
            cells.append("-" if not means else
                         f"{100 * np.mean(means):.1f} (n={'/'.join(map(str, ns))}"
                         f"{'' if len(means) == len(TASKS) else f', {len(means)} tasks'})")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"

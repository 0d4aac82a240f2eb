"""Plots of eval JSON files: accuracy vs budget per policy, needle depth x context heat map.

matplotlib is an optional extra (``pip install mpcache[plot]``), imported lazily."""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["load_results", "plot", "task_averages"]


def load_results(paths) -> list:
    """All records of several JSON files; later files win on duplicate (id, label)."""
    seen = {}
    for p in paths:
        for r in json.loads(Path(p).read_text())["results"]:
            seen[(r["id"], r["label"])] = r
    return list(seen.values())


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("mpcache eval plot needs matplotlib: pip install 'mpcache[plot]' "
                         "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def task_averages(results) -> dict:
    """``{(context, policy(+knobs), budget): {"mean", "tasks", "n"}}``: the mean over tasks
    of the task means, the tasks it covers, and the sorted distinct samples per task."""
    per = defaultdict(list)
    for r in results:
        name = r["label"].rsplit("@", 1)[0]
        per[(r["context"], name, r["budget"], r["task"])].append(r["score"])
    agg = defaultdict(list)
    for (ctx, name, b, task), v in per.items():
        agg[(ctx, name, b)].append((task, float(np.mean(v)), len(v)))
    return {k: {"mean": float(np.mean([m for _, m, _ in v])), "tasks": sorted(t for t, _, _ in v),
                "n": sorted({n for _, _, n in v})} for k, v in agg.items()}


def _series(results):
    """{context: {policy(+knobs): {budget: mean over tasks of the task means}}}."""
    out = defaultdict(lambda: defaultdict(dict))
    for (ctx, name, b), v in task_averages(results).items():
        out[ctx][name][b] = v["mean"]
    return out


def plot(paths, out: str, heatmap_labels=None) -> str:
    plt = _matplotlib()
    results = load_results(paths)
    if not results:
        raise SystemExit("no results in " + ", ".join(map(str, paths)))
    series = _series(results)
    contexts = sorted(series)
    labels = sorted({r["label"] for r in results if r["depth"] is not None})
    if heatmap_labels is None:
        small = min((r["budget"] for r in results if r["budget"]), default=None)
        pref = ["full", "mpcache", "topk", "quest", "snapkv", "h2o", "streaming"]
        cand = [lab for lab in labels if lab.endswith("@full") or lab.endswith(f"@{small}")]
        cand.sort(key=lambda lab: (pref.index(lab.split("@")[0]) if lab.split("@")[0] in pref
                                   else len(pref), lab))
        heatmap_labels = cand[:6]
    nrow2 = max(1, len(heatmap_labels))
    ncol = max(len(contexts), 1)
    fig = plt.figure(figsize=(5 * max(ncol, 2), 4 + 2.6 * ((nrow2 + 1) // 2)))
    gs = fig.add_gridspec(1 + (nrow2 + 1) // 2, max(ncol, 2))
    for j, ctx in enumerate(contexts):
        ax = fig.add_subplot(gs[0, j])
        for name, pts in sorted(series[ctx].items()):
            if None in pts:                              # full cache: a reference line
                ax.axhline(100 * pts[None], color="k", ls="--", lw=1, label=name)
                continue
            b = sorted(pts)
            ax.plot([100 * x for x in b], [100 * pts[x] for x in b], marker="o", label=name)
        ax.set_xlabel("budget (% of prompt tokens)")
        ax.set_ylabel("accuracy, task average (%)")
        ax.set_title(f"context {ctx}")
        ax.set_ylim(-2, 102)
        ax.legend(fontsize=7)
    depths = sorted({r["depth"] for r in results if r["depth"] is not None})
    for k, lab in enumerate(heatmap_labels):
        ax = fig.add_subplot(gs[1 + k // 2, k % 2])
        grid = np.full((len(depths), len(contexts)), np.nan)
        for i, d in enumerate(depths):
            for j, ctx in enumerate(contexts):
                v = [r["score"] for r in results if r["label"] == lab and r["depth"] == d
                     and r["context"] == ctx and r["task"].startswith("niah")]
                if v:
                    grid[i, j] = 100 * np.mean(v)
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(contexts)), [str(c) for c in contexts])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{lab} (niah tasks)", fontsize=9)
        for i in range(len(depths)):
            for j in range(len(contexts)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

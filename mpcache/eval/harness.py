"""Accuracy harness: one prefill per sample, forked into every (policy, budget) config.

Static eviction runs on each policy's private copy of the prefilled cache through
:meth:`~mpcache.nn.policies.PrefillRecorder.fork`, which calls the same ``prefill_done``
code as prefilling with the policy directly (a test checks both give the same tokens), so a
sweep over 7 policies x 3 budgets pays for the expensive prefill once.

Results are a JSON file ``{"meta", "results": [...], "summary"}``; one record per (sample,
config) with the prediction, answers and score.  Re-running with the same file skips the
(sample, config) pairs already there (resumable; the file is rewritten atomically after
every sample).
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..nn.policies import POLICIES, PrefillRecorder, make_policy
from .tasks import TaskConfig, TaskGenerator, score

__all__ = ["PolicySpec", "parse_policy", "run_eval", "summarize", "greedy_from"]


class PolicySpec:
    """``name[:knob=value,...]`` at a budget, e.g. ``mpcache:bound=exact_max,levels=1``."""

    def __init__(self, name: str, budget, knobs: dict | None = None):
        if name not in POLICIES:
            raise ValueError(f"unknown policy {name!r}; choose from {sorted(POLICIES)}")
        self.name, self.knobs = name, dict(knobs or {})
        self.budget = None if name == "full" else budget

    @property
    def label(self) -> str:
        k = ",".join(f"{a}={b}" for a, b in sorted(self.knobs.items()))
        return f"{self.name}{':' + k if k else ''}@{'full' if self.budget is None else self.budget}"

    def build(self):
        return make_policy(self.name, self.budget, **self.knobs)


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "on": True, "off": False}.get(v.lower(), v)


def parse_policy(text: str, budget) -> PolicySpec:
    name, _, rest = text.partition(":")
    knobs = {}
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        knobs[k.strip()] = _value(v.strip())
    return PolicySpec(name.strip(), budget, knobs)


def greedy_from(model, cache, logits, max_new: int, stop_ids) -> list:
    """Greedy decoding from prefill ``logits`` through ``cache`` (its policy selects)."""
    out, stop = [], set(int(s) for s in stop_ids)
    for _ in range(max_new):
        tok = int(np.argmax(logits))
        if tok in stop:
            break
        out.append(tok)
        if len(out) == max_new:
            break
        logits = model.forward([tok], cache)
    return out


def summarize(results) -> dict:
    """Mean score per config label x task x context, plus the task average per context."""
    acc = defaultdict(list)
    for r in results:
        acc[(r["label"], r["task"], r["context"])].append(r["score"])
    table = {}
    for (label, task, ctx), v in sorted(acc.items()):
        table.setdefault(label, {}).setdefault(str(ctx), {})[task] = {
            "mean": float(np.mean(v)), "n": len(v)}
    for label, per_ctx in table.items():
        for ctx, tasks in per_ctx.items():
            tasks["_avg"] = {"mean": float(np.mean([t["mean"] for t in tasks.values()])),
                             "n": int(sum(t["n"] for t in tasks.values()))}
    return table


def _load(path):
    if path and Path(path).exists():
        return json.loads(Path(path).read_text())
    return {"meta": {}, "results": []}


def _save(path, data):
    tmp = f"{path}.tmp{os.getpid()}"
    Path(tmp).write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class _Progress:
    """Plain stderr line updates (tqdm-free; works under nohup as a log)."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.t0, self.stream = total, 0, time.time(), stream
        self.tty = getattr(stream, "isatty", lambda: False)()

    def update(self, what: str):
        self.done += 1
        el = time.time() - self.t0
        eta = el / self.done * (self.total - self.done)
        line = (f"[eval] {self.done}/{self.total} {what}  {el / self.done:.1f} s/sample  "
                f"elapsed {el / 60:.1f} min  eta {eta / 60:.1f} min")
        self.stream.write(("\r" + line + " " * 4) if self.tty else line + "\n")
        self.stream.flush()

    def close(self):
        if self.tty:
            self.stream.write("\n")


def run_eval(specs, tasks, contexts, samples: int, json_path=None, seed: int = 0,
             config: TaskConfig | None = None, lm=None, start: int = 0, log=sys.stderr) -> dict:
    """Run every spec on ``samples`` samples per (task, context); returns the JSON dict."""
    if lm is None:
        from ..nn.smollm2 import load_smollm2

        lm = load_smollm2("float32")
    data = _load(json_path)
    config = config or TaskConfig()
    data["meta"] = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1, float32 compute)",
                    "seed": seed, "task_config": config.__dict__,
                    "command": " ".join(sys.argv)}
    done = {(r["id"], r["label"]) for r in data["results"]}
    gen = TaskGenerator(lm, seed=seed, config=config)
    todo = [(t, c, i) for c in contexts for i in range(start, start + samples) for t in tasks]
    todo = [x for x in todo if any((f"{x[0]}-{x[1]}-{x[2]}", s.label) not in done
                                   for s in specs)]
    bar = _Progress(len(todo), log)
    model = lm.model
    for task, ctx, i in todo:
        t0 = time.time()
        sample = gen.sample(task, ctx, i)
        missing = [s for s in specs if (sample.id, s.label) not in done]
        policies = [s.build() for s in missing]
        ids = lm.encode(sample.prompt)
        rec = PrefillRecorder(policies)
        base = model.new_cache(rec)
        logits = model.forward(ids, base)
        t_prefill = time.time() - t0
        for j, spec in enumerate(missing):
            pol, policies[j] = policies[j], None     # drop the list's reference: a used
            t1 = time.time()                          # policy keeps its cache alive
            cache = rec.fork(base, pol)
            out = greedy_from(model, cache, logits, sample.max_new_tokens, lm.stop_ids)
            kept = int(pol.B) if spec.budget is not None else int(ids.size)
            cache.policy = pol._cache = None          # break the cache <-> policy cycle
            del cache, pol
            pred = lm.decode(out)
            data["results"].append({
                "id": sample.id, "task": task, "context": ctx, "index": i,
                "depth": sample.depth, "n_tokens": int(ids.size), "label": spec.label,
                "policy": spec.name, "budget": spec.budget, "knobs": spec.knobs,
                "kept_per_step": kept,
                "prediction": pred, "answers": sample.answers,
                "score": score(pred, sample.answers),
                "seconds": round(time.time() - t1, 3), "prefill_seconds": round(t_prefill, 3)})
            done.add((sample.id, spec.label))
        base.policy = rec._cache = None
        del rec, base, logits
        gc.collect()
        data["summary"] = summarize(data["results"])
        if json_path:
            _save(json_path, data)
        bar.update(sample.id)
    bar.close()
    data["summary"] = summarize(data["results"])
    if json_path:
        _save(json_path, data)
    return data

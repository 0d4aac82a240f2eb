"""``mpcache bench agree-policy``: MPC and plaintext MPCache choose the same clusters.

SmolLM2 on a needle task prompt (:mod:`mpcache.eval.tasks`): plaintext prefill of the
prompt, then ``steps`` PRIVATE greedy steps with the policy on the secret cache (static
eviction on secrets by default), revealing -- audit only -- MPCache's chosen clusters and
each selecting layer's query every step; compared with plaintext MPCache on the same cache:
same clusters, same tokens.

Where a cluster choice differs, the row says why, in three figures per difference:

* ``lost_rel`` / ``kth_gap_rel`` (:func:`mpcache.apps.bench.decode.tie_margin`): how close the
  plaintext k-th and (k+1)-th clusters are (a near-tie), relative to the head's range;
* ``coarse_kth_gap_rel``: the same for the coarse level of a two-level choice;
* **query replay**: the plaintext policy re-run with the MPC queries at the selection
  (``same_given_mpc_query``).  The private forward pass computes each step's query with
  approximate non-linearities (exp, rsqrt, SiLU) in fixed point, so it differs from the
  float64 query by ``query_rel_err``; if the plaintext selection GIVEN the MPC query is
  MPC's choice, the selection protocol (bounds, scores, top-k) is exact and the
  difference comes from the forward pass's error on a near-tie.
"""
from __future__ import annotations

import time

import numpy as np

from ...runtime import Session
from . import write_rows
from .decode import _jsonable, _row, _same_sel, make_case, policy_cases_job, tie_margin


def bench_agree_task(task="niah_single_number", context=1024, index=0, steps=16,
                     protocols=("rep3", "add2"), policy="mpcache", budget=0.05,
                     static="secret", policy_kw=None, json_path=None, echo=print) -> list:
    """One needle-task prompt, ``steps`` private greedy steps per protocol, compared with
    plaintext MPCache: tokens, clusters per step, and the audit above per difference."""
    from ...eval.tasks import TaskGenerator, score
    from ..generate import prescales_for
    from ...nn.smollm2 import load_smollm2
    lm = load_smollm2("float64")
    sample = TaskGenerator(lm).sample(task, context, index)
    ids = np.asarray(lm.encode(sample.prompt), dtype=np.int64)
    n = ids.size - 1
    dec = lm.model
    case, ref = make_case(dec, ids, n, policy, budget, static, steps, policy_kw, replay=True)
    case["label"] = policy
    pres = prescales_for(lm)
    rows = []
    for protocol in protocols:
        t0 = time.perf_counter()
        res = Session(protocol, timeout=3600).run(policy_cases_job, dec.config, dec.weights,
                                                  pres, [case], reveal_selection=True)
        wall, out = time.perf_counter() - t0, res.output[0]
        given = ref["replay"](out["queries"], out["tokens"])
        row = _row(res, 0, case, ref, out, "smollm2", protocol, wall, given)
        mism = _mismatches(out, ref, given)
        row.update(task=task, sample_id=sample.id, prompt_tokens=int(ids.size),
                   answers=sample.answers, mpc_text=lm.decode(row["tokens"]),
                   plaintext_text=lm.decode(ref["tokens"]),
                   score_mpc=score(lm.decode(row["tokens"]), sample.answers),
                   score_plaintext=score(lm.decode(ref["tokens"]), sample.answers),
                   per_step_clusters_match=[_same_sel(a, b) for a, b in
                                            zip(out["selections"], ref["selections"])],
                   per_step_clusters_match_given_mpc_query=row[
                       "clusters_match_given_mpc_query"],
                   query_rel_err_max=max((_query_err(a, b) for a, b in
                                          zip(out["queries"], ref["queries"])), default=0.0),
                   mismatches=mism)
        rows.append(row)
        explained = sum(m["same_given_mpc_query"] for m in mism)
        echo(f"{task} {ids.size} tokens {protocol}: tokens equal {row['token_matches_plaintext']}, "
             f"clusters equal {row.get('clusters_match_plaintext')} ({len(mism)} layer-steps "
             f"differ, {explained} of them chosen alike given the MPC query; max query error "
             f"{row['query_rel_err_max']:.2%}): MPC {row['mpc_text']!r} | plaintext "
             f"{row['plaintext_text']!r} (answers {sample.answers})")
        write_rows(rows, json_path, default=_jsonable)
    return rows


def _query_err(mpc: dict, plain: dict) -> float:
    """Largest relative L2 error of an MPC query against the plaintext one, over layers."""
    errs = [float(np.linalg.norm(np.asarray(q, np.float64) - np.asarray(plain[L])) /
                  (np.linalg.norm(plain[L]) or 1.0)) for L, q in mpc.items() if L in plain]
    return max(errs, default=0.0)


def _mismatches(out, ref, given) -> list:
    """Per (step, layer) whose MPC clusters differ from plaintext: both choices, the
    plaintext margins, and whether plaintext given the MPC query chooses as MPC did."""
    rows = []
    for j, (a, b) in enumerate(zip(out["selections"], ref["selections"])):
        for L in b:
            if L not in a or np.array_equal(np.sort(a[L], -1), np.sort(b[L], -1)):
                continue
            g = given["selections"][j].get(L)
            q = {L: out["queries"][j][L]} if L in out["queries"][j] else {}
            rows.append({"step": j, "layer": int(L), "mpc": np.asarray(a[L]).tolist(),
                         "plaintext": np.asarray(b[L]).tolist(),
                         **tie_margin(ref["scores"][j][L], np.asarray(a[L]), np.asarray(b[L])),
                         "coarse_kth_gap_rel": ref["coarse_gaps"][j].get(L),
                         "same_given_mpc_query": bool(g is not None and np.array_equal(
                             np.sort(a[L], -1), np.sort(g, -1))),
                         "query_rel_err": _query_err(q, ref["queries"][j])})
    return rows

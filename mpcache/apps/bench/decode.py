"""``mpcache bench decode``: cost of one private decoding step with N cached tokens.

The KV cache a decoding step reads is built by a *plaintext* prefill of N tokens and then
secret-shared by the client (as if a private prefill had produced it): the step's cost
does not depend on how the cache was made, and a private prefill of thousands of tokens
would dominate the benchmark's run time.  Measured inside scope "decode": the embedding
of the (secret) previous token, all layers, the LM head and the secret argmax; reported as
max over parties (bytes, seconds) and critical-path rounds, with the breakdown per scope;
``per_party``: each online party's thread CPU seconds in the step, the side-core worker's
CPU on its big products, and its time blocked in ``recv`` for online messages and for
offline (dealer) material; ``work_cpu_seconds``: the step's total CPU over all parties
(add2's dealer included) and the side core, the core-seconds it consumed.  On c cores a
step cannot take less than ``work_cpu_seconds / c``, so the ratio of two policies' work is
what their latency ratio tends to when every core is kept busy.
The parties are threads of this process, except add2's dealer, a forked child
(``Session.processes``): ``peak_rss_mb_all_parties`` is this process's peak plus the
largest child's (an upper bound: pages the child still shares with its parent count
twice); per-party memory is about a third of the share part.

Policies (issue 7): ``--policy NAME --budget B`` runs the policy's decode-time selection on
the secret cache through the same code as plaintext (see :mod:`mpcache.nn.mpc_policies`).
Its prefill-time part (static eviction, H2O/SnapKV scores) comes from the plaintext prefill
in one of two ways, recorded in each row as ``static_eviction``:

* ``"plaintext"`` (default, the sweep): the client applies the policy's static eviction to
  its plaintext cache and shares the compacted cache (plus H2O's/SnapKV's scores as
  secrets).  The measured decode step is the same either way.
* ``"secret"``: the client shares the FULL cache and the prefill attention statistics; the
  parties run the policy's static eviction on secrets (top-k one-hot + one gather that
  compacts the cache; the number kept is public, which tokens is not), measured in scope
  ``"static_eviction"`` and reported as ``static_eviction_cost``.

MPCache's per-cluster bounds of the shared prefix are computed once before the measured
step (scope ``"cluster_bounds"``, reported as ``cluster_bounds_cost``), as a private prefill
would leave them; then the cache prefix and those bounds are persisted
(``KVCache.persist``, ``persist_bounds``; scope ``"persist_cache"``, reported as
``persist_cache_cost``): add2 opens K and V once instead
of in every step's products (``persist_cache=False`` in a case, ``--no-persist-cache``:
the old behaviour, for comparison).  Several (context, policy) cases share ONE session and one weight
sharing (:func:`policy_cases_job`).
"""
from __future__ import annotations

import collections
import contextlib
import gc
import resource
import threading
import time

import numpy as np

from ...accounting import scope_totals
from ...runtime import Session
from ...nn.mpc_policies import MPC_KNOBS
from . import modelled_seconds, write_rows


def _model(name: str, max_context: int):
    """(decoder, its norm prescales, a function n -> n prompt tokens) of bench model
    ``name``."""
    if name == "smollm2":
        from ..generate import prescales_for
        from ...nn.smollm2 import load_smollm2
        lm = load_smollm2("float64")
        return lm.model, prescales_for(lm), lambda n: _essay_tokens(lm, n)
    from ...nn.transformer import random_gpt2_small
    from ...nn.private import calibrate_prescales
    # room for the 256 calibration tokens below even at a short context
    dec = random_gpt2_small(vocab_size=50257, seed=0,
                            max_positions=max(max_context + 16, CALIBRATION_TOKENS),
                            dtype="float64")
    rng = np.random.default_rng(0)
    toks = lambda n: rng.integers(0, dec.config.vocab_size, n)  # noqa: E731
    return dec, calibrate_prescales(dec, toks(CALIBRATION_TOKENS)), toks


#: Random tokens the random GPT-2's norm prescales are calibrated on.
CALIBRATION_TOKENS = 256


def _essay_tokens(lm, n: int) -> np.ndarray:
    from ...nn.reference import DEFAULT_ESSAY, paul_graham_essays
    ids = []
    files = sorted(paul_graham_essays(), key=lambda p: p.name != DEFAULT_ESSAY)
    for f in files:
        ids.extend(lm.encode(f.read_text(encoding="utf-8")).tolist())
        if len(ids) >= n:
            break
    return np.asarray(ids[:n], dtype=np.int64)


def decode_step_job(party, config, weights, prescales, cache_kv, positions, next_token,
                    policy=None, client=0, owner=1):
    from ...nn.private import share_decoder
    dec = share_decoder(party, config, weights if party.id == owner else None, owner, prescales)
    cache = dec.new_cache(policy)
    with party.scope("share_cache"):
        for layer in range(config.n_layers):
            k, v = cache_kv[layer] if party.id == client else (None, None)
            cache.replace(layer, party.share(k, owner=client), party.share(v, owner=client),
                          positions)
    cache.n_seen = int(positions[-1]) + 1
    dec.cache = cache
    oh = None
    if party.id == client:
        oh = np.zeros((1, config.vocab_size), dtype=np.int64)
        oh[0, next_token] = 1
    tok = party.share(oh, owner=client, integer=True)
    with party.latency_bound(), _gc_paused(), party.scope("decode"):
        logits = dec.decode_step(tok)
        with party.scope("sample"):
            onehot = dec.greedy_onehot(logits)
            tid = (onehot @ dec.token_values).reveal(to=client)
    return tid


POLICY_SCOPES = ("selection", "gather")


def _scope_row(res, path):
    """Counters of one measured scope; ``per_party``: where each online party's wall time
    went (its CPU, the side-core worker's CPU on its products, and its waits in recv for
    online messages and for offline material); ``work_cpu_seconds``: the core-seconds
    the scope consumed, CPU of all three parties (add2's dealer too) and of the side core
    (None for a scope not opened with ``cpu=True``: only the measured steps are)."""
    sc = res.scope(path)
    per, work, cpu = [], 0.0, 0.0
    for i in range(len(res.stats)):
        t = scope_totals(res.stats[i], path)
        cpu += t["cpu_seconds"]
        work += t["cpu_seconds"] + t["side_cpu_seconds"]
        if i in res.timed:
            per.append({"party": i, "cpu_seconds": t["cpu_seconds"],
                        "side_cpu_seconds": t["side_cpu_seconds"],
                        "wait_seconds": t["wait_seconds"],
                        "offline_wait_seconds": t["offline_wait_seconds"]})
    return {"seconds": sc["seconds"], "bytes_per_party": sc["bytes_sent"],
            "offline_bytes_per_party": sc["offline_bytes_sent"], "rounds": sc["rounds"],
            "messages": sc["messages_sent"], "per_party": per,
            "work_cpu_seconds": work if cpu > 0 else None}


def policy_cases_job(party, config, weights, prescales, cases, client=0, owner=1,
                     reveal_selection=False, score_bound="weights"):
    """Share the weights once, then for each case share a cache, (optionally) evict on
    secrets, and run ``case["steps"]`` private greedy decoding steps.  Case i's step j is
    measured in scope ``c{i}/decode`` (j = 0) or ``c{i}/decode{j}``.  Returns, at the client,
    per case the token ids and (``reveal_selection``) MPCache's chosen clusters per step.
    ``score_bound``: as :func:`~mpcache.nn.private.share_decoder` (the estimate's twins
    pass the modelled architecture's exponent)."""
    from ...nn.mpc_policies import (instrument, mpc_options, persist_bounds, precompute_bounds,
                                   selected_clusters, share_state, share_stats)
    from ...nn.policies import make_policy
    from ...nn.private import share_decoder
    dec = share_decoder(party, config, weights if party.id == owner else None, owner, prescales,
                        score_bound=score_bound)
    outs = []
    for i, case in enumerate(cases):
        name = case["policy"]
        kw = dict(case.get("kw", {}))
        mpc = mpc_options(kw)                                # MPC-only knobs (gather)
        kw = {k: v for k, v in kw.items() if k not in MPC_KNOBS}
        pol = None if name == "full" else instrument(make_policy(name, case["budget"], **kw),
                                                     **mpc)
        asked = (_record_queries(pol, keep=lambda q: q)       # audit: the secret queries
                 if reveal_selection and pol is not None else None)
        cache = dec.new_cache(pol)
        n = int(case["n"])
        secret_static = case["static"] == "secret"
        with party.scope(f"c{i}"):
            with party.scope("share_cache"):
                for layer in range(config.n_layers):
                    k, v = case["kv"][layer] if party.id == client else (None, None)
                    ln = case["lens"][layer]
                    cache.replace(layer, party.share(k, owner=client),
                                  party.share(v, owner=client), np.arange(ln, dtype=np.int64))
                stats = (share_stats(party, case["stats"] if party.id == client else
                                     case["stats_shape"], client) if secret_static else None)
            cache.n_seen = n
            if pol is not None:
                if secret_static:
                    with party.scope("static_eviction"):
                        pol.attach(cache, stats, n)
                else:
                    pol.reset(cache, n)
                    pol.prefilled = True
                    with party.scope("share_state"):
                        share_state(party, case.get("plain_policy"), pol, config.n_layers, client)
                with party.scope("cluster_bounds"):
                    precompute_bounds(pol, cache, cache.length(0) + 1)
            if case.get("persist_cache", True):
                with party.scope("persist_cache"):     # once per prompt, as a private
                    cache.persist()                    # prefill leaves it (not measured)
                    if pol is not None:
                        persist_bounds(pol)
            with party.scope("pregrow"):
                _pregrow(cache)
            dec.cache = cache
            oh = None
            if party.id == client:
                oh = np.zeros((1, config.vocab_size), dtype=np.int64)
                oh[0, case["next_token"]] = 1
            tok = party.share(oh, owner=client, integer=True)
            toks, sels, qs = [], [], []
            for j in range(case.get("steps", 1)):
                with party.latency_bound(), _gc_paused((id(cases), i)), \
                        party.scope("decode" if j == 0 else f"decode{j}", cpu=True):
                    logits = dec.decode_step(tok)
                    with party.scope("sample"):
                        onehot = dec.greedy_onehot(logits)
                        tid = (onehot @ dec.token_values).reveal(to=client)
                toks.append(None if tid is None else int(tid))
                if asked is not None:                     # audit only, outside the step
                    sels.append(selected_clusters(pol, to=client))
                    qs.append({L: q.reveal(to=client) for L, q in sorted(asked.items())})
                tok = onehot.reshape(1, config.vocab_size)
        # this party's clean-up would stall a party still in its last measured step
        # (one interpreter lock): wait for the others first
        _steps_done((id(cases), i))
        dec.cache = None
        _release(cache, pol)
        del cache, pol, stats, logits, onehot, tok
        gc.collect()                 # shares of a finished case must not pile up (OOM)
        outs.append({"tokens": toks, "selections": sels, "queries": qs}
                    if party.id == client else None)
    return outs


_GC_LOCK = threading.Condition()
#: parties inside a measured step, per case key; the collector's prior state
_GC_USERS: collections.Counter = collections.Counter()
_GC_PRIOR = [True]


@contextlib.contextmanager
def _gc_paused(key=None):
    """The cyclic garbage collector off while any party is inside a measured step (as
    ``timeit`` does): a collection stops all three party threads at a random point, adding
    0.05-0.1 s to whichever step it lands in (seen on the 'sample' scope).  Everything a
    step frees without cycles is still freed at once (reference counting); the collector
    runs after the case (``gc.collect()`` below).  ``key``: the case the step belongs to
    (:func:`_steps_done` waits for that case only)."""
    with _GC_LOCK:
        if not sum(_GC_USERS.values()):
            _GC_PRIOR[0] = gc.isenabled()
            gc.disable()
        _GC_USERS[key] += 1
    try:
        yield
    finally:
        with _GC_LOCK:
            _GC_USERS[key] -= 1
            if not _GC_USERS[key]:
                del _GC_USERS[key]
            if not sum(_GC_USERS.values()) and _GC_PRIOR[0]:
                gc.enable()
            _GC_LOCK.notify_all()


def _steps_done(key=None, timeout: float = 60.0) -> None:
    """Wait until no party of this process is inside a measured step of case ``key``.  A
    case's end frees its shares and runs the collector, tens of ms holding the interpreter
    lock; a party that got there first stalled the others' last step (measured: the last
    of 5 steps had ~0.1 s more idle time than the others in every configuration).  Only
    this case's steps: a party that already entered the NEXT case's step needs this
    party's messages, so waiting for it deadlocked until the timeout (60 s added to that
    step, seen with six policy cases in one session)."""
    with _GC_LOCK:
        _GC_LOCK.wait_for(lambda: not _GC_USERS[key], timeout)


def _pregrow(cache) -> None:
    """Give each layer's secret K/V the spare capacity a decoding cache has (local, not
    measured): a freshly shared cache is exactly full, so the first append would copy the
    whole cache into a 2x buffer INSIDE the measured step (seconds growing with the cache,
    charged mostly to the full-cache baseline).  Decoding in a real run amortises that."""
    for layer in range(cache.n_layers):
        n, k, v = cache.length(layer), cache._k[layer], cache._v[layer]
        if k is None or not hasattr(k, "grow_into"):
            continue
        cache._k[layer] = k[:, :1].grow_into(k, n)      # row n is scratch; length stays n
        cache._v[layer] = v[:, :1].grow_into(v, n)


def _release(cache, pol) -> None:
    """Break the cache <-> policy reference cycles (and the instrumented closures) so a
    finished case's secret shares are freed at once."""
    if pol is not None:
        for k in list(vars(pol)):
            setattr(pol, k, None)
    if cache is not None:
        cache.policy = None
        cache.reset()


def _state_only(plain):
    """Only the state :func:`share_state` needs (not the policy's cache: memory)."""
    import types
    from ...nn.mpc_policies import SECRET_STATE
    if plain is None:
        return None
    return types.SimpleNamespace(**{a: getattr(plain, a) for a in SECRET_STATE.get(plain.name, ())})


def make_case(dec, ids, n, policy, budget, static="plaintext", steps=1, kw=None,
              recorder=None, replay=False):
    """Plaintext side of one case: prefill n tokens (unless ``recorder`` already holds that
    prefill), the cache to share, the plaintext reference tokens (and MPCache selections).

    ``recorder``: ``(PrefillRecorder, cache)`` of a prefill of ``ids[:n]`` to fork from.
    ``replay``: the reference dict also gets ``replay(queries, tokens)`` (keeps the
    prefill alive: one case only)."""
    from ...nn.policies import PrefillRecorder, make_policy
    from ...nn.policies.base import clone_cache
    kw = dict(kw or {})
    pkw = {k: v for k, v in kw.items() if k not in MPC_KNOBS}
    plain = None if policy == "full" else make_policy(policy, budget, **pkw)
    if recorder is None:
        rec = PrefillRecorder([plain] if plain is not None else [])
        dec.prefill(np.asarray(ids[:n]), policy=rec)
        recorder = (rec, dec.cache)
    rec, base_cache = recorder
    dec.cache = None
    if plain is None or static == "secret":
        src = clone_cache(base_cache)
    else:
        src = rec.fork(base_cache, plain)
    kv = [(np.array(src.keys(i)), np.array(src.values(i))) for i in range(src.n_layers)]
    lens = [src.length(i) for i in range(src.n_layers)]
    stats = None
    if static == "secret" and plain is not None:
        from ...nn.policies.base import stat_key
        need = {stat_key(w, n) for w in plain.stat_windows(n)}
        stats = [{w: np.array(rec.stats[layer][w]) for w in need}
                 for layer in range(src.n_layers)]
    ref = _reference_run(dec, rec, base_cache, policy, budget, pkw, int(ids[n]), steps)
    if replay:        # audit: the same reference, with MPC's queries at the selection
        ref["replay"] = lambda queries, tokens: _reference_run(
            dec, rec, base_cache, policy, budget, pkw, int(ids[n]), steps, queries, tokens)
    del src
    case = {"n": n, "policy": policy, "budget": budget, "kw": kw, "static": static,
            "steps": steps, "kv": kv, "lens": lens, "next_token": int(ids[n]),
            "plain_policy": _state_only(plain) if static != "secret" else None, "stats": stats,
            "stats_shape": None if stats is None else [{k: None for k in d} for d in stats]}
    return case, ref


def _reference_run(dec, rec, base_cache, policy, budget, pkw, tok, steps,
                   queries_in=None, tokens_in=None) -> dict:
    """The plaintext reference: ``steps`` greedy steps with the same policy (fast index
    path) from the same prefill, recording tokens, MPCache's selections, its cluster scores
    and each selecting layer's query per step.  ``queries_in`` (per step ``{layer:
    query}``) replaces the query the SELECTION sees at those layers, and ``tokens_in``
    forces the fed tokens: the plaintext choice given another run's queries."""
    from ...nn.mpc_policies import selected_clusters
    from ...nn.policies import make_policy
    from ...nn.policies.base import clone_cache
    ref_pol = None if policy == "full" else make_policy(policy, budget, **pkw)
    ref_cache = clone_cache(base_cache) if ref_pol is None else rec.fork(base_cache, ref_pol)
    dec.cache = ref_cache
    step = [0]
    queries = _record_queries(ref_pol, lambda: None if queries_in is None
                              else queries_in[step[0]])
    out = {"tokens": [], "selections": [], "scores": [], "coarse_gaps": [], "queries": []}
    for j in range(steps):
        step[0] = j
        logits = dec.decode_step(tok)
        out["tokens"].append(int(np.argmax(logits)))
        tok = out["tokens"][-1] if tokens_in is None else int(tokens_in[j])
        if ref_pol is not None:
            out["selections"].append(selected_clusters(ref_pol))
            out["scores"].append(_fine_scores(ref_pol, queries))
            out["coarse_gaps"].append(_coarse_gaps(ref_pol, queries))
            out["queries"].append(dict(queries))
    dec.cache = None
    out["rows_read"] = None if ref_pol is None else int(ref_pol.B)
    if ref_pol is not None:
        _release(ref_cache, ref_pol)
    return out


def _record_queries(pol, override=lambda: None, keep=np.array) -> dict:
    """Wrap a policy's ``select`` to keep ``keep(query)`` of each selecting layer (its own
    leader) at the last decode step: ``{layer: query}``, overwritten every step.  Where
    ``override()`` (``{layer: query}`` or None) has the layer, the selection sees that
    query instead (plaintext only: the replay of another run's queries)."""
    queries = {}
    if pol is None:
        return queries
    inner, lead = pol.select, getattr(pol, "leader", lambda layer: layer)

    def select(cache, layer, query):
        given = override()
        if given is not None and layer in given:
            query = np.asarray(given[layer], dtype=np.float64).reshape(np.shape(query))
        if lead(layer) == layer:
            queries[layer] = keep(query)
        return inner(cache, layer, query)
    pol.select = select
    return queries


def _level_scores(pol, queries, level: str) -> dict:
    """Plaintext cluster scores ``[n_kv, n]`` of one level (``"f"``: ALL full fine
    clusters; ``"c"``: the coarse clusters of two-level layers) per selecting layer, for
    the step just taken, with the layer's plan ``p``: ``{layer: (scores, p)}``."""
    out = {}
    for layer, dyn in enumerate(getattr(pol, "_dyn", None) or []):
        if dyn is None or dyn[2] is None or layer not in queries:
            continue
        p, st = dyn[1], pol._bnd[layer]
        if level == "c" and not p.get("two"):
            continue
        n = p["nf"] if level == "f" else p["nc"]
        ops = {k: st[level][k][:, :n] for k in pol._operands()}
        n_kv = int(next(iter(ops.values())).shape[0])
        out[layer] = (np.asarray(pol._score(pol.group_query(queries[layer], n_kv), ops)), p)
    return out


def _fine_scores(pol, queries) -> dict:
    """Fine-cluster scores per selecting layer (to tell near-ties from disagreements)."""
    return {layer: sc for layer, (sc, _) in _level_scores(pol, queries, "f").items()}


def _coarse_gaps(pol, queries) -> dict:
    """Two-level layers: per KV head, the plaintext gap between the k1-th and (k1+1)-th
    best COARSE cluster score, relative to that head's coarse score range (the fine
    margins of :func:`tie_margin` cannot explain a difference made at the coarse level)."""
    return {layer: [_kth_gap_rel(sc[h], int(p["k1"])) for h in range(sc.shape[0])]
            for layer, (sc, p) in _level_scores(pol, queries, "c").items()}


def _kth_gap_rel(s: np.ndarray, k: int) -> float:
    """The gap between the k-th and (k+1)-th largest of ``s``, relative to its range."""
    if k >= s.size:
        return 0.0
    srt = np.sort(s)[::-1]
    return float(srt[k - 1] - srt[k]) / (float(srt[0] - srt[-1]) or 1.0)


def tie_margin(scores: np.ndarray, mpc: np.ndarray, plain: np.ndarray) -> dict:
    """How far the MPC choice is from the plaintext one, in plaintext scores (per KV head):
    the score sum lost by MPC's set, and the plaintext gap between the k-th and (k+1)-th
    best cluster, both relative to the score range of that head.  Sets that differ only
    where the gap is ~0 are fixed-point near-ties, not disagreements."""
    lost, gap = [], []
    for h in range(scores.shape[0]):
        s = scores[h]
        rng = float(s.max() - s.min()) or 1.0
        lost.append(float(s[plain[h]].sum() - s[mpc[h]].sum()) / rng)
        gap.append(_kth_gap_rel(s, plain.shape[-1]))
    return {"lost_rel": lost, "kth_gap_rel": gap}


def _row(res, i, case, ref, out, model, protocol, wall, given=None):
    """One JSON row of case ``i``.  ``given``: the reference replayed with the MPC queries
    (computed here when ``ref`` can replay and ``out`` has queries)."""
    p = f"c{i}/decode"
    sc = _scope_row(res, p)
    bd, detail = _breakdown(res, p)
    row = {"model": model, "context": case["n"], "protocol": protocol,
           "policy": case["policy"], "budget": case["budget"], "policy_kw": case["kw"],
           "static_eviction": None if case["policy"] == "full" else case["static"],
           "cached_rows_after_static": max(case["lens"]),
           "rows_read_per_step": ref["rows_read"] or case["n"] + 1,
           **sc,
           "modelled_seconds": modelled_seconds(sc["seconds"], sc["rounds"],
                                                sc["bytes_per_party"]),
           "breakdown": bd, "selection_detail": detail,
           "token_matches_plaintext": None, "wall_seconds_session": wall}
    if out is not None:
        row["tokens"] = out["tokens"]
        row["plaintext_tokens"] = ref["tokens"]
        row["token_matches_plaintext"] = out["tokens"] == ref["tokens"]
        if out["selections"]:
            same = all(_same_sel(a, b) for a, b in zip(out["selections"], ref["selections"]))
            row["clusters_match_plaintext"] = same
        if given is None and out.get("queries") and "replay" in ref:
            given = ref["replay"](out["queries"], out["tokens"])   # audit (agree_policy.py)
        if given is not None:
            row["clusters_match_given_mpc_query"] = [
                _same_sel(a, b) for a, b in zip(out["selections"], given["selections"])]
            row["plaintext_tokens_given_mpc_query"] = given["tokens"]
    row["persist_cache"] = bool(case.get("persist_cache", True))
    for extra in ("static_eviction", "cluster_bounds", "share_state", "persist_cache"):
        path = f"c{i}/{extra}"
        if any(path in s["scopes"] for s in res.stats):
            row[f"{extra}_cost"] = _scope_row(res, path)
    for j in range(1, case["steps"]):
        later = _scope_row(res, f"c{i}/decode{j}")
        later["breakdown"], later["selection_detail"] = _breakdown(res, f"c{i}/decode{j}")
        row.setdefault("later_steps", []).append(later)
    return row


def _breakdown(res, path):
    """(breakdown, selection detail) of one measured step, as the JSON rows carry them."""
    from ...nn.mpc_policies import split_breakdown
    bd = split_breakdown(res, path)
    detail = bd.pop("_selection_detail", {})
    return ({k: {"seconds": v["seconds"], "bytes_per_party": v["bytes_sent"],
                 "rounds": v["rounds"]} for k, v in bd.items()},
            {k: {"seconds": v["seconds"], "bytes_per_party": v["bytes_sent"],
                 "rounds": v["rounds"], "calls": v["calls"]} for k, v in detail.items()})


def _same_sel(a, b):
    if set(a) != set(b):
        return False
    return all(a[k] is not None and np.array_equal(np.sort(a[k], -1), np.sort(b[k], -1))
               for k in a)


def bench_decode(model: str, contexts, protocols=("rep3",), policy: str = "full",
                 budget: float | None = None, json_path: str | None = None, echo=print,
                 policies=None, static: str = "plaintext", steps: int = 1,
                 policy_kw=None, reveal_selection: bool = False,
                 persist_cache: bool = True) -> list:
    """One private decoding step per (context, policy, protocol).  ``policy`` (or the list
    ``policies``, each a name or ``(label, name, kw)``) at ``budget``; all cases of one
    protocol run in ONE session (weights shared once).  Rows also go to ``json_path``
    after every protocol (so a long sweep leaves partial results).  ``persist_cache``:
    persist the shared cache prefix before the measured steps (see the module docstring).
    ``reveal_selection``: audit -- also reveal the chosen clusters and each selecting
    layer's query, and replay the plaintext policy with those queries (rows get
    ``clusters_match_given_mpc_query`` and ``plaintext_tokens_given_mpc_query``)."""
    specs = []
    for p in (policies or [policy]):
        if isinstance(p, (tuple, list)):
            specs.append(tuple(p))
        else:
            specs.append((p, p, dict(policy_kw or {})))
    dec, prescales, tokens = _model(model, max(contexts))
    cases, refs = [], []
    for n in contexts:
        ids = tokens(n + 1)
        from ...nn.policies import PrefillRecorder, make_policy
        pols = [make_policy(nm, budget, **{k: v for k, v in kw.items() if k not in MPC_KNOBS})
                for _, nm, kw in specs if nm != "full"]
        rec = PrefillRecorder(pols)
        dec.prefill(np.asarray(ids[:n]), policy=rec)
        recorder = (rec, dec.cache)
        for label, nm, kw in specs:
            c, r = make_case(dec, ids, n, nm, None if nm == "full" else budget, static, steps,
                             kw, recorder, replay=reveal_selection)
            c["label"] = label
            c["persist_cache"] = persist_cache
            cases.append(c)
            refs.append(r)
        dec.cache = None
        del rec, recorder
        gc.collect()
    rows = []
    for protocol in protocols:
        t0 = time.perf_counter()
        res = Session(protocol, timeout=3600).run(
            policy_cases_job, dec.config, dec.weights, prescales, cases,
            reveal_selection=reveal_selection)
        wall = time.perf_counter() - t0
        outs = res.output
        for i, case in enumerate(cases):
            row = _row(res, i, case, refs[i], outs[i], model, protocol, wall)
            row["label"] = case["label"]
            row["peak_rss_mb_all_parties"] = (
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss +
                resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
            rows.append(row)
            echo(f"{model} ctx {case['n']:5d} {protocol} {case['label']:>10s}: "
                 f"{row['seconds']:.2f} s, {row['bytes_per_party'] / 1e6:.2f} MB/party, "
                 f"{row['rounds']} rounds, token ok: {row['token_matches_plaintext']}"
                 + (f", clusters ok: {row['clusters_match_plaintext']}"
                    if "clusters_match_plaintext" in row else ""))
        write_rows(rows, json_path, default=_jsonable)
    return rows


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)

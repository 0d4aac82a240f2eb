"""Eviction policies on secret caches (issue 7): MPCache under MPC picks the same clusters
and gives the same greedy tokens as plaintext MPCache; selection/gather cost scopes; the
number of scoring matmuls, top-ks and gathers per decode step."""
import numpy as np
import pytest

import mpcache
from mpcache.apps.bench.decode import make_case, policy_cases_job, tie_margin
from mpcache.nn.mpc_policies import split_breakdown
from mpcache.nn.policies import PRESETS, MPCache
from mpcache.nn.private import calibrate_prescales
from mpcache.nn.transformer import Decoder, DecoderConfig, random_weights

pytest.importorskip("mpcache.functions.compare", reason="comparison protocols not built yet")

N = 384            # prompt tokens; static eviction keeps half
STEPS = 3


def tiny(n_layers=4):
    cfg = DecoderConfig(vocab_size=61, hidden_size=32, n_layers=n_layers, n_heads=4,
                        n_kv_heads=2, mlp_hidden=48, arch="llama", rope_theta=1000.0,
                        max_positions=512)
    return Decoder(cfg, random_weights(cfg, seed=0, std=0.3))


def model_of(hidden: int, layers: int, heads: int, ids_seed: int):
    """A random llama-style decoder (2 KV heads) with its prompt ids and prescales, for the
    tests whose head dim must make the lazy selection pay."""
    cfg = DecoderConfig(vocab_size=61, hidden_size=hidden, n_layers=layers, n_heads=heads,
                        n_kv_heads=2, mlp_hidden=48, arch="llama", rope_theta=1000.0,
                        max_positions=512)
    dec = Decoder(cfg, random_weights(cfg, seed=0, std=0.3))
    ids = np.random.default_rng(ids_seed).integers(0, cfg.vocab_size, N + 1)
    return dec, ids, calibrate_prescales(dec, np.arange(64) % cfg.vocab_size)


@pytest.fixture(scope="module")
def model():
    dec = tiny()
    rng = np.random.default_rng(1)
    ids = rng.integers(0, dec.config.vocab_size, N + 1)
    return dec, ids, calibrate_prescales(dec, np.arange(64) % dec.config.vocab_size)


PAPER = {"preset": "paper"}


def _run(model, protocol, kw, static="secret", steps=STEPS, replay=False):
    """One MPCache case with the paper's knobs (plus ``kw``) on secrets."""
    dec, ids, pres = model
    case, ref = make_case(dec, ids, N, "mpcache", 0.125, static=static, steps=steps,
                          kw={**PAPER, **kw}, replay=replay)
    res = mpcache.Session(protocol, timeout=300, seed=0).run(
        policy_cases_job, dec.config, dec.weights, pres, [case], reveal_selection=True)
    return case, ref, res


def test_plan_is_two_level():
    p = MPCache(0.125, **PRESETS["paper"])
    p.B = 48
    plan = p.plan(N // 2 + 1)
    assert plan["two"] and plan["k"] == 1


def test_mpc_mpcache_same_clusters_and_tokens(model, protocol):
    """Secret static eviction (top-k one-hot + gather) at prefill, then STEPS private decode
    steps with the two-level linearised selection and cross-layer sharing."""
    case, ref, res = _run(model, protocol, {})
    out = res.output[0]
    assert out["tokens"] == ref["tokens"]
    assert len(out["selections"]) == STEPS
    for got, want in zip(out["selections"], ref["selections"]):
        assert sorted(got) == sorted(want) == [0, 1, 2]      # leaders: 0, 1, then (2, 3)
        for layer in want:
            np.testing.assert_array_equal(np.sort(got[layer], -1), np.sort(want[layer], -1))
    # the plaintext reference keeps every selecting layer's fine-cluster scores, and its
    # choice is the top-k of them (what tie_margin measures MPC's choice against)
    for sc, want in zip(ref["scores"], ref["selections"]):
        assert sorted(sc) == sorted(want)
        for layer, s in sc.items():
            m = tie_margin(s, want[layer], want[layer])
            assert m["lost_rel"] == [0.0] * s.shape[0]
            assert all(g >= 0 for g in m["kth_gap_rel"])
    # two levels: it also keeps each selecting layer's coarse margin (k1-th vs next)
    assert len(ref["coarse_gaps"]) == STEPS
    for cg, want in zip(ref["coarse_gaps"], ref["selections"]):
        assert sorted(cg) == sorted(want)
        assert all(0.0 <= g <= 1.0 for gaps in cg.values() for g in gaps)
    # the two-level choice is one fine one-hot (the coarse stage masks the fine scores,
    # locally): the gather moves only the kept clusters (rep3: output size), no bounds
    g = split_breakdown(res, "c0/decode")["gather"]
    if protocol == "rep3":
        assert g["bytes_sent"] == 8 * (2 * 4 * 2 * 16 * 8)
    # static eviction ran on secrets, in its own scope, with its gather inside
    assert res.scope("c0/static_eviction")["bytes_sent"] > 0
    assert res.scope("c0/static_eviction/topk")["calls"] == 3     # one per layer group


def test_mpc_per_query_head_defaults_same_rows_as_plaintext(model, protocol):
    """The default MPCache (one choice per QUERY head, dense layers 0-1, coarse stage
    keeping half, cover edges) and Quest's reference layout (per query head, exact bound):
    the secret path chooses the same clusters for every query head and gives the same
    tokens as plaintext.  Also the exact cluster max (``bound='token_max'``) and the
    dilated ranking (``dilate=1``: a max over each cluster and its predecessor), the
    unchosen clusters attended through weighted means (``rest='mean'``), and the exact
    cluster max with the weighted means together (``preset='accurate'``)."""
    dec, ids, pres = model
    cases, refs = [], []
    for name, kw in (("mpcache", {}), ("quest", {}), ("mpcache", {"bound": "token_max"}),
                     ("mpcache", {"dilate": 1}), ("mpcache", {"rest": "mean"}),
                     ("mpcache", {"preset": "accurate"})):
        c, r = make_case(dec, ids, N, name, 0.125, static="plaintext", steps=2, kw=kw)
        cases.append(c)
        refs.append(r)
    res = mpcache.Session(protocol, timeout=300, seed=0).run(
        policy_cases_job, dec.config, dec.weights, pres, cases, reveal_selection=True)
    same = 0
    for i, ref in enumerate(refs):
        out = res.output[i]
        assert out["tokens"] == ref["tokens"]
        assert len(out["selections"]) == 2
        gaps = ref["coarse_gaps"] or [{}] * 2
        for got, want, sc, cg in zip(out["selections"], ref["selections"], ref["scores"],
                                     gaps):
            assert sorted(got) == sorted(want) == [2, 3]          # layers 0-1 are dense
            for layer in want:
                assert np.asarray(want[layer]).shape[0] == 4      # one row per query head
                fine = tie_margin(sc[layer], want[layer], want[layer])["kth_gap_rel"]
                for h in range(4):
                    if np.array_equal(np.sort(got[layer][h]), np.sort(want[layer][h])):
                        same += 1
                        continue
                    # only a plaintext near-tie (fixed point rounds it) may differ
                    near = min(fine[h], cg.get(layer, [1.0] * 4)[h])
                    assert near < 1e-3, (i, layer, h, near)
    assert same >= 90                                  # of 6 cases x 2 steps x 2 layers x 4


def test_query_replay_audit(model):
    """bench agree-policy's audit: the MPC run reveals each selecting layer's query per
    step; the plaintext reference replayed with given queries at the selection reproduces
    itself with its own queries, follows the queries it is given (negated ones change the
    choice), and with MPC's queries chooses what MPC chose."""
    from mpcache.apps.bench.agree_policy import _mismatches, _query_err
    case, ref, res = _run(model, "rep3", {}, replay=True)
    out = res.output[0]
    assert [sorted(q) for q in out["queries"]] == [[0, 1, 2]] * STEPS       # the leaders
    assert 0 < max(_query_err(a, b) for a, b in zip(out["queries"], ref["queries"])) < 0.05
    same = ref["replay"](ref["queries"], ref["tokens"])
    assert same["tokens"] == ref["tokens"]
    for a, b in zip(same["selections"], ref["selections"]):
        assert all(np.array_equal(a[L], b[L]) for L in b)
    neg = ref["replay"]([{L: -q for L, q in qs.items()} for qs in ref["queries"]],
                        ref["tokens"])
    assert any(not np.array_equal(np.sort(a[L], -1), np.sort(b[L], -1))
               for a, b in zip(neg["selections"], ref["selections"]) for L in b)
    given = ref["replay"](out["queries"], out["tokens"])
    for a, b in zip(given["selections"], out["selections"]):
        assert all(np.array_equal(np.sort(a[L], -1), np.sort(b[L], -1)) for L in b)
    # bench decode --reveal-selection rows carry the same audit
    from mpcache.apps.bench.decode import _row
    case["label"] = "mpcache"
    row = _row(res, 0, case, ref, out, "tiny", "rep3", 0.0)
    assert row["clusters_match_given_mpc_query"] == [True] * STEPS
    # the step's work: every party's CPU (and the side core's) in the measured step
    assert row["work_cpu_seconds"] >= sum(p["cpu_seconds"] for p in row["per_party"]) > 0
    assert row["persist_cache_cost"]["work_cpu_seconds"] is None     # no CPU clock there
    assert row["plaintext_tokens_given_mpc_query"] == out["tokens"]
    # a difference is reported with its margins and whether the MPC query explains it
    fake = dict(out, selections=neg["selections"])
    rows = _mismatches(fake, ref, given)
    assert rows and all(not r["same_given_mpc_query"] and r["query_rel_err"] < 0.05 and
                        len(r["kth_gap_rel"]) == 2 for r in rows)


def test_selection_costs_one_level(model):
    """levels=1: per decode step one q.bracket matmul and one top-k per layer group
    (3 groups: layer 0, layer 1, layers 2+3), and each layer gathers K and V with its
    group's one-hot (one matmul each); selection and gather are their own scopes."""
    calls = {"score": 0}
    orig = MPCache._score

    def counting(self, qg, ops):
        if not isinstance(qg, np.ndarray) and qg.party.id == 0:
            calls["score"] += 1
        return orig(self, qg, ops)
    MPCache._score = counting
    try:
        case, ref, res = _run(model, "rep3", {"levels": 1}, static="plaintext", steps=1)
    finally:
        MPCache._score = orig
    assert res.output[0]["tokens"] == ref["tokens"]
    groups, layers = 3, 4
    assert calls["score"] == groups
    assert res.scope("c0/decode/selection/topk")["calls"] == groups
    # (gathered when attention reads the rows: too few words per head for column selection)
    assert res.scope("c0/decode/attn_scores/gather")["calls"] == layers
    assert res.scope("c0/decode/attn_context/gather")["calls"] == layers
    bd = split_breakdown(res, "c0/decode")
    assert bd["selection"]["bytes_sent"] > 0 and bd["gather"]["bytes_sent"] > 0
    # rep3 gather = output size: 8 bytes x (rows gathered) x head_dim per K and V, per layer
    k = 1 * 16
    assert bd["gather"]["bytes_sent"] == 8 * 2 * layers * 2 * k * 8


def test_lazy_columns_same_tokens_fewer_bytes(protocol):
    """A model where selecting score columns moves fewer words than gathering the chosen
    clusters (one query head per KV head, head dim 32: r P < k c d, nn/selected_rows.py):
    same tokens and clusters as plaintext, and fewer bytes than ``mpc_lazy=false``."""
    dec, ids, pres = model_of(hidden=64, layers=2, heads=2, ids_seed=2)
    cfg = dec.config
    cases, refs = [], []
    for kw in (PAPER, {**PAPER, "mpc_lazy": False}):
        c, r = make_case(dec, ids, N, "mpcache", 0.125, steps=2, kw=kw)
        cases.append(c)
        refs.append(r)
    res = mpcache.Session(protocol, timeout=300, seed=0).run(
        policy_cases_job, dec.config, dec.weights, pres, cases, reveal_selection=True)
    for i, ref in enumerate(refs):
        assert res.output[i]["tokens"] == ref["tokens"]
        for got, want in zip(res.output[i]["selections"], ref["selections"]):
            for layer in want:
                np.testing.assert_array_equal(np.sort(got[layer], -1), np.sort(want[layer], -1))
    lazy, rows = (split_breakdown(res, f"c{i}/decode") for i in (0, 1))
    assert res.scope("c0/decode/attn_scores/gather")["calls"] == 2       # one per layer
    if protocol == "rep3":      # add2 gathers from the persisted cache: the cost moves into
        assert lazy["gather"]["bytes_sent"] < rows["gather"]["bytes_sent"]   # attention
    assert res.scope("c0/decode")["bytes_sent"] < res.scope("c1/decode")["bytes_sent"]


def test_baselines_run_on_secrets(model):
    """H2O, SnapKV, token top-k and StreamingLLM on the same secret path (add2): same greedy
    token as plaintext; StreamingLLM's selection is public (no selection bytes)."""
    dec, ids, pres = model
    cases, refs = [], []
    for name in ("h2o", "snapkv", "topk", "streaming"):
        c, r = make_case(dec, ids, N, name, 0.125, static="plaintext", steps=2)
        cases.append(c)
        refs.append(r)
    res = mpcache.Session("add2", timeout=300, seed=0).run(
        policy_cases_job, dec.config, dec.weights, pres, cases)
    for i, (c, r) in enumerate(zip(cases, refs)):
        assert res.output[i]["tokens"] == r["tokens"], c["policy"]
    stream = res.scope("c3/decode/selection")
    assert stream["bytes_sent"] == 0
    assert res.scope("c2/decode/selection/topk")["calls"] == 4


def test_report_table_and_plot(tmp_path):
    from mpcache.apps.bench.report import plot, table
    rows = []
    for n, (fs, ms) in {512: (2.0, 1.0), 1024: (4.0, 1.5)}.items():
        for pol, s in (("full", fs), ("mpcache", ms)):
            rows.append({"model": "m", "protocol": "rep3", "context": n, "policy": pol,
                         "label": pol, "seconds": s, "bytes_per_party": int(s * 1e6),
                         "rounds": 100, "modelled_seconds": {"lan": s, "wan": s + 5},
                         "breakdown": {"selection": {"seconds": 0.1, "bytes_per_party": 10,
                                                     "rounds": 3}},
                         "token_matches_plaintext": True})
    md = table(rows)
    assert "| m | rep3 | 1024 | mpcache |" in md and "2.67x" in md
    from mpcache.apps.bench.report import ratio_table
    for r in rows:                                  # core-seconds of the step, all parties
        r["work_cpu_seconds"] = 3 * r["seconds"]
    rows[-1]["work_cpu_seconds"] = 2.0              # 1024 mpcache: 12.0 / 2.0
    rt = ratio_table(rows)
    assert "| m | rep3 | 1024 | 4.00 | 1.50 | 2.67x |" in rt and rt.endswith("| 6.00x |\n")
    assert "| 2.00x |\n" in rt
    plot(rows, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_report_split_table():
    """The attention / rest split adds up to the step, and the rest needed for a target
    ratio solves (C + F) / (C + M) = target."""
    from mpcache.apps.bench.report import attention_split, rest_for_ratio, split_table
    bd = lambda att: {"softmax": {"seconds": att * 0.75}, "attn_scores": {"seconds": att / 4},  # noqa: E731
                      "norm": {"seconds": 0.3}}
    rows = [{"model": "m", "protocol": "add2", "context": 2048, "policy": p, "label": p,
             "seconds": s, "breakdown": bd(a)}
            for p, s, a in (("full", 1.4, 0.95), ("mpcache", 0.76, 0.30))]
    rows[1]["breakdown"]["selection"] = {"seconds": 0.0}
    assert attention_split(rows[0]) == pytest.approx((0.95, 0.45))
    need = rest_for_ratio(0.95, 0.30, 2.01)
    assert (need + 0.95) / (need + 0.30) == pytest.approx(2.01)
    assert rest_for_ratio(0.5, 0.3, 2.01) is None           # attention alone falls short
    md = split_table(rows)
    assert "| m | add2 | 2048 | 0.950 / 0.450 | 0.300 / 0.460 | 1.84x | 3.17x | 0.344 | 25% |" in md
    rows[0]["seconds"], rows[0]["breakdown"] = 0.9, bd(0.5)
    assert "| unreachable | n/a |" in split_table(rows)


def test_tie_margin():
    s = np.array([[5.0, 4.0, 3.9, 0.0]])
    m = tie_margin(s, np.array([[0, 2]]), np.array([[0, 1]]))
    np.testing.assert_allclose(m["lost_rel"], [0.1 / 5.0])
    np.testing.assert_allclose(m["kth_gap_rel"], [0.1 / 5.0])


def test_report_best_of_steps():
    from mpcache.apps.bench.report import best_of_steps
    r = {"seconds": 3.0, "rounds": 100, "bytes_per_party": 10**6,
         "later_steps": [{"seconds": 2.0}, {"seconds": 2.5}]}
    b = best_of_steps(r)
    assert (b["seconds"], b["seconds_first_step"], b["steps_timed"]) == (2.0, 3.0, 3)
    assert b["modelled_seconds"]["lan"] > 2.0 and best_of_steps(b) is b
    assert best_of_steps({"seconds": 1.0}) == {"seconds": 1.0}
    # the fastest step's breakdown replaces the first step's (shares of time add up)
    bd0, bd1 = {"softmax": {"seconds": 2.5}}, {"softmax": {"seconds": 1.5}}
    r = dict(r, breakdown=bd0, later_steps=[{"seconds": 2.0, "breakdown": bd1}])
    assert best_of_steps(r)["breakdown"] is bd1
    r["later_steps"] = [{"seconds": 4.0, "breakdown": bd1}]
    assert best_of_steps(r)["breakdown"] is bd0 and best_of_steps(r)["seconds"] == 3.0
    # ... and so does its per-party CPU / wait split
    pp0, pp1 = [{"party": 0, "cpu_seconds": 2.0}], [{"party": 0, "cpu_seconds": 1.0}]
    r = dict(r, per_party=pp0, work_cpu_seconds=5.0,
             later_steps=[{"seconds": 2.0, "per_party": pp1, "work_cpu_seconds": 3.0}])
    b = best_of_steps(r)
    assert b["per_party"] is pp1 and b["work_cpu_seconds"] == 3.0


def test_measured_steps_pause_the_cyclic_collector_and_restore_it():
    """bench decode times a step with the cyclic GC off (as timeit), nested across the
    three party threads, and leaves the collector as it found it."""
    import gc

    from mpcache.apps.bench.decode import _gc_paused
    was = gc.isenabled()
    try:
        gc.enable()
        with _gc_paused():
            assert not gc.isenabled()
            with _gc_paused():
                pass
            assert not gc.isenabled()          # another party is still inside its step
        assert gc.isenabled()
        gc.disable()
        with _gc_paused():
            pass
        assert not gc.isenabled()              # was off before: stays off
    finally:
        (gc.enable if was else gc.disable)()


def test_case_clean_up_waits_for_parties_still_in_their_last_step():
    """A party that finished its last measured step waits for the others before freeing
    its shares and collecting (which would hold the interpreter lock inside their step)."""
    import threading
    import time

    from mpcache.apps.bench.decode import _gc_paused, _steps_done
    inside, leave = threading.Event(), threading.Event()
    left = []

    def other_party():
        with _gc_paused():
            inside.set()
            leave.wait(10)
            time.sleep(0.05)
            left.append(time.perf_counter())

    t = threading.Thread(target=other_party)
    t.start()
    assert inside.wait(10)
    leave.set()
    _steps_done()
    done = time.perf_counter()
    t.join(10)
    assert left and done >= left[0]
    _steps_done()                      # nobody inside: returns at once


def test_add2_factored_choice_same_rows_fewer_bytes(protocol):
    """The defaults on a model with head dim 16 (the lazy selection pays): under add2 the
    fine choice's one-hot comes factored (functions/factored.py) -- the same clusters and
    tokens as plaintext, fewer gather bytes than the dense one-hot (``mpc_factor=0``) for
    two more rounds per selecting layer; rep3 keeps the dense one-hot (same cost both)."""
    dec, ids, pres = model_of(hidden=64, layers=4, heads=4, ids_seed=2)
    cfg = dec.config
    cases, refs = [], []
    for kw in ({}, {"mpc_factor": 0}):
        c, r = make_case(dec, ids, N, "mpcache", 0.125, static="plaintext", steps=2, kw=kw)
        cases.append(c)
        refs.append(r)
    res = mpcache.Session(protocol, timeout=300, seed=0).run(
        policy_cases_job, cfg, dec.weights, pres, cases, reveal_selection=True)
    same = 0
    for i, ref in enumerate(refs):
        out = res.output[i]
        assert out["tokens"] == ref["tokens"]
        for got, want, sc in zip(out["selections"], ref["selections"], ref["scores"]):
            for layer in want:
                fine = tie_margin(sc[layer], want[layer], want[layer])["kth_gap_rel"]
                for h in range(4):
                    if np.array_equal(np.sort(got[layer][h]), np.sort(want[layer][h])):
                        same += 1
                        continue
                    # a plaintext near-tie only (this model's fixed-point score error is
                    # ~1e-3 relative at head dim 16)
                    assert fine[h] < 5e-3, (i, layer, h, fine[h])
    assert same >= 26                                  # of 2 cases x 2 steps x 2 layers x 4
    fac, dense = (split_breakdown(res, f"c{i}/decode")["gather"] for i in (0, 1))
    if protocol == "add2":
        assert fac["bytes_sent"] < 0.8 * dense["bytes_sent"]
        assert fac["rounds"] == dense["rounds"] + 2 * 2          # 2 selecting layers
    else:
        assert (fac["bytes_sent"], fac["rounds"]) == (dense["bytes_sent"], dense["rounds"])


def test_baselines_select_lazily_and_factored(protocol):
    """H2O, SnapKV and token top-k (per KV head and per query head) on a model with head
    dim 32, where selecting score columns pays: the chosen rows reach attention as a
    SelectedRows with one-row clusters, factored under add2 -- the same tokens as
    plaintext, and under add2 far fewer bytes than the dense one-hot (``mpc_factor=0``)
    or the gathered rows (``mpc_lazy=0``)."""
    dec, ids, pres = model_of(hidden=128, layers=2, heads=4, ids_seed=1)
    cfg = dec.config
    specs = [("h2o", {}), ("snapkv", {}), ("topk", {}), ("topk", {"per_head": "query"}),
             ("topk", {"mpc_factor": 0}), ("topk", {"mpc_lazy": 0})]
    cases, refs = [], []
    for name, kw in specs:
        c, r = make_case(dec, ids, N, name, 0.125, static="plaintext", steps=2, kw=kw)
        cases.append(c)
        refs.append(r)
    res = mpcache.Session(protocol, timeout=300, seed=0).run(
        policy_cases_job, cfg, dec.weights, pres, cases)
    for i, ((name, kw), ref) in enumerate(zip(specs, refs)):
        assert res.output[i]["tokens"] == ref["tokens"], (name, kw)
    gather = [split_breakdown(res, f"c{i}/decode")["gather"]["bytes_sent"]
              for i in range(len(specs))]
    assert res.scope("c2/decode/attn_scores/gather")["calls"] == 2     # lazy, each layer
    if protocol == "add2":
        assert gather[2] < 0.5 * gather[4] and gather[4] < 0.6 * gather[5]
    else:                                         # rep3: never factored
        assert gather[2] == gather[4] < gather[5]


def test_case_end_waits_for_its_own_case_only():
    """bench decode's case end waits until no party is inside a measured step of THAT
    case: a party already in the next case's step (it needs this party's messages) must
    not hold it back -- that deadlocked until a 60 s timeout before."""
    import threading
    from mpcache.apps.bench.decode import _gc_paused, _steps_done
    inside, release = threading.Event(), threading.Event()

    def next_case_step():
        with _gc_paused(("s", 1)):
            inside.set()
            release.wait(30)

    t = threading.Thread(target=next_case_step)
    t.start()
    inside.wait(30)
    done = threading.Thread(target=_steps_done, args=(("s", 0), None))
    done.start()
    done.join(10)
    assert not done.is_alive()             # case 0 ended although case 1 is mid-step
    blocked = threading.Thread(target=_steps_done, args=(("s", 1), None))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()              # case 1 waits for its own step
    release.set()
    t.join(10)
    blocked.join(10)
    assert not blocked.is_alive()

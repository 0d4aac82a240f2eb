"""Exact byte and round counts, checked against mpc/costs.py at three shapes."""
import os

import numpy as np
import pytest

import mpcache
from mpcache.mpc.costs import cost
from mpcache.testing import assert_budget, run_op


def _assert(res, c, scope="op"):
    assert_budget(res, scope, bytes_per_party=c["bytes"], rounds=c["rounds"],
                  offline_bytes=c["offline"])


@pytest.mark.parametrize("n", [1, 17, 1000])
def test_rep3_mul_is_8_bytes_per_product_per_party_one_round(n):
    x = np.arange(n)
    _, res = run_op("rep3", lambda p, a, b: a * b, x, x + 1, integer=(0, 1))
    for s in res.stats:       # every party, not only the max
        assert s["scopes"]["op"]["bytes_sent"] == 8 * n
    _assert(res, cost("rep3", "mul_ring", n=n))
    assert res.scope("op")["rounds"] == 1


@pytest.mark.parametrize("m,k,q", [(1, 5, 3), (4, 7, 9), (16, 64, 32)])
def test_rep3_matmul_costs_output_size(m, k, q):
    a, b = np.ones((m, k), np.int64), np.ones((k, q), np.int64)
    _, res = run_op("rep3", lambda p, x, y: x @ y, a, b, integer=(0, 1))
    for s in res.stats:
        assert s["scopes"]["op"]["bytes_sent"] == 8 * m * q
    _assert(res, cost("rep3", "matmul_ring", m=m, k=k, q=q))


@pytest.mark.parametrize("protocol", ["rep3", "add2"])
@pytest.mark.parametrize("shape", [(3,), (4, 5), (2, 3, 7)])
def test_elementwise_costs(protocol, shape):
    n = int(np.prod(shape))
    x = np.full(shape, 1.5)
    for op, fn, integer in [("mul_ring", lambda p, a, b: a * b, (0, 1)),
                            ("mul_fixed", lambda p, a, b: a * b, ()),
                            ("trunc", lambda p, a, b: a * 0.5, ())]:
        _, res = run_op(protocol, fn, x.astype(np.int64) if integer else x,
                        x.astype(np.int64) if integer else x, integer=integer)
        _assert(res, cost(protocol, op, n=n))


@pytest.mark.parametrize("protocol", ["rep3", "add2"])
@pytest.mark.parametrize("m,k,q", [(1, 8, 8), (3, 5, 2), (8, 16, 4)])
def test_matmul_costs(protocol, m, k, q):
    a, b = np.ones((m, k)), np.ones((k, q))
    _, res = run_op(protocol, lambda p, x, y: x @ y, a, b)
    _assert(res, cost(protocol, "matmul_fixed", m=m, k=k, q=q))
    _, res = run_op(protocol, lambda p, x, y: x @ y, a.astype(int), b.astype(int), integer=(0, 1))
    _assert(res, cost(protocol, "matmul_ring", m=m, k=k, q=q))


@pytest.mark.parametrize("protocol", ["rep3", "add2"])
@pytest.mark.parametrize("shape", [(1,), (6, 2), (3, 4, 5)])
def test_share_and_reveal_costs(protocol, shape):
    n = int(np.prod(shape))
    x = np.ones(shape)

    def job(p):
        with p.scope("share"):
            t = p.share(x if p.id == 0 else None, owner=0)
        with p.scope("reveal"):
            return p.reveal(t)
    res = mpcache.Session(protocol).run(job)
    _assert(res, cost(protocol, "share", n=n, ndim=len(shape)), "share")
    _assert(res, cost(protocol, "reveal", n=n), "reveal")
    assert all(np.array_equal(o, x) for o in res.outputs)


def test_linear_ops_are_free(protocol):
    x = np.ones((4, 4))
    _, res = run_op(protocol, lambda p, a, b: ((a + b) * 3 - a.T + 2.0)[1:].sum(axis=0), x, x)
    assert_budget(res, bytes_per_party=0, rounds=0, offline_bytes=0)


def test_scope_breakdown_and_totals_agree(protocol):
    x = np.ones((8, 8))

    def job(p):
        a = p.share(x if p.id == 0 else None, 0)
        with p.scope("layer"):
            with p.scope("linear"):
                b = a @ a
            with p.scope("act"):
                c = b * b
        return p.reveal(c)
    res = mpcache.Session(protocol).run(job)
    bd = res.breakdown()
    layer = res.scope("layer")
    assert layer["bytes_sent"] == max(
        s["scopes"]["layer/linear"]["bytes_sent"] + s["scopes"]["layer/act"]["bytes_sent"]
        for s in res.stats)
    assert layer["rounds"] == bd["linear"]["rounds"] + bd["act"]["rounds"] == 4
    # totals = scoped traffic + the unscoped share and reveal (P0 is the owner)
    p0 = res.stats[0]
    unscoped = cost(protocol, "share", n=64, ndim=2)["bytes"] + cost(protocol, "reveal", n=64)[
        "bytes"]
    assert p0["total"]["bytes_sent"] == sum(
        v["bytes_sent"] for v in p0["scopes"].values()) + unscoped


def test_scope_seconds_come_from_online_parties(protocol):
    """add2's dealer waits ahead of the online parties: a scope's seconds are the max over
    P0 and P1 only (rep3: all three parties compute)."""
    import time

    def job(p):
        a = p.share(np.ones(4) if p.id == 0 else None, 0)
        with p.scope("wait"):
            if p.id == 2:
                time.sleep(0.2)
            b = a * a
        return p.reveal(b)
    res = mpcache.Session(protocol).run(job)
    from mpcache.accounting import scope_totals
    per = [scope_totals(s, "wait")["seconds"] for s in res.stats]
    want = (0, 1) if protocol == "add2" else (0, 1, 2)
    assert res.timed == want
    assert res.scope("wait")["seconds"] == max(per[i] for i in want)


def test_waits_and_cpu_say_where_wall_time_went(protocol):
    """A party that sleeps before its first message shows up as the others' wait in the
    scope where they waited; CPU time is measured only in scopes opened with cpu=True,
    and a sleeping party's CPU stays far below its wall time."""
    import time
    from mpcache.accounting import scope_totals
    sleeper = 0

    def job(p):
        a = p.share(np.ones(4) if p.id == 0 else None, 0)
        with p.scope("step", cpu=True):
            with p.scope("mul"):
                if p.id == sleeper:
                    time.sleep(0.3)
                b = a * a
        with p.scope("plain"):
            c = b * b
        return p.reveal(c)
    res = mpcache.Session(protocol, processes=()).run(job)
    for i in res.timed:
        step = scope_totals(res.stats[i], "step")
        assert step["wait_seconds"] == res.stats[i]["scopes"]["step/mul"]["wait_seconds"]
        assert 0.0 < step["cpu_seconds"] < 0.2 and step["seconds"] >= 0.29
        assert scope_totals(res.stats[i], "plain")["cpu_seconds"] == 0.0
        waited = step["wait_seconds"] + step["offline_wait_seconds"]
        if i != sleeper:       # the others' online messages came 0.3 s late
            assert step["wait_seconds"] >= 0.25, (i, step)
        else:
            assert waited < 0.2, step
        assert res.stats[i]["total"]["wait_seconds"] >= step["wait_seconds"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="a side core needs thread affinity and two cores")
def test_side_core_cpu_is_counted_in_the_callers_scope(protocol, monkeypatch):
    """Inside a latency-bound block a big product of an online party may run on the side
    core's worker: its CPU time lands in that party's innermost scope as
    ``side_cpu_seconds`` (exclusive, like waits), so a step's work is all accounted for."""
    from mpcache import kernels
    from mpcache.kernels import ring_matmul
    from mpcache.accounting import scope_totals
    monkeypatch.setattr(kernels, "SIDE_CORE_MACS", 1)
    rng = np.random.default_rng(2)
    a = rng.integers(0, 2**64, (96, 512), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (512, 384), dtype=np.uint64, endpoint=False)

    def job(p):
        with p.latency_bound(), p.scope("step", cpu=True), p.scope("mm"):
            ok = np.array_equal(ring_matmul(a, b), np.matmul(a, b))
        return ok
    res = mpcache.Session(protocol, processes=(), pin=True).run(job)
    assert all(res.outputs)
    side = [scope_totals(res.stats[i], "step")["side_cpu_seconds"] for i in res.timed]
    assert max(side) > 0.0, side                 # at least one product went to the worker
    for i in range(3):
        st = res.stats[i]
        assert st["scopes"]["step/mm"]["side_cpu_seconds"] == \
            scope_totals(st, "step")["side_cpu_seconds"] == st["total"]["side_cpu_seconds"]
        if i not in res.timed:                   # add2's dealer has no side core
            assert st["total"]["side_cpu_seconds"] == 0.0


@pytest.mark.parametrize("m,k,q", [(1, 8, 8), (3, 5, 2), (4, 16, 32)])
def test_persistent_weight_matmul(protocol, m, k, q):
    """x @ W with W persisted: same values; add2 opens only x - A per product."""
    rng = np.random.default_rng(m + k + q)
    x, w = rng.uniform(-2, 2, (m, k)), rng.uniform(-2, 2, (k, q))
    xi, wi = rng.integers(-9, 9, (m, k)), rng.integers(-9, 9, (k, q))

    def job(p):
        W = p.share(w if p.id == 1 else None, 1)
        Wi = p.share(wi if p.id == 1 else None, 1, integer=True)
        with p.scope("persist"):
            W.persist(), Wi.persist()
        X = p.share(x if p.id == 0 else None, 0)
        Xi = p.share(xi if p.id == 0 else None, 0, integer=True)
        with p.scope("op"):
            y = X @ W
        with p.scope("op_ring"):
            yi = Xi @ Wi
        with p.scope("op_twice"):
            y2 = X @ W
        return p.reveal(y, 0), p.reveal(yi, 0), p.reveal(y2, 0)
    res = mpcache.Session(protocol).run(job)
    y, yi, y2 = res.output
    assert np.max(np.abs(y - x @ w)) < 1e-4 and np.max(np.abs(y2 - x @ w)) < 1e-4
    assert np.array_equal(yi, xi @ wi)
    fixed, ring = res.scope("op"), res.scope("op_ring")
    if protocol == "add2":
        assert fixed["bytes_sent"] == 8 * (m * k + m * q) and fixed["rounds"] == 2
        assert ring["bytes_sent"] == 8 * m * k and ring["rounds"] == 1
        assert res.scope("persist")["bytes_sent"] == 8 * (k * q) * 2
    else:
        assert ring["bytes_sent"] == 8 * m * q and ring["rounds"] == 1
        assert fixed == {**fixed, "bytes_sent": 16 * m * q, "rounds": 2}

"""Branches (mpcache/branches.py): independent work in the same rounds.

Properties, both protocols: the branches' results equal the sequential program's (to
the truncations' rounding), their bytes and messages are exactly the sequential ones,
their rounds are the largest branch's, not the sum; nesting works; a failing branch
stops the call with its own error; the forked streams agree at both holders of a key.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import mpcache
from mpcache import branches
from mpcache.audit import assert_view_indistinguishable


def _chain(x, n):
    """n dependent fixed-point products (2 rounds each in both protocols)."""
    for _ in range(n):
        x = x * x + 0.5
    return x


def _run(protocol, a, b, parallel, seed=1):
    xs = np.linspace(-1, 1, 16)

    def job(p):
        x = p.share(xs if p.id == 0 else None, 0)
        p.reveal(p.share(np.zeros(1) if p.id == 0 else None, 0))     # align the clocks
        with p.scope("op"):
            if parallel:
                u, v = p.parallel(lambda: _chain(x, a), lambda: _chain(x - 0.5, b))
            else:
                u, v = _chain(x, a), _chain(x - 0.5, b)
        return p.reveal(u), p.reveal(v)

    res = mpcache.Session(protocol, seed=seed).run(job)
    return res.output, res.scope("op"), res


@settings(max_examples=6, deadline=None)
@given(a=st.integers(0, 4), b=st.integers(0, 4))
def test_branches_cost_the_longest_branch(protocol, a, b):
    (u, v), sc, _ = _run(protocol, a, b, parallel=True)
    (u0, v0), sc0, _ = _run(protocol, a, b, parallel=False)
    assert np.allclose(u, u0, rtol=1e-4, atol=1e-4) and np.allclose(v, v0, rtol=1e-4, atol=1e-4)
    # the same messages and bytes, in max(a, b) chains' rounds instead of a + b
    assert sc["bytes_sent"] == sc0["bytes_sent"]
    assert sc["messages_sent"] == sc0["messages_sent"]
    (_, _), one_a, _ = _run(protocol, a, 0, parallel=False)
    (_, _), one_b, _ = _run(protocol, 0, b, parallel=False)
    assert (sc0["rounds"], sc["rounds"]) == (2 * (a + b), 2 * max(a, b))
    assert (one_a["rounds"], one_b["rounds"]) == (2 * a, 2 * b)


def test_branches_sequential_switch(protocol):
    """branches.sequential(): the same program, one branch after the other."""
    (_, _), sc, _ = _run(protocol, 2, 3, parallel=True)
    with branches.sequential():
        (_, _), sq, _ = _run(protocol, 2, 3, parallel=True)
    (_, _), s0, _ = _run(protocol, 2, 3, parallel=False)
    assert sq["rounds"] == s0["rounds"] > sc["rounds"]
    assert branches.ENABLED


def test_nested_branches_and_tags(protocol):
    def job(p):
        x = p.share(np.arange(4.0) if p.id == 0 else None, 0)
        seen = []
        p.transport.observers.append(lambda d, peer, msg, path: seen.append(msg.tag))
        with p.scope("op"):
            a, (b, c) = p.parallel(
                lambda: x * x,
                lambda: p.parallel(lambda: x * x * x, lambda: (x + 1.0) * x))
        return p.reveal(a), p.reveal(b), p.reveal(c), sorted({branches.prefix_of(t)
                                                               for t in seen})

    res = mpcache.Session(protocol, seed=3).run(job)
    a, b, c, prefixes = res.output
    x = np.arange(4.0)
    assert np.allclose(a, x * x, atol=1e-4) and np.allclose(b, x ** 3, atol=1e-3)
    assert np.allclose(c, (x + 1) * x, atol=1e-4)
    assert prefixes == ["", "@0|", "@1.0|", "@1.1|"]    # @1 itself only forks
    assert res.scope("op")["rounds"] == 4        # x*x*x: two products; the others one


def test_a_failing_branch_raises_its_error(protocol):
    def job(p):
        x = p.share(np.ones(3) if p.id == 0 else None, 0)

        def bad():
            raise ValueError("branch broke")
        return p.parallel(lambda: x * x, bad)

    with pytest.raises(Exception, match="branch broke"):
        mpcache.Session(protocol, seed=2).run(job)


def test_forked_streams_agree_at_both_holders():
    """Each pairwise key's holders fork the same child streams (so the zero-sharings
    of a branch cancel), labelled after their parent."""
    def job(p):
        got = p.parallel(lambda: (p.prg_next.ring(4), p.prg_prev.ring(4),
                                  p.prg_next.label, p.prg_prev.label),
                         lambda: (p.prg_next.ring(4), p.prg_prev.ring(4),
                                  p.prg_next.label, p.prg_prev.label))
        return got

    out = mpcache.Session("rep3", seed=4).run(job).outputs
    for i in range(3):
        j = (i + 1) % 3
        for br in range(2):
            # P_i's next stream is P_{i+1}'s prev stream (key k_i), in each branch
            assert np.array_equal(out[i][br][0], out[j][br][1])
            assert out[i][br][2] == out[j][br][3] == f"k{i}/{br}"
        assert not np.array_equal(out[i][0][0], out[i][1][0])    # branches differ


def test_branch_views_pass_the_audit(protocol):
    """A branched program (exp: its clip beside its polynomial) leaks nothing to any
    non-owner, with its views put in canonical order (audit.collect_view)."""
    for observer in (1, 2):
        assert_view_indistinguishable(
            protocol, lambda p, x: x.exp(), np.full(512, -3.0), np.linspace(-20, 0, 512),
            observer=observer, owner=0, runs=2)


def test_twin_truncation_passes_the_audit(protocol):
    """matmul_twin opens the same product twice (truncations by f and f + k, each with a
    fresh mask; rep3's P2 sends its part once per opening, the same value): no observer
    that owns no input learns anything; both outputs are right."""
    rng = np.random.default_rng(7)
    xa, wa = rng.normal(size=(1, 32)), rng.normal(size=(32, 512)) / 8
    xb, wb = rng.normal(size=(1, 32)) * 3, rng.normal(size=(32, 512)) / 2

    def op(p, x, w):
        w.persist()
        return list(x.matmul_twin(w, 3))

    for observer in (0, 2):
        assert_view_indistinguishable(protocol, op, (xa, wa), (xb, wb), observer=observer,
                                      owner=1, runs=2)

    def job(p):
        x = p.share(xa if p.id == 1 else None, 1)
        w = p.share(wa if p.id == 1 else None, 1).persist()
        y, yk = x.matmul_twin(w, 3)
        return p.reveal(y), p.reveal(yk)

    y, yk = mpcache.Session(protocol, seed=8).run(job).output
    assert np.allclose(y, xa @ wa, atol=1e-4) and np.allclose(yk, xa @ wa / 8, atol=1e-4)


def test_demux_parks_a_read_ahead_message_before_the_next_reader(monkeypatch):
    """Regression: a branch reading the link on behalf of another must park what it read
    before a second reader may take the link, or the second reader gets the message sent
    AFTER it first (a ProtocolMismatch that appeared under load).  The reader's pause
    between reading and parking is widened on purpose here."""
    import threading
    import time

    from mpcache.net.local import LocalNetwork

    net = LocalNetwork()
    snd, rcv = net.transport(2), net.transport(1)
    branches._TL.branch = branches.Branch("1", snd._acct, {})
    try:
        snd.send(1, np.array([1]), "first")
        snd.send(1, np.array([2]), "second")
    finally:
        branches._TL.branch = None
    rcv.open_branches = 1
    slow = threading.Event()
    real = branches.prefix_of

    def prefix_of(tag):
        if threading.current_thread().name == "reader-0":
            slow.set()
            time.sleep(0.3)
        return real(tag)

    monkeypatch.setattr(branches, "prefix_of", prefix_of)
    got = {}

    def reader0():
        try:
            rcv._demux(2, "@0|", "@0|mine", rcv._acct)      # nothing of its own arrives
        except Exception as e:      # the test stops it by an abort below
            got["reader0"] = e

    def reader1():
        slow.wait(5)
        got["reader1"] = [rcv._demux(2, "@1|", "@1|first", rcv._acct).tag for _ in range(2)]

    t0 = threading.Thread(target=reader0, name="reader-0", daemon=True)
    t1 = threading.Thread(target=reader1, name="reader-1")
    t0.start(), t1.start()
    t1.join(10)
    net.fail(0, RuntimeError("test over"))
    t0.join(10)
    assert got["reader1"] == ["@1|first", "@1|second"]

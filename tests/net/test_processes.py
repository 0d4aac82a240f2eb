"""Parties in their own processes (Session.processes, mpcache/net/pipe.py): same values,
same bytes and rounds as threads; failures on either side end the run with the root cause."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mpcache
from mpcache.runtime import PartyFailed, Session

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _job(p, x, y):
    a = p.share(x if p.id == 0 else None, owner=0)
    b = p.share(y if p.id == 1 else None, owner=1)
    big = p.share(np.arange(40000, dtype=np.float64) / 4096 if p.id == 0 else None, owner=0)
    outs = [p.reveal(a * b), p.reveal(a @ b.T), p.reveal(a < b),
            p.reveal(mpcache.stack([big.sum()]))]
    return outs, p.id


def _counts(res):
    return [(s["total"]["bytes_sent"], s["total"]["offline_bytes_sent"],
             s["total"]["messages_sent"], s["total"]["rounds"]) for s in res.stats]


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), protocol=st.sampled_from(["rep3", "add2"]),
       procs=st.sampled_from([(2,), (0, 1, 2), (1,)]))
def test_processes_match_threads(seed, protocol, procs):
    """Any parties in processes: outputs at every party, and every byte, message and
    round counter, equal the all-threads run with the same seed (40 000-value shares and
    the dealer's large triples take the two-frame path)."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    ref = Session(protocol, seed=seed, processes=()).run(_job, x, y)
    got = Session(protocol, seed=seed, processes=procs).run(_job, x, y)
    for r, g in zip(ref.outputs, got.outputs):
        assert g[1] == r[1]
        for a, b in zip(r[0], g[0]):
            assert np.array_equal(a, b)
    assert _counts(got) == _counts(ref)
    assert got.stats[2]["scopes"].keys() == ref.stats[2]["scopes"].keys()


def test_add2_dealer_is_a_process_by_default(monkeypatch):
    assert Session("add2").process_parties() == (2,)
    assert Session("rep3").process_parties() == ()
    monkeypatch.setenv("MPCACHE_PROCESSES", "none")
    assert Session("add2").process_parties() == ()
    monkeypatch.setenv("MPCACHE_PROCESSES", "all")
    assert Session("rep3").process_parties() == (0, 1, 2)
    monkeypatch.setenv("MPCACHE_PROCESSES", "dealer")
    with pytest.raises(ValueError, match="MPCACHE_PROCESSES"):
        Session("add2").process_parties()
    with pytest.raises(ValueError, match="parties 0, 1, 2"):
        Session("add2", processes=(3,)).process_parties()

    def pid(p):
        return os.getpid()
    monkeypatch.delenv("MPCACHE_PROCESSES")
    pids = Session("add2").run(pid).outputs
    assert pids[0] == pids[1] == os.getpid() != pids[2]
    # a traced run keeps every party in this process (transcripts live here)
    assert Session("add2", trace=True).run(pid).outputs == [os.getpid()] * 3


def _fails_at(who, exc):
    def job(p):
        x = p.share(np.ones(3) if p.id == 0 else None, owner=0)
        if p.id == who:
            raise exc
        return p.reveal(x * x)
    return job


@pytest.mark.parametrize("who", [0, 2])
def test_a_failure_on_either_side_ends_the_run_with_its_cause(who):
    """The dealer (a process) failing: its own error is raised here, the online threads
    abort instead of waiting out the deadline.  An online thread failing: the link is
    shut, the dealer's process stops and is reaped."""
    with pytest.raises(KeyError, match=f"boom {who}"):
        Session("add2", timeout=20).run(_fails_at(who, KeyError(f"boom {who}")))


def test_a_dead_process_or_unsendable_output_is_a_clear_error():
    def dies(p):
        if p.id == 2:
            os._exit(3)                      # no result, no exception: just gone
        x = p.share(np.ones(2) if p.id == 0 else None, owner=0)
        return p.reveal(x * x)
    with pytest.raises(PartyFailed):
        Session("add2", timeout=20).run(dies)

    def lambda_out(p):
        return (lambda: 0) if p.id == 2 else p.id
    with pytest.raises(RuntimeError, match="cannot be sent back"):
        Session("add2").run(lambda_out)


@pytest.mark.parametrize("protocol", ["rep3", "add2"])
def test_exchanges_bigger_than_the_socket_buffer(protocol):
    """Every party in its own process and a product whose opening (add2) or re-sharing
    (rep3) is 16 MB per message, both ways at once: sends are queued to a writer thread,
    so neither party waits for the other to read (a blocking send here deadlocked)."""
    n = 1 << 21

    def job(p):
        x = p.share(np.linspace(-1, 1, n) if p.id == 0 else None, owner=0)
        return p.reveal((x * x).sum())
    got = Session(protocol, seed=3, processes=(0, 1, 2), timeout=60).run(job)
    ref = Session(protocol, seed=3, processes=(), timeout=60).run(job)
    assert np.array_equal(got.output, ref.output)
    assert abs(float(got.output) - float((np.linspace(-1, 1, n) ** 2).sum())) < 1.0
    assert _counts(got) == _counts(ref)

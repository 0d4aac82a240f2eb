"""Transcripts (mpcache/trace.py): metadata only by default, totals equal the accounting
counters exactly, JSON(-lines) round trip, MPCACHE_TRACE, and `mpcache trace show`."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import mpcache
from mpcache import trace as T


def _job(p):
    x = p.share(np.linspace(-3, 3, 12).reshape(3, 4) if p.id == 0 else None, 0)
    w = p.share(np.ones((4, 2)) if p.id == 1 else None, 1)
    with p.scope("layer"):
        with p.scope("linear"):
            y = x @ w
        with p.scope("act"):
            z = y * y
        z = z * 0.5
    with p.scope("layer"):            # a second call of the same scope
        z = z * z
    return p.reveal(z, to=0)


def test_totals_equal_accounting_exactly(protocol):
    res = mpcache.Session(protocol, trace=True).run(_job)
    assert len(res.transcripts) == 3
    for t, st in zip(res.transcripts, res.stats):
        assert t.check(st) == []
        tot = t.totals()
        for k in T.COUNTER_KEYS:
            assert tot[k] == st["total"][k], k
        for path, c in st["scopes"].items():
            assert t.scope_counters(path) == {k: c[k] for k in T.COUNTER_KEYS}, path
    # what the accounting reports for the session equals what the events say
    assert res.bytes_per_party == max(t.totals()["bytes_sent"] for t in res.transcripts)
    assert res.rounds == max(t.rounds for t in res.transcripts)


def test_no_values_unless_asked(protocol):
    res = mpcache.Session(protocol, trace=True).run(_job)
    assert all(e.values is None for t in res.transcripts for e in t.events)
    recs = list(T.traces_of(res).records())
    assert not any("values" in r for r in recs if r["type"] == "event")
    with pytest.warns(T.TraceValuesWarning, match="toy data only"):
        res = mpcache.Session(protocol, trace=True, trace_values=True).run(_job)
    ev = [e for t in res.transcripts for e in t.events]
    assert all(e.values is not None and len(e.values) == min(e.elements, T.MAX_VALUES)
               for e in ev if e.tag != "setup.key")
    assert all(e.values is None for e in ev if e.tag == "setup.key")   # never the keys


def test_every_message_is_seen_once_on_each_side(protocol):
    res = mpcache.Session(protocol, trace=True).run(_job)
    sends = sorted((e.party, e.peer, e.seq, e.tag, e.nbytes, e.stamp)
                   for t in res.transcripts for e in t.sends())
    recvs = sorted((e.peer, e.party, e.seq, e.tag, e.nbytes, e.stamp)
                   for t in res.transcripts for e in t.received())
    assert sends == recvs and sends
    for t in res.transcripts:
        assert [e.step for e in t.events] == list(range(len(t.events)))


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_file_round_trip_and_append(tmp_path, suffix):
    path = str(tmp_path / ("run" + suffix))
    r1 = mpcache.Session("rep3", trace=path).run(_job)
    r2 = mpcache.Session("add2", trace=path).run(_job)      # same process: appends
    traces = T.read(path)
    assert [t.protocol for t in traces] == ["rep3", "add2"]
    for tr, res in zip(traces, (r1, r2)):
        assert tr.check() == []
        for a, b in zip(tr.transcripts, res.transcripts):
            assert [e.to_record() for e in a.events] == [e.to_record() for e in b.events]
    T.write([traces[0]], path, append=False)
    assert len(T.read(path)) == 1


def test_env_var_traces_any_session(tmp_path, monkeypatch):
    path = tmp_path / "env.jsonl"
    monkeypatch.setenv("MPCACHE_TRACE", str(path))
    res = mpcache.Session("rep3").run(_job)
    assert res.transcripts is not None
    first = json.loads(path.read_text().splitlines()[0])
    assert first["type"] == "session" and first["protocol"] == "rep3"
    monkeypatch.delenv("MPCACHE_TRACE")
    assert mpcache.Session("rep3").run(_job).transcripts is None


def test_trace_show_cli(tmp_path):
    path = str(tmp_path / "cli.jsonl")
    mpcache.Session("add2", trace=path).run(_job)
    out = subprocess.run([sys.executable, "-m", "mpcache.cli", "trace", "show", path],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "P0 timeline" in out.stdout and "P2 timeline" in out.stdout
    assert "equals the accounting" in out.stdout
    assert "layer" in out.stdout and "add2.trunc.open" in out.stdout
    out = subprocess.run([sys.executable, "-m", "mpcache.cli", "trace", "show", path, "--totals",
                          "--tags"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "per protocol step" in out.stdout
    assert "P0 timeline" not in out.stdout


def test_failed_run_keeps_its_partial_trace(tmp_path):
    """Parties running different programs: the trace shows where each one stopped."""
    path = str(tmp_path / "fail.jsonl")

    def bad(p):
        x = p.share(np.ones(3) if p.id == 0 else None, 0)
        if p.id == 1:
            return p.reveal(x * x)         # P1 multiplies, the others reveal at once
        return p.reveal(x)
    with pytest.raises(Exception):
        mpcache.Session("rep3", trace=path, timeout=5).run(bad)
    (tr,) = T.read(path)
    assert tr.meta.get("failed") is True and tr.stats is None
    assert all(t.events for t in tr.transcripts)
    assert "FAILED" in T.format_trace(tr)

"""Tampering (mpcache/tamper.py) and the checked reveal (mpcache/checked.py): an additive
attack goes undetected in rep3 and add2; the checked reveal aborts on an inconsistent
sharing and names the party; its bytes and rounds are exact."""
import numpy as np
import pytest

import mpcache
from mpcache.checked import InconsistentShares, checked_reveal
from mpcache.apps.explain import UNKNOWN, lookup
from mpcache.testing import add_fixed, tamper
from mpcache.trace import TraceValuesWarning

X = np.array([1.5, -2.0, 3.25, 0.5])
Y = np.array([2.0, 4.0, -1.0, -3.0])


def _job(p, checked=False, mode="hash", agree=True):
    x = p.share(X if p.id == 0 else None, 0)
    y = p.share(Y if p.id == 1 else None, 1)
    with p.scope("op"):
        z = x * y
    with p.scope("out"):
        if checked:
            return checked_reveal(z, mode=mode, agree=agree)
        return p.reveal(z)


OPEN_TAG = {"rep3": "rep3.mul_trunc.open", "add2": "add2.trunc.open"}


def test_additive_attack_is_undetected_without_a_check(protocol):
    honest = mpcache.Session(protocol, seed=3).run(_job)
    with tamper(party=1, tag=OPEN_TAG[protocol], fn=add_fixed(1.0, scale=2)) as t:
        res = mpcache.Session(protocol, seed=3).run(_job)
    assert t.count == 1
    for out in res.outputs:               # every party accepts X*Y + 1, exactly
        np.testing.assert_allclose(out, X * Y + 1.0, atol=1e-4)
    np.testing.assert_allclose(honest.outputs[0], X * Y, atol=1e-4)
    # nothing else changed: same messages and bytes as the honest run
    assert res.stats[1]["total"] == {**res.stats[1]["total"],
                                     **{k: honest.stats[1]["total"][k] for k in
                                        ("bytes_sent", "messages_sent", "rounds")}}


def test_tamper_is_scoped_filtered_and_recorded():
    with tamper(party=1, tag="rep3.mul_trunc.open", fn=add_fixed(1.0, scale=2), to=2) as t:
        res = mpcache.Session("rep3", seed=3, trace=True).run(_job)
    assert t.count == 0 and "rep3.mul_trunc.open" in t.tags_seen     # P1 opens to P0 only
    np.testing.assert_allclose(res.outputs[0], X * Y, atol=1e-4)
    d = add_fixed(1.0, scale=2)(np.zeros(1, np.uint64))[0]
    with tamper(party=1, tag="rep3.mul_trunc.*", fn=add_fixed(1.0, scale=2), limit=1):
        with pytest.warns(TraceValuesWarning, match="toy data only"):
            res = mpcache.Session("rep3", seed=3, trace=True, trace_values=True).run(_job)
    # the sender's transcript holds what it really sent: equal to the receiver's record
    sent = [e for e in res.transcripts[1].events if e.direction == "send"
            and e.tag == "rep3.mul_trunc.open"]
    got = [e for e in res.transcripts[0].events if e.direction == "recv"
           and e.tag == "rep3.mul_trunc.open" and e.peer == 1]
    assert sent[0].values == got[0].values
    assert d == np.uint64(1 << 36)
    # outside the context, sessions are untouched
    res = mpcache.Session("rep3", seed=3).run(_job)
    np.testing.assert_allclose(res.outputs[0], X * Y, atol=1e-4)
    with pytest.raises(ValueError, match="keep dtype and shape"):
        with tamper(party=0, tag="rep3.share", fn=lambda u: u[:1]):
            mpcache.Session("rep3", seed=3).run(_job)


@pytest.mark.parametrize("mode", ["hash", "full"])
def test_checked_reveal_cost_is_exact(mode):
    n = X.size
    plain = mpcache.Session("rep3", seed=3).run(_job).scope("out")
    res = mpcache.Session("rep3", seed=3).run(_job, checked=True, mode=mode)
    for out in res.outputs:
        np.testing.assert_allclose(out, X * Y, atol=1e-4)
    c = res.scope("out")
    extra = 32 if mode == "hash" else 8 * n
    assert (plain["bytes_sent"], plain["messages_sent"], plain["rounds"]) == (8 * n, 1, 1)
    assert (c["bytes_sent"], c["messages_sent"], c["rounds"]) == (8 * n + extra + 2, 4, 2)
    res = mpcache.Session("rep3", seed=3).run(_job, checked=True, mode=mode, agree=False)
    c = res.scope("out")
    assert (c["bytes_sent"], c["messages_sent"], c["rounds"]) == (8 * n + extra, 2, 1)
    for s in res.stats:
        assert s["scopes"]["out"]["offline_bytes_sent"] == 0
    # and to one party: only that party's two senders send
    res = mpcache.Session("rep3", seed=3).run(
        lambda p: checked_reveal(p.share(X if p.id == 0 else None, 0), to=2, mode=mode))
    assert res.outputs[2] is not None and res.outputs[0] is None and res.outputs[1] is None
    np.testing.assert_allclose(res.outputs[2], X, atol=1e-5)


def test_checked_reveal_via_party_reveal_and_tags_explained():
    res = mpcache.Session("rep3", seed=3, trace=True).run(
        lambda p: p.reveal(p.share(X if p.id == 0 else None, 0), checked=True))
    np.testing.assert_allclose(res.outputs[1], X, atol=1e-5)
    tags = {e.tag for t in res.transcripts for e in t.events}
    assert {"rep3.checked_reveal", "rep3.checked_reveal.check",
            "rep3.checked_reveal.agree"} <= tags
    assert all(lookup(t) is not UNKNOWN for t in tags)
    with pytest.raises(ValueError, match="add2"):
        mpcache.Session("add2", seed=3).run(
            lambda p: p.reveal(p.share(X if p.id == 0 else None, 0), checked=True))


def test_check_catches_an_inconsistent_sharing_and_names_the_party():
    # P1 alters its re-share message to P2: P1 and P2 now hold different copies of x2.
    # Without the check P2 outputs a wrong value and P0, P1 the right one:
    with tamper(party=1, tag="rep3.mul_trunc.reshare", fn=add_fixed(1.0)):
        res = mpcache.Session("rep3", seed=3).run(_job)
    np.testing.assert_allclose(res.outputs[0], X * Y, atol=1e-4)
    np.testing.assert_allclose(res.outputs[2], X * Y + 1.0, atol=1e-4)
    # with it, P0 sees the two copies of x2 differ and every party aborts
    with tamper(party=1, tag="rep3.mul_trunc.reshare", fn=add_fixed(1.0)):
        with pytest.raises(InconsistentShares) as ei:
            mpcache.Session("rep3", seed=3).run(_job, checked=True)
    assert ei.value.suspects == (1, 2) and ei.value.receiver == 0
    assert "P0 received different copies of x2 from P1 and P2" in str(ei.value)
    # P1 alters the reveal message it sends to P0: named with the other holder, P2
    with tamper(party=1, tag="rep3.checked_reveal", fn=add_fixed(1.0)):
        with pytest.raises(InconsistentShares, match="x2 from P1 and P2") as ei:
            mpcache.Session("rep3", seed=3).run(_job, checked=True)
    assert 1 in ei.value.suspects
    # without agreement, the receiver that saw it aborts, naming the pair (P2's second
    # copy goes to P0, which also gets x2 from P1)
    for mode in ("hash", "full"):
        with tamper(party=2, tag="rep3.checked_reveal.check", fn=add_fixed(1.0)):
            with pytest.raises(InconsistentShares, match="one of P1, P2") as ei:
                mpcache.Session("rep3", seed=3).run(_job, checked=True, mode=mode,
                                                    agree=False)
        assert ei.value.receiver == 0 and ei.value.component == 2


def test_check_does_not_see_a_consistent_attack():
    # the masked opening feeds both openers' additive shares: the re-shared result is
    # consistent (and wrong), so the checked reveal accepts it (not malicious security)
    with tamper(party=1, tag="rep3.mul_trunc.open", fn=add_fixed(1.0, scale=2)):
        res = mpcache.Session("rep3", seed=3).run(_job, checked=True)
    for out in res.outputs:
        np.testing.assert_allclose(out, X * Y + 1.0, atol=1e-4)

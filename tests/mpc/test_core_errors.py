"""Bad input gets a clear error, never a wrong answer."""
import numpy as np
import pytest

import mpcache
from mpcache.net.transport import PeerTimeout, ProtocolMismatch
from mpcache.mpc.base import ProtocolError


def run(protocol, job):
    return mpcache.Session(protocol, timeout=5).run(job)


def shared(p, x, owner=0, **kw):
    return p.share(x if p.id == owner else None, owner=owner, **kw)


@pytest.mark.parametrize("op", ["add", "mul", "matmul"])
def test_mismatched_shapes(protocol, op):
    def job(p):
        a, b = shared(p, np.ones((2, 3))), shared(p, np.ones((4, 5)))
        return {"add": lambda: a + b, "mul": lambda: a * b, "matmul": lambda: a @ b}[op]()
    with pytest.raises(ValueError, match="shape"):
        run(protocol, job)


def test_mixing_sessions_is_refused(protocol):
    # a share can escape its session only where every party is a thread of this process
    threads = mpcache.Session(protocol, timeout=5, processes=())
    escaped = threads.run(lambda p: shared(p, np.ones(3))).outputs

    def job(p):
        mine = shared(p, np.ones(3))
        return mine + escaped[p.id]
    with pytest.raises(mpcache.SessionMismatch, match="different sessions"):
        threads.run(job)


def test_a_share_cannot_leave_a_party_process():
    """add2's dealer runs in its own process: returning a share from it is refused with
    a message that says what to do, not an opaque pickling error."""
    with pytest.raises(RuntimeError, match="reveal it first"):
        run("add2", lambda p: shared(p, np.ones(3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e12])
def test_unencodable_inputs(protocol, bad):
    with pytest.raises(mpcache.FixedPointRangeError):
        run(protocol, lambda p: shared(p, np.array([1.0, bad])))


def test_unencodable_public_constant(protocol):
    with pytest.raises(mpcache.FixedPointRangeError):
        run(protocol, lambda p: shared(p, np.ones(2)) * np.array([np.nan, 1.0]))


def test_owner_must_pass_its_input(protocol):
    with pytest.raises(ValueError, match="passed None"):
        run(protocol, lambda p: p.share(None, owner=0))


def test_integer_flag_rejects_fractions(protocol):
    with pytest.raises(ValueError, match="not integers"):
        run(protocol, lambda p: shared(p, np.array([1.5]), integer=True))


def test_add2_dealer_cannot_own_data():
    with pytest.raises(ProtocolError, match="dealer"):
        run("add2", lambda p: p.share(np.ones(2) if p.id == 2 else None, owner=2))


def test_bad_owner_and_reveal_target(protocol):
    with pytest.raises(ProtocolError):
        run(protocol, lambda p: p.share(np.ones(2), owner=5))
    with pytest.raises(ValueError, match="reveal target"):
        run(protocol, lambda p: shared(p, np.ones(2)).reveal(to=7))


def test_secret_never_becomes_numpy_or_bool(protocol):
    def job(p):
        t = shared(p, np.ones(2))
        with pytest.raises(TypeError, match="reveal"):
            np.asarray(t)
        with pytest.raises(TypeError):
            bool(t)
        with pytest.raises(TypeError, match="secret index"):
            t[t]
        assert "0." not in repr(t) and "1." not in repr(t)
        return True
    assert run(protocol, job).outputs == [True] * 3


def test_bad_axis(protocol):
    with pytest.raises(ValueError, match="out of bounds"):
        run(protocol, lambda p: shared(p, np.ones((2, 2))).sum(axis=3))


def test_divergent_programs_fail_clearly(protocol):
    """Parties running different programs get a clear mismatch error, not garbage."""
    def job(p):
        a = shared(p, np.ones(4))
        if p.id == 1:
            return (a @ a).reveal()       # P1 takes another branch
        return (a * a).reveal()
    with pytest.raises(mpcache.PartyFailed, match="different programs"):
        run(protocol, job)


def test_a_crashing_party_stops_the_others_quickly(protocol):
    import time

    def job(p):
        a = shared(p, np.ones(4))
        if p.id == 2:
            raise RuntimeError("party 2 crashed")
        return (a * a).reveal()
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="party 2 crashed"):
        mpcache.Session(protocol, timeout=30).run(job)
    assert time.perf_counter() - t0 < 5


def test_a_stalled_party_hits_the_deadline(protocol):
    import time

    def job(p):
        a = shared(p, np.ones(4))
        if p.id == 0:
            time.sleep(2.5)
        return (a * a).reveal()
    with pytest.raises(mpcache.PartyFailed, match="within 1.0 s"):
        mpcache.Session(protocol, timeout=1.0).run(job)


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol"):
        mpcache.Session("spdz")

"""A party's view (its shares and every message it receives) must not depend on the
secret.  We run the same program on two very different secrets and compare, block by
block (each received message, and the party's own share), the byte distributions with a
chi-square test; a broken mask must make it fail.  Blocks are tested separately because
a share can repeat a received value, and duplicated samples would inflate the statistic."""
import numpy as np
import pytest
from scipy.stats import chi2_contingency

import mpcache
from mpcache import prg

N = 4096


def view(protocol, observer, owner, secret):
    """The blocks of ring elements seen by party ``observer`` over a short program."""
    seen = []

    def job(p):
        if p.id == observer:
            p.transport.observers.append(
                lambda d, peer, msg, path: seen.append(msg.payload.ravel()) if d == "recv"
                else None)
        x = p.share(secret if p.id == owner else None, owner=owner)
        w = p.share(np.full((64, 8), 0.5) if p.id == owner else None, owner=owner)
        if p.id == observer:
            seen.append(x.data.ravel())
        y = x * x                      # fixed-point product + truncation
        z = x.reshape(64, 64) @ w      # matmul
        wp = p.share(np.full((64, 64), 0.25) if p.id == owner else None, owner=owner)
        wp.persist()                   # opens W - B once (add2)
        x.reshape(64, 64) @ wp         # persistent-weight matmul: opens x - A
        (y * 0.25 + z.sum()).sum()     # truncation by a public float
        return None
    mpcache.Session(protocol).run(job)
    return [b.astype(np.uint64) for b in seen]


def min_pvalue(blocks_a, blocks_b):
    """Smallest chi-square p-value over blocks (of >= 1024 values) and byte lanes."""
    assert len(blocks_a) == len(blocks_b)
    ps = [_min_lane_pvalue(a, b) for a, b in zip(blocks_a, blocks_b) if a.size >= 1024]
    assert len(ps) >= 3
    return min(ps)


def _min_lane_pvalue(va, vb):
    ps = []
    for lane in range(8):
        ha = np.bincount(((va >> np.uint64(8 * lane)) & np.uint64(255)).astype(np.int64),
                         minlength=256)
        hb = np.bincount(((vb >> np.uint64(8 * lane)) & np.uint64(255)).astype(np.int64),
                         minlength=256)
        table = np.stack([ha, hb]) + 1       # +1: no empty cells
        ps.append(chi2_contingency(table)[1])
    return min(ps)


CASES = [(0, 1), (0, 2), (1, 0)]  # (owner, observer): every non-owner, both sides


@pytest.mark.parametrize("owner,observer", CASES)
def test_view_indistinguishable(protocol, owner, observer):
    if protocol == "add2" and observer == 2:
        pytest.skip("the add2 dealer receives nothing but shapes")
    a = view(protocol, observer, owner, np.zeros(N))
    b = view(protocol, observer, owner, np.full(N, 1234.5678))
    # ~5 blocks x 8 lanes: Bonferroni threshold, false-alarm rate ~4e-6 per test run
    assert min_pvalue(a, b) > 1e-7


@pytest.mark.parametrize("owner,observer", [(0, 1), (1, 0)])
def test_view_test_detects_a_broken_mask(protocol, owner, observer, monkeypatch):
    """Negative control: with every PRG draw zeroed, the shares and messages carry the
    secret in the clear, and the same statistic must flag it."""
    monkeypatch.setattr(prg.PRG, "ring", lambda self, shape: np.zeros(shape, np.uint64))
    a = view(protocol, observer, owner, np.zeros(N))
    b = view(protocol, observer, owner, np.full(N, 1234.5678))
    assert min_pvalue(a, b) < 1e-12

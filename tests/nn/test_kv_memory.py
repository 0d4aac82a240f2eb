"""Memory of a shared KV cache: rep3 gives a non-owner of an input a public zero share
component; it must stay never-touched memory (no resident pages) when the input is
shared and when the cache grows by the decoding step's first token -- the zero half of a
2048-token cache is ~190 MB per party for SmolLM2 (docs: README, "Memory")."""
import mmap
import sys

import numpy as np
import pytest

import mpcache

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pagemap: Linux")

_PAGE = mmap.PAGESIZE


def resident_fraction(a: np.ndarray) -> float:
    """Fraction of the whole pages inside ``a``'s buffer that this process owns in memory:
    ``/proc/self/pagemap`` bits 63 (present) and 56 (exclusively mapped).  A page only read
    maps the kernel's shared zero page: present, not exclusive, not in the RSS."""
    start = -(-a.ctypes.data // _PAGE) * _PAGE
    end = (a.ctypes.data + a.nbytes) // _PAGE * _PAGE
    n = (end - start) // _PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(start // _PAGE * 8)
        e = np.frombuffer(f.read(n * 8), dtype=np.uint64)
    owned = (e >> np.uint64(63)) & (e >> np.uint64(56)) & np.uint64(1)
    return float(owned.sum()) / n


def test_input_zero_component_and_grown_cache_stay_unresident():
    # 48 MB per component: above glibc's largest mmap threshold, so np.zeros maps fresh
    # pages (the case of a real cache layer's ~6 MB is the same code path)
    h, n, d = 2, 3 * 2 ** 19, 4
    rng = np.random.default_rng(0)
    k = rng.uniform(-2, 2, (h, n, d))
    new = rng.uniform(-2, 2, (h, 1, d))

    def job(p):
        K = p.share(k if p.id == 0 else None, 0)
        N = p.share(new if p.id == 0 else None, 0)
        zero = [j for j in range(2) if not K.data[j].any()]
        before = [resident_fraction(K.data[j]) for j in zero]
        buf = N.grow_into(K, n)
        # per KV head: each head's n valid rows are contiguous in the capacity buffer
        after = [resident_fraction(buf.data[j][i, :n]) for j in zero for i in range(h)]
        kept = [resident_fraction(buf.data[j][i, :n]) for j in range(2) if j not in zero
                for i in range(h)]
        last = buf[:, n - 2:n + 1].reveal(0)
        return zero, before, after, kept, last
    res = mpcache.Session("rep3").run(job).outputs
    # owner P0 holds (x_0, x_1); P1 and P2 each hold one public zero (x_2)
    assert [len(r[0]) for r in res] == [0, 1, 1]
    for zero, before, after, kept, _ in res[1:]:
        # untouched after sharing and after the grow but for the 4 KiB page(s) holding
        # the new row n of each head (mpcache/pages.py: no transparent huge page is
        # faulted in across the zero part by writes next to it)
        assert max(before) * h * n * d * 8 <= 2 * 4096
        assert max(after) * n * d * 8 <= 2 * 4096
        assert min(kept) > 0.99                              # the real component was copied
    assert np.allclose(res[0][4], np.concatenate([k[:, n - 2:], new], axis=1), atol=1e-4)

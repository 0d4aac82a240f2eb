"""Helpers to property-test protocols (yours or mpcache's) against numpy on both protocols.

    from hypothesis import given
    from mpcache.testing import PROTOCOLS, fixed_arrays, run_op

    @given(x=fixed_arrays())
    def test_double(x):
        for proto in PROTOCOLS:
            out, res = run_op(proto, lambda p, a: a * 2, x)
            assert_close(out, 2 * x, atol=1e-4)

``run_op`` shares each input from a party (P0, P1, P0, ...), runs the op inside scope
``"op"``, reveals the result to P0 and returns it with the :class:`RunResult`, whose
``scope("op")`` holds the op's bytes and rounds for budget assertions.
"""
from __future__ import annotations

import numpy as np

from .runtime import RunResult, Session

PROTOCOLS = ("rep3", "add2")

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:           # hypothesis is a test dependency only
    st = hnp = None


def run_op(protocol: str, op, *inputs, integer=(), owners=(0, 1), seed=None,
           session: Session | None = None) -> tuple:
    """Share ``inputs``, run ``op(party, *secrets)`` in scope "op", reveal to P0."""
    sess = session or Session(protocol, seed=seed)

    def job(p):
        xs = [p.share(x if p.id == owners[i % len(owners)] else None,
                      owner=owners[i % len(owners)], integer=i in integer)
              for i, x in enumerate(inputs)]
        with p.scope("op"):
            y = op(p, *xs)
        return p.reveal(y, to=0)

    res: RunResult = sess.run(job)
    return res.output, res


def assert_close(actual, expected, atol=0.0, rtol=0.0, what="result") -> None:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {a.shape} != expected {e.shape}")
    err = np.abs(a - e)
    bound = atol + rtol * np.abs(e)
    if np.any(err > bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape) if err.ndim else ()
        raise AssertionError(f"{what}: max error {float(np.max(err)):.3g} exceeds bound at "
                             f"index {i}: got {a[i]!r}, expected {e[i]!r}")


def assert_budget(res: RunResult, scope: str = "op", bytes_per_party=None, rounds=None,
                  offline_bytes=None) -> None:
    """Assert exact cost of a scope: bytes (max over parties), rounds, dealer bytes."""
    sc = res.scope(scope)
    if bytes_per_party is not None and sc["bytes_sent"] != bytes_per_party:
        raise AssertionError(f"{scope}: {sc['bytes_sent']} bytes per party, "
                             f"expected {bytes_per_party}")
    if rounds is not None and sc["rounds"] != rounds:
        raise AssertionError(f"{scope}: {sc['rounds']} rounds, expected {rounds}")
    if offline_bytes is not None and sc["offline_bytes_sent"] != offline_bytes:
        raise AssertionError(f"{scope}: {sc['offline_bytes_sent']} offline bytes, "
                             f"expected {offline_bytes}")


if st is not None:
    def shapes(min_dims=1, max_dims=3, max_side=6):
        return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1,
                                max_side=max_side)

    def fixed_arrays(shape=None, lo=-1000.0, hi=1000.0, **shape_kw):
        """Floats in [lo, hi] with zeros, edges and negatives well represented."""
        elems = st.one_of(st.floats(lo, hi, allow_nan=False, allow_infinity=False),
                          st.sampled_from([0.0, lo, hi, -0.0, 1.0, -1.0]))
        return hnp.arrays(np.float64, shape if shape is not None else shapes(**shape_kw),
                          elements=elems)

    def ring_arrays(shape=None, **shape_kw):
        """Arbitrary int64 values (the full ring, signed view), edges included."""
        elems = st.one_of(st.integers(-2**63, 2**63 - 1),
                          st.sampled_from([0, 1, -1, 2**63 - 1, -2**63]))
        return hnp.arrays(np.int64, shape if shape is not None else shapes(**shape_kw),
                          elements=elems)

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

Also here (docs/teaching.md):

- :func:`protocol_property` builds a hypothesis test of your op on both protocols against
  a numpy reference, with value ranges, shapes, tolerance and byte/round budgets;
- :func:`assert_view_indistinguishable` is the view audit (mpcache/audit.py): a party's
  view -- what it received and sent, its own shares, joined with the randomness it holds
  itself (frozen) -- must not depend on a secret it does not own (an exact check for
  blocks its own randomness pins down, chi-square per byte lane otherwise);
  :func:`audit_every_party` runs it for every owner and observer; :func:`collect_view`
  and :func:`audit_views` are its two halves.
"""
from __future__ import annotations

import numpy as np

from .audit import (OUTPUT_TAGS, AuditReport, ViewBlock, ViewLeak,  # noqa: F401
                    assert_view_indistinguishable, audit_every_party, audit_views,
                    chi_square_lane_pvalues, collect_view, frozen_streams, held_streams)
from .runtime import RunResult, Session
from .tamper import Tamper, add_fixed, tamper  # noqa: F401

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


def run_aligned(protocol: str, x, fn, seed=None) -> tuple:
    """Share ``x`` from P0, align the three parties' round clocks (one reveal of a public
    zero: every party has then received from every other), run ``fn(secret)`` in scope
    "op" and reveal to all: (output, the "op" scope's counters).  The op's rounds then
    count from a common start (exact round assertions on one-input ops)."""
    def job(p):
        a = p.share(x if p.id == 0 else None, 0)
        p.reveal(p.share(np.zeros(1) if p.id == 0 else None, 0))
        with p.scope("op"):
            out = fn(a)
        return p.reveal(out)
    res = Session(protocol, seed=seed).run(job)
    return res.output, res.scope("op")


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


# -- property tests of a user's protocol ----------------------------------------------------------
def protocol_property(op, reference, *, n_inputs: int = 1, shapes=None, values=(-100.0, 100.0),
                      integer=(), owners=(0, 1), atol: float = 1e-3, rtol: float = 0.0,
                      budget=None, exact_budget: bool = False, protocols=PROTOCOLS,
                      max_examples: int = 20, name: str | None = None):
    """Build a test function that property-tests ``op`` on every protocol against numpy.

    ``op(party, *secrets)`` returns a SecretTensor; ``reference(*arrays)`` the expected
    numpy result.  ``shapes``: None (one random shape, 1-2 dims, sides 1..6, shared by
    every input), a tuple of shapes (one per input, fixed), or a hypothesis strategy
    drawing such a tuple.  ``values``: (lo, hi) for every input or one pair per input.
    ``integer``: indices of ring-integer inputs.  ``budget``: ``budget(protocol, *shapes)``
    returning a dict with any of ``bytes``, ``rounds``, ``offline`` (per party, as in
    costs.py), or a dict ``{protocol: {...}}``: the op's scope must stay within it (equal
    to it with ``exact_budget=True``).  Returns a zero-argument function; bind it to a
    ``test_*`` name so pytest collects it::

        test_square = protocol_property(lambda p, x: x * x, lambda x: x * x,
                                        values=(-50, 50), atol=1e-2,
                                        budget=lambda proto, s: {"rounds": 2})
    """
    if st is None:
        raise ImportError("protocol_property needs hypothesis (pip install mpcache[test])")
    from hypothesis import given, settings

    if shapes is None:
        shape_st = hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6).map(
            lambda s: (s,) * n_inputs)
    elif isinstance(shapes, tuple):
        shape_st = st.just(tuple(tuple(s) for s in shapes))
    else:
        shape_st = shapes
    ranges = (list(values) if values and isinstance(values[0], (tuple, list))
              else [tuple(values)] * n_inputs)

    @settings(max_examples=max_examples, deadline=None)
    @given(data=st.data())
    def test(data):
        shp = data.draw(shape_st, label="shapes")
        xs = []
        for i, s in enumerate(shp):
            lo, hi = ranges[i]
            if i in integer:
                x = data.draw(hnp.arrays(np.int64, s, elements=st.integers(int(lo), int(hi))),
                              label=f"x{i}")
            else:
                x = data.draw(fixed_arrays(s, float(lo), float(hi)), label=f"x{i}")
            xs.append(x)
        want = reference(*xs)
        for proto in protocols:
            out, res = run_op(proto, op, *xs, integer=tuple(integer), owners=owners)
            assert_close(out, want, atol=atol, rtol=rtol, what=f"{proto} result")
            if budget is None:
                continue
            b = budget.get(proto, {}) if isinstance(budget, dict) else budget(proto, *shp)
            sc = res.scope("op")
            for key, counter in (("bytes", "bytes_sent"), ("rounds", "rounds"),
                                 ("offline", "offline_bytes_sent")):
                if key not in b or b[key] is None:
                    continue
                got = sc[counter]
                ok = got == b[key] if exact_budget else got <= b[key]
                if not ok:
                    raise AssertionError(f"{proto}: {key} {got} "
                                         f"{'!=' if exact_budget else '>'} budget {b[key]} "
                                         f"for shapes {shp}")

    test.__name__ = name or f"property_{getattr(op, '__name__', 'op')}"
    return test

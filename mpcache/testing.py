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
- :func:`assert_view_indistinguishable` is the view audit: a party's received messages
  and own shares must not depend on a secret it does not own (chi-square per byte lane
  and block, Bonferroni threshold); :func:`collect_view` and :func:`audit_views` are its
  two halves.
"""
from __future__ import annotations

from dataclasses import dataclass

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


# -- view audit ------------------------------------------------------------------------------
# A party's view (its own shares and every message it receives) must not depend on the
# secrets it does not own.  The audit runs the same program on two different secrets and
# compares, block by block (each received message; each slot of each own share), the
# distribution of every byte lane with a chi-square test.  Blocks are tested separately
# because a share can repeat a received value (duplicated samples would inflate the
# statistic).  The threshold is Bonferroni-corrected over all (block, lane) tests, so
# ``alpha`` is the false-alarm rate of the whole audit.  Docs: docs/teaching.md.

#: Tags of the API's output openings (``reveal``), left out of a view by default: what a
#: program reveals is its choice.  Openings *inside* protocols (e.g. top-k's revealed
#: comparisons of shuffled keys, ``topk.*.reveal``) stay in the view and are audited.
OUTPUT_TAGS = ("rep3.reveal", "add2.reveal", "rep3.breveal", "add2.breveal")


class ViewLeak(AssertionError):
    """The audit found a block of the observer's view that depends on the secret."""


@dataclass
class ViewBlock:
    label: str          # e.g. "recv P1 rep3.mul #0" or "own share of output 0, slot 1"
    values: np.ndarray  # flat


@dataclass
class AuditReport:
    observer: int
    protocol: str
    tested: list        # (label, n values, min p-value over lanes)
    skipped: list       # (label, n values): blocks below min_block
    n_tests: int
    threshold: float
    min_p: float

    def __str__(self):
        rows = "\n".join(f"  {lab:<48} n={n:<7} min p={p:.3g}" for lab, n, p in self.tested)
        return (f"view audit of P{self.observer} ({self.protocol}): {len(self.tested)} blocks, "
                f"{self.n_tests} lane tests, Bonferroni threshold {self.threshold:.3g}, "
                f"min p {self.min_p:.3g}\n{rows}")


def _as_list(v):
    if v is None:
        return []
    return list(v) if isinstance(v, (tuple, list)) else [v]


def collect_view(protocol: str, op, secrets, observer: int, owner=0, *, integer=(),
                 seed=None, exclude_tags=OUTPUT_TAGS, session: Session | None = None,
                 include_setup: bool = False) -> list:
    """Run ``op(party, *shared)`` on ``secrets`` (an array or a tuple of arrays, shared by
    ``owner``: a party id or one per input) and return the blocks of ``observer``'s view:
    every message it receives (in order; tags matching ``exclude_tags`` left out, by
    default the output reveals :data:`OUTPUT_TAGS`: opening an output is the program's
    choice) and each slot of its own
    shares of the inputs and of the op's outputs (SecretTensors returned by ``op``)."""
    import fnmatch

    from .tensor import SecretTensor
    secrets = secrets if isinstance(secrets, tuple) else (secrets,)
    owners = owner if isinstance(owner, (tuple, list)) else (owner,) * len(secrets)
    if observer in owners:
        raise ValueError(f"observer P{observer} owns an input; audit a non-owner")
    seen: list = []

    def obs(direction, peer, msg, path):
        if direction != "recv" or any(fnmatch.fnmatchcase(msg.tag, p) for p in exclude_tags):
            return
        if msg.tag == "setup.key" and not include_setup:
            return
        k = sum(1 for b in seen if b.label.startswith(f"recv P{peer} {msg.tag} #"))
        seen.append(ViewBlock(f"recv P{peer} {msg.tag} #{k}", np.array(msg.payload).ravel()))

    def own(label, t):
        if not isinstance(t, SecretTensor) or not t._proto.active:
            return
        for s in range(t.data.shape[0]):
            seen.append(ViewBlock(f"{label}, slot {s}", np.array(t.data[s]).ravel()))

    def job(p):
        if p.id == observer:
            p.transport.observers.append(obs)
        xs = [p.share(x if p.id == owners[i] else None, owner=owners[i], integer=i in integer)
              for i, x in enumerate(secrets)]
        out = op(p, *xs)
        if p.id == observer:
            for i, x in enumerate(xs):
                own(f"own share of input {i}", x)
            for i, y in enumerate(_as_list(out)):
                own(f"own share of output {i}", y)
        return None

    (session or Session(protocol, seed=seed)).run(job)
    return seen


def _lanes(v: np.ndarray) -> np.ndarray:
    """(n, itemsize) byte lanes of a flat array."""
    a = np.ascontiguousarray(v)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    return a.view(np.uint8).reshape(a.size, a.dtype.itemsize)


def chi_square_lane_pvalues(va: np.ndarray, vb: np.ndarray) -> list:
    """p-value per byte lane that ``va`` and ``vb`` come from the same distribution
    (chi-square test of homogeneity on the 2 x 256 table of byte counts, +1 per cell)."""
    from scipy.stats import chi2
    la, lb = _lanes(va), _lanes(vb)
    ps = []
    for lane in range(la.shape[1]):
        ha = np.bincount(la[:, lane], minlength=256) + 1.0     # +1: no empty cells
        hb = np.bincount(lb[:, lane], minlength=256) + 1.0
        table = np.stack([ha, hb])
        exp = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        stat = float(((table - exp) ** 2 / exp).sum())
        ps.append(float(chi2.sf(stat, 255)))
    return ps


def _pairs(blocks, min_block, max_pairs):
    """Index pairs of same-size, same-dtype blocks (for joint tests), at most ``max_pairs``."""
    idx = [i for i, b in enumerate(blocks) if b.values.size >= min_block
           and b.values.dtype in (np.uint64, np.uint8)]
    out = [(i, j) for k, i in enumerate(idx) for j in idx[k + 1:]
           if blocks[i].values.size == blocks[j].values.size
           and blocks[i].values.dtype == blocks[j].values.dtype]
    if len(out) > max_pairs:
        pick = np.random.default_rng(0).choice(len(out), max_pairs, replace=False)
        out = [out[k] for k in sorted(pick)]
    return out


def audit_views(blocks_a: list, blocks_b: list, *, alpha: float = 1e-6, min_block: int = 1024,
                pairs: bool = True, max_pairs: int = 200, strict_structure: bool = True,
                observer: int = -1, protocol: str = "?") -> AuditReport:
    """Compare two views block by block (see :func:`assert_view_indistinguishable`).

    With ``pairs``, also the sum and the difference (mod 2^64) of every two blocks of
    the same size (the XOR for packed-bit uint8 blocks): each block alone can be uniform while two together reveal the secret
    (an opening whose mask was dropped, added to one's own share).  A pair of identical
    blocks (a share repeating a received value) gives a constant, the same for both
    secrets, so it never raises a false alarm.

    ``strict_structure``: the two views must consist of the same messages in the same
    order and sizes (else :class:`ViewLeak`: traffic that depends on the secret leaks).
    Set it False only for protocols whose message pattern is random but simulatable
    (top-k's selection levels); blocks that do not line up are then skipped."""
    skipped = []
    if not strict_structure:
        # keep the blocks present in both views with the same size and dtype (protocols
        # whose message sizes are random but simulatable, e.g. top-k's selection levels)
        def key(b):
            return (b.label, b.values.size, b.values.dtype.str)
        kb = {key(b) for b in blocks_b}
        ka = {key(a) for a in blocks_a}
        skipped += [(a.label, a.values.size) for a in blocks_a if key(a) not in kb]
        blocks_a = [a for a in blocks_a if key(a) in kb]
        blocks_b = [b for b in blocks_b if key(b) in ka]
    la, lb = [b.label for b in blocks_a], [b.label for b in blocks_b]
    if la != lb:
        raise ViewLeak(f"the observer's view has a different structure for the two secrets "
                       f"(messages or order differ; that alone leaks): {la} vs {lb}")
    for a, b in zip(blocks_a, blocks_b):
        if a.values.shape != b.values.shape or a.values.dtype != b.values.dtype:
            raise ViewLeak(f"block {a.label!r}: shape/dtype depend on the secret "
                           f"({a.values.shape} {a.values.dtype} vs {b.values.shape} "
                           f"{b.values.dtype})")
    cases = [(a.label, a.values, b.values) for a, b in zip(blocks_a, blocks_b)
             if a.values.size >= min_block]
    skipped += [(a.label, a.values.size) for a in blocks_a if a.values.size < min_block]
    if not cases:
        raise ValueError(f"nothing to audit: no block of the view has >= {min_block} values "
                         f"(blocks: {skipped}); use larger inputs")
    if pairs:
        for i, j in _pairs(blocks_a, min_block, max_pairs):
            ai, aj, bi, bj = (blocks_a[i].values, blocks_a[j].values, blocks_b[i].values,
                              blocks_b[j].values)
            if ai.dtype == np.uint8:         # packed XOR-shared bits: combine by XOR
                cases.append((f"[{la[i]}] ^ [{la[j]}]", ai ^ aj, bi ^ bj))
                continue
            cases.append((f"[{la[i]}] + [{la[j]}]", ai + aj, bi + bj))
            cases.append((f"[{la[i]}] - [{la[j]}]", ai - aj, bi - bj))
    n_tests = sum(_lanes(va[:1]).shape[1] for _, va, _ in cases)
    threshold = alpha / n_tests
    tested = [(lab, va.size, min(chi_square_lane_pvalues(va, vb))) for lab, va, vb in cases]
    return AuditReport(observer, protocol, tested, skipped, n_tests, threshold,
                       min(p for _, _, p in tested))


def assert_view_indistinguishable(protocol: str, op, make_secret_a, make_secret_b,
                                  observer: int, owner=0, *, integer=(), alpha: float = 1e-6,
                                  min_block: int = 1024, seed=None, pairs: bool = True,
                                  strict_structure: bool = True,
                                  exclude_tags=OUTPUT_TAGS) -> AuditReport:
    """Assert that party ``observer``'s view of ``op`` does not depend on the secret.

    ``make_secret_a``/``make_secret_b``: arrays (or tuples of arrays, one per input), or
    zero-argument callables returning them; both must have the same shapes.  ``owner``:
    the party that shares the inputs (one id, or one per input); ``observer`` must not
    own any.  The op runs twice (different randomness), the observer's received messages
    and own shares are collected block by block, and each byte lane of each block of at
    least ``min_block`` values is chi-square tested (with ``pairs``, also the sums and
    differences of same-size blocks, which catch a leak spread over two blocks); the
    audit fails (:class:`ViewLeak`)
    if any p-value is below ``alpha`` / (number of lane tests).  Returns the report.

        assert_view_indistinguishable("rep3", lambda p, x: x * x,
                                      np.zeros(4096), np.full(4096, 1234.5), observer=1)
    """
    sa = make_secret_a() if callable(make_secret_a) else make_secret_a
    sb = make_secret_b() if callable(make_secret_b) else make_secret_b
    kw = dict(owner=owner, integer=integer, exclude_tags=exclude_tags)
    va = collect_view(protocol, op, sa, observer, seed=seed, **kw)
    vb = collect_view(protocol, op, sb, observer, seed=None if seed is None else seed + 1, **kw)
    rep = audit_views(va, vb, alpha=alpha, min_block=min_block, pairs=pairs,
                      strict_structure=strict_structure, observer=observer, protocol=protocol)
    if rep.min_p < rep.threshold:
        bad = [t for t in rep.tested if t[2] < rep.threshold]
        raise ViewLeak(f"P{observer}'s view depends on the secret ({protocol}): "
                       f"{len(bad)} block(s) fail the chi-square test at the Bonferroni "
                       f"threshold {rep.threshold:.3g}: "
                       + "; ".join(f"{lab} (n={n}, p={p:.3g})" for lab, n, p in bad[:5])
                       + f"\n{rep}")
    return rep


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

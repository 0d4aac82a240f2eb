"""View audit: does what a party sees depend on a secret it does not own?

A party's *view* is everything it knows at the end of a run: every message it received,
every message it sent, its own shares, and all the randomness it holds itself (its
pairwise keys and its private stream).  A protocol is secure against that party when,
for every fixed value of the party's own randomness, the distribution of the rest of its
view over the randomness it does NOT hold is the same for every secret.

The audit tests exactly that, on two secrets chosen by the caller:

1. **Freeze the observer's randomness** (:func:`frozen_streams`).  Every stream the
   observer holds (the two keys it shares with its neighbours, its private stream) is
   replaced, at both holders, by a fixed stream: word ``p`` is a fixed pseudo-random
   function of the stream's name and ``p``, the same in every run.  The streams the
   observer does not hold stay truly random.  (Fixing by position keeps both holders of
   a key consistent however they split their draws.)  A message the observer could
   unmask with what it holds (``v_B - r_B`` with ``r_B`` its own preprocessing value, a
   Beaver product share with its own dealt ``a0, b0, c0``, a raw bit share whose
   randomness it dealt) then no longer varies with the observer's randomness.  Programs
   whose number of draws varies from run to run (top-k's random number of selection
   levels) freeze each stream to ONE constant instead, so that the shift does not move
   it; it also leaves a public reordering of such values (top-k's revealed ranks)
   without effect.  Any fixed value of the observer's randomness is a valid one: a
   secure protocol's view must be independent of the secret for each of them.
2. **Run each secret several times** (``runs``): fresh hidden randomness each time, the
   same frozen randomness.
3. **Exact check, any block size**: a block (a message, a share slot) that is identical
   in every run of one secret is determined by the secret and the observer's own
   randomness; it must then be identical in every run of the other secret too, else the
   observer tells the two secrets apart with certainty.  No block is too small for this
   check: a one-element opening is tested like a large one.
4. **Statistical check**: every block's values pooled over runs; its *run differences*
   (run r minus run 0, position by position, XOR for packed bits: they cancel whatever
   the observer's fixed randomness adds, so what is left is the part that varies with
   the hidden randomness and the secret); and the sums and differences of every two
   same-size blocks of a run (not the two halves of one opening: together they are the
   opened value, which the party is meant to learn).  A message the observer sent is a
   function of the rest of its view: it is used in the exact check and in the pairs,
   not tested alone.  Each is compared between the
   secrets with a chi-square test: 8-byte words by a one-byte hash of each distinct
   value of the runs; narrower values (packed bits, small openings) per byte lane.  Bonferroni
   over all tests, so ``alpha`` bounds the false-alarm rate of the whole audit.  Blocks
   with fewer than ``min_samples`` samples are still tested but reported as low power.

What the audit can and cannot catch (docs/teaching.md): it catches any dependence that
shows in one block, in a sum or difference of two blocks of the same size, or in a block
that the observer's own randomness pins down (3.).  It cannot prove security: a leak
spread over three or more blocks that no single block pins down, a non-linear function
of several messages, a bias confined to some bits of words that are all distinct, or a
leak on secrets other than the two tested can pass.  It tests one observer at a time
(no collusion), and the semi-honest model only.
"""
from __future__ import annotations

import contextlib
import fnmatch
import zlib
from dataclasses import dataclass, field

import numpy as np

from . import branches
from .prg import PRG
from .runtime import Session

#: Tags of the API's output openings (``reveal``), left out of a view by default: what a
#: program reveals is its choice.  Openings *inside* protocols (e.g. top-k's revealed
#: comparisons of shuffled keys, ``topk.*.reveal``) stay in the view and are audited.
#: ``reveal_outputs=True`` keeps them, for secrets with the same outputs: then HOW a value
#: is opened (which shares travel) is audited too.
OUTPUT_TAGS = ("rep3.reveal", "add2.reveal", "rep3.breveal", "add2.breveal")

class ViewLeak(AssertionError):
    """The audit found a block of the observer's view that depends on the secret."""


@dataclass
class ViewBlock:
    label: str          # e.g. "recv P1 rep3.mul #0", "sent P2 onehot.open #0", "own share..."
    values: np.ndarray  # flat


@dataclass
class AuditReport:
    observer: int
    protocol: str
    tested: list        # (label, n values, min p-value over lanes)
    skipped: list       # (label, n values): blocks not lined up in both views
    n_tests: int
    threshold: float
    min_p: float
    determined: list = field(default_factory=list)   # labels pinned down by the secret
    low_power: list = field(default_factory=list)    # (label, n): fewer than min_samples
    owner: object = None
    runs: int = 1

    def __str__(self):
        rows = "\n".join(f"  {lab:<48} n={n:<7} min p={p:.3g}" for lab, n, p in self.tested)
        return (f"view audit of P{self.observer} ({self.protocol}, owner {self.owner}, "
                f"{self.runs} runs per secret): {len(self.tested)} blocks, {self.n_tests} "
                f"lane tests, Bonferroni threshold {self.threshold:.3g}, min p "
                f"{self.min_p:.3g}; {len(self.determined)} blocks pinned down by the "
                f"observer's randomness, each equal for both secrets\n{rows}")


# -- frozen randomness ------------------------------------------------------------------------
_FROZEN: dict = {}        # stream name -> shift


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fixed bijection that scrambles stream positions."""
    x = (x + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _frozen_raw(self, n, *args, **kwargs):
    label = getattr(self, "label", None)
    shift = _FROZEN.get(label)
    if shift is None:
        return _REAL_RAW(self, n, *args, **kwargs)
    n = int(n)
    pos = self.__dict__.get("_frozen_pos", 0)
    self._frozen_pos = pos + n
    group = np.arange(pos, pos + n, dtype=np.uint64) >> np.uint64(shift)
    seed = np.uint64(zlib.crc32(label.encode()) << 32)
    with np.errstate(over="ignore"):
        return _mix64(group ^ seed)


_REAL_RAW = PRG._raw


@contextlib.contextmanager
def frozen_streams(labels, per_position: bool = True):
    """Inside the block, the PRG streams named ``labels`` (``k0``, ``k1``, ``k2``: the
    pairwise keys, ``k_i`` held by P_i and P_{i+1}; ``own0``..``own2``: private streams)
    draw a fixed sequence: word ``p`` is a fixed function of ``(name, p)``, the same at
    both holders and in every run.  ``per_position=False``: one constant per stream,
    for programs whose number of draws varies from run to run (top-k's random number of
    selection levels), where a position-dependent stream would shift.  Every other
    stream is untouched."""
    global _REAL_RAW
    if PRG._raw is not _frozen_raw:
        _REAL_RAW = PRG._raw
        PRG._raw = _frozen_raw
    _FROZEN.clear()
    _FROZEN.update({lab: 0 if per_position else 63 for lab in labels})
    try:
        yield
    finally:
        _FROZEN.clear()
        PRG._raw = _REAL_RAW


def held_streams(observer: int) -> tuple:
    """Names of the streams party ``observer`` holds (see :func:`frozen_streams`)."""
    return (f"k{observer}", f"k{(observer - 1) % 3}", f"own{observer}")


# -- collecting a view ------------------------------------------------------------------------
def _as_list(v):
    if v is None:
        return []
    return list(v) if isinstance(v, (tuple, list)) else [v]


def collect_view(protocol: str, op, secrets, observer: int, owner=0, *, integer=(),
                 seed=None, exclude_tags=OUTPUT_TAGS, session: Session | None = None,
                 include_setup: bool = False, sent: bool = True, freeze: bool = False,
                 reveal_outputs: bool = False, outputs: list | None = None,
                 per_position: bool = True) -> list:
    """Run ``op(party, *shared)`` once on ``secrets`` (an array or a tuple of arrays,
    shared by ``owner``: a party id or one per input) and return ``observer``'s view as
    blocks: every message it receives and (``sent``) sends, in order (tags matching
    ``exclude_tags`` left out), and each slot of its own shares of the inputs and of
    the op's outputs (SecretTensors returned by ``op``).  ``freeze``: the observer's own
    streams are frozen (:func:`frozen_streams`).  ``reveal_outputs``: every output is
    then revealed to all parties inside the view (its values are appended to
    ``outputs`` when a list is given)."""
    from .tensor import SecretTensor
    secrets = secrets if isinstance(secrets, tuple) else (secrets,)
    owners = owner if isinstance(owner, (tuple, list)) else (owner,) * len(secrets)
    if observer in owners:
        raise ValueError(f"observer P{observer} owns an input; audit a non-owner")
    seen: list = []      # (order key, block)
    counts: dict = {}
    # Branches (mpcache.branches) interleave their messages as the threads happen to
    # run; the view is put in a canonical order: each branch's messages (in its own
    # program order) after the top-level message that precedes the branches' call.
    top = [0]

    def obs(direction, peer, msg, path):
        if not sent and direction != "recv":
            return
        if any(fnmatch.fnmatchcase(msg.tag, p) for p in exclude_tags):
            return
        if msg.tag == "setup.key" and not include_setup:
            return
        head = f"{direction if direction == 'recv' else 'sent'} P{peer} {msg.tag}"
        k = counts[head] = counts.get(head, -1) + 1
        branch = branches.prefix_of(msg.tag)
        if not branch:
            top[0] += 1
        seen.append(((top[0], branch), ViewBlock(f"{head} #{k}", np.array(msg.payload).ravel())))

    def own(label, t):
        if not isinstance(t, SecretTensor) or not t._proto.active:
            return
        for s in range(t.data.shape[0]):
            seen.append(((top[0], ""), ViewBlock(f"{label}, slot {s}",
                                                 np.array(t.data[s]).ravel())))

    def job(p):
        if p.id == observer:
            p.transport.observers.append(obs)
        xs = [p.share(x if p.id == owners[i] else None, owner=owners[i], integer=i in integer)
              for i, x in enumerate(secrets)]
        out = _as_list(op(p, *xs))
        if p.id == observer:
            for i, x in enumerate(xs):
                own(f"own share of input {i}", x)
            for i, y in enumerate(out):
                own(f"own share of output {i}", y)
        if reveal_outputs:
            return [p.reveal(y) for y in out if isinstance(y, SecretTensor)]
        return None

    sess = session or Session(protocol, seed=seed, processes=())
    ctx = (frozen_streams(held_streams(observer), per_position) if freeze
           else contextlib.nullcontext())
    with ctx:
        res = sess.run(job)
    if reveal_outputs and outputs is not None:
        outputs.append(res.outputs[observer])
    return [b for _, b in sorted(seen, key=lambda kb: kb[0])]


# -- comparing two views ----------------------------------------------------------------------
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


def _pair_combos(blocks, max_pairs):
    """Sums and differences (XOR for packed-bit uint8) of same-size, same-dtype blocks of
    one run, at most ``max_pairs`` pairs (a fixed choice: the same for every run)."""
    idx = [i for i, b in enumerate(blocks) if b.values.dtype in (np.uint64, np.uint8)]
    # the two halves of one opening combine to the opened value, which the protocol
    # means the party to learn (an output, or a public pattern such as top-k's revealed
    # comparisons): their combination is not a test of the masks
    def opening(b):
        return b.label.split(" ", 2)[2]
    pairs = [(i, j) for k, i in enumerate(idx) for j in idx[k + 1:]
             if blocks[i].values.size == blocks[j].values.size
             and blocks[i].values.dtype == blocks[j].values.dtype
             and not (blocks[i].label.startswith(("recv", "sent"))
                      and blocks[j].label.startswith(("recv", "sent"))
                      and opening(blocks[i]) == opening(blocks[j]))]
    if len(pairs) > max_pairs:
        pick = np.random.default_rng(0).choice(len(pairs), max_pairs, replace=False)
        pairs = [pairs[k] for k in sorted(pick)]
    out = []
    for i, j in pairs:
        a, b = blocks[i], blocks[j]
        if a.values.dtype == np.uint8:         # packed XOR-shared bits: combine by XOR
            out.append(ViewBlock(f"[{a.label}] ^ [{b.label}]", a.values ^ b.values))
        else:
            out.append(ViewBlock(f"[{a.label}] + [{b.label}]", a.values + b.values))
            out.append(ViewBlock(f"[{a.label}] - [{b.label}]", a.values - b.values))
    return out


def _distinct(v: np.ndarray) -> np.ndarray:
    """The distinct values of a block of wide words (>= 4 bytes); narrow ones as they are.

    A protocol often puts one secret-dependent value in several places of a message (a
    square sends ``x - a`` and ``x - b``; a row's reciprocal is broadcast over the row);
    with the observer's randomness fixed those copies can become equal, and equal copies
    are not independent samples: kept, they inflate the chi-square statistic (a false
    alarm).  Two equal wide words are otherwise a 2^-32 event."""
    return np.unique(v) if v.dtype.itemsize >= 4 else v


def _run_differences(runs) -> list:
    """Run r minus run 0 (XOR for packed-bit uint8 blocks), one array per r >= 1."""
    if runs[0].dtype == np.uint8:
        return [x ^ runs[0] for x in runs[1:]]
    return [x - runs[0] for x in runs[1:]]


def _samples(runs) -> np.ndarray:
    """The chi-square samples of a block's runs.  Words (8 bytes): the distinct values of
    all runs (see :func:`_distinct`), each hashed to one byte: a component that is the
    same across many positions (a row's broadcast value added in) would otherwise make
    the bytes of one lane move together, not as independent samples.  Narrower blocks
    (packed bits, small openings): the values as they are, tested byte lane by lane."""
    if runs[0].dtype.itemsize < 8:
        return np.concatenate(runs)
    # distinct over all runs: a value pinned by the observer's randomness at a position
    # the hidden randomness picks (a one-hot row rotated by 0) can recur in several runs
    with np.errstate(over="ignore"):
        return (_mix64(_distinct(np.concatenate(runs))) >> np.uint64(56)).astype(np.uint8)




def _structure(blocks):
    return [(b.label, b.values.size, b.values.dtype.str) for b in blocks]


def audit_views(views_a, views_b, *, alpha: float = 1e-6, min_samples: int = 512,
                pairs: bool = True, max_pairs: int = 200, strict_structure: bool = True,
                observer: int = -1, protocol: str = "?", owner=None,
                min_block: int | None = None) -> AuditReport:
    """Compare the views of two secrets (see the module docstring): ``views_a`` and
    ``views_b`` are lists of runs, each a list of :class:`ViewBlock` (one run alone, a
    flat list of blocks, is accepted too).

    ``strict_structure``: every run must consist of the same messages in the same order
    and sizes (else :class:`ViewLeak`: traffic that depends on the secret leaks).  Set
    it False only for protocols whose message pattern is random but simulatable
    (top-k's selection levels); blocks that do not line up are then skipped, and the
    exact check applies to the blocks present in every run.  ``min_block`` is an old
    name of ``min_samples``."""
    if min_block is not None:
        min_samples = min_block
    if views_a and isinstance(views_a[0], ViewBlock):
        views_a, views_b = [views_a], [views_b]
    if not views_a or len(views_a) != len(views_b):
        raise ValueError("audit_views needs the same number of runs (>= 1) per secret")
    skipped = []
    if strict_structure:
        ref = _structure(views_a[0])
        for v in views_a + views_b:
            if _structure(v) != ref:
                la = [b.label for b in views_a[0]]
                lb = [b.label for b in v]
                if la != lb:
                    raise ViewLeak(f"the observer's view has a different structure for the "
                                   f"two secrets (messages or order differ; that alone "
                                   f"leaks): {la} vs {lb}")
                bad = next(x for x, y in zip(ref, _structure(v)) if x != y)
                raise ViewLeak(f"block {bad[0]!r}: shape/dtype depend on the secret")
    # every label's values per run, in order of first appearance
    per_run_a, per_run_b, order = {}, {}, {}
    for runs, per_run in ((views_a, per_run_a), (views_b, per_run_b)):
        for v in runs:
            for b in list(v) + (_pair_combos(v, max_pairs) if pairs else []):
                order.setdefault(b.label, None)
                per_run.setdefault(b.label, []).append(b.values)
    determined, cases, low_power = [], [], []
    for label in order:
        ra, rb = per_run_a.get(label, []), per_run_b.get(label, [])
        if (len(ra) != len(views_a) or len(rb) != len(views_b)
                or len({(x.size, x.dtype.str) for x in ra + rb}) != 1):
            # not in every run with one size: a random (simulatable) message pattern;
            # pooling blocks of different lengths would compare unlike samples
            skipped.append((label, sum(x.size for x in ra + rb)))
            continue
        if len(ra) > 1:
            fixed_a = all(np.array_equal(ra[0], x) for x in ra[1:])
            fixed_b = all(np.array_equal(rb[0], x) for x in rb[1:])
            if fixed_a != fixed_b and ra[0].nbytes >= 8:
                raise ViewLeak(
                    f"P{observer}'s view depends on the secret ({protocol}): block "
                    f"{label!r} is pinned down by the observer's own randomness for one "
                    f"secret (the same in all {len(ra)} runs) and varies for the other")
            if fixed_a and fixed_b:
                if not np.array_equal(ra[0], rb[0]):
                    raise ViewLeak(
                        f"P{observer}'s view depends on the secret ({protocol}): block "
                        f"{label!r} ({ra[0].size} values) is pinned down by the secret and "
                        f"the observer's own randomness (the same in all {len(ra)} runs) "
                        f"and differs between the two secrets")
                determined.append(label)
                continue
        if label.startswith("sent "):
            # a sent message is computed from the rest of the view (what the observer
            # received, its shares, its randomness): it joins the exact check above and
            # the pairs, not the standalone tests, where the structure of the observer's
            # own computation (one payload packed beside many bits, copies of one share)
            # makes its bytes move together rather than as independent samples
            continue
        variants = [(label, ra, rb)]
        if len(ra) > 1:
            variants.append((f"{label}, run differences", _run_differences(ra),
                             _run_differences(rb)))
        for lab, xa, xb in variants:
            va, vb = _samples(xa), _samples(xb)
            if min(va.size, vb.size) < min_samples:
                low_power.append((lab, int(min(va.size, vb.size))))
            cases.append((lab, va, vb))
    n_tests = max(1, sum(_lanes(va[:1]).shape[1] for _, va, _ in cases))
    threshold = alpha / n_tests
    tested = [(lab, va.size, min(chi_square_lane_pvalues(va, vb))) for lab, va, vb in cases]
    return AuditReport(observer, protocol, tested, skipped, n_tests, threshold,
                       min((p for _, _, p in tested), default=1.0), determined, low_power,
                       owner, len(views_a))


def assert_view_indistinguishable(protocol: str, op, make_secret_a, make_secret_b,
                                  observer: int, owner=0, *, integer=(), alpha: float = 1e-6,
                                  runs: int = 3, min_samples: int = 512, seed=None,
                                  pairs: bool = True, strict_structure: bool = True,
                                  exclude_tags=OUTPUT_TAGS, freeze: bool = True,
                                  reveal_outputs: bool = False,
                                  min_block: int | None = None) -> AuditReport:
    """Assert that party ``observer``'s view of ``op`` does not depend on the secret.

    ``make_secret_a``/``make_secret_b``: arrays (or tuples of arrays, one per input), or
    zero-argument callables returning them; both must have the same shapes.  ``owner``:
    the party that shares the inputs (one id, or one per input); ``observer`` must not
    own any.  Each secret runs ``runs`` times with the observer's own randomness frozen
    (``freeze``; see the module docstring); the views are compared by
    :func:`audit_views`.  ``reveal_outputs``: reveal the op's outputs to all inside the
    view (the secrets must give the same outputs).  Returns the report; raises
    :class:`ViewLeak` on a dependence.

        assert_view_indistinguishable("rep3", lambda p, x: x * x,
                                      np.zeros(4096), np.full(4096, 1234.5), observer=1)
    """
    if min_block is not None:
        min_samples = min_block
    if freeze and runs < 2:
        raise ValueError("the exact check needs runs >= 2")
    sa = make_secret_a() if callable(make_secret_a) else make_secret_a
    sb = make_secret_b() if callable(make_secret_b) else make_secret_b
    excl = tuple(exclude_tags) if not reveal_outputs else tuple(
        t for t in exclude_tags if t not in OUTPUT_TAGS)
    kw = dict(owner=owner, integer=integer, exclude_tags=excl, freeze=freeze,
              reveal_outputs=reveal_outputs, per_position=strict_structure)
    outs_a, outs_b = [], []
    va = [collect_view(protocol, op, sa, observer, seed=None if seed is None else seed + r,
                       outputs=outs_a, **kw) for r in range(runs)]
    vb = [collect_view(protocol, op, sb, observer,
                       seed=None if seed is None else seed + runs + r, outputs=outs_b, **kw)
          for r in range(runs)]
    if reveal_outputs and not all(
            np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(outs_a[0], outs_b[0])):
        raise ValueError("reveal_outputs needs two secrets whose outputs are equal (a "
                         "revealed output is the program's choice; what is audited is how "
                         "it is opened)")
    rep = audit_views(va, vb, alpha=alpha, min_samples=min_samples, pairs=pairs,
                      strict_structure=strict_structure, observer=observer,
                      protocol=protocol, owner=owner)
    if rep.min_p < rep.threshold:
        bad = [t for t in rep.tested if t[2] < rep.threshold]
        raise ViewLeak(f"P{observer}'s view depends on the secret ({protocol}): "
                       f"{len(bad)} block(s) fail the chi-square test at the Bonferroni "
                       f"threshold {rep.threshold:.3g}: "
                       + "; ".join(f"{lab} (n={n}, p={p:.3g})" for lab, n, p in bad[:5])
                       + f"\n{rep}")
    return rep


def audit_every_party(protocol: str, op, make_secret_a, make_secret_b, *, owners=None,
                      **kw) -> list:
    """:func:`assert_view_indistinguishable` for every owner (all inputs from one party;
    add2: P0 or P1, rep3: any) and every observer that owns no input.  Returns the
    reports."""
    owners = owners if owners is not None else ((0, 1) if protocol == "add2" else (0, 1, 2))
    reps = []
    for o in owners:
        for obs in range(3):
            if obs != o:
                reps.append(assert_view_indistinguishable(protocol, op, make_secret_a,
                                                          make_secret_b, observer=obs,
                                                          owner=o, **kw))
    return reps

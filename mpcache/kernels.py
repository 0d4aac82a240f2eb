"""Fast local ring kernels.

:func:`ring_matmul` is the hot kernel of every linear layer and of attention.  numpy's
``uint64 @`` runs no BLAS (about 0.2 G MAC/s here).  Two exact paths replace it:

* **direct** (default): a numba loop over uint64 that wraps mod 2^64 by itself.  Tiled so
  a block of output rows stays in cache while each row of ``b`` streams past once; LLVM
  vectorises the inner loop (AVX-512DQ has a 64-bit multiply, ``vpmullq``).  A right
  operand stored transposed (``K.T`` in ``q @ K.T``) is read as dot products instead of
  being copied.  Measured 5-8 G MAC/s per core on this machine, for a 1-row product (every
  decoding-step layer) 10-20x numpy and from 64 rows on still about 2x the limb path
  below (``mpcache bench ops``).
* **limb** (``MPCACHE_MATMUL=limb``; kept for CPUs without a fast 64-bit vector
  multiply): split each operand into 4 limbs of 16 bits, multiply limb matrices with
  float64 BLAS *exactly* and recombine mod 2^64::

      A @ B mod 2^64 = sum_{s=0..3} 2^(16 s) * (sum_{i+j=s} A_i @ B_j)

  Every inner sum is an integer below ``(s+1) K 2^32``, exact in float64 while
  ``K <= 2^19 / (s+1)``; the inner dimension is chunked at 2^17.  10 BLAS products.

Both give bit-identical results (tested against numpy's integer loop).

:func:`rotate_rows` / :func:`roll_rows` rotate each row of a one-hot block by its own
shift (numba; one-hot preprocessing in mpc/rep3.py and one_hot / top-k in
functions/select.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from queue import SimpleQueue

import numba
import numpy as np

LIMB_BITS = 16
LIMBS = 4
_K_CHUNK = 1 << 17
#: Output rows per cache tile of the direct kernel (measured: 16 beats 8, 32 and no tile).
_ROW_TILE = 16
MODES = ("direct", "limb")


def _mode() -> str:
    mode = os.environ.get("MPCACHE_MATMUL", "direct")
    if mode not in MODES:
        raise ValueError(f"MPCACHE_MATMUL must be one of {MODES}, not {mode!r}")
    return mode


# ----------------------------------------------------------------- direct uint64 path
#: From this many output columns on, the direct kernel adds 8 rows of b per pass over an
#: output row (:func:`_mm_kn2`).  Measured on the 2-core VM (decode products, m = 1, b out
#: of cache): 768x3072 1.12 -> 0.69 ms, 768x2304 0.77 -> 0.53 ms, 768x50257 17.1 -> 11.0
#: ms; at n <= 1536 the one-row loop is as fast or faster (1536: equal; 768: 0.20 vs 0.23).
_WIDE_N = 2048


@numba.njit(cache=True, nogil=True)
def _mm_kn2(a, b, out):
    """out += a @ b (mod 2^64) for C-contiguous 2-D a [m,k], b [k,n], out [m,n]: a tile of
    _ROW_TILE output rows stays in cache while each row of b streams past once.  Wide
    outputs (n >= _WIDE_N) take 8 rows of b per pass: an output row too big for the first
    cache level is then read and written k/8 times instead of k times."""
    m, n = out.shape
    k = a.shape[1]
    k8 = k - k % 8 if n >= _WIDE_N else 0
    for i0 in range(0, m, _ROW_TILE):
        i1 = min(m, i0 + _ROW_TILE)
        for kk in range(0, k8, 8):
            r0, r1, r2, r3 = b[kk], b[kk + 1], b[kk + 2], b[kk + 3]
            r4, r5, r6, r7 = b[kk + 4], b[kk + 5], b[kk + 6], b[kk + 7]
            for i in range(i0, i1):
                x0, x1, x2, x3 = a[i, kk], a[i, kk + 1], a[i, kk + 2], a[i, kk + 3]
                x4, x5, x6, x7 = a[i, kk + 4], a[i, kk + 5], a[i, kk + 6], a[i, kk + 7]
                o = out[i]
                for j in range(n):
                    o[j] += (x0 * r0[j] + x1 * r1[j] + x2 * r2[j] + x3 * r3[j]
                             + x4 * r4[j] + x5 * r5[j] + x6 * r6[j] + x7 * r7[j])
        for kk in range(k8, k):
            row = b[kk]
            for i in range(i0, i1):
                x = a[i, kk]
                o = out[i]
                for j in range(n):
                    o[j] += x * row[j]


@numba.njit(cache=True, nogil=True)
def _mm_nt2(a, bt, out):
    """out = a @ bt.T (mod 2^64) for C-contiguous a [m,k], bt [n,k]: dot products of rows."""
    m, n = out.shape
    k = a.shape[1]
    for i in range(m):
        ar = a[i]
        for j in range(n):
            br = bt[j]
            s = np.uint64(0)
            for kk in range(k):
                s += ar[kk] * br[kk]
            out[i, j] = s


@numba.njit(cache=True, nogil=True)
def _mm_kn3(a, b, out):
    """out[t] = a[t] @ b[t] over a batch (a batch of 1 broadcasts)."""
    for t in range(out.shape[0]):
        _mm_kn2(a[t if a.shape[0] > 1 else 0], b[t if b.shape[0] > 1 else 0], out[t])


@numba.njit(cache=True, nogil=True)
def _mm_nt3(a, bt, out):
    """out[t] = a[t] @ bt[t].T over a batch (a batch of 1 broadcasts)."""
    for t in range(out.shape[0]):
        _mm_nt2(a[t if a.shape[0] > 1 else 0], bt[t if bt.shape[0] > 1 else 0], out[t])


def _mats(x: np.ndarray, batch: tuple) -> list:
    """The 2-D matrices of ``x`` [..., r, c] for each index of a SMALL ``batch`` (one if
    shared), C-contiguous, views where possible: a KV cache with spare capacity is not
    contiguous as a whole, but each head's rows are."""
    if math.prod(x.shape[:-2]) == 1:
        return [np.ascontiguousarray(x.reshape(x.shape[-2:]))]
    if x.shape[:-2] != batch:
        x = np.broadcast_to(x, batch + x.shape[-2:])
    return [np.ascontiguousarray(x[idx]) for idx in np.ndindex(*batch)]


def _stack(x: np.ndarray, batch: tuple) -> np.ndarray:
    """``x`` [..., r, c] as one C-contiguous [B or 1, r, c] (a copy where not contiguous)."""
    r, c = x.shape[-2:]
    if math.prod(x.shape[:-2]) == 1:
        return np.ascontiguousarray(x.reshape(1, r, c))
    if x.shape[:-2] != batch:
        x = np.broadcast_to(x, batch + (r, c))
    return np.ascontiguousarray(x).reshape(-1, r, c)


#: Up to this many batch entries the kernel is called per matrix from Python (no copies of
#: strided views); larger batches (e.g. elementwise-style [n, 1, k] @ [n, k, 1]) are
#: stacked into one contiguous array and looped inside numba.
_PY_BATCH = 64


def _direct(a: np.ndarray, b: np.ndarray, out_shape: tuple) -> np.ndarray:
    batch = out_shape[:-2]
    nb = max(1, math.prod(batch))
    out = np.zeros((nb,) + out_shape[-2:], dtype=np.uint64)
    bt = np.swapaxes(b, -1, -2)
    if bt.strides[-1] == 8 and b.strides[-1] != 8:        # stored transposed (K.T)
        right, kernel, kernel3 = bt, _mm_nt2, _mm_nt3
    else:
        right, kernel, kernel3 = b, _mm_kn2, _mm_kn3
    if nb <= _PY_BATCH:
        am, bm = _mats(a, batch), _mats(right, batch)

        def run():
            for t in range(nb):
                kernel(am[t if len(am) > 1 else 0], bm[t if len(bm) > 1 else 0], out[t])
    else:
        sa, sb = _stack(a, batch), _stack(right, batch)

        def run():
            kernel3(sa, sb, out)
    macs = nb * out_shape[-2] * out_shape[-1] * a.shape[-1]
    if macs >= SIDE_CORE_MACS:
        if nb == 1 and _both_cores(am[0], bm[0], kernel, out[0]):
            return out.reshape(out_shape)
        if SIDE_CORE.run(run):
            return out.reshape(out_shape)
    run()
    return out.reshape(out_shape)


def _both_cores(a: np.ndarray, b: np.ndarray, kernel, out: np.ndarray) -> bool:
    """One big product split in halves between the side core and the caller, only while
    every other party on the caller's core is blocked in recv (``side_core``'s probe):
    then that core would otherwise idle while the side core works alone.  Halves of k
    (partial sums) for ``out += a @ b``; halves of n (rows of b = K.T) for the transposed
    kernel.  Same result; False (nothing done) when the split does not apply."""
    idle = getattr(_SIDE, "idle", None)
    if idle is None or not idle():
        return False
    if kernel is _mm_kn2:
        h = a.shape[1] // 2
        a_lo, a_hi = np.ascontiguousarray(a[:, :h]), np.ascontiguousarray(a[:, h:])
        part = np.zeros_like(out)
        if not SIDE_CORE.run(lambda: kernel(a_lo, b[:h], part),
                             own=lambda: kernel(a_hi, b[h:], out)):
            return False
        out += part
        return True
    h = b.shape[0] // 2
    lo = np.zeros((out.shape[0], h), out.dtype)
    hi = np.zeros((out.shape[0], b.shape[0] - h), out.dtype)
    if not SIDE_CORE.run(lambda: kernel(a, b[:h], lo), own=lambda: kernel(a, b[h:], hi)):
        return False
    out[:, :h] = lo
    out[:, h:] = hi
    return True


# ----------------------------------------------------------------- the side core
#: Products of at least this many multiply-adds may go to the side core (below, the
#: hand-off to another core costs more than it saves; ~0.2 ms of kernel time).
SIDE_CORE_MACS = 1 << 20
#: The interpreter's switch interval while a side job runs: the worker needs the lock
#: twice (to start the kernel, to hand back) while a party on the shared core may be
#: running Python; the default 5 ms would make it wait that long.
SIDE_SWITCH_S = 5e-5


class SideCore:
    """One worker thread that runs big ring products on a core the calling thread does not
    use, while the caller waits without the interpreter lock.

    Why: in-process parties share one core during a decoding step (``Party.latency_bound``:
    their many small rounds hand the lock back and forth, cheap only on one core), so the
    big weight and KV-cache products of P0 and P1 (rep3: of all three) ran one after the
    other on that core while the other core held only add2's dealer, or nothing.  A party
    that reaches a big product while the worker is idle hands it over and blocks; another
    party on the shared core runs meanwhile, typically its own product of the same layer.
    Only inside :func:`side_core` blocks (a pinned decoding step); one product at a time
    (a second one, arriving while the worker is busy, runs in its caller).  When every
    other party on the shared core is blocked in recv (waiting for this one's message),
    handing the whole product over would leave that core idle: the product is then split,
    half here and half in the caller (:func:`_both_cores`; measured in a gpt2 add2 MPCache
    step at 2048 tokens: the shared core's idle time, step wall minus the online parties'
    CPU, went from a median of 0.04-0.10 s to 0.02-0.04 s).  The kernels are numba
    ``nogil`` code and the result is the same array either way."""

    def __init__(self):
        self._reset()
        if hasattr(os, "register_at_fork"):      # a forked party has no worker thread
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        self._lock = threading.Lock()
        self._busy = False
        self._thread = None
        self._jobs: SimpleQueue = SimpleQueue()
        self._done: SimpleQueue = SimpleQueue()
        self._on = None

    def run(self, fn, own=None) -> bool:
        """Run ``fn()`` on the side core and return True, or return False at once (no side
        core for this thread, or the worker is busy): the caller then runs it itself.
        ``own``: the caller runs ``own()`` meanwhile (the other half of a split job)."""
        cores = getattr(_SIDE, "cores", None)
        if not cores:
            return False
        with self._lock:
            if self._busy:
                return False
            self._busy = True
        try:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="mpcache-side-core")
                self._thread.start()
            switch = sys.getswitchinterval()
            sys.setswitchinterval(SIDE_SWITCH_S)
            try:
                self._jobs.put((fn, cores))
                try:
                    if own is not None:
                        own()
                finally:
                    err, cpu = self._done.get()
            finally:
                sys.setswitchinterval(switch)
        finally:
            with self._lock:
                self._busy = False
        if err is not None:
            raise err
        on_cpu = getattr(_SIDE, "on_cpu", None)
        if on_cpu is not None:
            on_cpu(cpu)
        return True

    def _loop(self):
        while True:
            fn, cores = self._jobs.get()
            c0 = time.thread_time()
            try:
                if cores != self._on:
                    os.sched_setaffinity(0, cores)
                    self._on = cores
                fn()
                self._done.put((None, time.thread_time() - c0))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                self._done.put((e, time.thread_time() - c0))


SIDE_CORE = SideCore()
_SIDE = threading.local()


@contextlib.contextmanager
def side_core(cores, idle=None, on_cpu=None):
    """Within this block, big ring products of the calling thread may run on ``cores``
    (:class:`SideCore`); ``None`` or empty: never.  ``idle``: a probe, true while every
    other party on the caller's core is blocked, so that a product may be split between
    the side core and the caller (:func:`_both_cores`).  ``on_cpu(seconds)``: told the
    worker's CPU time for each job it ran for the caller (work off the caller's clock)."""
    prev = (getattr(_SIDE, "cores", None), getattr(_SIDE, "idle", None),
            getattr(_SIDE, "on_cpu", None))
    _SIDE.cores = frozenset(cores) if cores else None
    _SIDE.idle = idle if cores else None
    _SIDE.on_cpu = on_cpu if cores else None
    try:
        yield
    finally:
        _SIDE.cores, _SIDE.idle, _SIDE.on_cpu = prev


# ----------------------------------------------------------------- float64 limb path
@numba.njit(cache=True, nogil=True)
def _split_limbs(a, out):
    """a: uint64 [n] -> out: float64 [LIMBS, n] holding the 16-bit limbs."""
    n = a.shape[0]
    for i in range(n):
        v = a[i]
        out[0, i] = np.float64(v & 0xFFFF)
        out[1, i] = np.float64((v >> 16) & 0xFFFF)
        out[2, i] = np.float64((v >> 32) & 0xFFFF)
        out[3, i] = np.float64(v >> 48)


def limbs(a: np.ndarray) -> np.ndarray:
    """Split a uint64 matrix [m, k] into float64 limbs [LIMBS, m, k]."""
    a = np.ascontiguousarray(a, dtype=np.uint64)
    out = np.empty((LIMBS, a.size), dtype=np.float64)
    _split_limbs(a.reshape(-1), out)
    return out.reshape((LIMBS,) + a.shape)


@numba.njit(cache=True, nogil=True)
def _accumulate(acc, part, shift):
    """acc += uint64(part) << shift  (part holds exact non-negative integers < 2^53)."""
    a = acc.reshape(acc.size)
    p = part.reshape(part.size)
    for i in range(a.shape[0]):
        a[i] += np.uint64(p[i]) << np.uint64(shift)


def _limb(a: np.ndarray, b: np.ndarray, out_shape: tuple) -> np.ndarray:
    if a.shape[-2] < 4 or a.size * b.shape[-1] < 4096:
        return np.matmul(a, b)    # vector-matrix or tiny: numpy's integer loop is cheaper
    acc = np.zeros(out_shape, dtype=np.uint64)
    k = a.shape[-1]
    for k0 in range(0, k, _K_CHUNK):
        al = limbs(a[..., k0:k0 + _K_CHUNK])
        bl = limbs(b[..., k0:k0 + _K_CHUNK, :])
        for s in range(LIMBS):
            part = al[0] @ bl[s]
            for i in range(1, s + 1):
                part += al[i] @ bl[s - i]
            _accumulate(acc, np.ascontiguousarray(part), LIMB_BITS * s)
    return acc


# ----------------------------------------------------------------- entry point
def matmul_shape(sa: tuple, sb: tuple) -> tuple:
    """The shape of ``a @ b`` for operand shapes ``sa``, ``sb`` (numpy's rules, 1-D
    included), from the shapes alone.  (add2 once got it from ``np.matmul`` on broadcast
    int8 zeros: a real product, ~30 ms per embedding step at vocabulary 50257.)"""
    sa, sb = tuple(int(v) for v in sa), tuple(int(v) for v in sb)
    a2 = (1,) + sa if len(sa) == 1 else sa
    b2 = sb + (1,) if len(sb) == 1 else sb
    if not sa or not sb or a2[-1] != b2[-2]:
        raise ValueError(f"matmul shape mismatch: {sa} @ {sb}")
    out = np.broadcast_shapes(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(sa) == 1:
        out = out[:-2] + out[-1:]
    if len(sb) == 1:
        out = out[:-1]
    return out


def ring_matmul(a: np.ndarray, b: np.ndarray, mode: str | None = None) -> np.ndarray:
    """Exact ``a @ b mod 2^64`` for uint64 arrays, with numpy's matmul broadcasting rules
    (1-D, 2-D and batched operands).  ``mode``: ``"direct"`` / ``"limb"`` (default: env
    ``MPCACHE_MATMUL``, else direct)."""
    a = np.asarray(a, dtype=np.uint64)
    b = np.asarray(b, dtype=np.uint64)
    if a.ndim == 1 or b.ndim == 1:
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        out = ring_matmul(a2, b2, mode)
        if a.ndim == 1:
            out = out[..., 0, :]
        if b.ndim == 1:
            out = out[..., 0]
        return out
    out_shape = matmul_shape(a.shape, b.shape)
    if a.shape[-1] == 0 or 0 in out_shape:
        return np.zeros(out_shape, dtype=np.uint64)
    if (mode or _mode()) == "limb":
        return _limb(a, b, out_shape)
    return _direct(a, b, out_shape)


# -- per-row rotations (one-hot rows: mpc/rep3.py's preprocessing, functions/select.py) --
@numba.njit(cache=True, nogil=True)
def _rotate(X, s, n, out):
    """out[t, j, i] = X[t, j, (i - s_j) mod N] for i < n (numba: no index arrays)."""
    T, M, N = X.shape
    for t in range(T):
        for j in range(M):
            sh = s[j] % N
            for i in range(n):
                c = i - sh
                if c < 0:
                    c += N
                out[t, j, i] = X[t, j, c]


def rotate_rows(X: np.ndarray, s: np.ndarray, n: int | None = None) -> np.ndarray:
    """X [T, M, N] -> [T, M, n]: each row j rotated right by its own s_j, first n columns."""
    X = np.ascontiguousarray(X, dtype=np.uint64)
    n = X.shape[2] if n is None else int(n)
    out = np.empty(X.shape[:2] + (n,), np.uint64)
    _rotate(X, np.ascontiguousarray(s, dtype=np.int64), n, out)
    return out


def roll_rows(X: np.ndarray, s: np.ndarray) -> np.ndarray:
    """out[j, c] = X[j, (c - s_j) mod N] (each row rotated right by its own s_j)."""
    return rotate_rows(X[None], s)[0]


# -- the comparison leaves' table lookups (mpc/compare_core.masked_digits) -------------------
@numba.njit(cache=True, nogil=True)
def _leaves(c, tab, w, pad, lowmask, nout, out):
    D, N = out.shape[0], out.shape[1]
    dmask = np.uint64((1 << w) - 1)
    for i in range(N):
        v = (c[i] & lowmask) << np.uint64(pad)
        for j in range(D):
            q = np.int64((v >> np.uint64(j * w)) & dmask) * nout
            for o in range(nout):
                b = q + o
                out[j, i, o] = (tab[j, i, b >> 3] >> (b & 7)) & 1


def table_leaves(c: np.ndarray, tab: np.ndarray, w: int, low: int, nout: int) -> np.ndarray:
    """Leaves [D, N, nout] of the digit comparisons: for digit j (``w`` bits, little-endian,
    of the ``low`` low bits of public ``c``, padded at the bottom to D w bits) the bits
    ``nout * digit + o`` of the packed table row ``tab[j, i]`` (numba: one pass, no index
    arrays; for 36864 comparisons of 16 digits the numpy form took 37 ms, this and
    :func:`dealt_rows` together 4.4 ms)."""
    D = tab.shape[0]
    out = np.empty((D, c.size, nout), np.uint8)
    lowmask = np.uint64((1 << low) - 1) if low < 64 else np.uint64(2 ** 64 - 1)
    _leaves(np.ascontiguousarray(c, dtype=np.uint64), np.ascontiguousarray(tab),
            int(w), int(D * w - low), lowmask, int(nout), out)
    return out


@numba.njit(cache=True, nogil=True)
def _deal_rows(rho, table, w, pad, lowmask, mask_bytes, out):
    D, N, tb = out.shape
    dmask = np.uint64((1 << w) - 1)
    for i in range(N):
        v = (rho[i] & lowmask) << np.uint64(pad)
        for j in range(D):
            r = np.int64((v >> np.uint64(j * w)) & dmask)
            for b in range(tb):
                out[j, i, b] = table[r, b] ^ mask_bytes[j, i, b]


def dealt_rows(rho: np.ndarray, table: np.ndarray, w: int, low: int,
               mask_bytes: np.ndarray) -> np.ndarray:
    """``table[digit_j(rho_i)] ^ mask_bytes[j, i]`` [D, N, tb]: the dealer's masked table
    rows of every digit (the same digit split as :func:`table_leaves`)."""
    D, N, tb = mask_bytes.shape
    out = np.empty((D, N, tb), np.uint8)
    lowmask = np.uint64((1 << low) - 1) if low < 64 else np.uint64(2 ** 64 - 1)
    _deal_rows(np.ascontiguousarray(rho, dtype=np.uint64), np.ascontiguousarray(table),
               int(w), int(D * w - low), lowmask, np.ascontiguousarray(mask_bytes), out)
    return out


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) every kernel signature used, so a
    benchmark never times a compilation."""
    rotate_rows(np.zeros((1, 2, 3), np.uint64), np.zeros(2, np.int64))
    table_leaves(np.zeros(2, np.uint64), np.zeros((2, 2, 1), np.uint8), 4, 7, 2)
    dealt_rows(np.zeros(2, np.uint64), np.zeros((16, 4), np.uint8), 4, 7,
               np.zeros((2, 2, 4), np.uint8))
    one = np.ones((2, 3), dtype=np.uint64)
    for mode in MODES:
        ring_matmul(one, one.T.copy(), mode)
        ring_matmul(one, one.T, mode)
        ring_matmul(np.ones((_PY_BATCH + 1, 2, 3), np.uint64), one.T.copy(), mode)
        ring_matmul(np.ones((_PY_BATCH + 1, 2, 3), np.uint64),
                    np.ones((_PY_BATCH + 1, 2, 3), np.uint64).transpose(0, 2, 1), mode)

"""``mpcache bench ops``: per-op time, bytes per party, rounds and error, as JSON.

Each :class:`Case` makes plaintext inputs, shares them (outside the measured scope), runs
the op inside scope ``"op"`` at all three parties, and reveals the result (outside the
scope) to compare with a numpy reference.  Reported, per case (best of ``repeat`` runs by
time): ``seconds`` = max over parties of wall time inside the op scope; ``bytes_per_party``
= max over parties of online payload bytes sent in it; ``offline_bytes_per_party``
likewise for dealer traffic; ``rounds`` = the op's rounds on the critical path;
``messages`` = max send actions per party; ``max_abs_err`` against float64 numpy.

Other modules add cases with :func:`register` (the non-linear suite does).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...kernels import ring_matmul
from ...runtime import Session
from . import write_rows


@dataclass
class Case:
    op: str
    shape: str
    make: Callable            # rng -> tuple of plaintext inputs (numpy arrays)
    run: Callable             # (party, *secret inputs) -> SecretTensor
    reference: Callable       # (*plaintext inputs) -> numpy array
    owners: tuple = (0, 1)    # which party shares each input (cycled)
    integer: tuple = ()       # indices of inputs shared as ring integers
    tags: tuple = ()


CASES: list = []


def register(case: Case) -> Case:
    CASES.append(case)
    return case


def _mm(m, k, n):
    return Case("matmul", f"{m}x{k}x{n}",
                lambda r: (r.uniform(-1, 1, (m, k)), r.uniform(-1, 1, (k, n))),
                lambda p, a, b: a @ b, lambda a, b: a @ b)


register(Case("mul", "1048576", lambda r: (r.uniform(-4, 4, 1 << 20), r.uniform(-4, 4, 1 << 20)),
              lambda p, a, b: a * b, lambda a, b: a * b))


def _reveal_all(p, a):
    """Open ``a`` to every party inside the measured scope; the secret goes on."""
    p.reveal(a)
    return a


register(Case("reveal", "1024", lambda r: (r.uniform(-100, 100, 1024),), _reveal_all,
              lambda a: a))
register(_mm(1, 768, 768))
register(_mm(64, 768, 3072))
register(_mm(1, 64, 1024))


def _run_case(case: Case, protocol: str, repeat: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    inputs = case.make(rng)
    ref = np.asarray(case.reference(*inputs), dtype=np.float64)

    def job(p):
        xs = [p.share(x if p.id == case.owners[i % len(case.owners)] else None,
                      owner=case.owners[i % len(case.owners)], integer=i in case.integer)
              for i, x in enumerate(inputs)]
        with p.scope("op"):
            y = case.run(p, *xs)
        return p.reveal(y, to=0)

    best = None
    for _ in range(repeat):
        res = Session(protocol, seed=seed).run(job)
        sc = res.scope("op")
        row = {"op": case.op, "shape": case.shape, "protocol": protocol,
               "seconds": sc["seconds"], "bytes_per_party": sc["bytes_sent"],
               "offline_bytes_per_party": sc["offline_bytes_sent"],
               "rounds": sc["rounds"], "messages": sc["messages_sent"],
               "max_abs_err": float(np.max(np.abs(np.asarray(res.output, np.float64) - ref)))
               if ref.size else 0.0}
        if best is None or row["seconds"] < best["seconds"]:
            best = row
    return best


def _local_row(op: str, shape: str, seconds: float, exact: bool, **extra) -> dict:
    """A row for a local kernel (no parties): no bytes, no rounds; error 0 or inf."""
    return {"op": op, "shape": shape, "protocol": "local", "seconds": seconds,
            "bytes_per_party": 0, "rounds": 0, "max_abs_err": 0.0 if exact else float("inf"),
            **extra}


def _local_matmul_rows(repeat: int, seed: int) -> list:
    """ring_matmul (direct numba kernel, and the limb-split BLAS path) vs numpy's uint64 @
    on the same operands: a 64-row block and the 1-row product of a decoding step."""
    rng = np.random.default_rng(seed)
    rows = []
    for m, k, n in ((64, 768, 3072), (1, 768, 3072)):
        a = rng.integers(0, 2**64, (m, k), dtype=np.uint64, endpoint=False)
        b = rng.integers(0, 2**64, (k, n), dtype=np.uint64, endpoint=False)
        ref = np.matmul(a, b)
        base = None
        for name, fn in (("numpy_uint64_matmul", np.matmul),
                         ("ring_matmul_local", lambda x, y: ring_matmul(x, y, "direct")),
                         ("ring_matmul_limb", lambda x, y: ring_matmul(x, y, "limb"))):
            fn(a[:2], b[:, :8])                  # compile numba kernels outside the timing
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                out = fn(a, b)
                times.append(time.perf_counter() - t0)
            row = _local_row(name, f"{m}x{k}x{n}", min(times), np.array_equal(out, ref))
            if base is None:
                base = row["seconds"]
            else:
                row["speedup_vs_numpy"] = base / row["seconds"]
            rows.append(row)
    return rows


#: (k, n) of the 1-row weight products of a gpt2 decoding step (attention, MLP in/out,
#: LM head), timed out of cache: enough distinct matrices to stream MATVEC_BYTES per pass.
MATVEC_SHAPES = ((768, 768), (768, 3072), (3072, 768), (768, 50257))
MATVEC_BYTES = 1 << 27


def _decode_matvec_rows(repeat: int, seed: int) -> list:
    """``ring_matmul`` of one row by weight-sized matrices that do not fit the caches (as in
    a decoding step, where every weight is read once): seconds per product and the bytes
    of the matrix read per second (these products are bound by memory bandwidth)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, n in MATVEC_SHAPES:
        count = max(1, -(-MATVEC_BYTES // (8 * k * n)))
        mats = [rng.integers(0, 2**64, (k, n), dtype=np.uint64, endpoint=False)
                for _ in range(count)]
        a = rng.integers(0, 2**64, (1, k), dtype=np.uint64, endpoint=False)
        ok = np.array_equal(ring_matmul(a, mats[0]), np.matmul(a, mats[0]))
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for b in mats:
                ring_matmul(a, b)
            times.append((time.perf_counter() - t0) / count)
        sec = min(times)
        rows.append(_local_row("ring_matvec_uncached", f"1x{k}x{n}", sec, ok,
                               matrix_gb_per_s=8 * k * n / sec / 1e9))
        del mats
    return rows


def _load_extra_cases() -> None:
    """Import modules that register more cases (the non-linear suite), if present."""
    import importlib
    for mod in ("mpcache.apps.bench.ops_nonlinear",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def bench_ops(protocols=("rep3", "add2"), only=None, repeat=3, seed=0, json_path=None,
              echo=print) -> list:
    _load_extra_cases()
    rows = _local_matmul_rows(repeat, seed) + _decode_matvec_rows(repeat, seed)
    for r in rows:
        echo(_fmt(r))
    for protocol in protocols:
        for case in CASES:
            if only and case.op not in only and f"{case.op}_{case.shape}" not in only \
                    and f"{case.op}_{case.shape}".replace("1048576", "1M") not in only:
                continue
            row = _run_case(case, protocol, repeat, seed)
            rows.append(row)
            echo(_fmt(row))
    write_rows(rows, json_path)
    return rows


def _fmt(r: dict) -> str:
    return (f"{r['protocol']:5s} {r['op']:28s} {r['shape']:14s} {r['seconds'] * 1e3:9.2f} ms "
            f"{r['bytes_per_party'] / 1e6:9.4f} MB {r['rounds']:4d} rounds "
            f"err {r['max_abs_err']:.2e}"
            + (f"  x{r['speedup_vs_numpy']:.1f} vs numpy" if "speedup_vs_numpy" in r else "")
            + (f"  {r['matrix_gb_per_s']:.1f} GB/s" if "matrix_gb_per_s" in r else ""))

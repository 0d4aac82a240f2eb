"""Communication cost of each engine-core protocol as formulas (bytes are per party, the
max over parties; rounds on the critical path; offline = dealer/helper traffic, max over
parties).  tests/test_core_costs.py checks every formula against the accounting at three
shapes, so the docs (docs/protocols.md) and the code cannot drift apart.

``n``: number of output elements; ``m, k, q``: matmul (m x k) @ (k x q); ``E = 8`` bytes.
"""
from __future__ import annotations

E = 8


def cost(protocol: str, op: str, n: int = 0, m: int = 0, k: int = 0, q: int = 0,
         ndim: int = 1) -> dict:
    """{'bytes': online bytes per party, 'rounds': rounds, 'offline': offline bytes}."""
    table = _REP3 if protocol == "rep3" else _ADD2
    b, r, off = table[op](n=n, m=m, k=k, q=q, ndim=ndim)
    return {"bytes": b, "rounds": r, "offline": off}


_REP3 = {
    # owner sends x - x_o to P_{o+1} (x_{o+2} = 0) and the shape to P_{o+2}
    "share": lambda n, ndim, **_: (E * n + E * ndim, 1, 0),
    # each P_i sends one component to P_{i-1}
    "reveal": lambda n, **_: (E * n, 1, 0),
    # local cross terms + zero-sharing, one value to one neighbour
    "mul_ring": lambda n, **_: (E * n, 1, 0),
    "matmul_ring": lambda m, q, **_: (E * m * q, 1, 0),
    # fused product + exact truncation: P2 sends its part to P0 and P1 (round 1),
    # P0 and P1 exchange masked parts (round 1) and re-share (round 2); P2 deals [s],[m]
    "mul_fixed": lambda n, **_: (2 * E * n, 2, 2 * E * n),
    "matmul_fixed": lambda m, q, **_: (2 * E * m * q, 2, 2 * E * m * q),
    # standalone truncation (e.g. times a public float): P0, P1 open and re-share
    "trunc": lambda n, **_: (2 * E * n, 2, 2 * E * n),
}

_ADD2 = {
    # owner keeps x - r, the peer derives r from their key: only the shape moves
    "share": lambda ndim, **_: (2 * E * ndim, 1, 0),
    # P0 and P1 send their shares to the two others
    "reveal": lambda n, **_: (2 * E * n, 1, 0),
    # Beaver: open e = x - a and f = y - b; dealer sends c1
    "mul_ring": lambda n, **_: (2 * E * n, 1, E * n),
    "matmul_ring": lambda m, k, q, **_: (E * (m * k + k * q), 1, E * m * q),
    # + truncation: open c (1 round), dealer sends [s], [m] parts to P1
    "mul_fixed": lambda n, **_: (3 * E * n, 2, 3 * E * n),
    "matmul_fixed": lambda m, k, q, **_: (E * (m * k + k * q + m * q), 2, 3 * E * m * q),
    "trunc": lambda n, **_: (E * n, 1, 2 * E * n),
}

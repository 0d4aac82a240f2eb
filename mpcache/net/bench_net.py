"""Loopback network benchmark: gRPC transport versus a plain TCP socket pair.

Two processes (P0 here, P1 a spawned child) move the same tensors both ways in the same
run, so the figures are comparable:

* throughput: P0 sends an ``S`` MiB uint64 tensor, P1 receives it into a fresh array and
  answers a 1-element ack; MB/s = bytes / (send start .. ack received), the median over
  repetitions after untimed warm-up ones (:func:`_plan`).  gRPC is measured plaintext
  and with mutual TLS.
* latency: round trip of a 1-element (8-byte) exchange, median over many pings.

The socket baseline is what Python can do at best on this machine (``sendall`` from the
array's memory, ``recv_into`` a preallocated array), so ``ratio`` is the share of that
the transport reaches.  ``mpcache bench net --json FILE`` calls :func:`bench_net`.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

MIB = 1 << 20
PINGS = 300


def _plan(size_mib: int, reps: int) -> tuple:
    """(warm-up, timed) repetitions: small tensors get more, so the median is stable.

    The first transfers on a fresh gRPC connection are slow (flow-control window and
    allocator warm-up), so both transports get untimed warm-up rounds first.
    """
    return (1 if size_mib >= 64 else 2), max(reps, min(30, 64 // max(size_mib, 1)))


def _grpc_cfg(ports, certs_dir):
    from .config import parse_config, render_config, tomllib
    text = render_config(ports, insecure=certs_dir is None, certs_dir=certs_dir,
                         timeout_s=120.0, session="bench")
    return parse_config(tomllib.loads(text))


def _grpc_peer(ports, certs_dir, sizes, reps, pings) -> None:
    """P1: receive every tensor and answer with a 1-element ack."""
    from .grpc_transport import GrpcTransport
    tr = GrpcTransport(1, _grpc_cfg(ports, certs_dir), peers=[0])
    one = np.zeros(1, dtype=np.uint64)
    try:
        for _ in range(pings):
            tr.send(0, tr.recv(0, "ping"), "pong")
        for s in sizes:
            for _ in range(sum(_plan(s, reps))):
                tr.recv(0, "bench")
                tr.send(0, one, "ack")
        tr.close()
    except BaseException as e:
        tr.abort(f"{type(e).__name__}")
        raise


def _run_grpc(ports, certs_dir, sizes, reps, pings) -> dict:
    from .grpc_transport import GrpcTransport
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_grpc_peer, args=(ports, certs_dir, sizes, reps, pings),
                        daemon=True)
    child.start()
    out = {"mbps": {}, "rtt_us": None}
    try:
        tr = GrpcTransport(0, _grpc_cfg(ports, certs_dir), peers=[1])
        one = np.ones(1, dtype=np.uint64)
        rtts = []
        for _ in range(pings):
            t0 = time.perf_counter()
            tr.send(1, one, "ping")
            tr.recv(1, "pong")
            rtts.append(time.perf_counter() - t0)
        out["rtt_us"] = statistics.median(rtts[pings // 10:]) * 1e6
        for s in sizes:
            arr = np.random.default_rng(s).integers(0, 2**63, size=s * MIB // 8, dtype=np.uint64)
            warm, n = _plan(s, reps)
            times = []
            for _ in range(warm + n):
                t0 = time.perf_counter()
                tr.send(1, arr, "bench")
                tr.recv(1, "ack")
                times.append(time.perf_counter() - t0)
            times = times[warm:]
            out["mbps"][s] = arr.nbytes / statistics.median(times) / 1e6
        tr.close()
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    return out


def _recv_exact(conn: socket.socket, buf: memoryview) -> None:
    got = 0
    while got < len(buf):
        n = conn.recv_into(buf[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


def _socket_peer(port, sizes, reps, pings) -> None:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ping = bytearray(8)
    for _ in range(pings):
        _recv_exact(conn, memoryview(ping))
        conn.sendall(ping)
    for s in sizes:
        for _ in range(sum(_plan(s, reps))):
            dst = np.empty(s * MIB // 8, dtype=np.uint64)
            _recv_exact(conn, memoryview(dst).cast("B"))
            conn.sendall(b"\x00" * 8)
    conn.close()


def _run_socket(sizes, reps, pings) -> dict:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_socket_peer, args=(lsock.getsockname()[1], sizes, reps, pings),
                        daemon=True)
    child.start()
    out = {"mbps": {}, "rtt_us": None}
    try:
        lsock.settimeout(60)
        conn, _ = lsock.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ack = memoryview(bytearray(8))
        rtts = []
        for _ in range(pings):
            t0 = time.perf_counter()
            conn.sendall(b"\x01" * 8)
            _recv_exact(conn, ack)
            rtts.append(time.perf_counter() - t0)
        out["rtt_us"] = statistics.median(rtts[pings // 10:]) * 1e6
        for s in sizes:
            arr = np.random.default_rng(s).integers(0, 2**63, size=s * MIB // 8, dtype=np.uint64)
            warm, n = _plan(s, reps)
            times = []
            for _ in range(warm + n):
                t0 = time.perf_counter()
                conn.sendall(memoryview(arr).cast("B"))
                _recv_exact(conn, ack)
                times.append(time.perf_counter() - t0)
            times = times[warm:]
            out["mbps"][s] = arr.nbytes / statistics.median(times) / 1e6
        conn.close()
    finally:
        lsock.close()
        child.join(30)
        if child.is_alive():
            child.kill()
    return out


def bench_net(sizes_mib=(1, 16, 256), json_path=None, reps: int = 3, tls: bool = True,
              pings: int = PINGS, echo: bool = True) -> list:
    """Measure gRPC (plaintext and mTLS) vs raw TCP on loopback; optionally write JSON.

    Returns one row per size (``{"size_mib", "socket_mbps", "grpc_mbps",
    "grpc_tls_mbps", "ratio", "tls_ratio"}``) and a final latency row
    (``{"what": "rtt", ...}``, microseconds); prints a table unless ``echo=False``.
    """
    from .config import free_ports
    from .tls import make_certs
    sizes = [int(s) for s in sizes_mib]
    sock = _run_socket(sizes, reps, pings)
    plain = _run_grpc(free_ports(3), None, sizes, reps, pings)
    secure = None
    if tls:
        with tempfile.TemporaryDirectory() as d:
            make_certs(d)
            secure = _run_grpc(free_ports(3), d, sizes, reps, pings)
    rows = []
    for s in sizes:
        row = {"what": "throughput", "size_mib": s, "socket_mbps": round(sock["mbps"][s], 1),
               "grpc_mbps": round(plain["mbps"][s], 1),
               "ratio": round(plain["mbps"][s] / sock["mbps"][s], 3)}
        if secure:
            row["grpc_tls_mbps"] = round(secure["mbps"][s], 1)
            row["tls_ratio"] = round(secure["mbps"][s] / sock["mbps"][s], 3)
        rows.append(row)
    rtt = {"what": "rtt", "elements": 1, "socket_us": round(sock["rtt_us"], 1),
           "grpc_us": round(plain["rtt_us"], 1)}
    if secure:
        rtt["grpc_tls_us"] = round(secure["rtt_us"], 1)
    rows.append(rtt)
    if json_path:
        Path(json_path).write_text(json.dumps(rows, indent=2) + "\n")
    if echo:
        print(format_rows(rows), flush=True)
    return rows


def format_rows(rows) -> str:
    lines = []
    for r in rows:
        if r["what"] == "throughput":
            tls = f", gRPC+mTLS {r['grpc_tls_mbps']:8.1f} MB/s" if "grpc_tls_mbps" in r else ""
            lines.append(f"{r['size_mib']:4d} MiB: socket {r['socket_mbps']:8.1f} MB/s, "
                         f"gRPC {r['grpc_mbps']:8.1f} MB/s ({r['ratio']:.0%}){tls}")
        else:
            tls = f", gRPC+mTLS {r['grpc_tls_us']:.0f} us" if "grpc_tls_us" in r else ""
            lines.append(f"RTT (1 element): socket {r['socket_us']:.0f} us, "
                         f"gRPC {r['grpc_us']:.0f} us{tls}")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys
    bench_net(json_path=sys.argv[1] if len(sys.argv) > 1 else None)

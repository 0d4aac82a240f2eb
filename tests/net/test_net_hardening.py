"""Hardening of the network layer: strict config values, the seed only in test mode,
bounded inboxes, one server per port and one stream per link, reassembly memory that
follows the bytes received, dtype checks on receive, type-only abort reasons, checked
pipe headers."""
from __future__ import annotations

import argparse
import pickle
import queue
import socket
import threading
import tracemalloc
from multiprocessing.connection import Connection

import grpc
import numpy as np
import pytest

from mpcache import cli_net
from mpcache.net import config as config_mod
from mpcache.net.config import ConfigError, parse_config, render_config
from mpcache.net.grpc_transport import SERVICE, GrpcTransport
from mpcache.net.inbox import Inbox
from mpcache.net.local import LocalNetwork
from mpcache.net.pipe import ProcessLink
from mpcache.net.proto import mpcache_pb2 as pb
from mpcache.net.transport import (Message, PeerAborted, PeerTimeout, ProtocolMismatch,
                                   TransportError)
from mpcache.net.wire import Reassembler
from mpcache.net.config import tomllib  # tomllib, or tomli before 3.11
from test_net_unit import cfg_of, run3


def _doc(**session):
    d = tomllib.loads(render_config([50051, 50052, 50053], insecure=True, session="h"))
    d["session"].update(session)
    return d


# -- config: strict values -------------------------------------------------------------------
@pytest.mark.parametrize("key, value, text", [
    ("insecure", "false", "insecure must be true or false"),
    ("insecure", 1, "insecure must be true or false"),
    ("test_mode", "true", "test_mode must be true or false"),
    ("timeout_s", float("nan"), "timeout_s must be finite"),
    ("timeout_s", float("inf"), "timeout_s must be finite"),
    ("timeout_s", -1.0, "timeout_s must be finite, positive"),
    ("timeout_s", 0, "timeout_s must be finite, positive"),
    ("timeout_s", "30", "timeout_s must be a number"),
    ("timeout_s", True, "timeout_s must be a number"),
    ("connect_timeout_s", float("nan"), "connect_timeout_s must be finite"),
    ("chunk_mib", -4, "chunk_mib must be between"),
    ("chunk_mib", float("nan"), "chunk_mib must be between"),
    ("max_message_mib", -1, "max_message_mib must be between"),
    ("max_message_mib", 1e9, "max_message_mib must be between"),
    ("frac_bits", 18.5, "frac_bits must be an integer"),
    ("frac_bits", -1, "frac_bits must be in"),
    ("protocol", 3, "protocol must be a string"),
    ("id", 7, "id must be a string"),
])
def test_bad_session_values_are_config_errors(key, value, text):
    with pytest.raises(ConfigError, match=text):
        parse_config(_doc(**{key: value}))


def test_insecure_false_string_never_reads_as_true():
    d = _doc()
    d["session"]["insecure"] = False
    assert parse_config(d).insecure is False
    assert parse_config(_doc(insecure=True)).insecure is True


@pytest.mark.parametrize("where, value, text", [
    ("address", 50051, "address must be a \"HOST:PORT\" string, got int"),
    ("address", ["127.0.0.1", 1], "address must be a \"HOST:PORT\" string, got list"),
    ("bind", {"h": 1}, "bind must be a \"HOST:PORT\" string, got dict"),
    ("address", "127.0.0.1:99999", "port in 1-65535"),
    ("address", "127.0.0.1:", "HOST:PORT"),
    ("address", ":50051", "HOST:PORT"),
    ("key", 5, "key must be a string"),
])
def test_bad_addresses_are_config_errors_not_tracebacks(where, value, text):
    d = _doc()
    d["parties"][1][where] = value
    with pytest.raises(ConfigError, match=text):
        parse_config(d)


def test_bad_sections_are_config_errors():
    d = _doc()
    d["parties"] = {"address": "x"}
    with pytest.raises(ConfigError, match="array of tables"):
        parse_config(d)
    d = _doc()
    d["job"] = {"name": "matmul", "args": 5}
    with pytest.raises(ConfigError, match="args must be"):
        parse_config(d)
    d = _doc()
    d["parties"][0]["bogus"] = 1
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(d)


# -- config: the seed ------------------------------------------------------------------------
def test_seed_refused_outside_test_mode():
    with pytest.raises(ConfigError, match="test mode"):
        parse_config(_doc(seed=7))
    with pytest.raises(ConfigError, match="test mode"):
        parse_config(_doc(seed=7, test_mode=False))


def test_seed_in_test_mode_warns_loudly(capsys, monkeypatch):
    monkeypatch.setattr(config_mod, "_SEED_WARNED", set())
    cfg = parse_config(_doc(seed=7, test_mode=True))
    assert cfg.seed == 7 and cfg.test_mode
    err = capsys.readouterr().err
    assert "INSECURE TEST MODE" in err and "protect nothing" in err


@pytest.mark.parametrize("insecure", [False, True])
def test_seed_never_on_non_loopback_addresses(insecure):
    d = tomllib.loads(render_config([50051, 50052, 50053], host="10.0.0.7", insecure=False))
    d["session"].update(seed=1, test_mode=True)
    if insecure:      # plaintext off loopback is refused on its own as well
        d["session"]["insecure"] = True
    with pytest.raises(ConfigError, match="loopback"):
        parse_config(d)
    d["session"].pop("seed")         # without the seed the same TLS deployment is fine
    d["session"]["insecure"] = False
    assert parse_config(d).seed is None


@pytest.mark.parametrize("value", [-1, True, "7", 1.5])
def test_seed_must_be_a_non_negative_integer(value):
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        parse_config(_doc(seed=value, test_mode=True))


def _party_args(path, *extra):
    ap = argparse.ArgumentParser()
    cli_net.register(ap.add_subparsers(dest="cmd"))
    return ap.parse_args(["party", "--id", "0", "--config", str(path), *extra])


def test_cli_seed_needs_the_test_flag(tmp_path, capsys):
    path = tmp_path / "p.toml"
    path.write_text(render_config(insecure=True, session="cli"))
    with pytest.raises(ConfigError, match="test mode"):
        cli_net._load(_party_args(path, "--seed", "3"))
    cfg = cli_net._load(_party_args(path, "--seed", "3", "--insecure-test-seed"))
    assert cfg.seed == 3 and cfg.test_mode
    # the launcher hands the flag (never the seed) on to the parties
    a = _party_args(path, "--insecure-test-seed", "--timeout", "5")
    assert "--insecure-test-seed" in cli_net._override_argv(a)
    # `mpcache party` reports the refusal as a config error (exit 2), before any network
    rc = cli_net.main(["party", "--id", "0", "--config", str(path), "--seed", "3"])
    assert rc == 2 and "test mode" in capsys.readouterr().err


def test_render_config_seed_is_test_mode():
    cfg = parse_config(tomllib.loads(render_config(insecure=True, seed=5)))
    assert cfg.test_mode and cfg.seed == 5


# -- wire: memory follows received bytes ---------------------------------------------------------
def _asm(max_frame=1 << 20, max_msg=1 << 31):
    return Reassembler(0, 1, "s", max_frame, max_msg)


def _hdr(**kw):
    base = dict(session="s", sender=1, seq=0, tag="t", dtype="|u1", kind=pb.DATA)
    base.update(kw)
    return pb.Frame(**base)


def test_a_header_alone_allocates_nothing():
    asm = _asm()
    big = 1 << 30                                   # claims 1 GiB in 1024 chunks of 1 MiB
    tracemalloc.start()
    try:
        assert asm.add(_hdr(shape=[big], chunk=0, n_chunks=1024, total_bytes=big),
                       memoryview(b"\1" * 1024)) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (1 << 20)                         # no 1 GiB buffer behind the header
    assert asm.offset == 1024 and asm.buf is None


def test_the_array_is_allocated_once_half_has_arrived():
    total, step = 16 << 10, 1 << 10
    asm = _asm(max_frame=step)
    raw = bytes(range(256)) * (total // 256)
    for k in range(total // step):
        fr = _hdr(shape=[total], chunk=0, n_chunks=total // step, total_bytes=total) \
            if k == 0 else _hdr(chunk=k)
        out = asm.add(fr, memoryview(raw[k * step:(k + 1) * step]))
        received = (k + 1) * step
        if received < total:
            assert (asm.buf is None) == (2 * received < total)   # never > 2x what came
    assert out.payload.tobytes() == raw


def test_chunked_message_is_rebuilt_exactly():
    arr = np.arange(1000, dtype=np.uint64).reshape(10, 100)
    raw = arr.tobytes()
    asm = _asm(max_frame=4096)
    parts = [raw[i:i + 3000] for i in range(0, len(raw), 3000)]
    out = None
    for k, p in enumerate(parts):
        fr = _hdr(dtype=arr.dtype.str, shape=arr.shape, chunk=0, n_chunks=len(parts),
                  total_bytes=len(raw)) if k == 0 else _hdr(chunk=k)
        out = asm.add(fr, memoryview(p))
        assert (out is None) == (k < len(parts) - 1)
    assert np.array_equal(out.payload, arr) and out.payload.flags.writeable


@pytest.mark.parametrize("hdr, payload, text", [
    (dict(shape=[8], n_chunks=1, total_bytes=8), b"\0" * 4, "header says 8"),
    (dict(shape=[8], n_chunks=1, total_bytes=8), b"\0" * 9, "header says 8"),
    (dict(shape=[10], n_chunks=11, total_bytes=10), b"\0", "announced 11 chunks"),
    (dict(shape=[1 << 24], n_chunks=2, total_bytes=1 << 24), b"\0", "announced 2 chunks"),
    (dict(shape=[1] * 40, n_chunks=1, total_bytes=1), b"\0", "sent shape"),
    (dict(shape=[8], n_chunks=0, total_bytes=8), b"\0" * 8, "chunks"),
])
def test_inconsistent_headers_are_refused(hdr, payload, text):
    with pytest.raises(ProtocolMismatch, match=text):
        _asm().add(_hdr(chunk=0, **hdr), memoryview(payload))


def test_empty_middle_chunk_is_refused():
    asm = _asm()
    asm.add(_hdr(shape=[8], chunk=0, n_chunks=3, total_bytes=8), memoryview(b"\0" * 4))
    with pytest.raises(ProtocolMismatch):
        asm.add(_hdr(chunk=1), memoryview(b""))


# -- recv checks dtype ---------------------------------------------------------------------------
def _pair():
    net = LocalNetwork()
    return net.transport(0, session="d", timeout=5.0), net.transport(1, session="d", timeout=5.0)


def test_recv_checks_dtype():
    a, b = _pair()
    a.send(1, np.zeros(4, np.uint8), "bits")
    with pytest.raises(ProtocolMismatch, match="dtype \\|u1, expected <u8"):
        b.recv(0, "bits", (4,), np.uint64)
    a, b = _pair()
    a.send(1, np.zeros(4, np.float64), "ring")      # a shape alone still refuses floats
    with pytest.raises(ProtocolMismatch, match="dtype <f8, expected an integer dtype"):
        b.recv(0, "ring", (4,))
    a, b = _pair()
    a.send(1, np.zeros(4, np.uint64), "ok")
    a.send(1, np.zeros(2, np.uint8), "ok2")
    a.send(1, np.zeros(2, np.float64), "free")       # no shape: any dtype
    assert b.recv(0, "ok", (4,), np.uint64).dtype == np.uint64
    assert b.recv(0, "ok2", (2,)).dtype == np.uint8
    assert b.recv(0, "free").dtype == np.float64


def test_exchange_checks_the_dtype_it_sent():
    net = LocalNetwork()
    t = [net.transport(i, session="x", timeout=5.0) for i in range(3)]
    t[1].send(0, np.zeros(3, np.int64), "ex")
    with pytest.raises(ProtocolMismatch, match="dtype <i8, expected <u8"):
        t[0].exchange(2, np.zeros(3, np.uint64), 1, "ex")


# -- bounded inbox -------------------------------------------------------------------------------
def test_inbox_bounds_messages_and_bytes():
    box = Inbox(max_messages=2, max_bytes=100)
    assert box.put("a", 10) and box.put("b", 10)
    done = threading.Event()

    def third():
        box.put("c", 10)
        done.set()
    t = threading.Thread(target=third, daemon=True)
    t.start()
    assert not done.wait(0.3) and len(box) == 2      # full: the put waits
    assert box.get(1.0) == "a"
    t.join(10)
    assert done.is_set() and len(box) == 2
    box.put_control("ctl")                           # control items are never held back
    assert len(box) == 3
    assert [box.get(1.0) for _ in range(3)] == ["b", "c", "ctl"]
    with pytest.raises(queue.Empty):
        box.get(0.01)
    # bytes: one message larger than the bound enters only an empty inbox
    assert box.put("big", 500)
    assert box.put("x", 1, alive=lambda: False) is False    # full and shutting down
    assert box.get(1.0) == "big" and box.nbytes == 0


def test_grpc_inbox_backpressure_keeps_order(monkeypatch):
    monkeypatch.setattr(GrpcTransport, "INBOX_MESSAGES", 2)
    monkeypatch.setattr(GrpcTransport, "INBOX_BYTES", 64 << 10)
    cfg = cfg_of(timeout_s=20.0)
    n, seen = 40, {}

    def fn(tr):
        if tr.party_id == 1:
            for k in range(n):
                tr.send(0, np.full(4096, k, np.uint64), f"m{k}")      # 32 KiB each
            tr.send(0, np.zeros(1, np.uint64), "go")
            return None
        if tr.party_id == 0:
            tr.recv(2, "start")                       # let P1 fill the inbox first
            got = [int(tr.recv(1, f"m{k}", (4096,))[0]) for k in range(n)]
            tr.recv(1, "go")
            return got
        tr.send(0, np.zeros(1, np.uint64), "start")
        return None

    def watch(tr):
        if tr.party_id == 0:
            box = tr._inbox[1]
            orig = box.put

            def put(item, nbytes=0, alive=None):
                ok = orig(item, nbytes, alive)
                seen["max"] = max(seen.get("max", 0), len(box))
                seen["max_bytes"] = max(seen.get("max_bytes", 0), box.nbytes)
                return ok
            box.put = put
        return fn(tr)
    res, err = run3(cfg, watch)
    assert err == [None, None, None], err
    assert res[0] == list(range(n))
    assert seen["max"] <= 2 and seen["max_bytes"] <= 64 << 10


def test_full_inbox_times_out_the_sender(monkeypatch):
    monkeypatch.setattr(GrpcTransport, "INBOX_MESSAGES", 2)
    monkeypatch.setattr(GrpcTransport, "INBOX_BYTES", 1 << 20)
    cfg = cfg_of(timeout_s=2.0, connect_timeout_s=30.0)
    kept = {}

    def fn(tr):
        if tr.party_id == 1:
            for k in range(200):                          # 200 MiB: far past every buffer
                tr.send(0, np.zeros(1 << 17, np.uint64), "flood")
        elif tr.party_id == 0:
            kept["tr"] = tr
            tr.timeout = 60.0
            tr.recv(2, "never")                           # never reads P1's link
        else:
            tr.timeout = 60.0
            tr.recv(0, "never")
    res, err = run3(cfg, fn)
    assert isinstance(err[1], PeerTimeout) and "did not take step 'flood'" in str(err[1])
    assert isinstance(err[0], PeerAborted) and isinstance(err[2], PeerAborted)
    box = kept["tr"]._inbox[1]
    assert box.nbytes <= 1 << 20                          # the peer could not push more


# -- one server per port, one stream per link ----------------------------------------------------
def test_second_server_on_the_same_port_fails():
    cfg = cfg_of()
    a = GrpcTransport(0, cfg, connect=False)
    b = GrpcTransport(0, cfg, connect=False)
    a._start_server()
    try:
        with pytest.raises(TransportError, match="cannot listen on"):
            b._start_server()
    finally:
        a._server.stop(None).wait(5)
        if b._server is not None:
            b._server.stop(None).wait(5)


def test_duplicate_link_stream_is_refused():
    cfg = cfg_of(timeout_s=10.0)
    codes = {}

    def fn(tr):
        if tr.party_id == 2:
            tr.recv(0, "ready")
            dup = tr._channels[0].stream_unary(f"/{SERVICE}/Link",
                                               request_serializer=lambda b: b,
                                               response_deserializer=pb.LinkEnd.FromString)
            md = (("mpcache-party", "2"), ("mpcache-session", tr.session))
            try:
                dup(iter([]), metadata=md, timeout=5)
            except grpc.RpcError as e:
                codes["dup"] = (e.code(), e.details())
            tr.send(0, np.arange(3, dtype=np.uint64), "after")   # the real link still works
            return None
        if tr.party_id == 0:
            tr.send(2, np.zeros(1, np.uint64), "ready")
            return tr.recv(2, "after", (3,)).tolist()
        return None
    res, err = run3(cfg, fn)
    assert err == [None, None, None], err
    assert res[0] == [0, 1, 2]
    code, details = codes["dup"]
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already has a link from party 2" in details


# -- abort reasons carry no exception message ------------------------------------------------------
def test_peers_learn_only_the_exception_type():
    cfg = cfg_of(timeout_s=10.0)
    err = [None] * 3

    def body(i):
        try:
            with GrpcTransport(i, cfg) as tr:
                if i == 0:
                    raise ValueError("the private input is 31337")
                tr.recv(0, "never")
        except BaseException as e:  # noqa: BLE001
            err[i] = e
    ths = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(3)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(60)
    assert isinstance(err[0], ValueError)
    for i in (1, 2):
        assert isinstance(err[i], PeerAborted), err[i]
        assert "ValueError in party 0" in str(err[i]) and "31337" not in str(err[i])


# -- pipe: headers checked before allocating -------------------------------------------------------
def _link_with(header, body=None):
    a, b = socket.socketpair()
    reasons = []
    link = ProcessLink(b, reasons.append)
    conn = Connection(a.detach())
    conn.send_bytes(pickle.dumps(header))
    if body is not None:
        conn.send_bytes(body)
    return link, reasons, conn


@pytest.mark.parametrize("dt, shape, raw, body, text", [
    ("|O", (2,), None, b"\0" * 16, "bad message header"),
    ("<u8", (-1,), None, None, "bad message header"),
    ("<u8", (1 << 40,), None, None, "exceeds the limit"),
    ("<u8", (4,), b"\0" * 8, None, "its header says 32"),
    ("<u8", (4,), None, b"\0" * 8, "its header says 32"),
    ("<u8", (1,), None, b"\0" * 64, "failed"),
])
def test_pipe_header_is_checked(dt, shape, raw, body, text):
    link, reasons, conn = _link_with(("s", 1, 0, "t", 1, False, dt, shape, raw), body)
    with pytest.raises(queue.Empty):
        link.get(5.0)
    assert link.broken and reasons and text in reasons[0], reasons
    conn.close()


def test_pipe_good_message_roundtrips():
    a, b = socket.socketpair()
    got = ProcessLink(b, lambda r: None)
    sent = ProcessLink(a, lambda r: None)
    for arr in (np.arange(5, dtype=np.uint64), np.ones((300, 300), np.uint8)):
        sent.put(Message("s", 1, 0, "t", 1, arr))
        m = got.get(5.0)
        assert np.array_equal(m.payload, arr) and m.payload.dtype == arr.dtype
    sent.close()
    got.close()

"""``mpcache doctor`` (mpcache/net/doctor.py): certificates, addresses, ports, peers."""
from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import sys
import threading

from mpcache.net.config import free_ports, load_config, render_config
from mpcache.net.doctor import _Listener, check_bind, check_peers, check_tls, run_doctor
from mpcache.net.tls import make_certs


def _deployment(tmp_path, name="d"):
    """A loopback deployment as `mpcache certs` makes it: CA, three keys, parties.toml."""
    d = tmp_path / name
    make_certs(d)
    cfg = d / "parties.toml"
    cfg.write_text(render_config(free_ports(3), certs_dir="."))
    return d, load_config(cfg)


def _levels(findings, topic):
    return [f.level for f in findings if f.topic == topic]


def _fails(findings):
    return [f.line() for f in findings if f.level == "fail"]


def test_all_three_serve_and_reach_each_other(tmp_path):
    _, cfg = _deployment(tmp_path)
    out = {}
    ts = [threading.Thread(target=lambda i=i: out.__setitem__(i, run_doctor(cfg, i, 1.0, 20.0)))
          for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(3):
        assert _fails(out[i]) == [], out[i]
        peers = [f for f in out[i] if f.topic.startswith("peer")]
        # each peer: our probe (TLS ok) and its doctor's probe of us
        assert len(peers) == 4 and all(f.level == "ok" for f in peers)
        assert sum("TLS ok" in f.text for f in peers) == 2
        assert sum("reached us" in f.text for f in peers) == 2
        assert _levels(out[i], "tls") == ["ok"]


def test_one_peer_unreachable(tmp_path):
    _, cfg = _deployment(tmp_path)
    lis = _Listener(cfg, 1)                      # party 1 listens, party 2 does not
    try:
        got = check_peers(cfg, 0, timeout=1.0)
    finally:
        lis.close()
    by = {f.topic: f for f in got}
    assert by["peer 1"].level == "ok" and "TLS ok" in by["peer 1"].text
    assert by["peer 2"].level == "fail"
    assert "connection refused" in by["peer 2"].text
    assert cfg.parties[2].address in by["peer 2"].text


def test_certificate_of_another_ca_fails_locally_and_at_the_peer(tmp_path):
    d, cfg = _deployment(tmp_path)
    other, _ = _deployment(tmp_path, "other")
    for f in ("party1.pem", "party1.key"):      # party 1 got its cert from a foreign CA
        (d / f).unlink()
        shutil.copy(other / f, d / f)
        (d / f).chmod(0o600)
    local = check_tls(cfg, 1)
    assert any("not signed by the CA" in f.text for f in local if f.level == "fail"), local
    assert check_tls(cfg, 0)[-1].level == "ok"
    lis = _Listener(cfg, 1)
    try:
        got = {f.topic: f for f in check_peers(cfg, 0, timeout=1.0)}
    finally:
        lis.close()
    assert got["peer 1"].level == "fail"
    assert "not accepted" in got["peer 1"].text and "mpcache-party-1" in got["peer 1"].text


def test_certificate_names_another_party(tmp_path):
    d, cfg = _deployment(tmp_path)
    for ext in ("pem", "key"):
        (d / f"party1.{ext}").unlink()
        shutil.copy(d / f"party2.{ext}", d / f"party1.{ext}")
    got = _fails(check_tls(cfg, 1))
    assert len(got) == 1 and "names party [2], but this is party 1" in got[0]


def test_key_of_another_certificate(tmp_path):
    d, cfg = _deployment(tmp_path)
    (d / "party1.key").unlink()
    shutil.copy(d / "party2.key", d / "party1.key")
    got = _fails(check_tls(cfg, 1))
    assert len(got) == 1 and "is not the key of" in got[0]


def test_missing_files_and_expiry(tmp_path):
    d, cfg = _deployment(tmp_path)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=400)
    got = _fails(check_tls(cfg, 0, now=later))
    assert any("expired on" in g for g in got) and any("CA" in g for g in got)
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=362)
    assert any(f.level == "warn" and "expires on" in f.text for f in check_tls(cfg, 0, now=soon))
    (d / "ca.pem").unlink()
    got = _fails(check_tls(cfg, 0))
    assert len(got) == 1 and "CA file not found" in got[0]


def test_port_in_use_and_foreign_address():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    try:
        port = s.getsockname()[1]
        f = check_bind(f"127.0.0.1:{port}")
        assert f.level == "fail" and "in use" in f.text
    finally:
        s.close()
    assert check_bind(f"127.0.0.1:{port}").level == "ok"
    f = check_bind("192.0.2.1:50051")           # TEST-NET-1: never this host's address
    assert f.level == "fail" and "not an address of this host" in f.text


def test_addresses(tmp_path):
    text = render_config([50051, 50051, 50053], insecure=True)
    p = tmp_path / "p.toml"
    p.write_text(text)
    got = _fails(run_doctor(load_config(p), 0, peers=False))
    assert any("share the address 127.0.0.1:50051" in g for g in got)
    p.write_text(render_config([50051, 50052, 50053], host="10.0.0.9", certs_dir=".")
                 .replace('address = "10.0.0.9:50051"',
                          'address = "10.0.0.9:50051"\nbind = "127.0.0.1:50051"'))
    got = _fails(run_doctor(load_config(p), 0, peers=False))
    assert any("listens on loopback 127.0.0.1:50051 but peers dial 10.0.0.9:50051" in g
               for g in got)


def test_insecure_probe(tmp_path):
    p = tmp_path / "p.toml"
    p.write_text(render_config(free_ports(3), insecure=True))
    cfg = load_config(p)
    lis = _Listener(cfg, 2)
    try:
        got = {f.topic: f for f in run_doctor(cfg, 0, timeout=1.0)}
    finally:
        lis.close()
    assert got["tls"].level == "warn"
    assert got["peer 2"].level == "ok" and "plaintext" in got["peer 2"].text
    assert got["peer 1"].level == "fail"


def _doctor(cfg_path, i, *extra):
    return subprocess.Popen([sys.executable, "-m", "mpcache.cli", "doctor", "--config",
                             str(cfg_path), "--id", str(i), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cli_three_hosts_serve_and_a_bad_certificate(tmp_path):
    """`mpcache doctor --serve` as on three hosts: each exits 0 with both peers reached
    both ways; a foreign certificate makes party 1's doctor exit 1 naming it."""
    d, _ = _deployment(tmp_path)
    procs = [_doctor(d / "parties.toml", i, "--serve", "60") for i in range(3)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, out
        assert out.count("ok   peer") == 4 and f"doctor: party {i}: no problems" in out
    other, _ = _deployment(tmp_path, "other")
    (d / "party1.pem").unlink()
    shutil.copy(other / "party1.pem", d / "party1.pem")
    p = _doctor(d / "parties.toml", 1, "--no-peers")
    out = p.communicate(timeout=60)[0]
    assert p.returncode == 1
    fails = [ln for ln in out.splitlines() if ln.startswith("FAIL")]
    assert any("not signed by the CA" in ln for ln in fails), out
    assert "doctor: party 1:" in out and "problem(s)" in out

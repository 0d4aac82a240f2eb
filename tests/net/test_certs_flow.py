"""Certificates: the deployment flow (CA, a key and request per party, signing), safe key
files, the loopback demo folder, and the private temporary folder for a run's keys."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mpcache import cli_net
from mpcache.net.config import free_ports, parse_config
from mpcache.net.grpc_transport import GrpcTransport
from mpcache.net.tls import (CertError, TlsFiles, cert_names, make_ca, make_certs,
                             make_request, named_parties, private_temp_dir, read_key_file,
                             sign_request, write_new_file)
from mpcache.net.transport import TransportError
from mpcache.net.config import tomllib  # tomllib, or tomli before 3.11


def _mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _deploy(root, hosts=("127.0.0.1",)):
    """CA in root/ca, each party's key made in its own folder root/pN, signed at the CA."""
    ca = make_ca(root / "ca")
    for i in range(3):
        req = make_request(root / f"p{i}", i, hosts=hosts)
        sign_request(ca["ca"], ca["ca_key"], req["csr"], i, root / f"p{i}" / f"party{i}.pem")
    return ca


def test_deployment_flow_files_and_names(tmp_path):
    ca = _deploy(tmp_path)
    assert _mode(ca["ca_key"]) == 0o600 and _mode(tmp_path / "ca") == 0o700
    ca_cert = x509.load_pem_x509_certificate(ca["ca"].read_bytes())
    for i in range(3):
        d = tmp_path / f"p{i}"
        assert _mode(d / f"party{i}.key") == 0o600
        assert not (d / "ca.key").exists()                # no party folder holds the CA key
        pem = (d / f"party{i}.pem").read_bytes()
        assert named_parties(cert_names(pem)) == {i}
        cert = x509.load_pem_x509_certificate(pem)
        cert.verify_directly_issued_by(ca_cert)
        key = serialization.load_pem_private_key((d / f"party{i}.key").read_bytes(), None)
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_deployment_certificates_run_a_tls_session(tmp_path):
    _deploy(tmp_path)
    ports = free_ports(3)
    doc = {"session": {"id": "flow", "timeout_s": 20.0, "connect_timeout_s": 20.0},
           "tls": {"ca": "ca/ca.pem", "cert": "p{id}/party{id}.pem",
                   "key": "p{id}/party{id}.key"},
           "parties": [{"address": f"127.0.0.1:{p}"} for p in ports]}
    cfg = parse_config(doc, base_dir=tmp_path)
    out, err = [None] * 3, [None] * 3

    def body(i):
        try:
            with GrpcTransport(i, cfg) as tr:
                assert tr.tls is not None
                tr.send((i + 1) % 3, np.full(3, i, np.uint64), "ring")
                out[i] = tr.recv((i - 1) % 3, "ring", (3,), np.uint64).tolist()
        except BaseException as e:  # noqa: BLE001
            err[i] = e
    ths = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(3)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(60)
    assert err == [None, None, None], err
    assert out == [[2] * 3, [0] * 3, [1] * 3]


def test_sign_refuses_a_request_for_another_party(tmp_path):
    ca = make_ca(tmp_path / "ca")
    req = make_request(tmp_path / "p1", 1)
    with pytest.raises(CertError, match="expected 'mpcache-party-2'"):
        sign_request(ca["ca"], ca["ca_key"], req["csr"], 2, tmp_path / "x.pem")
    assert not (tmp_path / "x.pem").exists()


def test_sign_refuses_a_request_naming_two_parties(tmp_path):
    ca = make_ca(tmp_path / "ca")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mpcache-party-1")]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName("mpcache-party-1"), x509.DNSName("mpcache-party-0")]),
               critical=False)
           .sign(key, hashes.SHA256()))
    path = tmp_path / "evil.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertError, match="also names mpcache-party-0"):
        sign_request(ca["ca"], ca["ca_key"], path, 1, tmp_path / "x.pem")


def test_sign_refuses_a_mismatched_ca_key(tmp_path):
    a, b = make_ca(tmp_path / "a"), make_ca(tmp_path / "b")
    req = make_request(tmp_path / "p0", 0)
    with pytest.raises(CertError, match="is not the key of"):
        sign_request(a["ca"], b["ca_key"], req["csr"], 0, tmp_path / "x.pem")


def test_nothing_is_overwritten(tmp_path):
    make_ca(tmp_path / "ca")
    before = (tmp_path / "ca" / "ca.key").read_bytes()
    with pytest.raises(CertError, match="already exists"):
        make_ca(tmp_path / "ca")
    assert (tmp_path / "ca" / "ca.key").read_bytes() == before
    make_request(tmp_path / "p", 0)
    with pytest.raises(CertError, match="already exists"):
        make_request(tmp_path / "p", 0)
    make_certs(tmp_path / "demo")
    with pytest.raises(CertError, match="already exists"):
        make_certs(tmp_path / "demo")


def test_write_new_file_never_follows_links(tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"keep me")
    link = tmp_path / "party0.key"
    link.symlink_to(target)
    with pytest.raises(CertError, match="refusing to overwrite"):
        write_new_file(link, b"secret", 0o600)
    assert target.read_bytes() == b"keep me"
    dangling = tmp_path / "party1.key"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(CertError):
        write_new_file(dangling, b"secret", 0o600)
    assert not (tmp_path / "nowhere").exists()


def test_key_mode_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        p = write_new_file(tmp_path / "k.key", b"secret", 0o600)
    finally:
        os.umask(old)
    assert _mode(p) == 0o600 and p.read_bytes() == b"secret"


def test_a_readable_key_is_narrowed_on_load(tmp_path, capsys):
    paths = make_certs(tmp_path)
    key = paths["key0"]
    os.chmod(key, 0o644)
    assert read_key_file(key) == key.read_bytes()
    assert _mode(key) == 0o600
    assert "readable by other users" in capsys.readouterr().err
    os.chmod(key, 0o640)
    with pytest.raises(CertError, match="chmod 600"):
        read_key_file(key, fix=False)
    TlsFiles(paths["ca"], paths["cert0"], key)         # the transport loads keys this way
    assert _mode(key) == 0o600
    with pytest.raises(CertError, match="not a regular file"):
        read_key_file(tmp_path)


def test_cli_flow_and_demo_labels(tmp_path, capsys):
    ca, p2 = tmp_path / "ca", tmp_path / "p2"
    assert cli_net.main(["certs", "ca", "--out", str(ca)]) == 0
    assert cli_net.main(["certs", "request", "--id", "2", "--out", str(p2),
                         "--host", "10.1.2.3", "--host", "party2.example"]) == 0
    assert cli_net.main(["certs", "sign", "--ca-dir", str(ca), "--id", "2",
                         "--csr", str(p2 / "party2.csr")]) == 0
    names = cert_names((p2 / "party2.pem").read_bytes())
    assert {"mpcache-party-2", "party2.example"} <= names
    capsys.readouterr()
    assert cli_net.main(["certs", "sign", "--ca-dir", str(ca), "--id", "1",
                         "--csr", str(p2 / "party2.csr"), "--out", str(tmp_path / "x")]) == 2
    assert "expected 'mpcache-party-1'" in capsys.readouterr().err
    assert cli_net.main(["certs", "ca", "--out", str(ca)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    demo = tmp_path / "demo"
    assert cli_net.main(["certs", "--out", str(demo), "--host", "10.9.9.9"]) == 0
    cap = capsys.readouterr()
    assert "LOOPBACK DEMO" in cap.out and "make each key on its own host" in cap.err
    assert (demo / "parties.toml").exists() and _mode(demo / "ca.key") == 0o600
    cfg = tomllib.loads((demo / "parties.toml").read_text())
    assert cfg["session"]["insecure"] is False and "seed" not in cfg["session"]
    help_text = subprocess.run([sys.executable, "-m", "mpcache.cli_net", "certs", "--help"],
                               capture_output=True, text=True, timeout=60).stdout
    assert "Loopback demo" in help_text and "certs request" in help_text


def test_private_temp_dir_is_private_and_removed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    # a folder left by a process that no longer exists is removed by the next run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f"mpcache-gen-{dead.pid}-abc"
    stale.mkdir(mode=0o700)
    (stale / "party0.key").write_bytes(b"old")
    with private_temp_dir("mpcache-gen-") as d:
        assert d.parent == run and _mode(d) == 0o700
        make_certs(d)
        assert (d / "party0.key").exists()
    assert not d.exists() and not stale.exists()
    with pytest.raises(RuntimeError):
        with private_temp_dir("mpcache-gen-") as d2:
            (d2 / "x").write_text("x")
            raise RuntimeError("boom")
    assert not d2.exists()


def test_private_temp_dir_skips_an_unsafe_runtime_dir(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(shared))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with private_temp_dir("mpcache-t-") as d:
        assert d.parent == tmp_path / "home" / ".cache" / "mpcache" / "run"
        assert _mode(d) == 0o700 and _mode(d.parent) == 0o700
    assert not d.exists()


def test_transport_refuses_missing_key(tmp_path):
    paths = make_certs(tmp_path)
    os.unlink(paths["key1"])
    doc = {"session": {"id": "k"}, "tls": {"ca": "ca.pem", "cert": "party{id}.pem",
                                           "key": "party{id}.key"},
           "parties": [{"address": f"127.0.0.1:{p}"} for p in free_ports(3)]}
    cfg = parse_config(doc, base_dir=tmp_path)
    with pytest.raises((FileNotFoundError, CertError, TransportError)):
        GrpcTransport(1, cfg, connect=False)

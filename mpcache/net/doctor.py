"""``mpcache doctor``: check one party's side of a deployment before running it.

    mpcache doctor --config parties.toml --id 1              # peers already running
    mpcache doctor --config parties.toml --id 1 --serve 60   # on all three hosts at once

Every check prints one line, ``ok``, ``WARN`` or ``FAIL`` with what is wrong and what to
do; the exit code is 1 when any check failed (0 otherwise).  The checks, in order:

* **addresses**: every party's address and bind address parse (``HOST:PORT``), their
  hosts resolve, no two parties share an address; this party's bind address can be bound
  here now (``in use``: a party is already running, or another program holds the port;
  ``not an address of this host``: behind NAT, set ``bind = "0.0.0.0:PORT"``), and a
  loopback bind with a non-loopback address is flagged (peers could not reach it);
* **certificates** (unless ``insecure``): this party's CA, certificate and key files exist
  and parse; the CA is a CA; the certificate is signed by that CA, valid now (a warning
  within 7 days of its end), names ``mpcache-party-<id>`` in its DNS SANs (the name peers
  check, :mod:`mpcache.net.tls`) and no other party; the key file is private (0600) and is
  the certificate's key;
* **peers**: a TCP connection to each peer's address within ``--connect-timeout``
  (refused, timed out, or no route, each named), then, with TLS, a handshake as the party
  makes it: our certificate offered, the peer's checked against our CA and against the
  name ``mpcache-party-<j>``, and a moment's wait for the peer's refusal of ours.

Design choice: the peer probe is plain TCP + TLS (Python's :mod:`ssl`, ALPN ``h2``), not
a gRPC call, so it works against a running ``mpcache party`` (which sees a connection
that closes before its first request) and against another doctor.  ``--serve S`` makes
the doctor listen on this party's bind address with the party's own TLS settings (client
certificate required) while it probes, retrying each peer for up to S seconds: started
on the three hosts within S seconds of each other, each doctor reaches both peers and is
reached by both (reported as ``party j reached us``), so addresses, ports, firewalls and
certificates are checked in both directions before any party runs.  The doctor sends and
receives no secret: a probe carries only the line ``mpcache-doctor <id>``.

This module imports only :mod:`mpcache.net` and the standard library (plus
``cryptography`` for the certificate checks).
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import socket
import ssl
import stat
import threading
import time
from dataclasses import dataclass

from .config import ConfigError, NetConfig
from .tls import cert_names, is_loopback, named_parties, party_name, split_address

HELLO = b"mpcache-doctor %d\n"
#: certificates ending within this many days get a warning
EXPIRY_WARN_DAYS = 7


@dataclass(frozen=True)
class Finding:
    level: str          # "ok", "warn" or "fail"
    topic: str          # "address", "port", "tls", "peer 2", ...
    text: str

    def line(self) -> str:
        tag = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[self.level]
        return f"{tag} {self.topic}: {self.text}"


def _resolve(host: str, port: int, passive: bool = False):
    flags = socket.AI_PASSIVE if passive else 0
    return socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=flags)


# -- addresses and the own port --------------------------------------------------------------
def check_addresses(cfg: NetConfig, pid: int) -> list:
    out = []
    seen = {}
    for p in cfg.parties:
        host, port = split_address(p.address)
        try:
            _resolve(host, port)
        except socket.gaierror as e:
            out.append(Finding("fail", "address", f"party {p.id}'s host {host!r} "
                               f"({p.address}) does not resolve here: {e.strerror}"))
        if p.address in seen:
            out.append(Finding("fail", "address", f"parties {seen[p.address]} and {p.id} "
                               f"share the address {p.address}"))
        seen.setdefault(p.address, p.id)
    me = cfg.parties[pid]
    host, port = split_address(me.address)
    bhost, bport = split_address(me.bind)
    if is_loopback(bhost) and not is_loopback(host):
        out.append(Finding("fail", "address", f"party {pid} listens on loopback {me.bind} "
                           f"but peers dial {me.address}: set bind = "
                           f"\"0.0.0.0:{bport}\" (or this host's address)"))
    if not any(f.level == "fail" for f in out):
        out.append(Finding("ok", "address", "addresses: " + ", ".join(
            f"P{p.id} {p.address}" + (f" (bind {p.bind})" if p.bind != p.address else "")
            for p in cfg.parties)))
    out.append(check_bind(me.bind))
    return out


def check_bind(bind: str) -> Finding:
    """Can this host listen on ``bind`` now?"""
    host, port = split_address(bind)
    try:
        family, _, _, _, addr = _resolve(host, port, passive=True)[0]
    except socket.gaierror as e:
        return Finding("fail", "port", f"bind address {bind}: host does not resolve "
                       f"({e.strerror})")
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.bind(addr)
        s.listen(1)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            why = ("in use: a party (or another program) already listens there; stop it "
                   "or pick another port")
        elif e.errno == errno.EADDRNOTAVAIL:
            why = (f"{host} is not an address of this host (behind NAT: bind = "
                   f"\"0.0.0.0:{port}\")")
        elif e.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges)"
        else:
            why = e.strerror or str(e)
        return Finding("fail", "port", f"cannot listen on {bind}: {why}")
    finally:
        s.close()
    return Finding("ok", "port", f"{bind} can be bound here")


# -- certificates --------------------------------------------------------------------------
def _when(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M UTC")


def check_tls(cfg: NetConfig, pid: int, now=None) -> list:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if cfg.insecure:
        return [Finding("warn", "tls", "insecure = true: plaintext channels (loopback "
                        "only); no certificate checks")]
    try:
        ca_p, cert_p, key_p = cfg.tls_paths(pid)
    except ConfigError as e:
        return [Finding("fail", "tls", str(e))]
    out = []
    for what, p in (("CA", ca_p), ("certificate", cert_p), ("key", key_p)):
        if not os.path.isfile(p):
            out.append(Finding("fail", "tls", f"{what} file not found: {p} (make it with "
                               "`mpcache certs`, docs/network.md)"))
    if out:
        return out
    now = now or _dt.datetime.now(_dt.timezone.utc)
    try:
        ca = x509.load_pem_x509_certificate(open(ca_p, "rb").read())
    except ValueError as e:
        return [Finding("fail", "tls", f"CA {ca_p} is not a PEM certificate ({e})")]
    try:
        cert_pem = open(cert_p, "rb").read()
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        return [Finding("fail", "tls", f"certificate {cert_p} is not a PEM certificate "
                        f"({e})")]
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        out.append(Finding("fail", "tls", f"{ca_p} is not a CA certificate"))
    for label, c, path in (("CA", ca, ca_p), ("certificate", cert, cert_p)):
        if now < c.not_valid_before_utc:
            out.append(Finding("fail", "tls", f"{label} {path} is not valid before "
                               f"{_when(c.not_valid_before_utc)} (this host's clock?)"))
        elif now > c.not_valid_after_utc:
            out.append(Finding("fail", "tls", f"{label} {path} expired on "
                               f"{_when(c.not_valid_after_utc)}"))
        elif c.not_valid_after_utc - now < _dt.timedelta(days=EXPIRY_WARN_DAYS):
            out.append(Finding("warn", "tls", f"{label} {path} expires on "
                               f"{_when(c.not_valid_after_utc)}"))
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        why = str(e) or "the signature does not verify with the CA's key"
        out.append(Finding("fail", "tls", f"certificate {cert_p} is not signed by the CA "
                           f"{ca_p} ({why}): sign it with this CA (mpcache certs sign)"))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = set(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = set()
    ids = named_parties(cert_names(cert_pem))
    if pid not in ids:
        out.append(Finding("fail", "tls", f"certificate {cert_p} names party "
                           f"{sorted(ids) or 'none'}, but this is party {pid}"))
    elif ids != {pid}:
        out.append(Finding("fail", "tls", f"certificate {cert_p} names several parties "
                           f"{sorted(ids)}"))
    elif party_name(pid) not in dns:
        out.append(Finding("fail", "tls", f"certificate {cert_p} lacks the DNS SAN "
                           f"{party_name(pid)} that peers check"))
    st = os.stat(key_p)
    if st.st_mode & 0o077:
        out.append(Finding("warn", "tls", f"key {key_p} is readable by others (mode "
                           f"{stat.S_IMODE(st.st_mode):o}); the party narrows it to 0600 "
                           "or refuses: chmod 600 it"))
    try:
        key = load_pem_private_key(open(key_p, "rb").read(), password=None)
        if key.public_key().public_numbers() != cert.public_key().public_numbers():
            out.append(Finding("fail", "tls", f"key {key_p} is not the key of {cert_p}"))
    except (ValueError, TypeError, AttributeError) as e:
        out.append(Finding("fail", "tls", f"key {key_p} cannot be read as an unencrypted "
                           f"PEM private key ({e})"))
    if not any(f.level == "fail" for f in out):
        out.append(Finding("ok", "tls", f"{cert_p} names {party_name(pid)}, signed by "
                           f"{ca_p}, valid until {_when(cert.not_valid_after_utc)}; key "
                           "matches"))
    return out


# -- peers -----------------------------------------------------------------------------------
def _client_context(cfg: NetConfig, pid: int) -> ssl.SSLContext:
    ca_p, cert_p, key_p = cfg.tls_paths(pid)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca_p)
    ctx.load_cert_chain(cert_p, key_p)
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _server_context(cfg: NetConfig, pid: int) -> ssl.SSLContext:
    ca_p, cert_p, key_p = cfg.tls_paths(pid)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_verify_locations(cafile=ca_p)
    ctx.load_cert_chain(cert_p, key_p)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    return ctx


def probe_peer(cfg: NetConfig, pid: int, j: int, timeout: float = 3.0, hello=False,
               ctx=None) -> Finding:
    """TCP connect to party ``j`` and, with TLS, the party's handshake."""
    addr = cfg.parties[j].address
    host, port = split_address(addr)
    topic = f"peer {j}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        return Finding("fail", topic, f"{addr}: host does not resolve ({e.strerror})")
    except ConnectionRefusedError:
        return Finding("fail", topic, f"{addr}: connection refused (nothing listens there "
                       "yet: start its party or its doctor; or a firewall rejects it)")
    except (socket.timeout, TimeoutError):
        return Finding("fail", topic, f"{addr}: no answer within {timeout:g} s (host down, "
                       "or a firewall drops the packets)")
    except OSError as e:
        return Finding("fail", topic, f"{addr}: cannot connect ({e.strerror or e})")
    with sock:
        if cfg.insecure:
            if hello:
                sock.sendall(HELLO % pid)
            return Finding("ok", topic, f"{addr}: TCP connect ok (plaintext)")
        try:
            ctx = ctx or _client_context(cfg, pid)
            with ctx.wrap_socket(sock, server_hostname=party_name(j)) as tls:
                if hello:
                    tls.sendall(HELLO % pid)
                tls.settimeout(min(0.5, timeout))
                try:        # TLS 1.3: a refusal of OUR certificate arrives as an alert now
                    tls.recv(1)
                except (socket.timeout, TimeoutError):
                    pass
                except ssl.SSLError as e:
                    return Finding("fail", topic, f"{addr}: the peer refused our "
                                   f"certificate ({e.reason or e}): is it signed by the "
                                   "same CA as the peer's?")
                except OSError:
                    pass
                return Finding("ok", topic, f"{addr}: TLS ok, it is {party_name(j)} "
                               f"(signed by our CA) and accepted our certificate")
        except ssl.SSLCertVerificationError as e:
            why = e.verify_message or str(e)
            return Finding("fail", topic, f"{addr}: its certificate is not accepted "
                           f"({why}): not signed by our CA, or does not name "
                           f"{party_name(j)}")
        except ssl.SSLError as e:
            return Finding("fail", topic, f"{addr}: TLS handshake failed ({e.reason or e})")
        except (socket.timeout, TimeoutError):
            return Finding("fail", topic, f"{addr}: TCP connected but the TLS handshake "
                           f"timed out (is it a TLS party of this deployment?)")
        except OSError as e:
            return Finding("fail", topic, f"{addr}: connection lost during the TLS "
                           f"handshake ({e.strerror or e})")


class _Listener:
    """``--serve``: accept probes on this party's bind address (TLS as the party does)."""

    def __init__(self, cfg: NetConfig, pid: int):
        host, port = split_address(cfg.parties[pid].bind)
        family, _, _, _, addr = _resolve(host, port, passive=True)[0]
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.ctx = None if cfg.insecure else _server_context(cfg, pid)
        self.pid = pid
        self.reached_by: dict = {}       # peer id -> note
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        conn.settimeout(5.0)
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            line = b""
            while not line.endswith(b"\n") and len(line) < 64:
                b = conn.recv(64 - len(line))
                if not b:
                    break
                line += b
            parts = line.split()
            if len(parts) != 2 or parts[0] != b"mpcache-doctor" or not parts[1].isdigit():
                return
            claimed = int(parts[1])
            if self.ctx is not None:
                ids = named_parties(cert_names(ssl.DER_cert_to_PEM_cert(
                    conn.getpeercert(binary_form=True)).encode()))
                if claimed not in ids:
                    self.reached_by.setdefault(claimed, f"claims party {claimed} but its "
                                               f"certificate names {sorted(ids)}")
                    return
            self.reached_by[claimed] = "ok"
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()
        self.thread.join(timeout=2)


def check_peers(cfg: NetConfig, pid: int, timeout: float = 3.0, serve: float = 0.0,
                echo=None) -> list:
    """Probe both peers (retrying for ``serve`` seconds while listening, with
    ``serve > 0``)."""
    peers = [j for j in range(3) if j != pid]
    listener = None
    if serve > 0:
        try:
            listener = _Listener(cfg, pid)
        except OSError as e:
            return [Finding("fail", "serve", f"cannot listen on {cfg.parties[pid].bind} "
                            f"for the peers' doctors ({e.strerror or e})")]
    try:
        try:
            ctx = None if cfg.insecure else _client_context(cfg, pid)
        except (OSError, ssl.SSLError, ConfigError) as e:
            return [Finding("fail", "tls", f"cannot load our TLS files for the probe ({e})")]
        deadline = time.monotonic() + serve
        got = {}
        while True:
            for j in peers:
                if j not in got or got[j].level == "fail":
                    got[j] = probe_peer(cfg, pid, j, timeout, hello=serve > 0, ctx=ctx)
            done = all(got[j].level != "fail" for j in peers)
            if listener is not None:
                done = done and all(j in listener.reached_by for j in peers)
            if done or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        out = [got[j] for j in peers]
        if listener is not None:
            for j in peers:
                note = listener.reached_by.get(j)
                if note == "ok":
                    out.append(Finding("ok", f"peer {j}", f"party {j}'s doctor reached us "
                                       f"at {cfg.parties[pid].bind}"))
                elif note:
                    out.append(Finding("fail", f"peer {j}", note))
                else:
                    out.append(Finding("fail", f"peer {j}", f"party {j}'s doctor did not "
                                       f"reach us at {cfg.parties[pid].address} within "
                                       f"{serve:g} s (not started, or inbound traffic to "
                                       f"port {split_address(cfg.parties[pid].bind)[1]} "
                                       "is blocked)"))
        return out
    finally:
        if listener is not None:
            listener.close()


def run_doctor(cfg: NetConfig, pid: int, timeout: float = 3.0, serve: float = 0.0,
               peers: bool = True) -> list:
    """All checks for party ``pid`` (the own-port check is skipped with ``serve``: the
    listener binds the port itself and reports a failure to)."""
    if pid not in (0, 1, 2):
        return [Finding("fail", "id", f"party id must be 0, 1 or 2, got {pid}")]
    out = [f for f in check_addresses(cfg, pid) if not (serve > 0 and f.topic == "port")]
    out += check_tls(cfg, pid)
    if peers:
        tls_broken = any(f.level == "fail" and f.topic == "tls" for f in out)
        if tls_broken:
            out.append(Finding("fail", "peers", "not probed: fix this party's certificate "
                               "files first"))
        else:
            out += check_peers(cfg, pid, timeout, serve)
    return out

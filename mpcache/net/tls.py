"""Mutual TLS between parties: certificate generation and gRPC credentials.

Trust model: one CA per deployment.  The deployment flow keeps every private key on its
own host: ``mpcache certs ca`` (CA host: ``ca.pem`` + ``ca.key``), ``mpcache certs
request --id N`` (party N's host: ``partyN.key`` + ``partyN.csr``), ``mpcache certs sign``
(CA host: checks the request names party N and no other, writes ``partyN.pem``).  Plain
``mpcache certs --out DIR`` puts the CA and all three party keys in one folder: loopback
demos and tests only.  Key files are created 0600 with O_EXCL (never overwriting a file,
never following a link); a key file readable by others is narrowed to 0600 on load when
this user owns it, and refused otherwise (:func:`read_key_file`).  Every party holds the
CA certificate, its own key and a certificate naming it ``mpcache-party-<id>`` (as the
subject CN and as a DNS SAN, plus SANs for the hosts it listens on).  Both directions
are authenticated:

* a *client* dials peer ``j`` with ``grpc.ssl_target_name_override = mpcache-party-j``,
  so the TLS handshake itself fails unless the server's certificate (signed by our CA)
  names party ``j``;
* a *server* requires a client certificate signed by the CA and, in the application
  handshake, checks that the certificate names the party id the client claims.

Plaintext is allowed only on loopback addresses and only when asked for explicitly
(``insecure = true`` / ``--insecure``): see :func:`check_insecure_allowed`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from pathlib import Path

PARTY_NAME = "mpcache-party-{}"


def party_name(i: int) -> str:
    return PARTY_NAME.format(i)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and literal loopback IPs (127/8, ::1); names are not resolved."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def split_address(addr: str) -> tuple[str, int]:
    """``(host, port)`` of a ``HOST:PORT`` string (ValueError, never another error)."""
    if not isinstance(addr, str):
        raise ValueError(f"address must be a HOST:PORT string, got {type(addr).__name__} "
                         f"{addr!r}")
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not host.strip("[]") \
            or not 1 <= int(port) <= 65535:
        raise ValueError(f"address must be HOST:PORT with a port in 1-65535, got {addr!r}")
    return host.strip("[]"), int(port)


def check_insecure_allowed(addresses) -> None:
    """Refuse plaintext for any non-loopback address (shares would cross a network)."""
    bad = [a for a in addresses if not is_loopback(split_address(a)[0])]
    if bad:
        raise ValueError(f"insecure (plaintext) channels are allowed only on loopback "
                         f"addresses; not on {', '.join(bad)}: use TLS (mpcache certs)")


# -- files: keys are created privately and never through links ----------------------------
class CertError(ValueError):
    """A certificate, key or request file problem, with a message meant for the user."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_new_file(path, data: bytes, mode: int = 0o644) -> Path:
    """Create ``path`` holding ``data`` with permissions ``mode`` (0600 for keys).

    Refuses to overwrite anything (O_EXCL: an existing file, or a symlink even if it
    dangles, is an error, never followed); the mode is set on the open descriptor, so the
    umask cannot widen it and no other file can be changed by a race.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)
    except FileExistsError:
        raise CertError(f"{path} already exists (or is a link): refusing to overwrite it; "
                        f"remove it first or choose another --out") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return path


def read_key_file(path, fix: bool = True) -> bytes:
    """A private key file's bytes; refuses anything but a regular file, and a key that
    other users could read: mode bits for group/others are removed (with a warning on
    stderr) when this user owns the file and ``fix``, else refused with the command that
    fixes it."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _CLOEXEC)
    except FileNotFoundError:
        raise CertError(f"key file not found: {path}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CertError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            if not fix or st.st_uid != os.getuid():
                raise CertError(f"key file {path} can be read by other users (mode "
                                f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
            print(f"warning: key file {path} was readable by other users (mode "
                  f"{stat.S_IMODE(st.st_mode):04o}); its mode is now "
                  f"{stat.S_IMODE(st.st_mode) & 0o700:04o}", file=sys.stderr, flush=True)
        with os.fdopen(fd, "rb") as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def _private_dir(path) -> Path:
    """``path`` as a directory (created 0700 when new; an existing one is kept as is)."""
    p = Path(path)
    if p.is_symlink():
        raise CertError(f"{p} is a symbolic link: refusing to write keys through it")
    p.mkdir(mode=0o700, parents=True, exist_ok=True)
    return p


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(obj) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return obj.public_bytes(serialization.Encoding.PEM)


def _host_sans(hosts) -> list:
    from cryptography import x509
    out = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


# -- certificate generation -----------------------------------------------------------
_ORG = "mpcache"


def _now():
    return _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)


def _new_ca(days: int):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mpcache-ca"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return ca_key, cert


def _issue(ca_key, ca_cert, public_key, party_id: int, sans: list, days: int):
    """A party certificate for ``public_key`` naming ``mpcache-party-<id>`` (CN and DNS
    SAN) plus ``sans``, valid for ``days`` but never past the CA's own expiry."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = _now()
    until = min(now + _dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    names = [x509.DNSName(party_name(party_id))] + \
        [n for n in sans if n != x509.DNSName(party_name(party_id))]
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, party_name(party_id)),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)]))
            .issuer_name(ca_cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def make_ca(out_dir, days: int = 365) -> dict:
    """CA step of the deployment flow: ``ca.pem`` (give it to every party) and
    ``ca.key`` (0600; it stays on the CA's host) in ``out_dir``."""
    out = _private_dir(out_dir)
    ca_key, ca_cert = _new_ca(days)
    paths = {"ca": out / "ca.pem", "ca_key": out / "ca.key"}
    for p in paths.values():      # check both first: never leave half a CA behind
        if os.path.lexists(p):
            raise CertError(f"{p} already exists: refusing to overwrite it")
    write_new_file(paths["ca_key"], _pem_key(ca_key), 0o600)
    write_new_file(paths["ca"], _pem(ca_cert))
    return paths


def make_request(out_dir, party_id: int, hosts=()) -> dict:
    """Party step, on the party's own host: a new key ``party<id>.key`` (0600, it never
    leaves this host) and a signing request ``party<id>.csr`` naming
    ``mpcache-party-<id>`` and ``hosts`` (the IPs / DNS names peers dial it at)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if party_id not in (0, 1, 2):
        raise CertError(f"party id must be 0, 1 or 2, got {party_id}")
    out = _private_dir(out_dir)
    paths = {"key": out / f"party{party_id}.key", "csr": out / f"party{party_id}.csr"}
    for p in paths.values():
        if os.path.lexists(p):
            raise CertError(f"{p} already exists: refusing to overwrite it")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([
               x509.NameAttribute(NameOID.COMMON_NAME, party_name(party_id)),
               x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG)]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.DNSName(party_name(party_id))] + _host_sans(hosts)), critical=False)
           .sign(key, hashes.SHA256()))
    write_new_file(paths["key"], _pem_key(key), 0o600)
    write_new_file(paths["csr"], _pem(csr))
    return paths


def sign_request(ca_cert_path, ca_key_path, csr_path, party_id: int, out_path,
                 days: int = 365) -> Path:
    """CA step: check a party's signing request and write its certificate to
    ``out_path``.  The request must be self-signed by its key and name exactly
    ``mpcache-party-<party_id>`` (CN and party SANs): a request for another party's
    identity, or with a second party name, is refused.  Only DNS and IP SANs are copied."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from cryptography.x509.oid import NameOID

    if party_id not in (0, 1, 2):
        raise CertError(f"party id must be 0, 1 or 2, got {party_id}")
    try:
        csr = x509.load_pem_x509_csr(Path(csr_path).read_bytes())
        ca_cert = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
        ca_key = load_pem_private_key(read_key_file(ca_key_path), password=None)
    except (OSError, ValueError) as e:
        if isinstance(e, CertError):
            raise
        raise CertError(f"cannot read the CA or the request: {e}") from None
    if not csr.is_signature_valid:
        raise CertError(f"{csr_path}: the request's signature is invalid")
    if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
        raise CertError(f"{csr_path}: the request's key is not an ECDSA key")
    if ca_cert.public_key().public_numbers() != ca_key.public_key().public_numbers():
        raise CertError(f"{ca_key_path} is not the key of {ca_cert_path}")
    want = party_name(party_id)
    cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [want]:
        raise CertError(f"{csr_path} names {cns or 'no common name'}, expected {want!r}")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [n for n in san if isinstance(n, (x509.DNSName, x509.IPAddress))]
    except x509.ExtensionNotFound:
        sans = []
    others = named_parties(n.value for n in sans if isinstance(n, x509.DNSName)) - {party_id}
    if others:
        raise CertError(f"{csr_path} also names {', '.join(party_name(i) for i in sorted(others))}"
                        f": refusing to sign a certificate for two parties")
    cert = _issue(ca_key, ca_cert, csr.public_key(), party_id, sans, days)
    return write_new_file(out_path, _pem(cert))


def make_certs(out_dir, n_parties: int = 3, hosts=("127.0.0.1", "localhost"),
               days: int = 365) -> dict:
    """Loopback demos and tests only: the CA and every party's key in ONE directory
    (``ca.pem``/``ca.key``, ``party<i>.pem``/``party<i>.key``; keys 0600, nothing
    overwritten).  A deployment makes each key on its party's host instead:
    :func:`make_ca`, :func:`make_request`, :func:`sign_request`.  Returns the paths."""
    from cryptography.hazmat.primitives.asymmetric import ec

    out = _private_dir(out_dir)
    names = ["ca.pem", "ca.key"] + [f"party{i}.{e}" for i in range(n_parties)
                                    for e in ("pem", "key")]
    for n in names:
        if os.path.lexists(out / n):
            raise CertError(f"{out / n} already exists: refusing to overwrite it")
    ca_key, ca_cert = _new_ca(days)
    paths = {"ca": out / "ca.pem", "ca_key": out / "ca.key"}
    write_new_file(paths["ca_key"], _pem_key(ca_key), 0o600)
    write_new_file(paths["ca"], _pem(ca_cert))
    for i in range(n_parties):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(ca_key, ca_cert, key.public_key(), i, _host_sans(hosts), days)
        paths[f"cert{i}"] = out / f"party{i}.pem"
        paths[f"key{i}"] = out / f"party{i}.key"
        write_new_file(paths[f"key{i}"], _pem_key(key), 0o600)
        write_new_file(paths[f"cert{i}"], _pem(cert))
    return paths


# -- a private folder for a run's temporary keys ------------------------------------------
def _usable_private_base(p: Path) -> bool:
    try:
        st = p.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _private_base() -> Path:
    """Where private temporary folders go: ``$XDG_RUNTIME_DIR`` (per user, 0700, memory
    backed, emptied at logout) when usable, else ``~/.cache/mpcache/run`` (made 0700);
    the system temporary folder only when neither can be used."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and _usable_private_base(Path(xdg)):
        return Path(xdg)
    try:
        base = Path.home() / ".cache" / "mpcache" / "run"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _usable_private_base(base):
            return base
    except (OSError, RuntimeError):
        pass
    return Path(tempfile.gettempdir())


def _remove_stale(base: Path, prefix: str) -> None:
    """Remove folders ``<prefix><pid>-*`` left by processes that no longer exist."""
    try:
        entries = list(base.iterdir())
    except OSError:
        return
    for d in entries:
        rest = d.name[len(prefix):] if d.name.startswith(prefix) else ""
        pid = rest.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            if _usable_private_base(d):
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


@contextlib.contextmanager
def private_temp_dir(prefix: str = "mpcache-run-"):
    """A fresh 0700 folder for a run's keys, certificates and private inputs, removed on
    exit: normally, on an exception, and on SIGTERM (when called from the main thread
    with SIGTERM at its default action, it raises ``SystemExit(143)`` for the duration).
    It lives outside the shared system temporary folder where possible
    (:func:`_private_base`); folders of runs that were killed outright (SIGKILL) are
    removed by the next run."""
    base = _private_base()
    _remove_stale(base, prefix)
    d = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base))
    old = None
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        def _term(*_):
            raise SystemExit(143)
        old = signal.signal(signal.SIGTERM, _term)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def cert_names(pem: bytes) -> set:
    """Subject CN and DNS SANs of a PEM certificate."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    names = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names.update(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        pass
    return names


def named_parties(names) -> set:
    """The party ids that a set of certificate names identifies."""
    out = set()
    prefix = PARTY_NAME.format("")
    for n in names:
        n = n.decode() if isinstance(n, bytes) else str(n)
        if n.startswith(prefix) and n[len(prefix):].isdigit():
            out.add(int(n[len(prefix):]))
    return out


def auth_context_parties(auth_context: dict) -> set | None:
    """Party ids named by a gRPC peer's verified certificate (None if not TLS)."""
    if not auth_context or b"x509_pem_cert" not in auth_context and \
            "x509_common_name" not in auth_context:
        return None
    names = []
    for k in ("x509_common_name", "x509_subject_alternative_name"):
        names.extend(auth_context.get(k, []))
    return named_parties(names)


class TlsFiles:
    """The three PEM files one party uses, loaded once."""

    def __init__(self, ca, cert, key):
        self.paths = {"ca": Path(ca), "cert": Path(cert), "key": Path(key)}
        for what, p in self.paths.items():
            if not p.is_file():
                raise FileNotFoundError(f"TLS {what} file not found: {p} "
                                        f"(make them with `mpcache certs --out DIR`)")
        self.ca = self.paths["ca"].read_bytes()
        self.cert = self.paths["cert"].read_bytes()
        self.key = read_key_file(self.paths["key"])

    def check_identity(self, party_id: int) -> None:
        """Refuse to start with a certificate that names another party."""
        ids = named_parties(cert_names(self.cert))
        if party_id not in ids:
            raise ValueError(f"certificate {self.paths['cert']} names party "
                             f"{sorted(ids) or 'none'}, but this is party {party_id}")

    def server_credentials(self):
        import grpc
        return grpc.ssl_server_credentials([(self.key, self.cert)],
                                           root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self):
        import grpc
        return grpc.ssl_channel_credentials(root_certificates=self.ca,
                                            private_key=self.key,
                                            certificate_chain=self.cert)

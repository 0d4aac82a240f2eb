"""Mutual TLS between parties: certificate generation and gRPC credentials.

Trust model: one CA per deployment (``mpcache certs`` makes it).  Every party holds the
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

import datetime as _dt
import ipaddress
import os
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


# -- certificate generation -----------------------------------------------------------
def make_certs(out_dir, n_parties: int = 3, hosts=("127.0.0.1", "localhost"),
               days: int = 365) -> dict:
    """Write ``ca.pem``/``ca.key`` and ``party<i>.pem``/``party<i>.key`` into ``out_dir``.

    Keys are ECDSA P-256 (fast handshakes).  Private keys are written mode 0600.
    Returns the paths written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=days)

    def write_key(path: Path, key) -> None:
        data = key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mpcache-ca"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpcache")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(until)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                            crl_sign=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                              critical=False)
               .sign(ca_key, hashes.SHA256()))
    paths = {"ca": out / "ca.pem", "ca_key": out / "ca.key"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_key(paths["ca_key"], ca_key)

    for i in range(n_parties):
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(party_name(i))]
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, party_name(i)),
                                         x509.NameAttribute(NameOID.ORGANIZATION_NAME,
                                                            "mpcache")]))
                .issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        paths[f"cert{i}"] = out / f"party{i}.pem"
        paths[f"key{i}"] = out / f"party{i}.key"
        paths[f"cert{i}"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(paths[f"key{i}"], key)
    return paths


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
        self.key = self.paths["key"].read_bytes()

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

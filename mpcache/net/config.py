"""The party configuration file (TOML) shared by the three parties.

One file describes a deployment; every party reads the same file and picks its own entry
by ``--id``.  Relative paths are relative to the file.  Example::

    [session]
    protocol = "rep3"          # or "add2"
    frac_bits = 18
    timeout_s = 30             # deadline of every receive
    connect_timeout_s = 30     # how long to wait for the peers at start-up
    insecure = false           # plaintext; loopback addresses only
    # id = "run-42"            # session id; default: derived from this file
    # seed = 7                 # reproducible randomness: tests only, never deploy

    [tls]                      # "{id}" is replaced by the party id
    ca = "certs/ca.pem"
    cert = "certs/party{id}.pem"
    key = "certs/party{id}.key"

    [network]                  # shaping inside the transport (optional)
    preset = "lan"             # "lan", "wan" or "none"
    # delay_ms = 0.25          # one-way, overrides the preset
    # bandwidth_mbps = 1000

    [[parties]]                # in id order: P0, P1, P2
    address = "127.0.0.1:50051"
    [[parties]]
    address = "127.0.0.1:50052"
    [[parties]]
    address = "127.0.0.1:50053"
    # bind = "0.0.0.0:50053"   # listen address, default: address
    # cert = ... key = ... ca = ...   per-party TLS overrides

    [job]
    name = "matmul"
    args = ["--m", "64", "--k", "64", "--n", "64"]
"""
from __future__ import annotations

import hashlib
import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .shaping import Preset, resolve
from .tls import check_insecure_allowed, split_address

PROTOCOLS = ("rep3", "add2")
DEFAULT_CHUNK_BYTES = 4 << 20


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class PartyEntry:
    id: int
    address: str
    bind: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class NetConfig:
    parties: tuple
    protocol: str = "rep3"
    frac_bits: int = 18
    timeout_s: float = 30.0
    connect_timeout_s: float = 30.0
    insecure: bool = False
    session: str = ""
    seed: int | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    shaping: Preset | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_message_bytes: int = 1 << 31
    job_name: str | None = None
    job_args: tuple = ()
    path: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if len(self.parties) != 3 or [p.id for p in self.parties] != [0, 1, 2]:
            raise ConfigError("the config must list exactly three parties (P0, P1, P2)")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; choose one of {PROTOCOLS}")
        if not 0 <= self.frac_bits <= 30:
            raise ConfigError(f"frac_bits must be in [0, 30], got {self.frac_bits}")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError("timeouts must be positive")
        if not 1024 <= self.chunk_bytes <= 64 << 20:
            raise ConfigError("chunk size must be between 1 KiB and 64 MiB")
        for p in self.parties:
            split_address(p.address)
            split_address(p.bind)
        if self.insecure:
            try:
                check_insecure_allowed([p.address for p in self.parties] +
                                       [p.bind for p in self.parties])
            except ValueError as e:
                raise ConfigError(str(e)) from None

    def address(self, i: int) -> str:
        return self.parties[i].address

    def tls_paths(self, i: int) -> tuple:
        """(ca, cert, key) paths of party ``i`` (per-party entries override [tls])."""
        p = self.parties[i]
        ca, cert, key = p.ca or self.tls_ca, p.cert or self.tls_cert, p.key or self.tls_key
        if not (ca and cert and key):
            raise ConfigError("TLS needs ca, cert and key paths ([tls] in the config) unless "
                              "insecure = true / --insecure on loopback")
        return tuple(s.replace("{id}", str(i)) for s in (ca, cert, key))

    def override(self, **kw) -> "NetConfig":
        """A copy with some fields replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def with_party_tls(self, i: int, ca=None, cert=None, key=None) -> "NetConfig":
        ps = list(self.parties)
        ps[i] = replace(ps[i], ca=ca or ps[i].ca, cert=cert or ps[i].cert, key=key or ps[i].key)
        return replace(self, parties=tuple(ps))


def _abs(base: Path, p):
    if p is None:
        return None
    q = Path(str(p).replace("{id}", "__ID__"))
    q = q if q.is_absolute() else base / q
    return str(q).replace("__ID__", "{id}")


def parse_config(data: dict, base_dir=".", path: str | None = None) -> NetConfig:
    """Build a :class:`NetConfig` from a parsed TOML document."""
    base = Path(base_dir)
    known = {"session", "tls", "network", "parties", "job"}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown config section(s): {sorted(unknown)} (known: {sorted(known)})")
    s = dict(data.get("session", {}))
    tls = data.get("tls", {})
    net = data.get("network", {})
    job = data.get("job", {})
    parties = []
    for i, p in enumerate(data.get("parties", [])):
        if "address" not in p:
            raise ConfigError(f"party {i} has no address")
        if p.get("id", i) != i:
            raise ConfigError(f"parties must be listed in id order; entry {i} says id {p['id']}")
        parties.append(PartyEntry(i, p["address"], p.get("bind", p["address"]),
                                  _abs(base, p.get("ca")), _abs(base, p.get("cert")),
                                  _abs(base, p.get("key"))))
    try:
        shaping = resolve(net.get("preset"), net.get("delay_ms"), net.get("bandwidth_mbps"))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    session = s.pop("id", "") or ""
    if not session:   # parties reading the same file agree on the session id
        blob = repr(sorted((k, repr(v)) for k, v in data.items())).encode()
        session = "cfg-" + hashlib.sha256(blob).hexdigest()[:12]
    args = job.get("args", [])
    if isinstance(args, dict):
        args = [x for k, v in args.items() for x in (f"--{k}", str(v))]
    allowed = {"protocol", "frac_bits", "timeout_s", "connect_timeout_s", "insecure", "seed",
               "chunk_mib", "max_message_mib"}
    bad = set(s) - allowed
    if bad:
        raise ConfigError(f"unknown [session] key(s): {sorted(bad)}")
    return NetConfig(
        parties=tuple(parties), protocol=s.get("protocol", "rep3"),
        frac_bits=int(s.get("frac_bits", 18)), timeout_s=float(s.get("timeout_s", 30.0)),
        connect_timeout_s=float(s.get("connect_timeout_s", s.get("timeout_s", 30.0))),
        insecure=bool(s.get("insecure", False)), session=session, seed=s.get("seed"),
        tls_ca=_abs(base, tls.get("ca")), tls_cert=_abs(base, tls.get("cert")),
        tls_key=_abs(base, tls.get("key")), shaping=shaping,
        chunk_bytes=int(float(s.get("chunk_mib", 4)) * (1 << 20)),
        max_message_bytes=int(float(s.get("max_message_mib", 2048)) * (1 << 20)),
        job_name=job.get("name"), job_args=tuple(str(a) for a in args), path=path)


def load_config(path) -> NetConfig:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return parse_config(data, path.resolve().parent, str(path))


# -- helpers for tests and `mpcache certs` -------------------------------------------
def free_ports(n: int = 3, host: str = "127.0.0.1") -> list:
    """Ports the OS reports free right now (bind to 0; racy but fine for tests)."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((host, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def render_config(ports=None, *, host="127.0.0.1", protocol="rep3", frac_bits=18,
                  timeout_s=30.0, connect_timeout_s=None, insecure=False, certs_dir=None,
                  preset=None, job_name="matmul", job_args=(), seed=None,
                  session=None) -> str:
    """TOML text of a loopback deployment (used by tests and ``mpcache certs``)."""
    ports = list(ports or free_ports(3, host))
    lines = ["[session]", f'protocol = "{protocol}"', f"frac_bits = {frac_bits}",
             f"timeout_s = {float(timeout_s)}",
             f"connect_timeout_s = {float(connect_timeout_s or timeout_s)}",
             f"insecure = {'true' if insecure else 'false'}"]
    if seed is not None:
        lines.append(f"seed = {int(seed)}")
    if session:
        lines.append(f'id = "{session}"')
    if certs_dir is not None:
        d = Path(certs_dir).as_posix()
        lines += ["", "[tls]", f'ca = "{d}/ca.pem"', f'cert = "{d}/party{{id}}.pem"',
                  f'key = "{d}/party{{id}}.key"']
    if preset:
        lines += ["", "[network]", f'preset = "{preset}"']
    for p in ports:
        lines += ["", "[[parties]]", f'address = "{host}:{p}"']
    lines += ["", "[job]", f'name = "{job_name}"',
              "args = [" + ", ".join(f'"{a}"' for a in job_args) + "]", ""]
    return "\n".join(lines)

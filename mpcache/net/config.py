"""The party configuration file (TOML) shared by the three parties.

One file describes a deployment; every party reads the same file and picks its own entry
by ``--id``.  Relative paths are relative to the file.  Example::

    [session]
    protocol = "rep3"          # or "add2"
    frac_bits = 18
    timeout_s = 30             # deadline of every receive
    connect_timeout_s = 30     # how long to wait for the peers at start-up
    insecure = false           # plaintext; loopback addresses only (a TOML boolean)
    # id = "run-42"            # session id; default: derived from this file
    # chunk_mib = 4            # frame size for large tensors (1 KiB .. 64 MiB)
    # max_message_mib = 2048   # largest message accepted from a peer
    # test_mode = true         # allows `seed` (loopback only): tests, never deploy
    # seed = 7                 # derives EVERY party's keys: no secrecy left

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

Validation is strict (:class:`ConfigError` with the offending key, never a traceback):
booleans must be TOML booleans (``insecure = "false"`` is refused, not read as true),
timeouts finite and positive, sizes positive, addresses ``HOST:PORT`` strings.

A seed makes every party derive every key from it (``Session``'s reproducible mode):
whoever knows the seed knows every share.  It is refused unless ``test_mode = true`` (or
``--insecure-test-seed``), and even then only when every address is loopback, so a seeded
configuration can never drive a deployment across hosts, TLS or not; using one prints a
warning on stderr.
"""
from __future__ import annotations

import hashlib
import math
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

try:  # the standard library's TOML reader (3.11+), else its twin tomli (3.10)
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .shaping import Preset, resolve
from .tls import check_insecure_allowed, is_loopback, split_address

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
    test_mode: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    shaping: Preset | None = None
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_message_bytes: int = 1 << 31        # MAX_MESSAGE_BYTES (defined below)
    job_name: str | None = None
    job_args: tuple = ()
    path: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if len(self.parties) != 3 or [p.id for p in self.parties] != [0, 1, 2]:
            raise ConfigError("the config must list exactly three parties (P0, P1, P2)")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; choose one of {PROTOCOLS}")
        _check_int("frac_bits", self.frac_bits, 0, 30)
        _check_bool("insecure", self.insecure)
        _check_bool("test_mode", self.test_mode)
        _check_seconds("timeout_s", self.timeout_s)
        _check_seconds("connect_timeout_s", self.connect_timeout_s)
        _check_int("chunk size (bytes)", self.chunk_bytes, 1024, 64 << 20)
        _check_int("max message size (bytes)", self.max_message_bytes, 1, MAX_MESSAGE_BYTES)
        if not isinstance(self.session, str):
            raise ConfigError(f"session id must be a string, got {self.session!r}")
        addrs = []
        for p in self.parties:
            for what in ("address", "bind"):
                a = getattr(p, what)
                if not isinstance(a, str):
                    raise ConfigError(f"party {p.id}: {what} must be a \"HOST:PORT\" string, "
                                      f"got {type(a).__name__} {a!r}")
                try:
                    split_address(a)
                except ValueError as e:
                    raise ConfigError(f"party {p.id}: {e}") from None
                addrs.append(a)
            for what in ("ca", "cert", "key"):
                v = getattr(p, what)
                if v is not None and not isinstance(v, str):
                    raise ConfigError(f"party {p.id}: {what} must be a path string, got {v!r}")
        if self.insecure:
            try:
                check_insecure_allowed(addrs)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.seed is not None:
            _check_seed(self.seed, self.test_mode, addrs)
            _warn_seed(self.seed)

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


#: Hard ceiling of ``max_message_mib`` (the wire's 32-bit length fields; gRPC frames).
MAX_MESSAGE_BYTES = 1 << 31
#: Longest accepted deadline (a week): larger values are typos, not deadlines.
MAX_SECONDS = 7 * 24 * 3600.0


def _check_bool(name: str, v) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false (a TOML boolean, no quotes), "
                          f"got {v!r}")


def _check_int(name: str, v, lo: int, hi: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {v}")


def _check_seconds(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, got {v!r}")
    if not (math.isfinite(v) and 0 < v <= MAX_SECONDS):
        raise ConfigError(f"{name} must be finite, positive and at most {MAX_SECONDS:g} s, "
                          f"got {v!r}")


def _check_seed(seed, test_mode: bool, addresses) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    if not test_mode:
        raise ConfigError(
            "a seed derives every party's keys from one number, so anyone who knows it can "
            "recover every share: it is allowed only in test mode ([session] test_mode = "
            "true, or --insecure-test-seed), on loopback addresses")
    remote = [a for a in addresses if not is_loopback(split_address(a)[0])]
    if remote:
        raise ConfigError(f"a seed (test mode) is allowed only on loopback addresses, not on "
                          f"{', '.join(sorted(set(remote)))}: remove the seed to deploy")


_SEED_WARNED: set = set()


def _warn_seed(seed: int) -> None:
    """A loud note on stderr, once per process, that keys are derived from a seed."""
    if seed in _SEED_WARNED:
        return
    _SEED_WARNED.add(seed)
    print("=" * 78 + "\nWARNING: INSECURE TEST MODE: every party's keys are derived from "
          "a public seed;\nthe shares protect nothing.  Never use a seed outside tests.\n"
          + "=" * 78, file=sys.stderr, flush=True)


def _number(name: str, v, default):
    """A TOML number (int or float, not a bool or a string) or ``default``."""
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{name} must be a number, got {v!r}")
    return v


def _size_mib(name: str, v, default: float, lo: float, hi: float) -> int:
    v = _number(name, v, default)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise ConfigError(f"{name} must be between {lo * 1024:g} KiB and {hi:g} MiB, "
                          f"got {v!r}")
    return int(v * (1 << 20))


def _str(name: str, v, default=None):
    if v is None:
        return default
    if not isinstance(v, str):
        raise ConfigError(f"{name} must be a string, got {type(v).__name__} {v!r}")
    return v


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
    for sec in ("session", "tls", "network", "job"):
        if not isinstance(data.get(sec, {}), dict):
            raise ConfigError(f"[{sec}] must be a table")
    s = dict(data.get("session", {}))
    tls = data.get("tls", {})
    net = data.get("network", {})
    job = data.get("job", {})
    plist = data.get("parties", [])
    if not isinstance(plist, list) or not all(isinstance(p, dict) for p in plist):
        raise ConfigError("parties must be an array of tables ([[parties]])")
    parties = []
    for i, p in enumerate(plist):
        if "address" not in p:
            raise ConfigError(f"party {i} has no address")
        if p.get("id", i) != i:
            raise ConfigError(f"parties must be listed in id order; entry {i} says id {p['id']}")
        bad = set(p) - {"id", "address", "bind", "ca", "cert", "key"}
        if bad:
            raise ConfigError(f"party {i}: unknown key(s) {sorted(bad)}")
        for k in ("ca", "cert", "key"):
            _str(f"party {i} {k}", p.get(k))
        parties.append(PartyEntry(i, p["address"], p.get("bind", p["address"]),
                                  _abs(base, p.get("ca")), _abs(base, p.get("cert")),
                                  _abs(base, p.get("key"))))
    for k in ("ca", "cert", "key"):
        _str(f"[tls] {k}", tls.get(k))
    try:
        shaping = resolve(_str("[network] preset", net.get("preset")),
                          _number("[network] delay_ms", net.get("delay_ms"), None),
                          _number("[network] bandwidth_mbps", net.get("bandwidth_mbps"), None))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    session = _str("[session] id", s.pop("id", None), "") or ""
    if not session:   # parties reading the same file agree on the session id
        blob = repr(sorted((k, repr(v)) for k, v in data.items())).encode()
        session = "cfg-" + hashlib.sha256(blob).hexdigest()[:12]
    args = job.get("args", [])
    if isinstance(args, dict):
        args = [x for k, v in args.items() for x in (f"--{k}", str(v))]
    if not isinstance(args, list):
        raise ConfigError(f"[job] args must be an array or a table, got {args!r}")
    allowed = {"protocol", "frac_bits", "timeout_s", "connect_timeout_s", "insecure", "seed",
               "test_mode", "chunk_mib", "max_message_mib"}
    bad = set(s) - allowed
    if bad:
        raise ConfigError(f"unknown [session] key(s): {sorted(bad)}")
    timeout = _number("[session] timeout_s", s.get("timeout_s"), 30.0)
    return NetConfig(
        parties=tuple(parties), protocol=_str("[session] protocol", s.get("protocol"), "rep3"),
        frac_bits=s.get("frac_bits", 18), timeout_s=float(timeout),
        connect_timeout_s=float(_number("[session] connect_timeout_s",
                                        s.get("connect_timeout_s"), timeout)),
        insecure=s.get("insecure", False), session=session, seed=s.get("seed"),
        test_mode=s.get("test_mode", False),
        tls_ca=_abs(base, tls.get("ca")), tls_cert=_abs(base, tls.get("cert")),
        tls_key=_abs(base, tls.get("key")), shaping=shaping,
        chunk_bytes=_size_mib("[session] chunk_mib", s.get("chunk_mib"), 4, 1 / 1024, 64),
        max_message_bytes=_size_mib("[session] max_message_mib", s.get("max_message_mib"),
                                    2048, 1 / 1024, MAX_MESSAGE_BYTES >> 20),
        job_name=_str("[job] name", job.get("name")), job_args=tuple(str(a) for a in args),
        path=path)


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
    if seed is not None:          # tests only: a seed is refused outside test mode
        lines += ["test_mode = true", f"seed = {int(seed)}"]
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

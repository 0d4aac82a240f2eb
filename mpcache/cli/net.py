"""CLI subcommands for real party processes: ``party``, ``launch``, ``certs``, ``doctor``.

``register(subparsers)`` adds them to the main ``mpcache`` parser; each subcommand sets
``func`` (``args.func(args) -> int`` exit code).  ``python -m mpcache.cli.net ...`` runs
them stand-alone (the launcher starts parties this way)::

    mpcache certs --out certs                         # loopback demo: every key, one folder
    mpcache certs ca --out ca                         # deployment: CA, then per party:
    mpcache certs request --id 1 --host 10.0.0.2      #   key + CSR on the party's host
    mpcache certs sign --ca-dir ca --id 1 --csr party1.csr   # signed at the CA
    mpcache launch --config certs/parties.toml -- matmul --m 64 --k 64 --n 64
    mpcache party --id 1 --config parties.toml        # one party, e.g. on another host
    mpcache doctor --id 1 --config parties.toml       # check certs, addresses, peers first
"""
from __future__ import annotations

import argparse
import json
import signal
import sys

_JOB_HELP = "JOB ARGS after `--` (default: the config's [job]); e.g. `-- matmul --m 64`"


def _add_overrides(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("overrides of the config file")
    g.add_argument("--protocol", choices=("rep3", "add2"))
    g.add_argument("--frac-bits", type=int)
    g.add_argument("--timeout", type=float, help="receive deadline in seconds (default 30)")
    g.add_argument("--connect-timeout", type=float, help="start-up deadline in seconds")
    g.add_argument("--insecure", action="store_true", default=None,
                   help="plaintext gRPC (loopback addresses only)")
    g.add_argument("--preset", choices=("lan", "wan", "none"),
                   help="network shaping preset (LAN 1 Gbit/s 0.5 ms RTT, WAN 100 Mbit/s 40 ms)")
    g.add_argument("--delay-ms", type=float, help="one-way delay per link (ms)")
    g.add_argument("--bandwidth-mbps", type=float, help="bandwidth cap per link (Mbit/s)")
    g.add_argument("--seed", type=int,
                   help="derive every key from this number (INSECURE: tests only; needs "
                        "--insecure-test-seed or [session] test_mode = true, loopback only)")
    g.add_argument("--insecure-test-seed", dest="test_mode", action="store_true",
                   default=None,
                   help="test mode: allow --seed / [session] seed (loopback addresses only; "
                        "the shares then protect nothing)")
    g.add_argument("--tls-ca")
    g.add_argument("--tls-cert")
    g.add_argument("--tls-key")


def _override_argv(a) -> list:
    """The override flags of a parsed ``launch`` command, to pass on to each party."""
    out = []
    for flag in ("protocol", "frac_bits", "timeout", "connect_timeout", "preset", "delay_ms",
                 "bandwidth_mbps", "seed", "tls_ca", "tls_cert", "tls_key"):
        v = getattr(a, flag, None)
        if v is not None:
            out += [f"--{flag.replace('_', '-')}", str(v)]
    if getattr(a, "insecure", None):
        out.append("--insecure")
    if getattr(a, "test_mode", None):
        out.append("--insecure-test-seed")
    return out


def _load(a, party_id: int | None = None):
    """The config file with the command line's overrides applied (and re-validated)."""
    from dataclasses import replace

    from ..net.config import load_config
    from ..net.shaping import resolve
    cfg = load_config(a.config).override(
        protocol=a.protocol, frac_bits=a.frac_bits, timeout_s=a.timeout,
        connect_timeout_s=a.connect_timeout, insecure=a.insecure, seed=a.seed,
        test_mode=getattr(a, "test_mode", None), session=getattr(a, "session", None))
    if a.preset is not None or a.delay_ms is not None or a.bandwidth_mbps is not None:
        base = a.preset
        if base is None and cfg.shaping is not None and cfg.shaping.name in ("lan", "wan"):
            base = cfg.shaping.name
        cfg = replace(cfg, shaping=resolve(base, a.delay_ms, a.bandwidth_mbps))
    if party_id is not None and (a.tls_ca or a.tls_cert or a.tls_key):
        cfg = cfg.with_party_tls(party_id, a.tls_ca, a.tls_cert, a.tls_key)
    return cfg


def _job_argv(rest) -> list:
    rest = list(rest or [])
    return rest[1:] if rest[:1] == ["--"] else rest


def cmd_party(a) -> int:
    from ..net.config import ConfigError
    from ..apps.launcher import configure_logging, on_sigterm, run_party
    configure_logging(a.log_level)
    signal.signal(signal.SIGTERM, on_sigterm)     # abort cleanly: tell the peers why
    try:
        cfg = _load(a, a.id)
    except (ConfigError, ValueError) as e:
        print(f"mpcache party: config error: {e}", file=sys.stderr)
        return 2
    argv = _job_argv(a.job)
    return run_party(cfg, a.id, argv[0] if argv else None, argv[1:], a.output, a.trace)


def cmd_launch(a) -> int:
    from ..net.config import ConfigError
    from ..apps.launcher import launch
    try:
        cfg = _load(a)
    except (ConfigError, ValueError) as e:
        print(f"mpcache launch: config error: {e}", file=sys.stderr)
        return 2
    from ..trace_parties import party_file
    res = launch(a.config, _job_argv(a.job), party_args=_override_argv(a),
                 per_party_args={i: ["--trace", party_file(a.trace, i)] for i in range(3)}
                 if a.trace else None, kill_grace_s=a.kill_grace, deadline_s=a.deadline,
                 cfg=cfg)
    for line in res.summary:
        print(f"[launch] {line}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"returncode": res.returncode, "returncodes": res.returncodes,
                       "seconds": res.seconds, "session": res.session,
                       "summary": res.summary, "outputs": res.outputs}, f)
    return res.returncode


def cmd_certs(a) -> int:
    """``mpcache certs {ca,request,sign}`` (deployment) or ``--out DIR`` (loopback demo)."""
    from ..net.tls import CertError
    try:
        return _CERTS[a.certs_cmd or "demo"](a)
    except CertError as e:
        print(f"mpcache certs: {e}", file=sys.stderr)
        return 2


def _certs_demo(a) -> int:
    from pathlib import Path

    from ..net.config import render_config
    from ..net.tls import is_loopback, make_certs
    if not a.out:
        print("mpcache certs: give --out DIR (loopback demo), or use the deployment flow: "
              "`certs ca`, `certs request`, `certs sign` (see --help)", file=sys.stderr)
        return 2
    hosts = ["127.0.0.1", "localhost", *(a.host or [])]
    make_certs(a.out, hosts=hosts, days=a.days)
    print(f"LOOPBACK DEMO: wrote a CA and all 3 party keys and certificates to {a.out} "
          f"(SANs: mpcache-party-<id>, {', '.join(hosts)})")
    remote = [h for h in hosts if not is_loopback(h)]
    if remote:
        print(f"warning: the CA key and every party's key are in one folder; for hosts "
              f"{', '.join(remote)} make each key on its own host instead: `mpcache certs "
              f"ca`, `mpcache certs request`, `mpcache certs sign`", file=sys.stderr)
    cfg = Path(a.out) / "parties.toml"
    if not cfg.exists():
        cfg.write_text(render_config([50051, 50052, 50053], certs_dir=".", session=None))
        print(f"wrote an example config {cfg} (loopback, ports 50051-50053)")
    return 0


def _certs_ca(a) -> int:
    from ..net.tls import make_ca
    p = make_ca(a.out, days=a.days)
    print(f"wrote {p['ca']} (give it to every party) and {p['ca_key']} (mode 0600: keep it "
          f"on this host, it signs every party's certificate)")
    return 0


def _certs_request(a) -> int:
    from ..net.tls import make_request
    p = make_request(a.out, a.id, hosts=a.host or [])
    print(f"wrote {p['key']} (mode 0600: it never leaves this host) and {p['csr']} (send it "
          f"to the CA: `mpcache certs sign --id {a.id} --csr {p['csr'].name} ...`)")
    return 0


def _certs_sign(a) -> int:
    from pathlib import Path

    from ..net.tls import sign_request
    ca = a.ca or str(Path(a.ca_dir) / "ca.pem")
    ca_key = a.ca_key or str(Path(a.ca_dir) / "ca.key")
    out = a.out or str(Path(a.csr).with_name(f"party{a.id}.pem"))
    p = sign_request(ca, ca_key, a.csr, a.id, out, days=a.days)
    print(f"wrote {p}: certificate of party {a.id}; send it (and {ca}) back to party {a.id}")
    return 0


_CERTS = {"demo": _certs_demo, "ca": _certs_ca, "request": _certs_request,
          "sign": _certs_sign}


def _add_certs(subparsers) -> None:
    p = subparsers.add_parser(
        "certs", help="TLS certificates: a CA, each party's key and signing request, signing",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Deployment (each private key stays on its own host):\n"
                    "  CA host:        mpcache certs ca --out ca/\n"
                    "  party N's host: mpcache certs request --id N --out tls/ --host IP\n"
                    "  CA host:        mpcache certs sign --ca-dir ca/ --id N --csr partyN.csr\n"
                    "then give party N its partyN.pem and ca/ca.pem.\n\n"
                    "Loopback demo (CA key and every party's key in ONE folder, for a single\n"
                    "machine and tests only):  mpcache certs --out DIR")
    p.add_argument("--out", help="loopback demo: folder for the CA, all three party keys and "
                                 "certificates, and an example parties.toml")
    p.add_argument("--host", action="append",
                   help="loopback demo: extra SAN (IP or DNS name); repeatable")
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=cmd_certs, certs_cmd=None)
    sub = p.add_subparsers(dest="certs_cmd", metavar="{ca,request,sign}")

    q = sub.add_parser("ca", help="make the deployment's CA (ca.pem, ca.key)")
    q.add_argument("--out", required=True, help="folder (made 0700) for ca.pem and ca.key")
    q.add_argument("--days", type=int, default=365)

    q = sub.add_parser("request", help="on a party's host: its key and a signing request")
    q.add_argument("--id", type=int, required=True, choices=(0, 1, 2))
    q.add_argument("--out", default=".", help="folder for partyN.key (0600) and partyN.csr")
    q.add_argument("--host", action="append",
                   help="IP or DNS name the peers dial this party at (SAN); repeatable")

    q = sub.add_parser("sign", help="at the CA: check a request and issue the certificate")
    q.add_argument("--id", type=int, required=True, choices=(0, 1, 2),
                   help="the party the request must name (and only it)")
    q.add_argument("--csr", required=True, help="the party's partyN.csr")
    q.add_argument("--ca-dir", default=".", help="folder with ca.pem and ca.key")
    q.add_argument("--ca", help="CA certificate (default: CA_DIR/ca.pem)")
    q.add_argument("--ca-key", help="CA key (default: CA_DIR/ca.key)")
    q.add_argument("--out", help="certificate to write (default: partyN.pem beside the CSR)")
    q.add_argument("--days", type=int, default=365)


def register(subparsers) -> None:
    """Add ``party``, ``launch``, ``doctor`` and ``certs`` to an ``add_subparsers()`` object."""
    p = subparsers.add_parser("party", help="run one party process",
                              description="Run one party (P0, P1 or P2) of a session.")
    p.add_argument("--id", type=int, required=True, choices=(0, 1, 2))
    p.add_argument("--config", required=True, help="TOML party config (see docs/network.md)")
    p.add_argument("--session", help="session id (the launcher sets a fresh one)")
    p.add_argument("--output", help="write the result and stats as JSON here")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--trace", metavar="FILE", help="record this party's transcript (metadata "
                   "only) to FILE; merge with `mpcache trace show DIR`")
    _add_overrides(p)
    p.add_argument("job", nargs=argparse.REMAINDER, help=_JOB_HELP)
    p.set_defaults(func=cmd_party)

    p = subparsers.add_parser("launch", help="run all three parties as local processes",
                              description="Start P0, P1, P2 as processes, stream their logs, "
                                          "fail if any party fails.")
    p.add_argument("--config", required=True)
    p.add_argument("--json", help="write outputs and summary as JSON")
    p.add_argument("--kill-grace", type=float, default=2.0,
                   help="seconds the other parties get to report after one fails")
    p.add_argument("--deadline", type=float, help="kill everything after this many seconds")
    p.add_argument("--trace", metavar="DIR", help="each party records its transcript to "
                   "DIR/pN.jsonl (read: mpcache trace show DIR / trace html DIR)")
    _add_overrides(p)
    p.add_argument("job", nargs=argparse.REMAINDER, help=_JOB_HELP)
    p.set_defaults(func=cmd_launch)

    p = subparsers.add_parser(
        "doctor", help="check one party's certificates, addresses, port and peers",
        description="Check what `mpcache party --id N` needs: certificates (exist, parse, "
                    "signed by the CA, valid, name the party), addresses (parse, resolve), "
                    "the own port (bindable here) and the peers (TCP connect and the "
                    "party's TLS handshake).  One line per check; exit 1 if any failed.  "
                    "Docs: docs/network.md")
    p.add_argument("--id", type=int, required=True, choices=(0, 1, 2))
    p.add_argument("--config", required=True, help="TOML party config (see docs/network.md)")
    p.add_argument("--connect-timeout-s", type=float, default=3.0, dest="probe_timeout",
                   help="seconds per peer connection attempt (default 3)")
    p.add_argument("--serve", type=float, default=0.0, metavar="SECONDS",
                   help="listen on this party's bind address while probing, retrying the "
                        "peers for up to SECONDS: run it on all three hosts at once")
    p.add_argument("--no-peers", dest="peers", action="store_false",
                   help="local checks only (certificates, addresses, port)")
    _add_overrides(p)
    p.set_defaults(func=cmd_doctor)

    _add_certs(subparsers)


def cmd_doctor(a) -> int:
    from ..net.config import ConfigError
    from ..net.doctor import run_doctor
    try:
        cfg = _load(a, a.id)
    except (ConfigError, ValueError) as e:
        print(f"FAIL config: {e}", flush=True)
        print("doctor: 1 problem", flush=True)
        return 1
    findings = run_doctor(cfg, a.id, a.probe_timeout, a.serve, a.peers)
    for f in findings:
        print(f.line(), flush=True)
    bad = sum(f.level == "fail" for f in findings)
    warn = sum(f.level == "warn" for f in findings)
    print(f"doctor: party {a.id}: " + (f"{bad} problem(s)" if bad else "no problems")
          + (f", {warn} warning(s)" if warn else ""), flush=True)
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mpcache")
    sub = ap.add_subparsers(dest="cmd", required=True)
    register(sub)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())

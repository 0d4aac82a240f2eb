"""CLI subcommands for real party processes: ``party``, ``launch`` and ``certs``.

``register(subparsers)`` adds them to the main ``mpcache`` parser; each subcommand sets
``func`` (``args.func(args) -> int`` exit code).  ``python -m mpcache.cli_net ...`` runs
them stand-alone (the launcher starts parties this way)::

    mpcache certs --out certs                         # CA + party keys + parties.toml
    mpcache launch --config certs/parties.toml -- matmul --m 64 --k 64 --n 64
    mpcache party --id 1 --config parties.toml        # one party, e.g. on another host
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

    from .net.config import load_config
    from .net.shaping import resolve
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
    from .net.config import ConfigError
    from .net.launcher import configure_logging, on_sigterm, run_party
    configure_logging(a.log_level)
    signal.signal(signal.SIGTERM, on_sigterm)     # abort cleanly: tell the peers why
    try:
        cfg = _load(a, a.id)
    except (ConfigError, ValueError) as e:
        print(f"mpcache party: config error: {e}", file=sys.stderr)
        return 2
    argv = _job_argv(a.job)
    return run_party(cfg, a.id, argv[0] if argv else None, argv[1:], a.output)


def cmd_launch(a) -> int:
    from .net.config import ConfigError
    from .net.launcher import launch
    try:
        cfg = _load(a)
    except (ConfigError, ValueError) as e:
        print(f"mpcache launch: config error: {e}", file=sys.stderr)
        return 2
    res = launch(a.config, _job_argv(a.job), party_args=_override_argv(a),
                 kill_grace_s=a.kill_grace, deadline_s=a.deadline, cfg=cfg)
    for line in res.summary:
        print(f"[launch] {line}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"returncode": res.returncode, "returncodes": res.returncodes,
                       "seconds": res.seconds, "session": res.session,
                       "summary": res.summary, "outputs": res.outputs}, f)
    return res.returncode


def cmd_certs(a) -> int:
    from pathlib import Path

    from .net.config import render_config
    from .net.tls import make_certs
    hosts = ["127.0.0.1", "localhost", *(a.host or [])]
    paths = make_certs(a.out, hosts=hosts, days=a.days)
    print(f"wrote CA and 3 party certificates to {a.out} "
          f"(SANs: mpcache-party-<id>, {', '.join(hosts)})")
    cfg = Path(a.out) / "parties.toml"
    if not cfg.exists():
        cfg.write_text(render_config([50051, 50052, 50053], certs_dir=".", session=None))
        print(f"wrote an example config {cfg} (loopback, ports 50051-50053)")
    return 0 if paths else 1


def register(subparsers) -> None:
    """Add ``party``, ``launch`` and ``certs`` to an ``add_subparsers()`` object."""
    p = subparsers.add_parser("party", help="run one party process",
                              description="Run one party (P0, P1 or P2) of a session.")
    p.add_argument("--id", type=int, required=True, choices=(0, 1, 2))
    p.add_argument("--config", required=True, help="TOML party config (see docs/network.md)")
    p.add_argument("--session", help="session id (the launcher sets a fresh one)")
    p.add_argument("--output", help="write the result and stats as JSON here")
    p.add_argument("--log-level", default="INFO")
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
    _add_overrides(p)
    p.add_argument("job", nargs=argparse.REMAINDER, help=_JOB_HELP)
    p.set_defaults(func=cmd_launch)

    p = subparsers.add_parser("certs", help="make a CA and one key/certificate per party")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--host", action="append", help="extra SAN (IP or DNS name); repeatable")
    p.add_argument("--days", type=int, default=365)
    p.set_defaults(func=cmd_certs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="mpcache")
    sub = ap.add_subparsers(dest="cmd", required=True)
    register(sub)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())

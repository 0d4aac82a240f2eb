"""The ``mpcache`` command line.

Subcommands are registered by the modules that own them, so this file stays a thin
dispatcher: ``bench`` (ops, net, decode, ...), ``party``/``launch``/``certs`` (network),
``generate`` (private generation), ``eval`` (accuracy harness), ``explain``/``trace``.
A module that is not present yet simply contributes no subcommand.
"""
from __future__ import annotations

import argparse
import importlib
import sys

#: Modules exposing ``register(subparsers)``.
PLUGINS = ("mpcache.cli.net", "mpcache.cli.model", "mpcache.cli.eval", "mpcache.cli.teach",
           "mpcache.cli.estimate")


def _bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks that write JSON")
    bsub = p.add_subparsers(dest="bench", required=True)
    ops = bsub.add_parser("ops", help="per-op seconds, bytes per party, rounds, error")
    ops.add_argument("--protocol", choices=["rep3", "add2", "both"], default="both")
    ops.add_argument("--only", nargs="*", help="op names (or op_shape) to run; the local "
                     "kernel rows always run first (`--only none`: only those)")
    ops.add_argument("--repeat", type=int, default=3, help="best of N runs (default 3)")
    ops.add_argument("--seed", type=int, default=0)
    ops.add_argument("--json", dest="json_path", help="write the rows to this file")
    ops.set_defaults(func=_run_bench_ops)
    net = bsub.add_parser("net", help="gRPC vs raw socket throughput and RTT")
    net.add_argument("--sizes-mib", type=int, nargs="*", default=[1, 16, 256])
    net.add_argument("--json", dest="json_path")
    net.set_defaults(func=_run_bench_net)
    agree = bsub.add_parser("agree", help="MPC vs plaintext greedy tokens on SmolLM2")
    agree.add_argument("--prompt-tokens", type=int, default=128)
    agree.add_argument("--new-tokens", type=int, default=16)
    agree.add_argument("--protocol", choices=["rep3", "add2", "both"], default="both")
    agree.add_argument("--json", dest="json_path")
    agree.set_defaults(func=_run_bench_agree)
    p.set_defaults(_bench_sub=bsub)   # plugins add `bench` subcommands through this


def _run_bench_ops(a) -> int:
    from ..apps.bench.ops import bench_ops
    protos = ("rep3", "add2") if a.protocol == "both" else (a.protocol,)
    bench_ops(protos, a.only, a.repeat, a.seed, a.json_path)
    return 0


def _run_bench_agree(a) -> int:
    from ..apps.bench.agree import bench_agree
    protos = ("rep3", "add2") if a.protocol == "both" else (a.protocol,)
    bench_agree(a.prompt_tokens, a.new_tokens, protos, a.json_path)
    return 0


def _run_bench_net(a) -> int:
    try:
        from ..net.bench_net import bench_net
    except ModuleNotFoundError:
        print("mpcache bench net: the gRPC transport is not installed in this build",
              file=sys.stderr)
        return 2
    bench_net(tuple(a.sizes_mib), a.json_path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpcache", description=__doc__.splitlines()[0])
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"mpcache {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _bench(sub)
    for mod in PLUGINS:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:
                continue
            raise
        m.register(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench":          # never time a numba compilation
        from ..kernels import warm_up
        warm_up()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

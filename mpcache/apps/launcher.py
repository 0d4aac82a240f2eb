"""Run one party (``mpcache party``) or all three as local processes (``mpcache launch``).

A party process: connect the gRPC transport, build the :class:`~mpcache.runtime.Party`,
run the job, say BYE (or ABORT with a secret-free reason), write its output JSON.

The launcher starts the three parties as subprocesses of this Python, prefixes their
log lines ``[P0] ...``, and when one fails gives the others ``kill_grace_s`` to report
their own (clear) errors before killing them; it exits non-zero if any party failed.
On success it prints the revealed result's accuracy against the plaintext reference,
the measured time, and the modelled ``compute + rounds x RTT + bytes / bandwidth``.
"""
from __future__ import annotations

import codecs
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..net.config import NetConfig
from ..net.shaping import LAN, WAN, describe_model
from ..net.transport import TransportError

log = logging.getLogger("mpcache.party")
ROOT = Path(__file__).resolve().parents[2]


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM (the launcher stopping a party)."""


def on_sigterm(*_):
    raise Terminated("terminated by SIGTERM")


#: Environment variable naming a 0600 file that holds a party's ``--seed`` (set by the
#: launcher: a seed on a command line would be readable by every user of the host).
SEED_FILE_ENV = "MPCACHE_SEED_FILE"


def _read_seed(path: str) -> int:
    return int(Path(path).read_text(encoding="ascii").strip())


def _write_private(path: Path, text: str) -> Path:
    """Create ``path`` with mode 0600 (never over an existing file or a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def split_seed(args) -> tuple:
    """``(args without any --seed V / --seed=V, the last seed given or None)``."""
    out, seed, it = [], None, iter(list(args))
    for a in it:
        if a == "--seed":
            seed = next(it, None)
        elif a.startswith("--seed="):
            seed = a.split("=", 1)[1]
        else:
            out.append(a)
    return out, seed


def private_job_argv(job_argv, folder: Path) -> list:
    """Move the job's private inputs (``JobSpec.file_inputs``, e.g. ``--prompt TEXT``) out
    of its argument list into 0600 files in ``folder``: ``--prompt-file PATH`` instead."""
    from .jobs import get_job
    if not job_argv:
        return []
    try:
        spec = get_job(job_argv[0])
    except ValueError:
        return list(job_argv)             # reported by the parties, with the job's name
    argv, out, i = list(job_argv[1:]), [job_argv[0]], 0
    flags = {f"--{k.replace('_', '-')}": v for k, v in spec.file_inputs.items()}
    while i < len(argv):
        a = argv[i]
        flag, eq, val = a.partition("=")
        if flag in flags and (eq or i + 1 < len(argv)):
            if not eq:
                val, i = argv[i + 1], i + 1
            path = _write_private(folder / f"input{len(out)}-{flag[2:]}.txt", val)
            out += [f"--{flags[flag].replace('_', '-')}", str(path)]
        else:
            out.append(a)
        i += 1
    return out


def party_rng(seed, party_id: int):
    """The same per-party generator :class:`mpcache.Session` derives from ``seed``."""
    if seed is None:
        return None
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[party_id])


def run_party(cfg: NetConfig, party_id: int, job_name: str | None = None, job_argv=(),
              output: str | None = None, trace: str | None = None) -> int:
    """Run one party to completion; returns the process exit code (0 = success).
    ``trace``: write this party's transcript there (mpcache/trace_parties.py)."""
    from .jobs import get_job
    from ..ring import FixedPoint
    from ..runtime import Party
    from ..net.grpc_transport import GrpcTransport

    seed_file = os.environ.get(SEED_FILE_ENV)
    if seed_file:
        try:
            cfg = replace(cfg, seed=_read_seed(seed_file))
        except (OSError, ValueError) as e:
            log.error("P%d: config error: cannot use the seed file: %s", party_id,
                      type(e).__name__)
            return 2
    job_name = job_name or cfg.job_name
    if not job_name:
        log.error("P%d: no job given (config [job] name or `-- JOB ARGS`)", party_id)
        return 2
    job_argv = list(job_argv) if job_argv else list(cfg.job_args)
    try:
        spec = get_job(job_name)
        kwargs = spec.parse(job_argv)
    except (ValueError, SystemExit) as e:
        log.error("P%d FAILED: bad job: %s", party_id, e)
        return 2
    shaping = (f"{cfg.shaping.name} ({cfg.shaping.delay_ms:g} ms one-way, "
               f"{cfg.shaping.bandwidth_mbps:g} Mbit/s)" if cfg.shaping else "none")
    log.info("P%d: listening on %s; protocol %s, frac_bits %d, %s, session %s, shaping %s",
             party_id, cfg.parties[party_id].bind, cfg.protocol, cfg.frac_bits,
             "PLAINTEXT (loopback)" if cfg.insecure else "mutual TLS", cfg.session, shaping)
    log.info("P%d: job %s %s", party_id, job_name, kwargs)
    tr = rec = None
    done = False
    try:
        tr = GrpcTransport(party_id, cfg)
        log.info("P%d: connected to parties %s", party_id, tr.peers)
        if trace:
            from ..trace_parties import party_recorder
            rec = party_recorder(tr, party_id, cfg.session)
        party = Party(party_id, cfg.protocol, tr, FixedPoint(cfg.frac_bits),
                      party_rng(cfg.seed, party_id))
        t0, wait0 = time.perf_counter(), tr.wait_s
        out = spec(party, **kwargs)
        secs, waited = time.perf_counter() - t0, tr.wait_s - wait0
        tr.close()
        done = True
    except TransportError as e:
        log.error("P%d FAILED: %s", party_id, e)
        if tr is not None:
            tr.abort(tr.failure_cause or str(e))
        return 3
    except BaseException as e:  # noqa: BLE001 - report, tell the peers, exit non-zero
        # The traceback stays in this party's log; peers learn only the exception type
        # (an exception message could quote a private input).
        if isinstance(e, (KeyboardInterrupt, SystemExit, Terminated)):
            why = str(e) if isinstance(e, Terminated) else f"interrupted ({type(e).__name__})"
            log.error("P%d FAILED: %s", party_id, why)
            reason = f"party {party_id} was {why}"
        else:
            log.error("P%d FAILED: %s: %s\n%s", party_id, type(e).__name__, e,
                      traceback.format_exc())
            reason = f"{type(e).__name__} in party {party_id} (details in its log)"
        if tr is not None:
            tr.abort(reason)
        return 1
    finally:
        if rec is not None:         # on failure too: the view up to where it stopped
            from ..trace_parties import write_party_trace
            write_party_trace(trace, rec, cfg.protocol, cfg.frac_bits,
                              party.stats() if done else None)
    out = out if isinstance(out, dict) else {"result": out}
    stats = out.get("stats") or party.stats()
    tot = stats["total"]
    log.info("P%d: done in %.3f s (%.3f s waiting): sent %d B online + %d B offline in %d "
             "messages, %d rounds, %d wire bytes", party_id, secs, waited,
             tot["bytes_sent"], tot["offline_bytes_sent"], tot["messages_sent"],
             tot["rounds"], stats.get("wire_bytes_sent", 0))
    if output:
        res = out.get("result")
        doc = {**_jsonable(out), "party": party_id, "job": job_name, "args": kwargs,
               "protocol": cfg.protocol, "session": cfg.session, "seconds": secs,
               "wait_seconds": waited, "stats": _jsonable(stats),
               "dtype": None if res is None else str(np.asarray(res).dtype)}
        Path(output).write_text(json.dumps(doc))
    return 0


# -- the launcher ---------------------------------------------------------------------------
@dataclass
class LaunchResult:
    returncode: int
    returncodes: list
    outputs: list                  # per party: its output JSON (None if it failed)
    logs: list                     # per party: its log lines
    seconds: float
    session: str
    summary: list = field(default_factory=list)

    def log_text(self, i: int) -> str:
        return "\n".join(self.logs[i])


def _child_env(extra=None) -> dict:
    env = dict(os.environ)
    extra = dict(extra or {})
    paths = [str(ROOT), *extra.pop("PYTHONPATH", "").split(os.pathsep),
             *env.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.pop(SEED_FILE_ENV, None)          # only the launcher decides who gets one
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GRPC_VERBOSITY", "ERROR")
    # all three parties share this machine's cores: split BLAS threads between them
    # (unless the user chose); oversubscribed BLAS pools slow every party down
    blas = str(max(1, (os.cpu_count() or 1) // 3))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, blas)
    env.update(extra)
    return env


def launch(config_path, job_argv=(), *, party_args=(), per_party_args=None,
           session: str | None = None, kill_grace_s: float = 2.0, deadline_s: float | None = None,
           echo=True, env=None, cfg: NetConfig | None = None, per_party_env=None,
           client: int = 0) -> LaunchResult:
    """Start P0, P1, P2 as subprocesses and wait for them (see the module docstring).

    ``party_args`` go to every ``mpcache party`` command line, ``per_party_args[i]`` only
    to party ``i`` (tests use it to inject a mismatched fixed point, another CA, ...);
    ``env`` is added to every party's environment, ``per_party_env[i]`` to party ``i``'s
    (e.g. a model package hidden from all but the owner).  Party ``client`` inherits
    this process's standard input (interactive prompts); the others get none.
    """
    from ..net.config import load_config
    cfg = cfg or load_config(config_path)
    session = session or f"run-{uuid.uuid4().hex[:12]}"
    out_dir = tempfile.mkdtemp(prefix="mpcache-launch-")        # mode 0700
    per_party_args = per_party_args or {}
    job_argv = [a for a in job_argv if a != "--"] if job_argv else []
    job_argv = private_job_argv(job_argv, Path(out_dir))
    procs, logs, readers = [], [[], [], []], []
    lock = threading.Lock()
    stream = sys.stdout if echo is True else echo

    console = {"open": None}        # the party whose line is unfinished on the console

    def show(i, text):
        """Echo ``text`` (any part of a line) as party i's, ``[Pi] `` at each line start:
        a client streaming its answer token by token appears as it is written."""
        segs = text.split("\n")
        for j, seg in enumerate(segs):
            last = j == len(segs) - 1
            if last and not seg:
                break
            if console["open"] != i:
                if console["open"] is not None:
                    stream.write("\n")            # another party's line was unfinished
                stream.write(f"[P{i}] ")
                console["open"] = i
            stream.write(seg)
            if not last:
                stream.write("\n")
                console["open"] = None
        stream.flush()

    def pump(i, pipe):
        dec, part = codecs.getincrementaldecoder("utf-8")("replace"), ""
        while True:
            chunk = pipe.read(65536)       # unbuffered: returns what is there, b"" at EOF
            text = dec.decode(chunk or b"", final=not chunk)
            with lock:
                part += text
                *done, part = part.split("\n")
                logs[i].extend(done)
                if stream and text:
                    show(i, text)
                if not chunk:
                    if part:
                        logs[i].append(part)
                    if stream and console["open"] == i:
                        stream.write("\n")
                        stream.flush()
                        console["open"] = None
                    return

    t0 = time.perf_counter()
    for i in range(3):
        # a seed never goes on a command line (any user of the host can read those):
        # the child reads it from a 0600 file named by SEED_FILE_ENV
        args, seed = split_seed([*party_args, *per_party_args.get(i, [])])
        child_env = {**(env or {}), **(per_party_env or {}).get(i, {})}
        if seed is not None:
            child_env[SEED_FILE_ENV] = str(_write_private(Path(out_dir) / f"seed{i}", seed))
        cmd = [sys.executable, "-m", "mpcache.cli.net", "party", "--id", str(i), "--config",
               str(config_path), "--session", session, "--output",
               os.path.join(out_dir, f"p{i}.json"), *args]
        if job_argv:
            cmd += ["--", *job_argv]
        # unbuffered bytes: the pump echoes partial lines (an answer streamed token by
        # token); only the client reads this terminal's input (interactive prompts)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=None if i == client else subprocess.DEVNULL,
                             env=_child_env(child_env), bufsize=0)
        procs.append(p)
        th = threading.Thread(target=pump, args=(i, p.stdout), daemon=True)
        th.start()
        readers.append(th)

    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            now = time.perf_counter()
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = now
            if failed_at is not None and now - failed_at > kill_grace_s:
                _stop(procs, stream, "a party failed")
                break
            if deadline_s is not None and now - t0 > deadline_s:
                _stop(procs, stream, f"launch deadline of {deadline_s} s passed")
                break
            time.sleep(0.05)
    finally:    # Ctrl-C or an error here must not leave parties behind
        if any(p.poll() is None for p in procs):
            _stop(procs, stream, "launcher interrupted")
    for p in procs:
        p.wait()
    for th in readers:
        th.join(5)
    secs = time.perf_counter() - t0
    rcs = [p.returncode for p in procs]
    outputs = []
    for i in range(3):
        f = Path(out_dir) / f"p{i}.json"
        outputs.append(json.loads(f.read_text()) if rcs[i] == 0 and f.exists() else None)
        f.unlink(missing_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)      # private inputs, seed files
    rc = 0 if all(r == 0 for r in rcs) else next(r for r in rcs if r != 0)
    rc = rc if rc > 0 else 1 if rc != 0 else 0    # a signal death is a failure too
    res = LaunchResult(rc, rcs, outputs, logs, secs, session)
    res.summary = summarize(res, cfg)
    return res


def _stop(procs, stream, why: str) -> None:
    alive = [(i, p) for i, p in enumerate(procs) if p.poll() is None]
    if stream and alive:
        print(f"[launch] {why}: stopping {', '.join(f'P{i}' for i, _ in alive)}",
              file=stream, flush=True)
    for _, p in alive:
        p.send_signal(signal.SIGTERM)
    end = time.monotonic() + 2.0
    for _, p in alive:
        try:
            p.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def summarize(res: LaunchResult, cfg: NetConfig) -> list:
    """Lines describing the run: status, accuracy, measured vs modelled latency."""
    from .jobs import get_job, reference
    lines = []
    for i, rc in enumerate(res.returncodes):
        if rc != 0:
            why = next((ln for ln in reversed(res.logs[i]) if "FAILED" in ln), None)
            how = f"was killed by signal {signal.Signals(-rc).name}" if rc < 0 else \
                f"exited with code {rc}"
            lines.append(f"P{i} {how}" + (f": {why.split('FAILED: ', 1)[-1]}" if why else ""))
    if res.returncode != 0 or not all(res.outputs):
        return lines or ["launch failed"]
    o = res.outputs[0]
    seconds = max(x["seconds"] for x in res.outputs)
    compute = max(x["seconds"] - x["wait_seconds"] for x in res.outputs)
    rounds = max(x["stats"]["total"]["rounds"] for x in res.outputs)
    nbytes = max(x["stats"]["total"]["bytes_sent"] + x["stats"]["total"]["offline_bytes_sent"]
                 for x in res.outputs)
    wire = max(x["stats"].get("wire_bytes_sent", 0) for x in res.outputs)
    lines.append(f"job {o['job']} {o['args']} protocol {o['protocol']}: OK at all parties")
    if o["result"] is not None:
        got = np.asarray(o["result"], dtype=np.float64)
        line = f"result shape {got.shape}"
        try:
            ref = reference(o["job"], **o["args"])
        except Exception:  # noqa: BLE001 - custom jobs have no reference
            ref = None
        if ref is not None and ref.shape == got.shape:
            line += f", max |error| vs plaintext {float(np.max(np.abs(got - ref), initial=0)):.3g}"
        lines.append(line)
    try:
        report = get_job(o["job"]).report
    except ValueError:
        report = None
    if report is not None:
        lines += report(res.outputs)
    lines.append(f"per party (max): {nbytes} B sent ({wire} on the wire), {rounds} rounds")
    shaping = cfg.shaping.name if cfg.shaping else "none"
    lines.append(f"measured {seconds:.3f} s (network shaping: {shaping}); "
                 f"compute ~{compute:.3f} s (time not blocked in receive)")
    for preset in ([cfg.shaping] if cfg.shaping else [LAN, WAN]):
        lines.append(describe_model(compute, rounds, nbytes, preset))
    return lines


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s.%(msecs)03d %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)

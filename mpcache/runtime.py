"""The party runtime: one :class:`Party` per process or thread, and :class:`Session`.

mpcache programs are SPMD: the *same* job function runs at all three parties, each with
its own :class:`Party` (its shares, its PRG keys, its transport).  ``Session.run`` starts
the three parties on this machine: threads over the in-process transport, and forked
processes (socket-pair links, mpcache/net/pipe.py) for :attr:`Session.processes` -- by
default add2's dealer; ``mpcache launch`` starts them as processes over gRPC.  The job
code does not change.

    def job(p):
        x = p.share(np.array([1.5, -2.0]), owner=0)    # P0's input; others pass None
        w = p.share(np.array([[0.5], [0.25]]), owner=1)
        return p.reveal(x @ w)                         # to all parties
    print(mpcache.Session("rep3").run(job).output)     # [-0.25]
"""
from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field

import numpy as np

from . import branches
from .kernels import side_core
from .accounting import breakdown, scope_rounds, scope_totals
from .net.local import LocalNetwork
from .net.transport import Transport, TransportError
from .prg import PRG, array_to_key, fresh_key, key_to_array
from .ring import FixedPoint

PROTOCOLS = ("rep3", "add2")


def make_protocol(name: str, party: "Party"):
    if name == "rep3":
        from .mpc.rep3 import Rep3
        return Rep3(party)
    if name == "add2":
        from .mpc.add2 import Add2
        return Add2(party)
    raise ValueError(f"unknown protocol {name!r}; choose one of {PROTOCOLS}")


class Party:
    """One party's view of a session: id, protocol, transport, keys, accounting."""

    def __init__(self, party_id: int, protocol: str, transport: Transport,
                 fxp: FixedPoint = FixedPoint(), rng: np.random.Generator | None = None):
        self.id = party_id
        self.transport = transport
        self.fxp = fxp
        self.protocol_name = protocol
        self._rng = rng
        # Wrap-around is the ring's reduction; numpy warns on it only for 0-d scalars.
        # numpy's error state is per thread (context), so this touches only this party.
        np.seterr(over="ignore")
        self._setup_keys()
        self.protocol = make_protocol(protocol, self)

    # -- keys ------------------------------------------------------------------------
    def _setup_keys(self) -> None:
        """Agree pairwise keys: P_i draws k_i and sends it to P_{i+1} (offline)."""
        mine = fresh_key(self._rng)
        with self.scope("setup"):
            self.transport.send((self.id + 1) % 3, key_to_array(mine), "setup.key",
                                offline=True)
            left = array_to_key(self.transport.recv((self.id - 1) % 3, "setup.key"))
        #: prg_next is shared with P_{i+1} (key k_i); prg_prev with P_{i-1} (key k_{i-1}).
        self._prg_next = PRG(mine)
        self._prg_prev = PRG(left)
        #: Local randomness nobody else sees (e.g. sharing one's own input).
        self._prg_own = PRG(fresh_key(self._rng))
        # Stream names, the same at both holders of a key: the view audit fixes the
        # streams an observer holds by name (mpcache.audit.frozen_streams).
        self._prg_next.label = f"k{self.id}"
        self._prg_prev.label = f"k{(self.id - 1) % 3}"
        self._prg_own.label = f"own{self.id}"

    # The streams of the running branch (mpcache.branches forks them), else the party's.
    @property
    def prg_next(self) -> PRG:
        b = branches.current()
        return self._prg_next if b is None else b.streams["prg_next"]

    @property
    def prg_prev(self) -> PRG:
        b = branches.current()
        return self._prg_prev if b is None else b.streams["prg_prev"]

    @property
    def prg_own(self) -> PRG:
        b = branches.current()
        return self._prg_own if b is None else b.streams["prg_own"]

    def parallel(self, *fns):
        """Run independent pieces of the program in the same rounds (mpcache.branches):
        ``a, b = party.parallel(lambda: ..., lambda: ...)``."""
        return branches.parallel(self, *fns)

    def prg_with(self, other: int) -> PRG:
        if other == (self.id + 1) % 3:
            return self.prg_next
        if other == (self.id - 1) % 3:
            return self.prg_prev
        raise ValueError(f"party {self.id} shares no key with party {other}")

    # -- accounting ------------------------------------------------------------------
    @property
    def acct(self):
        return self.transport.acct

    def scope(self, name: str, cpu: bool = False):
        """Count everything inside under ``name`` (accounting.py); ``cpu``: also this
        party's thread CPU time (``cpu_seconds``; ~1 us per entry, for measured steps)."""
        return self.acct.scope(name, cpu)

    #: Cores for :meth:`latency_bound` blocks (set by the in-process driver, Session.pin).
    latency_cores: set | None = None
    #: Cores whose worker may run this party's big ring products inside
    #: :meth:`latency_bound` (kernels.SideCore): the cores the online parties do not use.
    side_cores: set | None = None
    #: The other online parties sharing this party's latency core (in-process runs).
    core_peers: tuple = ()

    def _peers_waiting(self):
        """A probe for kernels.SideCore: are all other parties on this core blocked in
        recv right now (then a big product may use the core as well)?  None when the
        transport cannot tell (another process, gRPC)."""
        net, peers = getattr(self.transport, "net", None), self.core_peers
        waiting = getattr(net, "waiting", None)
        if waiting is None or not peers:
            return None
        return lambda: all(waiting[j] for j in peers)

    @contextlib.contextmanager
    def latency_bound(self):
        """A block of many small rounds (a decoding step): in-process, run this party's
        thread on the session's latency cores for its duration (Session.pin); elsewhere a
        no-op.  Setup and prefill stay outside: their big local arrays use every core."""
        cores = self.latency_cores
        if not cores:
            yield
            return
        try:
            before = os.sched_getaffinity(0)      # this thread (Linux: tid 0 = caller)
            os.sched_setaffinity(0, cores)
        except OSError:                           # cpuset changed under us: run unpinned
            before = None
        try:
            with side_core(self.side_cores if before is not None else None,
                           self._peers_waiting(), self.acct.on_side_cpu):
                yield
        finally:
            if before is not None:
                os.sched_setaffinity(0, before)

    def send(self, to: int, payload: np.ndarray, tag: str, offline: bool = False) -> None:
        self.transport.send(to, payload, tag, offline)

    def recv(self, frm: int, tag: str, shape: tuple | None = None) -> np.ndarray:
        return self.transport.recv(frm, tag, shape)

    # -- the public API (delegates to the protocol) -------------------------------------
    def share(self, x, owner: int = 0, *, integer: bool = False):
        """Secret-share ``x`` held by party ``owner``; other parties pass ``None``.

        Floats are fixed-point encoded (checked: see :mod:`mpcache.ring`); with
        ``integer=True`` integer arrays are shared as ring integers (no fraction).
        Only the owner's ``x`` is read; the shape travels with the shares.
        """
        from .tensor import SecretTensor
        return SecretTensor.share(self, x, owner, integer=integer)

    def reveal(self, t, to: int | None = None, checked: bool = False):
        """Open a secret tensor to party ``to`` (or to all if None). Others get None.
        ``checked=True`` (rep3): both holders of each share component send it and the
        receiver compares; aborts on a mismatch (mpcache/checked.py)."""
        if checked:
            from .checked import checked_reveal
            return checked_reveal(t, to)
        return t.reveal(to)

    def stats(self) -> dict:
        return self.acct.snapshot()

    def __repr__(self):
        return f"Party({self.id}, {self.protocol_name})"


@dataclass
class RunResult:
    outputs: list            # per party: whatever the job returned there
    stats: list              # per party: Accounting.snapshot()
    seconds: float
    #: per party: a :class:`mpcache.trace.Transcript` when the session was traced
    transcripts: list | None = None
    #: parties whose clocks give a scope's ``seconds``: the ONLINE parties.  add2's dealer
    #: (P2) runs ahead through non-interactive work and then waits inside whichever scope
    #: next needs the online parties (e.g. a top-k's revealed comparisons), so its scope
    #: times measure waiting, not latency (measured: 0.73 s "selection" at P2 against
    #: 0.13 s at P0/P1 in one gpt2 step).
    timed: tuple = (0, 1, 2)

    @property
    def output(self):
        """The output of party 0 (by convention the client who receives results)."""
        return self.outputs[0]

    def max_over_parties(self, key: str) -> int:
        return max(s["total"][key] for s in self.stats)

    @property
    def bytes_per_party(self) -> int:
        return self.max_over_parties("bytes_sent")

    @property
    def rounds(self) -> int:
        return self.max_over_parties("rounds")

    def scope(self, name: str) -> dict:
        """Counters of scope ``name`` (nested scopes included), max over parties each
        (``seconds``: over the online parties, :attr:`timed`)."""
        per = [scope_totals(s, name) for s in self.stats]
        out = {k: max(p[k] for p in per) for k in per[0]}
        out["seconds"] = max(per[i]["seconds"] for i in self.timed)
        out["rounds"] = scope_rounds(self.stats, name)
        return out

    def breakdown_under(self, prefix: str) -> dict:
        """Counters per direct child scope of ``prefix`` (e.g. "decode" -> linear, softmax,
        ...), each including its nested scopes; ``"other"`` is the rest of ``prefix``.
        Bytes: max over parties; seconds: over the online parties; rounds: cross-party
        critical path."""
        children = sorted({p[len(prefix) + 1:].split("/", 1)[0] for s in self.stats
                           for p in s["scopes"] if p.startswith(prefix + "/")})
        out = {c: self.scope(f"{prefix}/{c}") for c in children}
        total = self.scope(prefix)
        other = {k: total[k] - sum(v[k] for v in out.values()) for k in total}
        other["calls"] = total["calls"]
        out["other"] = {k: max(v, 0) if k != "seconds" else max(v, 0.0)
                        for k, v in other.items()}
        return out

    def per_party(self, key: str) -> list:
        return [s["total"][key] for s in self.stats]

    def breakdown(self) -> dict:
        """Per-scope counters aggregated by leaf name: max over parties per counter,
        rounds on the cross-party critical path (see accounting.scope_rounds)."""
        out: dict = {}
        for s in self.stats:
            for name, d in breakdown(s).items():
                tgt = out.setdefault(name, dict(d))
                for k, v in d.items():
                    tgt[k] = max(tgt[k], v)
        for name in out:
            paths = {p for s in self.stats for p in s["spans"] if p.rsplit("/", 1)[-1] == name}
            out[name]["rounds"] = sum(scope_rounds(self.stats, p) for p in paths)
        return out


class PartyFailed(RuntimeError):
    pass


@dataclass
class Session:
    """Configuration of a three-party session and the in-process driver.

    ``protocol``: ``"rep3"`` (replicated 3PC) or ``"add2"`` (additive 2PC + dealer).
    ``seed``: makes every party's randomness reproducible (tests only; never in
    deployment, where keys come from the OS).
    ``trace``: record every message each party sends and receives (metadata only:
    step, scope, tag, peer, dtype, shape, bytes, round, offline; see mpcache/trace.py
    and docs/teaching.md).  ``True`` keeps the transcripts on ``RunResult.transcripts``;
    a path also writes them there (JSON lines).  With ``trace=False`` the environment
    variable ``MPCACHE_TRACE=FILE`` turns tracing on for every session of the process.
    ``trace_values``: also record share values (toy data only: warns).
    ``pin``: inside :meth:`Party.latency_bound` blocks (each decoding step), run the
    online parties' threads on ONE core, add2's dealer on the other cores (Linux; default
    on, ``MPCACHE_PIN=0`` turns it off).  The parties share one interpreter lock, so for
    many small rounds a second core adds little but makes every hand-off between parties
    a cross-core wake-up and cache migration: pinned, a SmolLM2 decoding step at 2048
    tokens (rep3, MPCache at 5%, ~5000 rounds) went from 2.66 s to 1.88 s and the
    full-cache step from 4.18 s to 3.97 s (docs/mpcache-mpc.md).  Outside those blocks
    (weight sharing, prefill: big local arrays whose numpy work runs beside the other
    parties' on the other core) the scheduler is left alone: pinned throughout, the
    README's generation took 51 s instead of 34 s.
    ``processes``: parties to run in their own forked process, linked by socket pairs
    (mpcache.net.pipe) instead of queues; the rest are threads.  Default: add2's dealer
    (P2), for rep3 none; ``MPCACHE_PROCESSES=none|all|default`` overrides the default.
    The dealer works ahead of the online parties (triples, masks); as a thread its Python
    work held the interpreter lock the online parties need (docs/mpcache-mpc.md).  Traced
    runs keep every party a thread (transcripts are recorded in this process).  Needs
    ``os.fork`` (elsewhere: threads).
    """

    protocol: str = "rep3"
    fxp: FixedPoint = field(default_factory=FixedPoint)
    timeout: float = 30.0
    seed: int | None = None
    trace: bool | str = False
    trace_values: bool = False
    pin: bool | None = None
    processes: tuple | None = None

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {PROTOCOLS}")
        if isinstance(self.fxp, int):
            self.fxp = FixedPoint(self.fxp)

    def run(self, job, *args, **kwargs) -> RunResult:
        """Run ``job(party, *args, **kwargs)`` at all three parties: threads, and a forked
        process for each party in :attr:`processes` (whose output and stats come back
        pickled)."""
        net = LocalNetwork()
        sid = uuid.uuid4().hex[:12]
        outputs, stats, errors = [None] * 3, [None] * 3, [None] * 3
        seeds = (np.random.SeedSequence(self.seed).spawn(3) if self.seed is not None
                 else [None] * 3)
        recorders = None
        if self.trace or self.trace_values or os.environ.get("MPCACHE_TRACE"):
            from .trace import session_recorders
            recorders = session_recorders(self, sid)

        timed = (0, 1) if self.protocol == "add2" else (0, 1, 2)
        cores, side = _pin_cores(self.pin, timed)
        # transcripts are recorded in this process's memory: a traced run keeps threads
        procs = () if recorders is not None else self.process_parties()

        def body(i):
            try:
                rng = np.random.default_rng(seeds[i]) if seeds[i] is not None else None
                tr = net.transport(i, session=sid, timeout=self.timeout)
                if recorders is not None:
                    recorders[i].attach(tr)
                party = Party(i, self.protocol, tr, self.fxp, rng)
                if cores is not None:
                    party.latency_cores = cores[i]
                    party.side_cores = side if i in timed else None
                    party.core_peers = (tuple(j for j in timed if j != i)
                                        if i in timed else ())
                outputs[i] = job(party, *args, **kwargs)
                stats[i] = party.stats()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                errors[i] = e
                errors[i].__mpcache_tb__ = traceback.format_exc()
                net.fail(i, e)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=body, args=(i,), name=f"mpcache-P{i}", daemon=True)
                   for i in range(3) if i not in procs]
        # Three parties share this process's cores: one BLAS thread per party, or the
        # parties' BLAS pools oversubscribe the machine (measured: a 64x1024x64 gather went
        # from 17 ms to 550 ms on 2 cores).  Restored when the run ends.
        with _one_blas_thread():
            children = _fork_parties(procs, net, body, outputs, stats, errors)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            _join_children(children, outputs, stats, errors)
            for link in net.process_links:
                link.shutdown()
                link.close()
        secs = time.perf_counter() - t0
        # Report the root cause: a party's own error rather than the others' aborts.
        primary = [e for e in errors if e is not None and not isinstance(e, TransportError)]
        first = primary[0] if primary else next((e for e in errors if e is not None), None)
        if first is not None:
            if recorders is not None:         # keep what was traced up to the failure
                from .trace import finish_session
                finish_session(self, recorders, stats)
            if not isinstance(first, TransportError):
                raise first
            raise PartyFailed(str(first)) from first
        if recorders is None:
            return RunResult(outputs, stats, secs, timed=timed)
        from .trace import finish_session
        return RunResult(outputs, stats, secs, finish_session(self, recorders, stats), timed)

    def process_parties(self) -> tuple:
        """The parties :meth:`run` forks into their own process (see :attr:`processes`)."""
        procs = self.processes
        if procs is None:
            env = os.environ.get("MPCACHE_PROCESSES", "").strip().lower()
            if env in ("", "default"):
                procs = (2,) if self.protocol == "add2" else ()
            elif env in ("none", "0", "off", "threads"):
                procs = ()
            elif env == "all":
                procs = (0, 1, 2)
            else:
                raise ValueError(f"MPCACHE_PROCESSES={env!r}: use default, none, all "
                                 "(or Session(processes=...))")
        procs = tuple(sorted(set(int(i) for i in procs)))
        if any(i not in range(3) for i in procs):
            raise ValueError(f"processes must name parties 0, 1, 2, not {procs}")
        if procs and not hasattr(os, "fork"):     # (Windows) threads only
            return ()
        return procs


def _fork_parties(procs, net, body, outputs, stats, errors) -> list:
    """Fork one child per party in ``procs`` (before any party thread starts) and wire
    every link touching one of them as a socket pair (mpcache.net.pipe).  Returns
    [(party, pid, result socket)]."""
    if not procs:
        return []
    from .net import pipe
    # {(i, j): {i: i's end, j: j's end}} for every link touching a party in procs
    links = {pair: dict(zip(pair, ends)) for pair, ends in pipe.socket_links(
        [(i, j) for i in range(3) for j in range(i + 1, 3) if i in procs or j in procs]
    ).items()}
    children = []
    for i in procs:
        res_parent, res_child = socket.socketpair()
        pid = os.fork()
        if pid == 0:                                        # the child: party i only
            status = 0
            try:
                res_parent.close()
                mine = _wire(links, lambda party: party == i, net)
                body(i)
                for link in mine:           # deliver what is queued, unless failing
                    link.flush() if errors[i] is None else link.shutdown()
                pipe.send_result(res_child, (outputs[i], stats[i], errors[i],
                                             getattr(errors[i], "__mpcache_tb__", None)))
            except BaseException:  # noqa: BLE001 - nothing to report to: exit non-zero
                status = 1
            finally:
                os._exit(status)
        res_child.close()
        children.append((i, pid, res_parent))
    net.process_links += _wire(links, lambda party: party not in procs, net)  # the threads'
    return children


def _wire(links, here, net) -> list:
    """In one process: keep the socket ends of the parties ``here(party)`` runs, as
    ProcessLinks installed in ``net.queues`` for both directions; close the others."""
    from .net import pipe
    kept = []
    for pair, ends in links.items():
        for party, end in ends.items():
            if not here(party):
                end.close()
                continue
            peer = pair[1] if pair[0] == party else pair[0]
            link = pipe.ProcessLink(end, _broken_hook(net, peer))
            net.queues[(party, peer)] = net.queues[(peer, party)] = link
            kept.append(link)
    return kept


def _broken_hook(net, peer):
    def hook(reason):
        net.fail(peer, ConnectionError(f"its process ended or its link broke ({reason})"))
    return hook


def _join_children(children, outputs, stats, errors) -> None:
    """Collect each child's (output, stats, error) and reap it."""
    from .net import pipe
    for i, pid, sock in children:
        got = pipe.recv_result(sock)
        _, status = os.waitpid(pid, 0)
        if got is None:
            errors[i] = PartyFailed(f"party {i}'s process ended without a result "
                                    f"(exit status {status})")
            continue
        outputs[i], stats[i], errors[i], tb = got
        if errors[i] is not None and tb:
            errors[i].__mpcache_tb__ = tb


def _pin_cores(pin: bool | None, online) -> tuple:
    """(per party, the set of cores to run its thread on; the online parties' side cores)
    or (None, None) when pinning is off or not supported.  The online parties share the
    lowest allowed core; add2's dealer gets the other cores (its work is preprocessing: it
    should not queue behind the online parties on their core, nor they behind it); those
    other cores are also where the online parties' big products may run
    (kernels.SideCore), None on a one-core machine."""
    if pin is None:
        pin = os.environ.get("MPCACHE_PIN", "1").strip().lower() not in ("0", "off", "false", "no")
    if not pin or not hasattr(os, "sched_setaffinity"):
        return None, None
    try:
        allowed = os.sched_getaffinity(0)
    except OSError:
        return None, None
    core = {min(allowed)}
    side = allowed - core
    rest = side or allowed
    return [core if i in online else rest for i in range(3)], (side or None)


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:          # optional: without it BLAS keeps its own thread count
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# -- message tags ---------------------------------------------------------------------------
#: Narration of the messages of the session set-up, per tag (or ``*`` pattern): ``title``;
#: ``local``, what the parties compute for it; ``learns``, why the receiver learns only
#: ``kind`` ("random": masked, the default; "dealer", "shape", "output", "key", "pattern").
#: ``mpcache explain`` and the trace viewer collect these tables
#: (:data:`mpcache.apps.explain.TAGS`); the tags are the strings the code above sends.
TAGS = {
    "setup.key": dict(
        title="pairwise PRG keys",
        local="P_i draws a 128-bit key k_i from the OS and sends it to P_{i+1}; both then "
              "draw identical AES-CTR streams from it (zero-sharings, masks, dealt values)",
        learns="key k_{i-1}, shared with its left neighbour only",
        kind="key"),
}

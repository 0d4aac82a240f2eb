"""``mpcache generate``: private greedy generation on the packaged SmolLM2.

Everything that can be checked about the prompt and the options is checked *before* any
party starts (empty prompt, undecodable file, too long for the model, unknown policy or
knob): a bad input never costs an MPC run.  The three parties then run
:func:`generation_job` (threads with the local transport, or processes with gRPC: the
same job).

Eviction (``--policy NAME[:knob=val,...] --budget B``): the policy's decode-time selection
runs on the secret cache through the same code as plaintext (:mod:`mpcache.nn.mpc_policies`).
Its prefill-time part depends on ``prefill``:

* ``"private"`` (default): the prompt is secret-shared and prefilled inside MPC; static
  eviction runs on the secret prefill attention.  Exact and private, but a private
  prefill costs O(T^2) secret softmax elements per layer: minutes for a short chat
  prompt, hours for thousands of tokens on two cores.
* ``"client"``: the client prefills in plaintext with its own copy of the (public,
  packaged) model, applies the policy's static eviction, and secret-shares the compacted
  cache, the policy's state and the first token (as ``mpcache bench decode`` does).  Only
  valid when the client may hold the weights; every decoding step is private as before.

Cost lines (``step_costs``): per generated step the rows attention read (mean over
layers), and the bytes, rounds and seconds of that step against the SAME step run on the
full cache, measured: after each step the parties run it again on a full copy of the cache
fed the same token, in scope ``full_cache_reference`` (outside "decode"; ``compare_full``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..nn.mpc_policies import MPC_KNOBS

#: A fixed public text for norm-scale calibration (never the user's prompt).
CALIBRATION_TEXT = (
    "The committee met on a cold morning in March to review the plans for the new library. "
    "Several members argued that the reading rooms should face the river, while others "
    "preferred a quieter courtyard. After two hours of discussion they agreed to build a "
    "small model, invite comments from the town, and decide in the autumn. Meanwhile the "
    "old building would stay open, with longer hours on weekends and a new children's "
    "corner. What is the capital of France? The capital of France is Paris. Numbers such "
    "as 1, 42, 365 and 2048 appeared in the budget, which totalled 3.5 million.")

PREFILL_MODES = ("private", "client")


class PromptError(ValueError):
    """The prompt cannot be used (reported before any party starts work)."""


@dataclass
class GenerationRequest:
    prompt_ids: np.ndarray
    max_new_tokens: int
    stop_ids: tuple
    text: str = ""
    extra: dict = field(default_factory=dict)


def read_context_file(path: str) -> str:
    try:
        raw = open(path, "rb").read()
    except OSError as e:
        raise PromptError(f"cannot read context file {path!r}: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PromptError(f"context file {path!r} is not valid UTF-8 (byte {e.start}: "
                          f"{raw[e.start:e.start + 1]!r})") from None


def build_request(lm, prompt: str, max_new_tokens: int, context: str | None = None,
                  chat: bool = True) -> GenerationRequest:
    """Tokenise and validate the client's prompt (plaintext, at the client)."""
    if prompt is None or not prompt.strip():
        raise PromptError("the prompt is empty")
    if max_new_tokens < 1:
        raise PromptError("--max-new-tokens must be at least 1")
    user = prompt if context is None else f"{context}\n\n{prompt}"
    text = lm.chat_prompt(user) if chat else user
    ids = lm.encode(text)
    limit = lm.config.max_positions
    if ids.size + max_new_tokens > limit:
        raise PromptError(f"prompt of {ids.size} tokens + {max_new_tokens} new tokens exceeds "
                          f"the model context of {limit} tokens")
    return GenerationRequest(ids, max_new_tokens, lm.stop_ids, text)


@dataclass(frozen=True)
class Eviction:
    """The public eviction options every party runs with (all parties must agree)."""

    spec: str = "full"               # NAME or NAME:knob=val,... (cli_model.parse_policy)
    budget: float | None = None      # kept / prompt tokens
    prefill: str = "private"         # "private" | "client" (module docstring)
    compare_full: bool = True        # measure each step on the full cache as well

    @property
    def name(self) -> str:
        return self.spec.partition(":")[0]

    def knobs(self) -> dict:
        from ..cli.model import parse_policy
        return parse_policy(self.spec)[2]

    def plain_policy(self):
        """The plaintext policy (None for ``full``)."""
        from ..nn.policies import make_policy
        if self.name == "full":
            return None
        kw = {k: v for k, v in self.knobs().items() if k not in MPC_KNOBS}
        return make_policy(self.name, self.budget, **kw)

    def mpc_policy(self):
        """The same policy instrumented for secret caches (None for ``full``)."""
        from ..nn.mpc_policies import instrument, mpc_options
        if self.name == "full":
            return None
        return instrument(self.plain_policy(), **mpc_options(self.knobs()))

    def check(self) -> None:
        """Refuse bad options before any party starts (raises PromptError)."""
        if self.prefill not in PREFILL_MODES:
            raise PromptError(f"prefill must be one of {PREFILL_MODES}, got {self.prefill!r}")
        if self.name == "full":
            return
        if self.budget is None or not 0.0 < float(self.budget) < 1.0:
            raise PromptError(f"--policy {self.name} needs --budget in (0, 1) (kept / prompt "
                              f"tokens), got {self.budget}")
        try:
            self.plain_policy()
        except (ValueError, TypeError) as e:
            raise PromptError(f"bad --policy {self.spec!r}: {e}") from None


def prescales_for(lm) -> dict:
    from ..nn.private import calibrate_prescales
    return calibrate_prescales(lm.model, lm.encode(CALIBRATION_TEXT))


def generation_job(party, config, weights, prescales, request: GenerationRequest | None,
                   client: int = 0, owner: int = 1, echo=None, progress=None,
                   eviction: Eviction | None = None, fixed_length: bool = False,
                   plain=None, dec=None) -> dict:
    """The SPMD job: share weights (owner) and prompt (client), prefill, decode.

    ``dec``: a decoder whose weights are already shared (:mod:`mpcache.apps.serve`: shared
    once, many prompts); ``weights`` and ``prescales`` are then not used.
    ``weights`` and ``request`` are read only at the owner and the client respectively;
    ``plain`` (the plaintext decoder, for ``eviction.prefill == "client"``) only at the
    client.  Returns at every party ``{"ids": generated ids at the client (None elsewhere),
    "steps": this party's per-step counters (see :func:`step_costs`)}``."""
    from ..nn.private import announce, private_decode, private_generate, share_decoder, share_prompt
    ev = eviction or Eviction()
    local = None
    if ev.prefill == "client" and party.id == client:     # before the shares exist: its
        local = _plain_prefill(request, ev, plain)         # temporaries and theirs never
    if dec is None:                                        # meet
        dec = share_decoder(party, config, weights if party.id == owner else None, owner,
                            prescales)
    n_new = announce(party, request.max_new_tokens if party.id == client else 0, client)
    stop = request.stop_ids if party.id == client else ()
    meter = _StepMeter(party, dec, ev.compare_full and ev.name != "full")
    meter.persist = n_new > 2                 # as private_generate's persist_cache default
    on_token = echo if party.id == client else None
    if ev.prefill == "client":
        first = _client_prefill(party, dec, config, request, ev, local, n_new, meter, client)
        ids = private_decode(party, dec, None, n_new, stop, client, on_token, fixed_length,
                             first=first, forward=meter.forward, after_forward=meter.full_step)
    else:
        with party.scope("share_prompt"):
            prompt = share_prompt(party, request.prompt_ids if party.id == client else None,
                                  config.vocab_size, client)
        pol = ev.mpc_policy()
        if pol is not None and meter.compare:
            meter.keep_full_layers(pol)
        ids = private_generate(party, dec, prompt, n_new, stop, client, on_token=on_token,
                               policy=pol,
                               on_prefill_layer=progress if party.id == client else None,
                               fixed_length=fixed_length, forward=meter.forward,
                               after_forward=meter.full_step, after_prefill=meter.attach)
    return {"ids": ids, "steps": meter.records}


def _plain_prefill(request, ev, plain) -> dict:
    """The client's plaintext prefill with the policy's static eviction: the (evicted)
    cache to share, the full one (for the reference), the policy state, the first token."""
    import gc

    from .bench.decode import _state_only
    from ..nn.policies import PrefillRecorder
    from ..nn.policies.base import clone_cache
    plain_pol = ev.plain_policy()
    rec = PrefillRecorder([plain_pol] if plain_pol is not None else [])
    logits = plain.prefill(np.asarray(request.prompt_ids, dtype=np.int64), policy=rec)
    base, plain.cache = plain.cache, None
    src = clone_cache(base) if plain_pol is None else rec.fork(base, plain_pol)
    out = {"n": int(request.prompt_ids.size), "tid": int(np.argmax(logits)),
           "kv": [(np.array(src.keys(i)), np.array(src.values(i)))
                  for i in range(src.n_layers)],
           "full": [(np.array(base.keys(i)), np.array(base.values(i)))
                    for i in range(base.n_layers)] if ev.compare_full else None,
           "state": _state_only(plain_pol)}
    del base, src, rec, logits
    gc.collect()
    return out


def _client_prefill(party, dec, config, request, ev, local, n_new, meter, client):
    """``prefill == "client"``: the client's plaintext prefill (``local``, from
    :func:`_plain_prefill`; None at the other parties) shared as a secret cache; returns
    ``(first token one-hot, its id)``."""
    from ..nn.mpc_policies import persist_bounds, precompute_bounds, share_state
    from ..nn.private import announce
    pol = ev.mpc_policy()
    kv, full, state, tid = (None,) * 4 if local is None else (
        local["kv"], local["full"], local["state"], local["tid"])
    n = announce(party, local["n"] if party.id == client else 0, client)   # public, as the
    #                                                   prompt's shape in a private prefill
    with party.scope("prefill"):
        cache = dec.new_cache(pol)
        with party.scope("share_cache"):
            _share_layers(party, cache, kv, config.n_layers, client)
        cache.n_seen = n
        if pol is not None:
            pol.reset(cache, n)
            pol.prefilled = True
            with party.scope("share_state"):
                share_state(party, state, pol, config.n_layers, client)
            with party.scope("cluster_bounds"):
                precompute_bounds(pol, cache, cache.length(0) + 1)
        if n_new > 2:
            with party.scope("persist_cache"):
                cache.persist()
                if pol is not None:
                    persist_bounds(pol)
        dec.cache = cache
        oh = None
        if party.id == client:
            oh = np.zeros((1, config.vocab_size), dtype=np.int64)
            oh[0, tid] = 1
        oh = party.share(oh, owner=client, integer=True)
    if meter.compare:
        with party.scope("full_cache_reference"):
            fc = dec.new_cache(None)
            _share_layers(party, fc, full, config.n_layers, client)
            fc.n_seen = n
            if n_new > 2:
                fc.persist()
        meter.full_cache = fc
    meter.attach(dec)
    return oh, tid


def _share_layers(party, cache, kv, n_layers: int, client: int) -> None:
    for layer in range(n_layers):
        k, v = kv[layer] if party.id == client else (None, None)
        K, V = party.share(k, owner=client), party.share(v, owner=client)
        cache.replace(layer, K, V, np.arange(int(K.shape[1]), dtype=np.int64))


class _StepMeter:
    """Per decoding step at one party: rows each layer's attention read, bytes sent
    (online, offline), the round clock before and after, and the seconds -- for the policy
    step and (``compare``) for the same step run on the full cache right after it."""

    def __init__(self, party, dec, compare: bool):
        self.party, self.dec, self.compare = party, dec, compare
        self.records, self.full_cache, self._rows, self._full_kv = [], None, [], None
        self.persist = True           # persist the reference's prefix (as the policy's)

    def keep_full_layers(self, pol) -> None:
        """Private prefill: copy each layer's full K/V before the policy's static eviction
        (``prefill_done``) compacts it."""
        self._full_kv = {}
        orig = pol.prefill_done

        def prefill_done(cache, layer, stats):
            self._full_kv[layer] = (cache.keys(layer).copy(), cache.values(layer).copy(),
                                    cache.positions(layer).copy())
            return orig(cache, layer, stats)
        pol.prefill_done = prefill_done

    def attach(self, dec) -> None:
        """Count the rows attention reads in the decoder's cache (and the reference's)."""
        cache = dec.cache
        if self.compare and self.full_cache is None:      # private prefill: build it
            with self.party.scope("full_cache_reference"):
                fc = dec.new_cache(None)
                for layer in range(cache.n_layers):
                    k, v, pos = (self._full_kv or {}).get(layer) or (
                        cache.keys(layer).copy(), cache.values(layer).copy(),
                        cache.positions(layer).copy())
                    fc.replace(layer, k, v, pos)
                fc.n_seen = cache.n_seen
                if self.persist:
                    fc.persist()
            self.full_cache, self._full_kv = fc, None
        for c in (cache, self.full_cache):
            if c is not None:
                _count_rows(c, self._rows)

    def _measure(self, fn):
        a = self.party.acct
        b0, o0, c0 = a.total.bytes_sent, a.total.offline_bytes_sent, a.clock
        self._rows.clear()
        t0 = time.perf_counter()
        out = fn()
        return out, {"rows": list(self._rows), "bytes": a.total.bytes_sent - b0,
                     "offline_bytes": a.total.offline_bytes_sent - o0, "c0": c0,
                     "c1": a.clock, "seconds": time.perf_counter() - t0}

    def forward(self, onehot):
        logits, rec = self._measure(lambda: self.dec.decode_step(onehot))
        self.records.append({**rec, "full": None})
        return logits

    def full_step(self, step, onehot):
        if not self.compare:
            return
        dec, own = self.dec, self.dec.cache
        dec.cache = self.full_cache
        try:
            with self.party.scope("full_cache_reference"):
                _, rec = self._measure(lambda: dec.decode_step(onehot))
        finally:
            dec.cache = own
        self.records[-1]["full"] = rec


def _count_rows(cache, sink: list) -> None:
    """Wrap one cache's ``view``: append the rows a one-token query reads, per layer."""
    orig = cache.view

    def view(layer, query, **kw):
        keys, values = orig(layer, query, **kw)
        if int(query.shape[1]) == 1:
            sink.append(int(keys.shape[-2]))
        return keys, values
    cache.view = view


def step_costs(step_records: list, timed=(0,)) -> list:
    """Join the parties' per-step counters (``generation_job``'s ``steps``, one list per
    party) into per-step costs: bytes and offline bytes are the max over parties, rounds
    the cross-party critical path (``max c1 - max c0``), seconds those of the ``timed``
    parties (default the client); ``rows``: mean rows read per layer.  ``full``: the same
    for the step on the full cache (measured), ``saved``: full minus policy."""
    out = []
    for j in range(min(len(r) for r in step_records)):
        recs = [r[j] for r in step_records]
        row = _join(recs, timed)
        if all(r.get("full") for r in recs):
            row["full"] = _join([r["full"] for r in recs], timed)
            row["saved"] = {k: row["full"][k] - row[k] for k in ("bytes", "rounds",
                                                                 "seconds")}
        out.append(row)
    return out


def _join(recs, timed) -> dict:
    rows = recs[0]["rows"]
    return {"rows": float(np.mean(rows)) if rows else 0.0, "layers": len(rows),
            "bytes": max(r["bytes"] for r in recs),
            "offline_bytes": max(r["offline_bytes"] for r in recs),
            "rounds": max(r["c1"] for r in recs) - max(r["c0"] for r in recs),
            "seconds": max(recs[i]["seconds"] for i in timed if i < len(recs))}


def _saved(v, unit: str, fmt: str) -> str:
    """'saved 1.2 MB' or, for a step that costs more than the full cache, '0.4 MB more'
    (a negative saving printed as such reads as a typo)."""
    return f"saved {v:{fmt}} {unit}" if v >= 0 else f"{-v:{fmt}} {unit} more"


def step_lines(costs: list, n_answer: int | None = None) -> list:
    """One line per generated step (token ``j + 2``: the first token comes from the
    prefill): rows read, bytes/rounds/seconds, and the measured full-cache step."""
    lines = []
    for j, c in enumerate(costs):
        pad = n_answer is not None and j + 1 >= n_answer
        line = (f"step {j + 1}: rows read {c['rows']:.1f}/layer, {c['bytes'] / 1e6:.3f} "
                f"MB/party, {c['rounds']} rounds, {c['seconds']:.2f} s")
        f = c.get("full")
        if f:
            pct = 100.0 * c["saved"]["bytes"] / f["bytes"] if f["bytes"] else 0.0
            line += (f" | full cache (measured, same step): {f['rows']:.1f} rows/layer, "
                     f"{f['bytes'] / 1e6:.3f} MB/party, {f['rounds']} rounds, "
                     f"{f['seconds']:.2f} s"
                     f" | {_saved(c['saved']['bytes'] / 1e6, 'MB', '.3f')} ({pct:.0f}%), "
                     f"{_saved(c['saved']['rounds'], 'rounds', 'd')}")
        lines.append(line + (" (padding after the answer's end)" if pad else ""))
    return lines


def summarize(res, n_tokens: int) -> dict:
    """Per generated token: seconds, bytes, rounds, and the per-scope breakdown."""
    dec = res.scope("decode")
    steps = max(dec["calls"], 1)
    pre = res.scope("prefill")
    rows = res.breakdown_under("decode")
    return {
        "generated_tokens": n_tokens,
        "prefill": {"seconds": pre["seconds"], "bytes_per_party": pre["bytes_sent"],
                    "rounds": pre["rounds"]},
        "per_token": {"seconds": dec["seconds"] / steps,
                      "bytes_per_party": dec["bytes_sent"] / steps,
                      "rounds": dec["rounds"] / steps,
                      "offline_bytes_per_party": dec["offline_bytes_sent"] / steps},
        "breakdown_per_token": {k: {"seconds": v["seconds"] / steps,
                                    "bytes_per_party": v["bytes_sent"] / steps,
                                    "rounds": v["rounds"] / steps}
                                for k, v in rows.items()},
        "total_seconds": res.seconds,
    }


def print_summary(s: dict, out=sys.stdout) -> None:
    pt = s["per_token"]
    print(f"\n--- {s['generated_tokens']} tokens; prefill {s['prefill']['seconds']:.1f} s, "
          f"{s['prefill']['bytes_per_party'] / 1e6:.1f} MB/party, "
          f"{s['prefill']['rounds']} rounds", file=out)
    print(f"per generated token: {pt['seconds']:.2f} s, {pt['bytes_per_party'] / 1e6:.2f} "
          f"MB/party online (+{pt['offline_bytes_per_party'] / 1e6:.2f} MB offline), "
          f"{pt['rounds']:.0f} rounds", file=out)
    print(f"  {'scope':14s} {'seconds':>9s} {'MB/party':>9s} {'rounds':>7s}", file=out)
    for k, v in sorted(s["breakdown_per_token"].items(), key=lambda kv: -kv[1]["seconds"]):
        print(f"  {k:14s} {v['seconds']:9.3f} {v['bytes_per_party'] / 1e6:9.3f} "
              f"{v['rounds']:7.1f}", file=out)


def write_needle_files(folder=".", context: int = 2048, index: int = 0) -> dict:
    """A demo input for eviction in the main job: a needle-in-a-haystack sample
    (``niah_single_number`` of :mod:`mpcache.eval.tasks`: Paul Graham essays, one hidden
    number) split into ``needle.txt`` (instructions + haystack, about ``context`` tokens
    with the chat template) and ``question.txt``; returns the paths and the answer."""
    from pathlib import Path

    from ..eval.tasks import TaskGenerator
    lm = load_model("smollm2")
    s = TaskGenerator(lm, seed=0).sample("niah_single_number", context, index)
    user = s.prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    body, _, question = user.rpartition("\n")
    d = Path(folder)
    (d / "needle.txt").write_text(body.rstrip("\n"), encoding="utf-8")
    (d / "question.txt").write_text(question + " Answer with the number only.",
                                    encoding="utf-8")
    return {"context": str(d / "needle.txt"), "question": str(d / "question.txt"),
            "answer": s.answers[0]}


# -- gRPC: the same job in three processes ---------------------------------------------------
def load_model(name: str = "smollm2"):
    """The packaged SmolLM2, or ``tiny-random``: SmolLM2's tokenizer in front of a 2-layer
    random decoder (plumbing checks in seconds; its text is noise)."""
    from ..nn.smollm2 import load_smollm2
    lm = load_smollm2("float64")
    if name == "smollm2":
        return lm
    if name != "tiny-random":
        raise PromptError(f"unknown model {name!r} (smollm2, tiny-random)")
    import copy

    from ..nn.transformer import Decoder, DecoderConfig, random_weights
    cfg = DecoderConfig(vocab_size=lm.config.vocab_size, hidden_size=32, n_layers=2,
                        n_heads=4, n_kv_heads=2, mlp_hidden=48, arch="llama",
                        max_positions=4096)
    tiny = copy.copy(lm)
    tiny.model = Decoder(cfg, random_weights(cfg, seed=3, std=0.3))
    tiny.config = cfg
    return tiny


def generate_job(party, **kw) -> dict:
    """`mpcache launch -- generate`: :func:`mpcache.apps.serve.generate_job`."""
    from .serve import generate_job as job
    return job(party, **kw)


def report_lines(outputs: list) -> list:
    """The launcher's summary of a generate job: :func:`mpcache.apps.serve.report_lines`."""
    from .serve import report_lines as lines
    return lines(outputs)


def write_private_input(folder, name: str, text: str):
    """Write an input (e.g. the prompt) to ``folder/name`` readable by this user only
    (created with mode 0600, never over an existing file or a link)."""
    import os
    from pathlib import Path
    path = Path(folder) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def run_grpc(argv_job: list, protocol: str, prompt: str | None = None,
             insecure: bool = False):
    """Start three party processes on loopback with fresh mTLS certificates.  ``prompt``
    goes to a 0600 file in the run's private folder (``--prompt-file``); the folder (keys,
    certificates, prompt; ``tls.private_temp_dir``) is removed when the run ends."""
    import socket

    from ..net.config import render_config
    from .launcher import launch
    from ..net.tls import make_certs, private_temp_dir
    with private_temp_dir("mpcache-gen-") as d:              # mode 0700, removed on exit
        make_certs(d)
        ports = []
        for _ in range(3):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        job = list(argv_job)
        if prompt is not None:
            job += ["--prompt-file", str(write_private_input(d, "prompt.txt", prompt))]
        # long deadline: a receive may wait while a peer computes a whole prefill layer
        (d / "parties.toml").write_text(render_config(ports, protocol=protocol,
                                                      timeout_s=900.0,
                                                      connect_timeout_s=120.0,
                                                      certs_dir=".", session=None))
        return launch(d / "parties.toml", job)

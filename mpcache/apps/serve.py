"""Share once, serve many: private generation as a deployment runs it.

Who holds what (the roles of :mod:`mpcache.nn.private`):

* the **model owner** (P1 by default) alone loads the weights (:func:`owner_model`: the
  packaged GGUF, or its disk cache), calibrates the public norm prescales on a public text,
  and secret-shares every tensor once; its plaintext copy is dropped tensor by tensor as
  it is shared (``share_decoder(consume=True)``);
* the **client** (P0) holds its prompts and learns the answers.  It needs the tokenizer:
  the owner sends it, with the chat template and the special token ids, in the model's
  public part (:func:`mpcache.nn.private.send_public`); the client never opens the model
  file;
* the **helper** (P2) receives the architecture and the prescales only.

Set-up (scope ``setup``: ``public``, ``share_weights``, ``persist_weights``) runs once per
job; the shared decoder then answers every prompt the client gives (a file, one prompt a
line, or stdin line by line).  Before each prompt the client announces a public number,
the new-token budget, or 0 to end the session; a prompt it cannot use (empty, too long)
is reported at the client and skipped without any MPC work.  Each answer carries its own
counters (:func:`answer_costs` joins the parties'): prefill, per generated token, and the
weight bytes sent during it (zero: weights are never sent again).
"""
from __future__ import annotations

import resource
import sys
import time

import numpy as np

from .generate import (Eviction, PromptError, build_request, generation_job, prescales_for,
                       read_context_file)

#: Scopes whose counters make up one answer (everything it sends is under one of them).
ANSWER_SCOPES = ("share_prompt", "prefill", "decode", "full_cache_reference")
#: Set-up scopes that move weight-derived values; an answer must send nothing under them.
WEIGHT_SCOPES = ("setup/share_weights", "setup/persist_weights")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (``getrusage``'s maximum;
    Linux reports KiB, macOS bytes).  The ``peak_rss_mb`` fields and lines are MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def owner_model(name: str = "smollm2"):
    """The owner's model bundle with its plaintext decoder (float32, not memoised), or for
    ``tiny-random`` SmolLM2's tokenizer with a 2-layer random decoder (plumbing checks)."""
    from ..nn.smollm2 import load_public, load_weights_once
    if name == "smollm2":
        return load_weights_once("float32")
    if name != "tiny-random":
        raise PromptError(f"unknown model {name!r} (smollm2, tiny-random)")
    from ..nn.transformer import Decoder
    lm = load_public()
    cfg = tiny_config(lm.config.vocab_size)
    lm.config, lm.model = cfg, Decoder(cfg, _tiny_weights(cfg))
    return lm


def tiny_config(vocab_size: int):
    from ..nn.transformer import DecoderConfig
    return DecoderConfig(vocab_size=vocab_size, hidden_size=32, n_layers=2, n_heads=4,
                         n_kv_heads=2, mlp_hidden=48, arch="llama", max_positions=4096)


def _tiny_weights(cfg):
    from ..nn.transformer import random_weights
    return random_weights(cfg, seed=3, std=0.3)


def client_plain_model(name: str):
    """``--prefill client`` only: the client's own plaintext copy of the model (float64),
    which a client without the model file cannot have (ModelNotInstalled)."""
    from ..nn.smollm2 import load_public, load_smollm2
    if name == "smollm2":
        return load_smollm2("float64").model
    from ..nn.transformer import Decoder
    cfg = tiny_config(load_public().config.vocab_size)
    return Decoder(cfg, _tiny_weights(cfg))


def setup(party, model: str = "smollm2", client: int = 0, owner: int = 1,
          share_store: str = ""):
    """Set-up, once: the owner's public part to the others, then the weights shared.
    ``share_store``: a folder; each party loads its shares from ``DIR/p{id}`` when all
    three stores hold the same intact sharing, and otherwise shares and writes them there
    (rep3: :mod:`mpcache.apps.share_store`).
    Returns ``(decoder over shares, the public part this party knows, counters)``."""
    from ..nn.private import share_bytes
    from .share_store import ShareStore
    t0, m0, s0 = time.perf_counter(), _mark(party), party.stats()
    with party.scope("setup"):
        store = ShareStore(party, share_store, model, owner, client) if share_store else None
        dec, public = store.restore() if store is not None else (None, None)
        if dec is None:
            dec, public = _share(party, model, client, owner)
            if store is not None:
                store.save(dec, public)
    release_free_heap()
    s1 = party.stats()
    rec = _delta(m0, _mark(party))
    rec.update(seconds=time.perf_counter() - t0, share_bytes=share_bytes(dec),
               peak_rss_mb=peak_rss_mb(),
               weight_bytes=sum(d["bytes"] + d["offline_bytes"] for d in
                                (_scope_delta(s0, s1, n) for n in WEIGHT_SCOPES)),
               shares=store.info["shares"] if store is not None else "shared",
               store=store.info if store is not None else None)
    return dec, public, rec


def release_free_heap() -> bool:
    """Give the heap's free memory back to the OS (glibc ``malloc_trim(0)``), once after
    set-up: the owner's plaintext model and the sharing's temporaries were freed, but
    glibc keeps freed heap chunks mapped, so they would count in every later peak RSS.
    One call, no effect on the speed of later work (unlike lowering glibc's mmap
    threshold, measured 45% slower: docs/network.md, "Memory").  False where there is
    no glibc."""
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def _share(party, model, client, owner):
    """The set-up without a usable store (inside scope "setup"): the owner loads its
    model, sends the public part and shares every weight (its plaintext dropped as it
    goes)."""
    from ..nn.private import send_public, share_decoder
    from ..nn.transformer import DecoderConfig
    public, weights = None, None
    if party.id == owner:
        lm = owner_model(model)
        pres = prescales_for(lm)
        public = {**lm.public(), "prescales": {k: v["prescale"] for k, v in pres.items()}}
        weights, lm.model = lm.model.weights, None       # the dict is all that is left
        del lm
    public = send_public(party, public, owner, client)
    config = DecoderConfig(**public["config"], dtype="float64")
    dec = share_decoder(party, config, weights, owner, public["prescales"], consume=True)
    del weights
    return dec, public


def serve_job(party, prompts=None, max_new_tokens: int = 8, context: str | None = None,
              raw: bool = False, model: str = "smollm2", eviction: Eviction | None = None,
              fixed_length: bool = False, client: int = 0, owner: int = 1, out=None,
              idle_timeout: float = 3600.0, share_store: str = "") -> dict:
    """The SPMD job: :func:`setup`, then one answer per prompt of ``prompts`` (an iterable
    of texts, read at the client only) until it is exhausted.  ``out``: the client's
    stream for the answers, token by token (None: stdout).  ``idle_timeout``: how long
    P1 and P2 wait for the client's next prompt (interactive sessions pause there).
    ``share_store``: each party's weight shares on its own disk (:func:`setup`).

    Returns at every party ``{"setup": counters, "answers": [per answer: counters, and
    at the client "tokens" and "text"], "peak_rss_mb": ...}``."""
    ev = eviction or Eviction()
    if party.id == client:
        ev.check()
    dec, public, set_up = setup(party, model, client, owner, share_store)
    tok, plain, source = None, None, None
    if party.id == client:
        from ..nn.smollm2 import SmolLM2
        tok = SmolLM2.from_public(public)
        if ev.prefill == "client":
            plain = client_plain_model(model)
        source = iter(prompts or ())
        out = out or sys.stdout
    answers = []
    while True:
        req = _next_request(source, tok, max_new_tokens, context, raw, out) \
            if party.id == client else None
        n = _announce_idle(party, req.max_new_tokens if req is not None else 0, client,
                           idle_timeout)
        if n == 0:
            break
        answers.append(_answer(party, dec, req, ev, fixed_length, plain, client, owner, tok,
                               out, len(answers)))
    return {"setup": set_up, "answers": answers, "peak_rss_mb": peak_rss_mb()}


def _next_request(source, tok, max_new_tokens, context, raw, out):
    """The client's next usable prompt (skipping, with a message, those it cannot use)."""
    for text in source:
        try:
            return build_request(tok, text, max_new_tokens, context, chat=not raw)
        except PromptError as e:
            print(f"[P0] prompt skipped: {e}", file=out, flush=True)
    return None


def _announce_idle(party, value: int, client: int, idle_timeout: float) -> int:
    """``announce`` with the receive deadline raised to ``idle_timeout`` while the others
    wait for the client (a person typing the next prompt)."""
    from ..nn.private import announce
    tr = getattr(party, "transport", None)
    old = getattr(tr, "timeout", None)
    if old is not None:
        tr.timeout = max(old, idle_timeout)
    try:
        return announce(party, value, client)
    finally:
        if old is not None:
            tr.timeout = old


def _answer(party, dec, req, ev, fixed_length, plain, client, owner, tok, out, k) -> dict:
    shown, done = [], [0]             # ids so far; characters already printed
    if party.id == client:
        print(f"[answer {k + 1}] ", end="", file=out, flush=True)

    def echo(step, tid):
        shown.append(tid)
        text = tok.decode(shown).rstrip("\ufffd")    # a character cut between tokens
        out.write(text[done[0]:])                    # waits for its next byte
        out.flush()
        done[0] = max(done[0], len(text))

    s0, t0 = party.stats(), time.perf_counter()
    got = generation_job(party, dec.config, None, None, req, client, owner, echo=echo,
                         eviction=ev, fixed_length=fixed_length, plain=plain, dec=dec)
    secs, s1 = time.perf_counter() - t0, party.stats()
    dec.cache = None                          # this answer's KV cache is not needed again
    rec = {"seconds": secs, "steps": got["steps"], "peak_rss_mb": peak_rss_mb(),
           "scopes": {name: _scope_delta(s0, s1, name) for name in ANSWER_SCOPES},
           "weight_bytes": sum(_scope_delta(s0, s1, n)["bytes"] for n in WEIGHT_SCOPES)}
    if party.id == client:
        ids = [int(t) for t in got["ids"]]
        rec.update(tokens=ids, text=tok.decode(ids), prompt_tokens=int(req.prompt_ids.size))
        print(rec["text"][done[0]:], file=out, flush=True)
    return rec


# -- counters -----------------------------------------------------------------------------
def _mark(party) -> dict:
    a = party.acct
    return {"bytes": a.total.bytes_sent, "offline_bytes": a.total.offline_bytes_sent,
            "clock": a.clock}


def _delta(m0: dict, m1: dict) -> dict:
    return {"bytes": m1["bytes"] - m0["bytes"],
            "offline_bytes": m1["offline_bytes"] - m0["offline_bytes"],
            "c0": m0["clock"], "c1": m1["clock"]}


def _scope_delta(s0: dict, s1: dict, name: str) -> dict:
    """What scope ``name`` (nested scopes included) counted between two snapshots, and
    its spans opened in between (round-clock intervals, for cross-party rounds)."""
    from ..accounting import scope_totals
    a, b = scope_totals(s0, name), scope_totals(s1, name)
    return {"bytes": b["bytes_sent"] - a["bytes_sent"],
            "offline_bytes": b["offline_bytes_sent"] - a["offline_bytes_sent"],
            "seconds": b["seconds"] - a["seconds"], "calls": b["calls"] - a["calls"],
            "spans": s1["spans"].get(name, [])[len(s0["spans"].get(name, [])):]}


def _rounds(parts: list) -> int:
    """Cross-party critical-path rounds of matching spans (max out - max in, per call)."""
    spans = [p["spans"] for p in parts]
    n = min(len(sp) for sp in spans)
    return sum(max(sp[i][1] for sp in spans) - max(sp[i][0] for sp in spans)
               for i in range(n))


def setup_costs(outputs: list) -> dict:
    """The set-up, joined over the parties' outputs: bytes (max over parties, online and
    offline), rounds (critical path), seconds (slowest party), per-party share bytes and
    peak RSS at the end of set-up; the weight-sharing bytes (max over parties), whether
    the shares were ``"loaded"`` from the share store or ``"shared"``, and the store's
    seconds (load, or write) and bytes on disk per party (None without a store)."""
    s = [o["setup"] for o in outputs]
    store = [x.get("store") for x in s]
    return {"shares": s[0].get("shares", "shared"),
            "weight_bytes": max(x.get("weight_bytes", 0) for x in s),
            "store_seconds": max(st["seconds"] for st in store) if all(store) else None,
            "store_disk_bytes": [st["disk_bytes"] for st in store] if all(store) else None,
            "bytes": max(x["bytes"] + x["offline_bytes"] for x in s),
            "bytes_per_party": [x["bytes"] + x["offline_bytes"] for x in s],
            "rounds": max(x["c1"] for x in s) - max(x["c0"] for x in s),
            "seconds": max(x["seconds"] for x in s),
            "share_bytes": [x["share_bytes"] for x in s],
            "peak_rss_mb": [x["peak_rss_mb"] for x in s]}


def answer_costs(outputs: list, timed=(0,)) -> list:
    """Per answer, joined over the parties: the client's text and ids, prefill and
    per-token costs (bytes: max over parties; rounds: critical path; seconds: the
    ``timed`` parties'), the weight bytes any party sent during it, peak RSS per party."""
    rows = []
    for k in range(min(len(o["answers"]) for o in outputs)):
        ans = [o["answers"][k] for o in outputs]
        c = ans[client_index(outputs)] if any("text" in a for a in ans) else ans[0]
        row = {"text": c.get("text"), "tokens": c.get("tokens"),
               "prompt_tokens": c.get("prompt_tokens"),
               "seconds": max(ans[i]["seconds"] for i in timed if i < len(ans)),
               "weight_bytes": max(a["weight_bytes"] for a in ans),
               "bytes": max(sum(v["bytes"] + v["offline_bytes"] for v in a["scopes"].values())
                            for a in ans),
               "peak_rss_mb": [a["peak_rss_mb"] for a in ans]}
        for name in ("prefill", "decode"):
            parts = [a["scopes"][name] for a in ans]
            row[name] = {"bytes": max(p["bytes"] for p in parts),
                         "offline_bytes": max(p["offline_bytes"] for p in parts),
                         "rounds": _rounds(parts), "calls": parts[0]["calls"],
                         "seconds": max(parts[i]["seconds"] for i in timed
                                        if i < len(parts))}
        d, n = row["decode"], max(row["decode"]["calls"], 1)
        row["per_token"] = {"seconds": d["seconds"] / n, "bytes": d["bytes"] / n,
                            "offline_bytes": d["offline_bytes"] / n, "rounds": d["rounds"] / n}
        rows.append(row)
    return rows


def client_index(outputs: list) -> int:
    return next((i for i, o in enumerate(outputs)
                 if o["answers"] and "text" in o["answers"][0]), 0)


def cost_lines(outputs: list, timed=(0,)) -> list:
    """Human lines: the set-up once, then one line per answer."""
    s = setup_costs(outputs)
    gb = [round(b / 1e9, 2) for b in s["share_bytes"]]
    lines = [f"set-up (once): {s['seconds']:.1f} s, {s['bytes'] / 1e6:.1f} MB sent by the "
             f"busiest party (per party {[round(b / 1e6, 1) for b in s['bytes_per_party']]} "
             f"MB), {s['rounds']} rounds; weight shares held {gb} GB, peak RSS "
             f"{[round(m) for m in s['peak_rss_mb']]} MB per party; weights "
             + (f"loaded from the share store in {s['store_seconds']:.1f} s"
                if s["shares"] == "loaded" else f"shared ({s['weight_bytes'] / 1e6:.1f} MB)"
                + (f", share store written in {s['store_seconds']:.1f} s"
                   if s["store_seconds"] is not None else ""))]
    for k, r in enumerate(answer_costs(outputs, timed)):
        pt, pre = r["per_token"], r["prefill"]
        lines.append(
            f"answer at the client P0, prompt {k + 1}: {r['text']!r} "
            f"({len(r['tokens'] or [])} tokens; prompt of {r['prompt_tokens']} tokens) | "
            f"prefill {pre['seconds']:.1f} s, "
            f"{pre['bytes'] / 1e6:.1f} MB (+{pre['offline_bytes'] / 1e6:.1f} offline), "
            f"{pre['rounds']} rounds | per token {pt['seconds']:.2f} s, "
            f"{pt['bytes'] / 1e6:.2f} MB (+{pt['offline_bytes'] / 1e6:.2f} offline), "
            f"{pt['rounds']:.0f} rounds | "
            f"weight bytes sent {r['weight_bytes']} | peak RSS "
            f"{[round(m) for m in r['peak_rss_mb']]} MB")
    return lines


# -- the client's prompt sources -----------------------------------------------------------
def prompt_source(prompt_file: str = "", prompts_file: str = "", interactive: bool = False,
                  stream=None):
    """The client's prompts: one whole file (``prompt_file``), one prompt per non-blank
    line of ``prompts_file``, or (``interactive``) lines typed on ``stream`` (stdin) until
    end of input or an empty line."""
    if sum(map(bool, (prompt_file, prompts_file, interactive))) != 1:
        raise PromptError("give exactly one of --prompt-file, --prompts, --interactive")
    if prompt_file:
        return [read_context_file(prompt_file)]
    if prompts_file:
        lines = [ln.strip() for ln in read_context_file(prompts_file).splitlines()]
        lines = [ln for ln in lines if ln]
        if not lines:
            raise PromptError(f"no prompt in {prompts_file!r} (one prompt per line)")
        return lines
    return _typed(stream or sys.stdin)


def _typed(stream):
    while True:
        print("[P0] prompt> ", end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line or not line.strip():
            return
        yield line.strip()


def generate_job(party, prompt_file: str = "", prompts: str = "", interactive: int = 0,
                 max_new_tokens: int = 8, context_file: str = "", raw: int = 0,
                 policy: str = "full", budget: float = 0.0, prefill: str = "private",
                 compare_full: int = 1, fixed_length: int = 0, model: str = "smollm2",
                 idle_timeout: float = 3600.0, client: int = 0, owner: int = 1,
                 share_store: str = "") -> dict:
    """`mpcache launch -- generate ...` at one party: only the owner reads the model;
    the prompt files (and stdin) are read at the client only (their paths are not
    secret; their contents never leave it except secret-shared)."""
    ev = Eviction(policy, budget or None, prefill, bool(compare_full))
    source, ctx = None, None
    if party.id == client:
        source = prompt_source(prompt_file, prompts, bool(interactive))
        ctx = read_context_file(context_file) if context_file else None
    got = serve_job(party, source, max_new_tokens, ctx, bool(raw), model, ev,
                    bool(fixed_length), client, owner, idle_timeout=idle_timeout,
                    share_store=share_store)
    first = next((a for a in got["answers"] if "tokens" in a), None)
    got["result"] = None if first is None else np.asarray(first["tokens"], dtype=np.int64)
    if party.id == client:
        got["texts"] = [a["text"] for a in got["answers"]]
        if first is not None:                        # the first answer, as one-prompt runs
            got["text"], got["tokens"] = first["text"], first["tokens"]
    got["stats"] = party.stats()
    return got


def report_lines(outputs: list) -> list:
    """The launcher's summary of a generate job: set-up once, then each answer (text at
    the client, its own costs) and, with eviction, the per-step lines."""
    from .generate import step_costs, step_lines
    if not all(outputs) or not all("answers" in o for o in outputs):
        return []
    lines = cost_lines(outputs)
    if any(o["answers"] and o["answers"][0]["steps"] for o in outputs):
        for k in range(min(len(o["answers"]) for o in outputs)):
            steps = [o["answers"][k]["steps"] for o in outputs]
            if all(steps) and any(s.get("full") for s in steps[0]):
                toks = outputs[client_index(outputs)]["answers"][k].get("tokens") or []
                lines += [f"answer {k + 1} {ln}" for ln in
                          step_lines(step_costs(steps), len(toks))]
    return lines

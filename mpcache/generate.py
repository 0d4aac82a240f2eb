"""``mpcache generate``: private greedy generation on the packaged SmolLM2.

Everything that can be checked about the prompt is checked *before* any party starts
(empty prompt, undecodable file, too long for the model): a bad prompt never costs an
MPC run.  The three parties then run :func:`generation_job` (threads with the local
transport, or processes with gRPC: the same job).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

#: A fixed public text for norm-scale calibration (never the user's prompt).
CALIBRATION_TEXT = (
    "The committee met on a cold morning in March to review the plans for the new library. "
    "Several members argued that the reading rooms should face the river, while others "
    "preferred a quieter courtyard. After two hours of discussion they agreed to build a "
    "small model, invite comments from the town, and decide in the autumn. Meanwhile the "
    "old building would stay open, with longer hours on weekends and a new children's "
    "corner. What is the capital of France? The capital of France is Paris. Numbers such "
    "as 1, 42, 365 and 2048 appeared in the budget, which totalled 3.5 million.")


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


def prescales_for(lm) -> dict:
    from .nn.private import calibrate_prescales
    return calibrate_prescales(lm.model, lm.encode(CALIBRATION_TEXT))


def generation_job(party, config, weights, prescales, request: GenerationRequest | None,
                   client: int = 0, owner: int = 1, echo=None, progress=None):
    """The SPMD job: share weights (owner) and prompt (client), prefill, decode.

    ``weights`` and ``request`` are read only at the owner and the client respectively.
    Returns the generated ids at the client (None elsewhere)."""
    from .nn.private import private_generate, share_decoder, share_prompt
    dec = share_decoder(party, config, weights if party.id == owner else None, owner,
                        prescales)
    with party.scope("share_prompt"):
        prompt = share_prompt(party, request.prompt_ids if party.id == client else None,
                              config.vocab_size, client)
    n_new = request.max_new_tokens if request is not None else None
    n_new = _announce_int(party, n_new, client)
    return private_generate(party, dec, prompt, n_new,
                            request.stop_ids if party.id == client else (), client,
                            on_token=echo if party.id == client else None,
                            on_prefill_layer=progress if party.id == client else None)


def _announce_int(party, value, src):
    from .nn.private import announce
    return announce(party, int(value) if party.id == src else 0, src)


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


def run_local(lm, request: GenerationRequest, protocol: str, echo_stream=sys.stdout,
              progress_stream=sys.stderr, timeout: float = 600.0):
    """Generate with three in-process parties; prints tokens as they come."""
    from .runtime import Session
    prescales = prescales_for(lm)
    shown = []

    def echo(step, tid):
        shown.append(tid)
        text = lm.decode(shown)
        prev = lm.decode(shown[:-1])
        echo_stream.write(text[len(prev):])
        echo_stream.flush()

    t0 = time.perf_counter()

    def progress(i, n):
        progress_stream.write(f"\r[prefill] layer {i + 1}/{n}  {time.perf_counter() - t0:6.1f} s")
        if i + 1 == n:
            progress_stream.write("\n")
        progress_stream.flush()

    res = Session(protocol, timeout=timeout).run(
        generation_job, lm.config, lm.model.weights, prescales, request, echo=echo,
        progress=progress)
    ids = res.output
    return ids, summarize(res, len(ids))


# -- gRPC: the same job in three processes ---------------------------------------------------
def generate_job(party, prompt: str, max_new_tokens: int = 8, context_file: str = "",
                 raw: int = 0, client: int = 0, owner: int = 1) -> dict:
    """`mpcache launch -- generate --prompt ...`: every process loads the packaged model
    file, but only the owner's weights and only the client's prompt enter the MPC.
    Returns the client's tokens/text, this party's stats and its peak RSS."""
    import resource

    from .nn.smollm2 import load_smollm2
    lm = load_smollm2("float64")
    req = None
    if party.id == client:
        ctx = read_context_file(context_file) if context_file else None
        req = build_request(lm, prompt, max_new_tokens, ctx, chat=not raw)
    ids = generation_job(party, lm.config, lm.model.weights if party.id == owner else None,
                         prescales_for(lm), req)
    out = {"result": None if ids is None else np.asarray(ids, dtype=np.int64),
           "stats": party.stats(),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if ids is not None:
        out["text"] = lm.decode(ids)
    return out


def run_grpc(argv_job: list, protocol: str, insecure: bool = False):
    """Start three party processes on loopback with fresh mTLS certificates."""
    import socket
    import tempfile
    from pathlib import Path

    from .net.config import render_config
    from .net.launcher import launch
    from .net.tls import make_certs
    d = Path(tempfile.mkdtemp(prefix="mpcache-gen-"))
    make_certs(d)
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    # long deadline: a receive may wait while a peer computes a whole prefill layer
    (d / "parties.toml").write_text(render_config(ports, protocol=protocol, timeout_s=900.0,
                                                  connect_timeout_s=120.0, certs_dir=".",
                                                  session=None))
    return launch(d / "parties.toml", argv_job)

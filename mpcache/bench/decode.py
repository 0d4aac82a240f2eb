"""``mpcache bench decode``: cost of one private decoding step with N cached tokens.

The KV cache a decoding step reads is built by a *plaintext* prefill of N tokens and then
secret-shared by the client (as if a private prefill had produced it): the step's cost
does not depend on how the cache was made, and a private prefill of thousands of tokens
would dominate the benchmark's run time.  Measured inside scope "decode": the embedding
of the (secret) previous token, all layers, the LM head and the secret argmax; reported as
max over parties (bytes, seconds) and critical-path rounds, with the breakdown per scope.
The whole run is in one process (three threads), so ``peak_rss_mb`` covers all three
parties; per-party memory is about a third of the share part.
"""
from __future__ import annotations

import json
import resource
import time

import numpy as np

from ..runtime import Session


def _model(name: str, max_context: int):
    if name == "smollm2":
        from ..generate import prescales_for
        from ..nn.smollm2 import load_smollm2
        lm = load_smollm2("float64")
        return lm.model, prescales_for(lm), lambda n: _essay_tokens(lm, n)
    from ..nn.transformer import random_gpt2_small
    from ..nn.private import calibrate_prescales
    dec = random_gpt2_small(vocab_size=50257, seed=0, max_positions=max_context + 16,
                            dtype="float64")
    rng = np.random.default_rng(0)
    toks = lambda n: rng.integers(0, dec.config.vocab_size, n)  # noqa: E731
    return dec, calibrate_prescales(dec, toks(256)), toks


def _essay_tokens(lm, n: int) -> np.ndarray:
    from ..nn.reference import DEFAULT_ESSAY, paul_graham_essays
    ids = []
    files = sorted(paul_graham_essays(), key=lambda p: p.name != DEFAULT_ESSAY)
    for f in files:
        ids.extend(lm.encode(f.read_text(encoding="utf-8")).tolist())
        if len(ids) >= n:
            break
    return np.asarray(ids[:n], dtype=np.int64)


def decode_step_job(party, config, weights, prescales, cache_kv, positions, next_token,
                    policy=None, client=0, owner=1):
    from ..nn.private import share_decoder
    dec = share_decoder(party, config, weights if party.id == owner else None, owner, prescales)
    cache = dec.new_cache(policy)
    with party.scope("share_cache"):
        for layer in range(config.n_layers):
            k, v = cache_kv[layer] if party.id == client else (None, None)
            cache.replace(layer, party.share(k, owner=client), party.share(v, owner=client),
                          positions)
    cache.n_seen = int(positions[-1]) + 1
    dec.cache = cache
    oh = None
    if party.id == client:
        oh = np.zeros((1, config.vocab_size), dtype=np.int64)
        oh[0, next_token] = 1
    tok = party.share(oh, owner=client, integer=True)
    with party.scope("decode"):
        logits = dec.decode_step(tok)
        with party.scope("sample"):
            onehot = dec.greedy_onehot(logits)
            tid = (onehot @ dec.token_values).reveal(to=client)
    return tid


def bench_decode(model: str, contexts, protocols=("rep3",), policy: str = "full",
                 budget: float | None = None, json_path: str | None = None, echo=print) -> list:
    if policy != "full":
        raise NotImplementedError("policies under MPC: see `mpcache bench decode --policy` "
                                  "once the eviction policies are wired (issue 7)")
    dec, prescales, tokens = _model(model, max(contexts))
    rows = []
    for n in contexts:
        ids = tokens(n + 1)
        dec.prefill(ids[:n])
        kv = [(dec.cache.keys(i).copy(), dec.cache.values(i).copy())
              for i in range(dec.config.n_layers)]
        positions = np.arange(n, dtype=np.int64)
        ref_logits = dec.decode_step(int(ids[n]))
        for protocol in protocols:
            t0 = time.perf_counter()
            res = Session(protocol, timeout=3600).run(
                decode_step_job, dec.config, dec.weights, prescales, kv, positions, int(ids[n]))
            sc = res.scope("decode")
            row = {"model": model, "context": n, "protocol": protocol, "policy": policy,
                   "budget": budget, "seconds": sc["seconds"], "bytes_per_party": sc["bytes_sent"],
                   "offline_bytes_per_party": sc["offline_bytes_sent"], "rounds": sc["rounds"],
                   "messages": sc["messages_sent"],
                   "token_matches_plaintext": int(res.output) == int(np.argmax(ref_logits)),
                   "breakdown": {k: {"seconds": v["seconds"], "bytes_per_party": v["bytes_sent"],
                                     "rounds": v["rounds"]}
                                 for k, v in res.breakdown_under("decode").items()},
                   "wall_seconds_incl_setup": time.perf_counter() - t0,
                   "peak_rss_mb_all_parties": resource.getrusage(
                       resource.RUSAGE_SELF).ru_maxrss / 1024}
            rows.append(row)
            echo(f"{model} ctx {n:5d} {protocol}: {row['seconds']:.2f} s, "
                 f"{row['bytes_per_party'] / 1e6:.2f} MB/party, {row['rounds']} rounds, "
                 f"token ok: {row['token_matches_plaintext']}")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(rows, fh, indent=1)
    return rows

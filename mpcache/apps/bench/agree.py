"""``mpcache bench agree``: MPC and plaintext give the same greedy tokens.

A prompt of N tokens from a Paul Graham essay (public test text), private prefill and
greedy decoding of K tokens under MPC, compared with the float64 plaintext reference:
same token ids, and the max |logit difference| over all steps.  For the comparison the
logits are revealed to the client at each step -- a verification harness only; the real
generation (``mpcache generate``) reveals nothing but the chosen token ids.
"""
from __future__ import annotations

import time

import numpy as np

from ...runtime import Session
from . import write_rows


def agree_job(party, config, weights, prescales, prompt_ids, n_new, client=0, owner=1):
    from ...nn.private import share_decoder, share_prompt
    dec = share_decoder(party, config, weights if party.id == owner else None, owner, prescales)
    oh = share_prompt(party, prompt_ids if party.id == client else None, config.vocab_size,
                      client)
    logits_seen, toks = [], []
    with party.scope("prefill"):
        logits = dec.prefill(oh)
    for _ in range(n_new):
        with party.latency_bound(), party.scope("decode"):
            lg = logits.reveal(to=client)            # verification only
            onehot = dec.greedy_onehot(logits)
            tid = (onehot @ dec.token_values).reveal(to=client)
            if party.id == client:
                logits_seen.append(lg)
                toks.append(int(tid))
            logits = dec.decode_step(onehot.reshape(1, config.vocab_size))
    return (toks, logits_seen) if party.id == client else None


def bench_agree(prompt_tokens=128, new_tokens=16, protocols=("rep3", "add2"),
                json_path=None, echo=print) -> list:
    from .decode import _essay_tokens
    from ..generate import prescales_for
    from ...nn.smollm2 import load_smollm2
    lm = load_smollm2("float64")
    prompt = _essay_tokens(lm, prompt_tokens)
    ref_dec = lm.model
    logits = ref_dec.prefill(prompt)
    ref_toks, ref_logits = [], []
    for _ in range(new_tokens):
        ref_logits.append(np.asarray(logits))
        t = int(np.argmax(logits))
        ref_toks.append(t)
        logits = ref_dec.decode_step(t)
    pres = prescales_for(lm)
    rows = []
    for protocol in protocols:
        t0 = time.perf_counter()
        res = Session(protocol, timeout=3600).run(agree_job, lm.config, lm.model.weights, pres,
                                                  prompt, new_tokens)
        toks, lgs = res.output
        diffs = [float(np.max(np.abs(a - b))) for a, b in zip(lgs, ref_logits)]
        # after the first divergent token the contexts differ; compare logits up to there
        first_bad = next((i for i, (a, b) in enumerate(zip(toks, ref_toks)) if a != b), None)
        upto = len(toks) if first_bad is None else first_bad + 1
        row = {"protocol": protocol, "prompt_tokens": int(prompt.size), "new_tokens": new_tokens,
               "mpc_tokens": toks, "plaintext_tokens": ref_toks,
               "same_tokens": toks == ref_toks, "first_divergence": first_bad,
               "max_abs_logit_diff": max(diffs[:upto]), "mean_max_abs_logit_diff":
               float(np.mean(diffs[:upto])), "max_abs_logit": float(max(
                   np.max(np.abs(x)) for x in ref_logits)),
               "mpc_text": lm.decode(toks), "plaintext_text": lm.decode(ref_toks),
               "prefill_seconds": res.scope("prefill")["seconds"],
               "wall_seconds": time.perf_counter() - t0}
        rows.append(row)
        echo(f"{protocol}: same tokens {row['same_tokens']}, max |logit diff| "
             f"{row['max_abs_logit_diff']:.4f} (logits up to {row['max_abs_logit']:.1f}); "
             f"prefill {row['prefill_seconds']:.0f} s")
    write_rows(rows, json_path)
    return rows

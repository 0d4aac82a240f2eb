"""`mpcache explain`: every available op runs on both protocols, its totals match the cost
formula where there is one, every message tag it produces has an entry in the tag table,
and no share value is printed unless asked."""
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
    assert not unknown, f"tags without an explanation in mpcache/explain.py TAGS: {unknown}"


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

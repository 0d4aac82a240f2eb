"""Every examples/*.py runs to completion (as a subprocess, as a newcomer would run it).

An example lists the engine functions it needs in a ``Needs:`` line of its docstring;
while one of them is not in this build yet, the example is skipped with that reason
(and only then)."""
import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

import mpcache

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("[0-9]*.py"))


def _missing(path):
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    m = re.search(r"^Needs:\s*(.+)$", doc, re.M)
    if not m:
        return []
    out = []
    for name in (s.strip() for s in m.group(1).split(",")):
        if not name:
            continue
        obj_name, _, attr = name.rpartition(".")
        obj = getattr(mpcache, obj_name, None) if obj_name != "mpcache" else mpcache
        val = getattr(obj, attr, None) if obj is not None else None
        if val is None or (attr.startswith("__") and val is getattr(object, attr, None)):
            out.append(name)
    return out


def test_examples_exist():
    assert len(EXAMPLES) >= 6, [p.name for p in EXAMPLES]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(path):
    missing = _missing(path)
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)}, not in this build yet")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MPCACHE_TRACE", None)
    out = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    m = re.search(r"(ImportError: cannot import name .*mpcache.*|ModuleNotFoundError: No module "
                  r"named 'mpcache\.[^']*')", out.stderr)
    if out.returncode != 0 and m:
        pytest.skip(f"{path.name}: an engine module is not in this build yet ({m.group(1)})")
    assert out.returncode == 0, f"{path.name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert "round" in out.stdout.lower(), f"{path.name} prints no costs (rounds, bytes)"

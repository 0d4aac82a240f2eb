"""The HTML trace view (mpcache/trace_html.py): one arrow per message, narration from the
tag table, no share values, the command lines, and the page as a real headless browser
draws it (Debian's chromium; installed when absent and apt-get can, skipped otherwise)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings

import pytest

import mpcache
from mpcache import trace as T
from mpcache import trace_html as H
from mpcache.apps.explain import LEARNS, lookup, run_traced

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _softmax_trace(protocol="rep3"):
    shape, ins, res, expected = run_traced("softmax", protocol, (1, 8), 0)
    return T.traces_of(res, protocol, 18)


def _n_messages(trace):
    return sum(len(t.sends()) for t in trace.transcripts)


def _page_data(page):
    m = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page,
                  re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_one_row_per_message_joined_on_both_sides(protocol):
    tr = _softmax_trace(protocol)
    msgs = H.messages(tr)
    assert len(msgs) == _n_messages(tr)
    # every message was seen by both ends and the join agrees on what was sent
    assert all("recv_clock" in m and "send_clock" in m for m in msgs)
    sends = sorted((e.party, e.peer, e.seq, e.nbytes, e.tag) for t in tr.transcripts
                   for e in t.sends())
    assert sorted((m["sender"], m["receiver"], m["seq"], m["nbytes"], m["tag"])
                  for m in msgs) == sends
    # columns follow the round order; online messages sit at their stamp
    assert [m["round"] for m in msgs] == sorted(m["round"] for m in msgs)
    assert all(m["round"] == m["stamp"] for m in msgs if not m["offline"])


def test_page_data_narration_totals_and_no_values():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", T.TraceValuesWarning)
        res = mpcache.Session("rep3", trace=True, trace_values=True).run(
            lambda p: p.reveal(p.share([1.5, 2.5] if p.id == 0 else None, 0)
                               * p.share([3.0, 4.0] if p.id == 1 else None, 1)))
    tr = T.traces_of(res, "rep3", 18)
    page = H.render(tr, "toy")
    data = _page_data(page)[0]
    assert len(data["msgs"]) == _n_messages(tr)
    for t in data["tags"]:          # narration comes from explain's tag table
        info = lookup(t["tag"])
        assert (t["title"], t["local"], t["why"]) == (info.title, info.local, info.learns)
        assert t["learns"] == LEARNS[info.kind]
    assert data["check"] == []      # totals recomputed from events = accounting
    whole = {k: [t.totals()[k] for t in tr.transcripts] for k in T.COUNTER_KEYS}
    assert data["whole"] == whole
    # share values never reach the page, even from a transcript that holds them
    vals = {str(v) for t in tr.transcripts for e in t.events if e.values
            for v in e.values if abs(v) > 10**6}
    assert vals and not any(v in page for v in vals)
    # self-contained: no external resource
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page)
    assert "http://www.w3.org/2000/svg" in page and "https://" not in page


def test_cli_trace_html_and_explain_html(tmp_path):
    trace_file = tmp_path / "run.jsonl"
    html_file = tmp_path / "run.html"
    ex_html = tmp_path / "explain.html"
    r = subprocess.run([sys.executable, "-m", "mpcache.cli", "explain", "mul", "--protocol",
                        "add2", "--trace", str(trace_file), "--html", str(ex_html)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    tr = T.read(str(trace_file))[0]
    n = _n_messages(tr)
    assert f"({n} messages)" in r.stdout
    assert len(_page_data(ex_html.read_text())[0]["msgs"]) == n
    r = subprocess.run([sys.executable, "-m", "mpcache.cli", "trace", "html",
                        str(trace_file), "-o", str(html_file)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{n} messages (arrows)" in r.stdout
    assert len(_page_data(html_file.read_text())[0]["msgs"]) == n


# -- the page in a real browser ----------------------------------------------------------------
def _find_browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = _find_browser()
    if path is None and shutil.which("apt-get") and hasattr(os, "geteuid") \
            and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        try:
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, env=env)
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends",
                            "chromium"], capture_output=True, timeout=900, env=env)
        except (OSError, subprocess.TimeoutExpired):
            pass
        path = _find_browser()
    if path is None:
        pytest.skip("no headless browser: chromium is not installed and `apt-get install "
                    "chromium` is not possible here (needs root, apt and the network)")
    return path


def _chromium(browser, *args):
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([browser, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
                           capture_output=True, text=True, timeout=180)
    return r


def test_browser_draws_one_arrow_per_message(browser, tmp_path):
    tr = _softmax_trace("rep3")
    n = _n_messages(tr)
    page = tmp_path / "softmax.html"
    assert H.write_html(tr, str(page), "mpcache explain softmax --protocol rep3 "
                        "--shape 1x8") == n
    r = _chromium(browser, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    dom = r.stdout
    assert "<svg" in dom, r.stderr[-2000:]
    # what the script drew: arrows counted in the DOM and reported in title and body
    assert len(re.findall(r'<g class="msg[ "]', dom)) == n
    assert f'data-arrows="{n}"' in dom
    assert re.search(rf"<title>[^<]*\[{n} arrows\]</title>", dom)
    assert f'data-messages="{n}"' in dom
    # scope bands drawn for the op's sub-scopes
    for s in ("op/exp", "op/max", "op/recip"):
        assert f'data-scope="{s}"' in dom
    shot = tmp_path / "softmax.png"
    r = _chromium(browser, "--window-size=1600,760", "--hide-scrollbars",
                  f"--screenshot={shot}", page.as_uri() + "#pin=60")
    assert shot.exists() and shot.stat().st_size > 20_000, r.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("MPCACHE_HTML_SCREENSHOT")    # docs/img/... when refreshing docs
    if keep:
        shutil.copyfile(shot, keep)


# -- traces recorded by real party processes -----------------------------------------------
def test_launch_trace_merges_and_matches_every_partys_accounting(tmp_path):
    from mpcache.net.config import render_config
    from mpcache.apps.launcher import launch
    from mpcache.trace_parties import link_check, party_file, read_folder
    cfg = tmp_path / "parties.toml"
    cfg.write_text(render_config(insecure=True, timeout_s=30.0, seed=5))
    folder = tmp_path / "traces"
    res = launch(cfg, ["softmax", "--rows", "1", "--cols", "8"], echo=False,
                 per_party_args={i: ["--trace", party_file(str(folder), i)]
                                 for i in range(3)}, deadline_s=120)
    assert res.returncode == 0, res.log_text(0)
    (tr,) = read_folder(str(folder))
    assert tr.session == res.session and tr.meta["link_check"] == []
    for i, t in enumerate(tr.transcripts):
        st = res.outputs[i]["stats"]
        assert t.check(st) == [] and t.check() == []      # file snapshot = process output
        assert t.totals()["bytes_sent"] == st["total"]["bytes_sent"]
        for path, c in st["scopes"].items():
            assert t.scope_counters(path) == {k: c[k] for k in T.COUNTER_KEYS}, path
    # same messages, tags and sizes as the in-process traced session with the same seed
    # (not the same link sequence numbers: exp's branches interleave their messages on a
    # link as their threads happen to run, mpcache.branches)
    from mpcache.apps.jobs import make_job
    job, _ = make_job("softmax", rows=1, cols=8)
    ref = mpcache.Session("rep3", seed=5, trace=True).run(job)
    assert [sorted((e.peer, e.tag, e.nbytes, e.stamp) for e in t.sends())
            for t in tr.transcripts] == \
        [sorted((e.peer, e.tag, e.nbytes, e.stamp) for e in t.sends())
         for t in ref.transcripts]
    # the command lines read the folder; a receiver's record that disagrees is reported
    r = subprocess.run([sys.executable, "-m", "mpcache.cli", "trace", "show", str(folder),
                        "--totals"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "merged from 3 party files" in r.stdout
    assert r.stdout.count("totals equal its own accounting") == 3
    assert "each matched at its receiver" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mpcache.cli", "trace", "html", str(folder),
                        "-o", str(tmp_path / "run.html")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and f"{len(H.messages(tr))} messages" in r.stdout
    p1 = party_file(str(folder), 1)
    lines = open(p1).read().splitlines()
    for j, line in enumerate(lines):
        rec = json.loads(line)
        if rec["type"] == "event" and rec["direction"] == "recv" and rec["nbytes"] == 64:
            rec["tag"] = "rep3.other"
            lines[j] = json.dumps(rec)
            break
    open(p1, "w").write("\n".join(lines) + "\n")
    (bad,) = read_folder(str(folder))
    assert len(bad.meta["link_check"]) == 1 and "receiver" in bad.meta["link_check"][0]
    assert link_check(bad) == bad.meta["link_check"]
    r = subprocess.run([sys.executable, "-m", "mpcache.cli", "trace", "show", str(folder),
                        "--totals"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "1 MISMATCH" in r.stdout

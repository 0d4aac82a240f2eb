"""Fault tests: three real party processes; one misbehaves; everyone fails clearly.

The misbehaving parts are jobs defined here and launched as ``test_net_faults:job_*``
(the party processes import this module).  They use raw transport exchanges so they do
not depend on the protocol code.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _ring(party, rounds, kill_at=None, sleep_at=None, who=2, sleep_s=0.0):
    x = np.arange(8, dtype=np.uint64) + np.uint64(party.id)
    for r in range(rounds):
        if party.id == who and r == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if party.id == who and r == sleep_at:
            time.sleep(sleep_s)
        party.send((party.id + 1) % 3, x, f"ring.{r}")
        x = party.recv((party.id - 1) % 3, f"ring.{r}") + np.uint64(1)
    return {"result": x, "stats": party.stats()}


def job_kill(party, at=3):
    """Party 2 SIGKILLs itself at round ``at``."""
    return _ring(party, 8, kill_at=at)


def job_sleepy(party, sleep=4.0):
    """Party 1 sleeps ``sleep`` seconds at round 2 (past the others' deadline)."""
    return _ring(party, 5, sleep_at=2, who=1, sleep_s=sleep)


def job_malformed(party):
    """Party 2 puts garbage bytes on its link to party 0 in round 1."""
    if party.id == 2:
        party.send(0, np.zeros(2, dtype=np.uint64), "ring.0")
        party.transport._send_raw(0, b"\xff\xff\xff\xff not a frame")
    return _ring(party, 4)


def job_idle(party, idle=6.0):
    """P1 computes for ``idle`` seconds while the others wait on quiet links."""
    x = party.share(np.ones(4) if party.id == 0 else None, 0)
    if party.id == 1:
        time.sleep(idle)
    return {"result": party.reveal(x * x), "stats": party.stats()}


def job_ring(party, rounds=4):
    return _ring(party, rounds)


# -- the tests -------------------------------------------------------------------------------
from mpcache.net.config import render_config  # noqa: E402
from mpcache.apps.launcher import launch  # noqa: E402
from mpcache.net.tls import make_certs  # noqa: E402

ENV = {"PYTHONPATH": HERE}        # the parties import this module for the jobs above
#: a failure must end the run well before the launcher's 60 s deadline (the failure, not
#: the deadline, stopped it); most of the time is three interpreters starting, which took
#: 18 s on a loaded 2-core machine, so the margin is generous (no timing target here)
EARLY_S = 45


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("ca_a"), tmp_path_factory.mktemp("ca_b")
    make_certs(a)
    make_certs(b)
    return a, b


def _launch(tmp_path, job, certs_dir=None, timeout_s=5.0, per_party=None):
    cfg = tmp_path / "parties.toml"
    cfg.write_text(render_config(insecure=certs_dir is None, certs_dir=certs_dir,
                                 timeout_s=timeout_s, connect_timeout_s=8.0))
    t0 = time.monotonic()
    res = launch(cfg, [f"test_net_faults:{job}"], per_party_args=per_party, echo=False,
                 env=ENV, deadline_s=60)
    return res, time.monotonic() - t0


def _failed_line(res, i) -> str:
    lines = [ln for ln in res.logs[i] if "FAILED" in ln]
    assert lines, f"P{i} printed no FAILED line:\n{res.log_text(i)}"
    return lines[-1]


def test_kill_one_party_mid_protocol(tmp_path):
    res, secs = _launch(tmp_path, "job_kill")
    assert res.returncode != 0 and res.returncodes[2] == -signal.SIGKILL
    for i in (0, 1):
        line = _failed_line(res, i)
        assert "party 2 disconnected without finishing" in line, line
    assert secs < EARLY_S


def test_party_sleeping_past_the_deadline(tmp_path):
    res, secs = _launch(tmp_path, "job_sleepy", timeout_s=2.0)
    assert res.returncode != 0
    waited = [_failed_line(res, i) for i in (0, 2)]
    assert any("no message from party 1" in ln and "within 2.0 s" in ln for ln in waited), waited
    assert all("no message from party" in ln for ln in waited), waited
    assert "aborted" in _failed_line(res, 1)       # the sleeper learns it when it wakes
    assert secs < EARLY_S


def test_malformed_message(tmp_path):
    res, secs = _launch(tmp_path, "job_malformed")
    assert res.returncode != 0
    assert "malformed frame from party 2" in _failed_line(res, 0)
    for i in (1, 2):
        assert "malformed frame from party 2" in _failed_line(res, i)
    assert secs < EARLY_S


def test_certificate_from_another_ca(tmp_path, certs):
    a, b = certs
    other = {2: ["--tls-ca", str(b / "ca.pem"), "--tls-cert", str(b / "party2.pem"),
                 "--tls-key", str(b / "party2.key")]}
    res, secs = _launch(tmp_path, "job_ring", certs_dir=a, per_party=other)
    assert res.returncodes == [3, 3, 3]
    for i in range(3):
        line = _failed_line(res, i)
        assert "TLS handshake with party" in line and "not signed by our CA" in line, line
    assert "with party 2" in _failed_line(res, 0) and "with party 2" in _failed_line(res, 1)
    assert secs < EARLY_S


def test_certificate_naming_another_party(tmp_path, certs):
    a, _ = certs
    wrong = {1: ["--tls-cert", str(a / "party2.pem"), "--tls-key", str(a / "party2.key")]}
    res, secs = _launch(tmp_path, "job_ring", certs_dir=a, per_party=wrong)
    assert res.returncodes == [3, 3, 3]
    text = "claims to be party 1 but its certificate names mpcache-party-2"
    assert text in _failed_line(res, 1)
    assert any(text in _failed_line(res, i) for i in (0, 2))
    assert secs < EARLY_S


def test_mismatched_fixed_point(tmp_path):
    res, secs = _launch(tmp_path, "job_ring", per_party={1: ["--frac-bits", "16"]})
    assert res.returncodes == [3, 3, 3]
    for i in range(3):
        line = _failed_line(res, i)
        assert "mismatched frac_bits" in line and "party 1 has 16" in line, line
    assert secs < EARLY_S


def test_long_idle_links_survive_keepalive(tmp_path):
    """Regression: with keepalive pings every 1 s and a 6 s wait, a server that does not
    accept the pings answers GOAWAY "too_many_pings" and drops the link (seen on SmolLM2,
    where parties wait ~100 s for a prefill layer with the default 20 s keepalive)."""
    cfg = tmp_path / "parties.toml"
    cfg.write_text(render_config(insecure=True, timeout_s=30.0, connect_timeout_s=8.0))
    res = launch(cfg, ["test_net_faults:job_idle"], echo=False, deadline_s=60,
                 env={**ENV, "MPCACHE_GRPC_KEEPALIVE_MS": "1000"})
    assert res.returncode == 0, "\n".join(res.log_text(i) for i in range(3))

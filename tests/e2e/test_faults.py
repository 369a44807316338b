"""End to end: a run whose party or dealer dies (SIGKILL) or stalls (SIGSTOP) fails cleanly.

The launcher trains three-hospitals for many epochs (tens of seconds of work); once a party has
logged its first epoch, one process is killed or stopped. The launcher must exit non-zero
quickly without writing weights, and no process of the run may be left behind.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PARTIES = ("hospital_a", "hospital_b", "hospital_c")


def _wait_for_progress(out: Path, launcher, logs, timeout: float = 60.0,
                      marker: str = "epoch 1/") -> None:
    """Wait until hospital_a logged ``marker`` (by default: the run is in its online phase)."""
    deadline = time.monotonic() + timeout
    log = out / "logs" / "hospital_a.log"
    while time.monotonic() < deadline:
        if log.exists() and marker in log.read_text(errors="replace"):
            return
        if launcher.popen.poll() is not None:
            pytest.fail(f"launcher exited {launcher.popen.returncode} before training\n{logs()}")
        time.sleep(0.05)
    pytest.fail(f"no progress within {timeout}s\n{logs()}")


def _victim_pid(e2e, out: Path, name: str, logs) -> int:
    """The pid of process ``name`` of this run (its argv names ``out`` via --certs)."""
    pids = e2e.run_pids(out, name=name) if name != "dealer" else [
        pid for pid in e2e.run_pids(out)
        if any(a == "parties.dealer" for a in Path(f"/proc/{pid}/cmdline").read_bytes()
               .decode(errors="replace").split("\0"))
    ]
    assert len(pids) == 1, f"expected one {name} process, found {pids}\n{logs()}"
    return pids[0]


def _assert_run_ends(e2e, out: Path, launcher, logs, kill_time: float, launcher_s: float,
                     others_s: float) -> None:
    rc = launcher.wait(launcher_s)
    took = time.monotonic() - kill_time
    assert rc is not None, f"launcher still running {launcher_s}s after the fault\n{logs()}"
    assert rc != 0, f"launcher exited 0 although a process failed\n{logs()}"
    assert not (out / "weights.npz").exists(), logs()
    assert not (out / "report.json").exists(), logs()
    left = e2e.wait_no_pids(out, others_s)
    assert not left, f"processes {left} of the run still alive {others_s}s later\n{logs()}"
    print(f"launcher exited {rc} {took:.1f}s after the fault")


def _start(procs, tmp_path: Path, e2e, marker: str = "epoch 1/", **settings):
    out = tmp_path / "run"
    launcher = procs.launch("three-hospitals", out, train__epochs=200, **settings)

    def logs() -> str:
        return f"{launcher.output()}\n{e2e.collect_logs(out)}"

    _wait_for_progress(out, launcher, logs, marker=marker)
    return out, launcher, logs


# Kill points: right after the mesh is up (data masking, dealer start-up), in the first
# epoch, and a few epochs in.
KILL_POINTS = {"setup": "all 3 parties connected", "epoch1": "epoch 1/", "epoch4": "epoch 4/"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
@pytest.mark.parametrize("victim", ["hospital_a", "hospital_b", "dealer"])
def test_killed_process_fails_the_run(victim: str, point: str, tmp_path: Path, procs,
                                      e2e) -> None:
    out, launcher, logs = _start(procs, tmp_path, e2e, marker=KILL_POINTS[point])
    pid = _victim_pid(e2e, out, victim, logs)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    _assert_run_ends(e2e, out, launcher, logs, killed, launcher_s=20, others_s=15)
    # The failure is reported naming the lost process: by a surviving process's own error
    # (it noticed through its link) or, during start-up, by the launcher.
    lines = [ln for ln in logs().splitlines()
             if (" ERROR " in ln or "run failed" in ln) and victim in ln]
    assert lines, f"no error names {victim}\n{logs()}"
    print(f"killed {victim} at {point}: {lines[0].split(' ERROR ')[-1]}")


@pytest.mark.timeout(120)
def test_stalled_party_times_out(tmp_path: Path, procs, e2e) -> None:
    out, launcher, logs = _start(procs, tmp_path, e2e, network__timeout_s=3)
    pid = _victim_pid(e2e, out, "hospital_b", logs)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _assert_run_ends(e2e, out, launcher, logs, stopped, launcher_s=15, others_s=15)
        # Whoever times out first (the launcher waits on hospital_a with the same timeout as
        # the parties wait on each other) says so.
        assert "timed out" in logs(), logs()
    finally:
        e2e.kill_pids([pid])  # SIGCONT + SIGKILL, in case the launcher did not

"""End to end: timeouts measure silence, and the launcher's overall ``--timeout`` is enforced
while the run is in progress.

* ``--timeout 10`` on a run that would train for minutes: the launcher exits non-zero a few
  seconds after 10 s (counted from its certificates, written when its clock starts), saying
  why, writes nothing, and no process of the run is left (old code: the overall timeout was
  looked at only after every epoch had been collected).
* ``network.timeout_s = 1`` on a run of several seconds (batch size 4): the dealer finishes its
  generation long before the parties finish training and then waits for their ``dealer/done``;
  the launcher waits for each epoch's progress; processes compute locally while peers wait on
  them. Heartbeats keep every such wait alive, so the run completes (old code: the dealer's
  final wait gave up after 1 s of the parties' training).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

OVERALL = 10.0
STARTUP = 30.0  # at most, for the launcher's own start-up (imports) on a loaded machine


@pytest.mark.timeout(90)
def test_overall_timeout_ends_a_run_in_progress(tmp_path: Path, procs, e2e) -> None:
    out = tmp_path / "run"
    launcher = procs.launch("three-hospitals", out, "--timeout", f"{OVERALL:g}",
                            train__epochs=500)
    rc = launcher.wait(OVERALL + STARTUP)
    ended = time.time()
    clock = out / "certs" / "launcher.key"  # written just before the launcher's clock starts
    took = ended - clock.stat().st_mtime if clock.exists() else float("inf")

    def logs() -> str:
        return f"{launcher.output()}\n{e2e.collect_logs(out)}"

    assert rc is not None, f"launcher still running {took:.1f}s after {OVERALL}s\n{logs()}"
    log_a = out / "logs" / "hospital_a.log"
    training = log_a.exists() and "epoch 1/" in log_a.read_text(errors="replace")
    print(f"--timeout {OVERALL:g}: launcher exited {rc} {took:.1f}s after its clock started "
          f"({'during training' if training else 'before training'})")
    assert rc != 0, logs()
    assert took < OVERALL + 6, f"took {took:.1f}s\n{logs()}"
    assert "overall timeout" in launcher.stderr.read_text(errors="replace"), logs()
    assert not (out / "weights.npz").exists() and not (out / "report.json").exists(), logs()
    left = e2e.wait_no_pids(out, 5)
    assert not left, f"processes {left} of the run still alive\n{logs()}"


@pytest.mark.timeout(120)
def test_one_second_of_silence_allowed_is_enough(run_launch) -> None:
    res = run_launch("two-clinics", train__epochs=1, train__batch_size=4, network__timeout_s=1)
    assert res.rc == 0, f"launcher exited {res.rc}\n{res.logs()}"
    print(f"two-clinics, batch size 4, network.timeout_s=1: {res.seconds:.1f}s")

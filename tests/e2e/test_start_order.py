"""End to end: the multi-host layout tolerates any start order with a skew below the connect
timeout.

Every process is started by hand with explicit addresses, as on separate hosts: the dealer,
the parties (``--listen``/``--peer``/``--dealer``/``--launcher``) and ``mpc-launch
--coordinator``. One of them starts SKEW seconds after the others:

* the launcher (the README's order: dealer, parties, then the coordinator): the dealer waits
  for it before it accepts parties, so the parties' handshakes with the dealer must be answered
  in the background;
* hospital_c (the highest pid): hospital_b keeps dialing it and cannot accept hospital_a
  meanwhile, so hospital_a's handshake with hospital_b must be answered in the background.

Old code: both fail within ~5 s of the skew (a handshake only answered inside ``accept()``,
and a dial that gives up on the first handshake timeout).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mpc.net.certs import create_deployment

pytestmark = pytest.mark.e2e

PARTIES = ("hospital_a", "hospital_b", "hospital_c")
SKEW = 20.0


@pytest.mark.timeout(150)
@pytest.mark.parametrize("late", ["launcher", "hospital_c"])
def test_late_start_still_completes(late: str, tmp_path: Path, procs, e2e) -> None:
    certs = tmp_path / "certs"
    create_deployment(certs, [*PARTIES, "dealer", "launcher"])
    out, logs = tmp_path / "out", tmp_path / "logs"
    scenario = str(e2e.scenario_path("three-hospitals"))
    ports = dict(zip(("launcher", "dealer", *PARTIES), e2e.free_ports(5), strict=True))
    sets = ["--set", "train.epochs=1"]
    common = ["--scenario", scenario, "--certs", str(certs), *sets,
              "--launcher", f"127.0.0.1:{ports['launcher']}",
              "--dealer", f"127.0.0.1:{ports['dealer']}"]
    peers = [a for p in PARTIES for a in ("--peer", f"{p}=127.0.0.1:{ports[p]}")]
    argv = {
        "launcher": ["-m", "parties.launch", scenario, "--coordinator", "--quiet",
                     "--listen", f"127.0.0.1:{ports['launcher']}", "--certs", str(certs),
                     "--out", str(out), *sets],
        "dealer": ["-m", "parties.dealer", *common, "--listen", f"127.0.0.1:{ports['dealer']}"],
        **{p: ["-m", "parties.party", *common, *peers, "--name", p,
               "--listen", f"127.0.0.1:{ports[p]}"] for p in PARTIES},
    }
    order = ["dealer", *PARTIES, "launcher"]
    started = {}
    t0 = time.monotonic()
    for name in [n for n in order if n != late]:
        started[name] = procs.start(name, argv[name], out_dir=logs)
    time.sleep(SKEW)
    early_exits = {n: p.popen.poll() for n, p in started.items() if p.popen.poll() is not None}
    started[late] = procs.start(late, argv[late], out_dir=logs)

    def all_logs() -> str:
        return e2e.collect_logs(logs, out)

    assert not early_exits, f"exited while waiting for {late}: {early_exits}\n{all_logs()}"
    rc = started["launcher"].wait(100)
    took = time.monotonic() - t0
    assert rc == 0, f"launcher exit {rc}\n{all_logs()}"
    for name, proc in started.items():
        assert proc.wait(20) == 0, f"{name} exit {proc.popen.returncode}\n{all_logs()}"
    assert (out / "report.json").is_file(), all_logs()
    print(f"{late} started {SKEW:.0f}s late: run complete {took:.1f}s after the first start")

"""Multi-host end to end: the compose deployment, one network namespace per container.

Each service of ``parties/compose.yaml`` (dealer, hospital_a/b/c, launcher) runs in its own
network namespace on a bridge (itself in a namespace), with an address in 10.213.7.0/24 that
exists only inside the lab's namespaces. The processes run the compose commands unchanged
(:func:`netns_util.host_argv`: ``mpc-party`` -> ``python -m parties.party``, container paths
-> a per-service root holding copies of exactly that service's mounts); service names resolve
through a per-namespace ``/etc/hosts``. ``MPC_EPOCHS=3`` gives ``--set train.epochs=3`` on
every process, as ``docker-compose`` would.

The WAN variant puts a :mod:`delay_relay` (namespace ``relay``, one address per party) on
every party-to-party link: in each party's namespace a party name resolves to its relay
address, which forwards to the party with a fixed one-way delay per chunk. Dealer and launcher
links are not delayed. Seconds per epoch at 0 and 10 ms are printed and written to
``netns_timings.json`` (path printed; also ``$MPC_NETNS_RESULTS`` if set).

Needs root and ``ip netns``; skipped otherwise. Run: ``pytest -m netns tests/e2e -q``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from netns_util import (  # noqa: E402
    REPO,
    NetnsLab,
    Service,
    compose_services,
    epoch_seconds,
    host_argv,
    listening,
    materialize,
    netns_unavailable_reason,
)

pytestmark = [pytest.mark.e2e, pytest.mark.netns]

PARTIES = ("hospital_a", "hospital_b", "hospital_c")
SERVICES = ("dealer", *PARTIES, "launcher")
EPOCHS = 3
DELAY_MS = 10.0
# Host numbers in the lab subnet; the relay has one address per party it stands in for.
LAYOUT = {
    "dealer": [10],
    "hospital_a": [11],
    "hospital_b": [12],
    "hospital_c": [13],
    "launcher": [20],
    "relay": [31, 32, 33],
}
RUN_TIMEOUT = 120.0
DATA_FILE_BUG = "cannot read data file"


@pytest.fixture(scope="module")
def lab():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(f"network namespaces unavailable: {reason}")
    with NetnsLab() as the_lab:
        try:
            the_lab.build(LAYOUT)
        except subprocess.CalledProcessError as exc:  # namespaces work: this is a failure
            pytest.fail(f"cannot build the namespace lab: {exc.cmd}: {exc.stderr.strip()}")
        yield the_lab


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """Deployment certificates made with the mpc-certs CLI, as the operator would."""
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [sys.executable, "-m", "parties.certs", str(d), *SERVICES],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return d


@pytest.fixture(scope="module")
def timings(request, tmp_path_factory):
    """Collects per-run figures; printed and written to JSON when the module ends."""
    results: dict[str, Any] = {"scenario": "three-hospitals", "epochs": EPOCHS, "runs": {}}
    yield results
    if not results["runs"]:
        return
    path = tmp_path_factory.mktemp("netns-results") / "netns_timings.json"
    text = json.dumps(results, indent=2) + "\n"
    path.write_text(text)
    if os.environ.get("MPC_NETNS_RESULTS"):
        Path(os.environ["MPC_NETNS_RESULTS"]).write_text(text)
    lines = [f"netns timings ({path}):"]
    for name, r in results["runs"].items():
        lines.append(
            f"  {name:>12}: {r['s_per_epoch']:.3f} s/epoch (epochs {r['epoch_seconds']}, "
            f"train_seconds/epochs {r['train_seconds_per_epoch']:.3f}), "
            f"accuracy {r['accuracy']:.4f}"
        )
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines), flush=True)


def _port(service: Service, option: str = "--listen") -> int:
    cmd = list(service.command)
    return int(cmd[cmd.index(option) + 1].rpartition(":")[2])


class Deployment:
    """One run of the compose services in the lab, optionally with delay relays."""


    def __init__(self, lab: NetnsLab, certs: Path, work: Path, delay_ms: float | None) -> None:
        self.lab, self.work, self.delay_ms = lab, work, delay_ms
        env = {
            "MPC_CERTS": str(certs),
            "MPC_OUT": str(work / "host-out"),
            "MPC_EPOCHS": str(EPOCHS),
        }
        self.services = {n: s for n, s in compose_services(env).items() if not s.profiles}
        assert sorted(self.services) == sorted(SERVICES), "compose.yaml services changed"
        self.roots = {n: work / "roots" / n for n in self.services}
        self.logs = {n: work / "logs" / f"{n}.log" for n in [*self.services, "relay"]}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")

    def log(self, name: str) -> str:
        try:
            return self.logs[name].read_text(errors="replace")
        except OSError:
            return ""

    def logs_text(self) -> str:
        return "\n".join(f"----- {n} -----\n{self.log(n)[-4000:]}" for n in self.logs)

    def _start(self, name: str) -> None:
        svc = self.services[name]
        self.procs[name] = self.lab.popen(
            name,
            host_argv(svc, self.roots[name]),
            self.logs[name],
            cwd=self.roots[name] / "app",
            env=self.env,
        )

    def _start_relay(self) -> None:
        routes = []
        for i, party in enumerate(PARTIES):
            port = _port(self.services[party])
            routes += ["--route", f"{self.lab.ip('relay', i)}:{port}={self.lab.ip(party)}:{port}"]
        argv = [
            sys.executable,
            str(Path(__file__).with_name("delay_relay.py")),
            "--delay-ms",
            str(self.delay_ms),
            *routes,
        ]
        self.procs["relay"] = proc = self.lab.popen(
            "relay", argv, self.logs["relay"], env=self.env
        )
        end = time.monotonic() + 20
        while "ready" not in self.log("relay"):
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"delay relay did not start:\n{self.log('relay')}")
            time.sleep(0.05)

    def run(self) -> dict[str, Any]:
        ips = {n: self.lab.ip(n) for n in self.services}
        for name, svc in self.services.items():
            materialize(svc, self.roots[name])
            entries = dict(ips)
            if self.delay_ms is not None and name in PARTIES:
                entries.update({p: self.lab.ip("relay", i) for i, p in enumerate(PARTIES)})
            self.lab.write_hosts(name, entries)
        try:
            if self.delay_ms is not None:
                self._start_relay()
            start = time.monotonic()
            for name in ("launcher", "dealer", *PARTIES):
                self._start(name)
            self._watch_launcher_start()
            deadline = start + RUN_TIMEOUT
            codes: dict[str, int | None] = {}
            for name in ("launcher", "dealer", *PARTIES):
                try:
                    codes[name] = self.procs[name].wait(
                        timeout=max(1, deadline - time.monotonic())
                    )
                except subprocess.TimeoutExpired:
                    codes[name] = None
            wall = time.monotonic() - start
        finally:
            self.lab.stop(self.procs.values())
        result = self._result(codes, wall)
        if self.delay_ms is not None:
            # One connection per pair of parties, each through the relay (the lower pid dials).
            accepted = self.log("relay").count("accepted ")
            n = len(PARTIES)
            assert accepted == n * (n - 1) // 2, (
                f"relay saw {accepted} connections\n{self.log('relay')}"
            )
        return result

    def _watch_launcher_start(self) -> None:
        """The launcher, holding only test.csv, must get as far as listening."""
        proc, port = self.procs["launcher"], _port(self.services["launcher"])
        end = time.monotonic() + 30
        while time.monotonic() < end and proc.poll() is None and not listening(proc.pid, port):
            time.sleep(0.05)
        assert not (proc.poll() not in (None, 0) and DATA_FILE_BUG in self.log("launcher")), (
            "the coordinator must need only test.csv\n" + self.log("launcher")
        )

    def _result(self, codes: dict[str, int | None], wall: float) -> dict[str, Any]:
        report_path = self.roots["launcher"] / "out" / "report.json"
        bad = {n: c for n, c in codes.items() if c != 0}
        assert not bad, f"exit codes {codes}\n{self.logs_text()}"
        assert report_path.is_file(), f"no report.json\n{self.logs_text()}"
        report = json.loads(report_path.read_text())
        epochs = epoch_seconds(self.log("hospital_a"))
        assert len(epochs) == EPOCHS, f"epoch lines {epochs}\n{self.log('hospital_a')}"
        rounds = max(p["rounds"] for p in report["per_party"])
        return {
            "delay_ms": self.delay_ms or 0.0,
            "relayed": self.delay_ms is not None,
            "epoch_seconds": [round(s, 4) for s in epochs],
            "s_per_epoch": sum(epochs) / len(epochs),
            "train_seconds_per_epoch": report["train_seconds"] / report["epochs"],
            "train_seconds": report["train_seconds"],
            "rounds_per_epoch": rounds / EPOCHS,
            "wall_seconds": round(wall, 2),
            "accuracy": report["metrics"]["accuracy"],
            "report": report,
        }


def _check(result: dict[str, Any]) -> None:
    report = result["report"]
    assert report["epochs"] == EPOCHS
    assert report["parties"] == list(PARTIES)
    assert report["metrics"]["accuracy"] > 0.95, report["metrics"]
    assert report["reveals"] and {r["party"] for r in report["reveals"]} == set(PARTIES)


def _record(timings: dict[str, Any], name: str, result: dict[str, Any]) -> None:
    slim = {k: v for k, v in result.items() if k != "report"}
    timings["runs"][name] = slim
    print(
        f"{name}: {slim['s_per_epoch']:.3f} s/epoch {slim['epoch_seconds']} "
        f"accuracy {slim['accuracy']:.4f}"
    )


@pytest.mark.timeout(200)
def test_compose_deployment_across_namespaces(lab, certs, timings, tmp_path):
    """Every compose service in its own namespace, addresses by service name, direct links."""
    result = Deployment(lab, certs, tmp_path, delay_ms=None).run()
    _check(result)
    _record(timings, "direct", result)


@pytest.mark.timeout(200)
@pytest.mark.parametrize("delay_ms", [0.0, DELAY_MS], ids=["relay-0ms", "relay-10ms"])
def test_wan_delay_between_parties(lab, certs, timings, tmp_path, delay_ms):
    """Every party-to-party link crosses a relay adding ``delay_ms`` one way."""
    result = Deployment(lab, certs, tmp_path, delay_ms=delay_ms).run()
    _check(result)
    _record(timings, f"relay-{delay_ms:g}ms", result)
    base = timings["runs"].get("relay-0ms")
    if delay_ms > 0 and base is not None:
        # Each round waits at least one one-way delay: the relay must show up in the timing.
        added = result["s_per_epoch"] - base["s_per_epoch"]
        floor = 0.5 * result["rounds_per_epoch"] * delay_ms / 1000
        assert added >= floor, (
            f"{delay_ms} ms relays added only {added:.3f} s/epoch "
            f"(expected >= {floor:.3f} for {result['rounds_per_epoch']:.0f} "
            "rounds/epoch)"
        )

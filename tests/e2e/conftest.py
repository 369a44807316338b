"""Helpers for the end-to-end tests: real launcher, dealer and party processes on loopback.

Everything runs as subprocesses of ``sys.executable`` from the repository root. Output goes to
files under ``tmp_path`` (never pipes: a failing launcher prints every log, which could fill a
pipe). Every process a test starts -- and every process whose command line names the test's
``tmp_path`` (the launcher's children) -- is killed at teardown, so a failing test leaves no
orphans behind. Ports are never fixed: they are picked by binding port 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import mpc.net.channel as mpc_net

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "scenarios"
LOG_TAIL = 6000  # characters of each log attached to an assertion message


def scenario_path(name: str) -> Path:
    return SCENARIOS / f"{name}.toml"


def child_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports, free a moment ago, outside the ephemeral range."""
    return mpc_net.free_ports(count)


def cmdlines() -> dict[int, list[str]]:
    """Command lines of all live (non-zombie) processes, read from /proc."""
    out: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if raw:  # zombies and kernel threads have an empty command line
            out[int(entry)] = raw.decode(errors="replace").rstrip("\0").split("\0")
    return out


def run_pids(marker: Path | str, name: str | None = None) -> list[int]:
    """Pids of live processes whose command line mentions ``marker`` (and ``--name name``)."""
    pids = []
    for pid, args in cmdlines().items():
        if pid == os.getpid() or not any(str(marker) in a for a in args):
            continue
        if name is not None:
            if "--name" not in args or args.index("--name") + 1 >= len(args):
                continue
            if args[args.index("--name") + 1] != name:
                continue
        pids.append(pid)
    return pids


def wait_no_pids(marker: Path | str, timeout: float) -> list[int]:
    """Wait until no live process mentions ``marker``; returns the survivors (empty: ok)."""
    deadline = time.monotonic() + timeout
    while True:
        left = run_pids(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def read_tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return text if len(text) <= limit else "...\n" + text[-limit:]


def collect_logs(*places: Path) -> str:
    """Every ``*.log``/``*.out``/``*.err`` file in the given directories (and logs/ below them),
    formatted for an assertion message."""
    parts = []
    for place in places:
        files: list[Path] = []
        if place.is_file():
            files = [place]
        elif place.is_dir():
            for pattern in ("*.log", "*.out", "*.err", "logs/*.log"):
                files += sorted(place.glob(pattern))
        for f in files:
            parts.append(f"----- {f} -----\n{read_tail(f)}")
    return "\n".join(parts) or f"<no logs in {[str(p) for p in places]}>"


@dataclass
class Proc:
    """A started process with its output files."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    started: float

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def output(self) -> str:
        return (f"----- {self.name} stdout -----\n{read_tail(self.stdout)}\n"
                f"----- {self.name} stderr -----\n{read_tail(self.stderr)}")


class Procs:
    """Starts processes for one test and kills whatever is left at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []

    def start(self, name: str, args: Sequence[str], out_dir: Path | None = None) -> Proc:
        out_dir = out_dir or self.tmp_path
        out_dir.mkdir(parents=True, exist_ok=True)
        stdout, stderr = out_dir / f"{name}.out", out_dir / f"{name}.err"
        with open(stdout, "wb") as fo, open(stderr, "wb") as fe:
            popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=child_env(),
                                     stdout=fo, stderr=fe, stdin=subprocess.DEVNULL)
        proc = Proc(name, popen, stdout, stderr, time.monotonic())
        self.procs.append(proc)
        return proc

    def launch(self, scenario: str | Path, out: Path, *options: str, name: str = "launcher",
               **settings: object) -> Proc:
        """Start ``python -m parties.launch SCENARIO --out OUT --quiet OPTIONS``; ``settings``
        become ``--set key=value`` (``train__epochs=3`` -> ``train.epochs=3``)."""
        path = scenario if isinstance(scenario, Path) else scenario_path(scenario)
        args = ["-m", "parties.launch", str(path), "--out", str(out), "--quiet", *options]
        for key, value in settings.items():
            args += ["--set", f"{key.replace('__', '.')}={value}"]
        return self.start(name, args, out_dir=out.parent / f"{out.name}-launcher")

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.popen.poll() is None:
                kill_pids([proc.popen.pid])
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        # The launcher's children run in their own sessions; they name tmp_path in argv.
        kill_pids(run_pids(self.tmp_path))


@dataclass
class LaunchResult:
    rc: int
    seconds: float
    out: Path
    proc: Proc

    def logs(self) -> str:
        return f"{self.proc.output()}\n{collect_logs(self.out)}"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    tracker = Procs(tmp_path)
    try:
        yield tracker
    finally:
        tracker.cleanup()


@pytest.fixture
def run_launch(procs: Procs, tmp_path: Path) -> Callable[..., LaunchResult]:
    """Run the launcher to completion: ``run_launch(scenario, *options, timeout=, **sets)``."""

    def go(scenario: str | Path, *options: str, timeout: float = 120.0, out: Path | None = None,
           **settings: object) -> LaunchResult:
        out = out or tmp_path / "run"
        proc = procs.launch(scenario, out, *options, **settings)
        rc = proc.wait(timeout)
        seconds = time.monotonic() - proc.started
        if rc is None:
            procs.cleanup()
            pytest.fail(f"launcher did not finish within {timeout}s\n"
                        f"{proc.output()}\n{collect_logs(out)}")
        return LaunchResult(rc, seconds, out, proc)

    return go


@pytest.fixture(scope="session")
def e2e() -> SimpleNamespace:
    """The module-level helpers, for test files (conftest modules are not importable)."""
    return SimpleNamespace(
        ROOT=ROOT, scenario_path=scenario_path, free_ports=free_ports, run_pids=run_pids,
        wait_no_pids=wait_no_pids, kill_pids=kill_pids, collect_logs=collect_logs,
        read_tail=read_tail, child_env=child_env, Procs=Procs,
    )

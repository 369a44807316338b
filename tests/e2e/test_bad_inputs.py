"""Malformed scenarios and datasets are rejected before any connection or process exists.

Each case copies a shipped scenario and its data directory into the test's directory and breaks
one thing: a NaN cell, a non-numeric cell, a bad label, a missing label column, a missing or
renamed feature column at one horizontal party, misaligned vertical ids (``data.align =
"ordered"``), a duplicate vertical id, an unknown key.

* ``parties.launch`` must exit 2 with a configuration error naming the file and the column or
  key (and never quoting a cell's value), without creating ``logs/`` or ``certs/`` in ``--out``.
  Every case runs ``parties.launch.main`` in-process (a process costs ~1.5 s of imports), with
  sockets and process spawning patched to fail; three cases also run as real processes.
* A single ``parties.party`` given a bad own data file must exit 2 naming the file and column,
  without ever listening on its ``--listen`` port or connecting to its peers, dealer or
  launcher (whose ports the test holds open and watches).

"Before any connection, no child process" is checked from inside: each process runs under a
small wrapper (``traced.py``, written by the test) that records every ``socket.bind``,
``listen``, ``connect`` and every process spawn to a trace file; the trace must stay empty.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpc.config.scenario import load_scenario, validate_all
from mpc.core.errors import ConfigError
from mpc.net.certs import create_deployment

TRACER = '''\
"""python traced.py TRACE_FILE MODULE ARGS...: run MODULE as __main__, recording sockets bound,
listened on or connected and processes spawned to TRACE_FILE."""
import os
import runpy
import socket
import subprocess
import sys

TRACE = sys.argv[1]


def note(what):
    with open(TRACE, "a") as fh:
        fh.write(f"{os.getpid()} {what}\\n")


def wrap(name):
    orig = getattr(socket.socket, name)

    def wrapper(self, *args, **kwargs):
        note(f"socket.{name} {args!r}")
        return orig(self, *args, **kwargs)

    setattr(socket.socket, name, wrapper)


for _name in ("bind", "listen", "connect", "connect_ex"):
    wrap(_name)
_execute_child = subprocess.Popen._execute_child


def execute_child(self, args, *rest, **kwargs):
    note(f"spawn {args!r}")
    return _execute_child(self, args, *rest, **kwargs)


subprocess.Popen._execute_child = execute_child
for _name in ("fork", "forkpty", "posix_spawn", "posix_spawnp"):
    if hasattr(os, _name):
        def _spawn(*args, _orig=getattr(os, _name), _name=_name, **kwargs):
            note(f"os.{_name}")
            return _orig(*args, **kwargs)

        setattr(os, _name, _spawn)
MODULE = sys.argv[2]
sys.argv = [MODULE, *sys.argv[3:]]
runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
'''

PROBE = '''\
import socket
import subprocess
import sys

s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
subprocess.run([sys.executable, "-c", "pass"], check=True)
'''


@dataclass
class Traced:
    rc: int
    stdout: str
    stderr: str
    trace: list[str]
    seconds: float

    def show(self) -> str:
        return (f"exit {self.rc} after {self.seconds:.1f}s\n--- stdout ---\n{self.stdout}\n"
                f"--- stderr ---\n{self.stderr}\n--- trace ---\n" + "\n".join(self.trace))


def run_traced(e2e, tmp_path: Path, module: str, args: list[str], tag: str,
               while_running: Callable[[subprocess.Popen[bytes]], None] | None = None,
               timeout: float = 60.0) -> Traced:
    """Run ``python traced.py TRACE MODULE ARGS`` from the repository root; output to files."""
    tracer = tmp_path / "traced.py"
    if not tracer.exists():
        tracer.write_text(TRACER)
    trace = tmp_path / f"{tag}.trace"
    out, err = tmp_path / f"{tag}.out", tmp_path / f"{tag}.err"
    start = time.monotonic()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen([sys.executable, str(tracer), str(trace), module, *args],
                                cwd=e2e.ROOT, env=e2e.child_env(), stdout=fo, stderr=fe,
                                stdin=subprocess.DEVNULL)
    try:
        if while_running is not None:
            while_running(proc)
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"{module} did not exit within {timeout}s\n{err.read_text()}")
    lines = trace.read_text().splitlines() if trace.exists() else []
    return Traced(rc, out.read_text(errors="replace"), err.read_text(errors="replace"), lines,
                  time.monotonic() - start)


# --------------------------------------------------------------------------- data mutations


def copy_scenario(e2e, tmp_path: Path, name: str, data_dir: str) -> Path:
    """``scenarios/NAME.toml`` and ``scenarios/data/DATA_DIR`` copied under tmp_path/scn."""
    base = tmp_path / "scn"
    shutil.copytree(e2e.ROOT / "scenarios" / "data" / data_dir, base / "data" / data_dir)
    path = base / f"{name}.toml"
    shutil.copyfile(e2e.scenario_path(name), path)
    return path


def _read(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _write(path: Path, rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)


def set_cell(path: Path, line: int, column: str, value: str) -> None:
    """Replace the cell at file line ``line`` (header = line 1) of ``column``."""
    rows = _read(path)
    rows[line - 1][rows[0].index(column)] = value
    _write(path, rows)


def drop_column(path: Path, column: str) -> None:
    rows = _read(path)
    i = rows[0].index(column)
    _write(path, [r[:i] + r[i + 1:] for r in rows])


def rename_column(path: Path, old: str, new: str) -> None:
    rows = _read(path)
    rows[0][rows[0].index(old)] = new
    _write(path, rows)


def duplicate_id(path: Path, src: int, dst: int) -> None:
    """Give file line ``dst`` the id of line ``src``."""
    rows = _read(path)
    rows[dst - 1][rows[0].index("id")] = rows[src - 1][rows[0].index("id")]
    _write(path, rows)


def replace_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def add_key_after(path: Path, anchor: str, line: str) -> None:
    text = path.read_text()
    assert anchor in text, anchor
    path.write_text(text.replace(anchor, f"{anchor}\n{line}", 1))


BC = "data/breast_cancer"


@dataclass(frozen=True)
class Case:
    scenario: str
    data_dir: str
    mutate: Callable[[Path], None]  # called with the scenario copy's directory
    bad_file: str  # relative to that directory; must be named in the message
    expect: tuple[str, ...]  # further substrings of the message (columns, keys, lines)
    forbid: tuple[str, ...] = ()  # never in the output (cell values)


LAUNCH_CASES = {
    "nan-cell": Case("two-clinics", "breast_cancer",
                     lambda d: set_cell(d / BC / "clinic_b.csv", 5, "mean_area", "nan"),
                     f"{BC}/clinic_b.csv", ("line 5", "'mean_area'", "NaN")),
    "text-cell": Case("two-clinics", "breast_cancer",
                      lambda d: set_cell(d / BC / "clinic_a.csv", 3, "worst_texture", "S3CRET-77"),
                      f"{BC}/clinic_a.csv", ("line 3", "'worst_texture'", "not a number"),
                      forbid=("S3CRET",)),
    "bad-label": Case("two-clinics", "breast_cancer",
                      lambda d: set_cell(d / BC / "clinic_a.csv", 4, "target", "2"),
                      f"{BC}/clinic_a.csv", ("line 4", "'target'")),
    "missing-label": Case("two-clinics", "breast_cancer",
                          lambda d: drop_column(d / BC / "clinic_b.csv", "target"),
                          f"{BC}/clinic_b.csv", ("label column", "'target'")),
    "feature-count": Case("two-clinics", "breast_cancer",
                          lambda d: drop_column(d / BC / "clinic_b.csv", "mean_texture"),
                          f"{BC}/clinic_b.csv", (f"{BC}/clinic_a.csv", "29", "30")),
    "renamed-feature": Case("two-clinics", "breast_cancer",
                            lambda d: rename_column(d / BC / "clinic_b.csv", "mean_texture",
                                                    "mean_textur"),
                            f"{BC}/clinic_b.csv", ("'mean_textur'", "'mean_texture'")),
    # The shipped bank files are unaligned: "ordered" rejects them (PSI would align them).
    "party-named-dealer": Case("two-clinics", "breast_cancer",
                               lambda d: replace_text(d / "two-clinics.toml",
                                                      'name = "clinic_b"', 'name = "dealer"'),
                               "two-clinics.toml", ("'party.1.name'", "reserved", "'dealer'")),
    "party-name-not-a-cert-name": Case("two-clinics", "breast_cancer",
                                       lambda d: replace_text(d / "two-clinics.toml",
                                                              'name = "clinic_b"',
                                                              'name = "clinic b"'),
                                       "two-clinics.toml",
                                       ("'party.1.name'", "invalid certificate name")),
    "vertical-ids": Case("two-banks-vertical", "banks",
                         lambda d: replace_text(d / "two-banks-vertical.toml",
                                                '\nalign = "psi"', '\nalign = "ordered"'),
                         "data/banks/bank_b.csv", ("400 rows", "405", "same ids")),
    "duplicate-id": Case("two-banks-vertical", "banks",
                         lambda d: duplicate_id(d / "data/banks/bank_b.csv", 3, 7),
                         "data/banks/bank_b.csv", ("line 7", "'id'", "duplicate id")),
    "unknown-key": Case("two-clinics", "breast_cancer",
                        lambda d: add_key_after(d / "two-clinics.toml",
                                                f'data = "{BC}/clinic_b.csv"', 'colour = "red"'),
                        "two-clinics.toml", ("unknown key", "'party.1.colour'")),
}


def _no_processes(e2e, tmp_path: Path) -> None:
    left = e2e.wait_no_pids(tmp_path, 2)
    assert not left, f"processes naming {tmp_path} are alive: {left}"


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_tracer_records_sockets_and_spawns(tmp_path: Path, e2e) -> None:
    """The wrapper is not vacuous: a module that listens and spawns shows up in the trace."""
    (tmp_path / "probe_mod.py").write_text(PROBE)
    res = run_traced(e2e, tmp_path, "probe_mod", [], "probe")
    assert res.rc == 0, res.show()
    kinds = {line.split()[1] for line in res.trace}
    assert {"socket.bind", "socket.listen", "spawn"} <= kinds, res.show()


def _check_message(c: Case, scenario: Path, stdout: str, stderr: str, show: str) -> None:
    assert "configuration error" in stderr, show
    bad = scenario.parent / c.bad_file
    assert str(bad) in stderr, f"message does not name {bad}\n{show}"
    for want in c.expect:
        want = want.replace(f"{BC}/", f"{scenario.parent / BC}/")
        assert want in stderr, f"message lacks {want!r}\n{show}"
    for secret in c.forbid:
        assert secret not in stdout + stderr, f"output quotes {secret!r}\n{show}"


class Forbidden(BaseException):
    """Raised by the patched socket/process primitives of the in-process launcher."""


@pytest.mark.e2e
@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", list(LAUNCH_CASES))
def test_launcher_rejects_bad_input_in_process(case: str, tmp_path: Path, e2e,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``parties.launch.main`` in this process, with every socket bind/listen/connect and every
    process spawn patched to fail: the configuration error must come first."""
    from parties import launch

    c = LAUNCH_CASES[case]
    scenario = copy_scenario(e2e, tmp_path, c.scenario, c.data_dir)
    c.mutate(scenario.parent)
    out = tmp_path / "out"
    events: list[str] = []

    def deny(what: str) -> Callable[..., None]:
        def refuse(*args: object, **kwargs: object) -> None:
            events.append(what)
            raise Forbidden(what)

        return refuse

    with pytest.MonkeyPatch.context() as mp:
        for name in ("bind", "listen", "connect", "connect_ex"):
            mp.setattr(socket.socket, name, deny(f"socket.{name}"))
        mp.setattr(subprocess.Popen, "_execute_child", deny("spawn"))
        for name in ("fork", "posix_spawn", "posix_spawnp"):
            if hasattr(os, name):
                mp.setattr(os, name, deny(f"os.{name}"))
        try:
            rc: int | None = launch.main([str(scenario), "--out", str(out), "--quiet"])
        except Forbidden:
            rc = None
    captured = capsys.readouterr()
    show = f"exit {rc}, events {events}\n{captured.out}\n{captured.err}"
    assert not events, f"sockets or processes before the error: {show}"
    assert rc == 2, show
    _check_message(c, scenario, captured.out, captured.err, show)
    assert not (out / "logs").exists() and not (out / "certs").exists(), show


# The same through a real ``python -m parties.launch`` process, for one case of each kind.
PROCESS_CASES = ["nan-cell", "vertical-ids", "unknown-key"]


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", PROCESS_CASES)
def test_launcher_process_rejects_bad_input_before_anything_starts(case: str, tmp_path: Path,
                                                                   e2e) -> None:
    c = LAUNCH_CASES[case]
    scenario = copy_scenario(e2e, tmp_path, c.scenario, c.data_dir)
    c.mutate(scenario.parent)
    out = tmp_path / "out"
    res = run_traced(e2e, tmp_path, "parties.launch",
                     [str(scenario), "--out", str(out), "--quiet"], "launcher")
    try:
        assert res.rc == 2, res.show()
        _check_message(c, scenario, res.stdout, res.stderr, res.show())
        assert not (out / "logs").exists() and not (out / "certs").exists(), res.show()
        assert not res.trace, f"sockets or processes before the error\n{res.show()}"
    finally:
        _no_processes(e2e, tmp_path)
    print(f"{case}: {res.stderr.strip()} ({res.seconds:.1f}s)")


@pytest.mark.e2e
@pytest.mark.timeout(30)
def test_feature_count_mismatch_names_the_column(tmp_path: Path, e2e) -> None:
    c = LAUNCH_CASES["feature-count"]
    scenario = copy_scenario(e2e, tmp_path, c.scenario, c.data_dir)
    c.mutate(scenario.parent)
    with pytest.raises(ConfigError) as info:
        validate_all(load_scenario(scenario))
    assert "'mean_texture'" in str(info.value), str(info.value)


PARTY_CASES = {
    "nan-cell": (lambda d: set_cell(d / BC / "clinic_a.csv", 7, "mean_radius", "NaN"),
                 ("line 7", "'mean_radius'")),
    "missing-label": (lambda d: drop_column(d / BC / "clinic_a.csv", "target"),
                      ("label column", "'target'")),
}


class PortWatch:
    """Holds plain TCP listeners on some ports (who connects there is recorded) and probes
    another port (the process's own --listen) for a listener, until stopped."""

    def __init__(self, held: list[int], probed: int) -> None:
        self.held = []
        for port in held:
            s = socket.create_server(("127.0.0.1", port))
            s.setblocking(False)
            self.held.append(s)
        self.probed = probed
        self.probe_hits = 0
        self.probes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        while not self.stop.is_set():
            self.probes += 1
            try:
                with socket.create_connection(("127.0.0.1", self.probed), timeout=0.2):
                    self.probe_hits += 1
            except OSError:
                pass
            self.stop.wait(0.02)

    def accepted(self) -> list[int]:
        """Ports among ``held`` that someone connected to."""
        hit = []
        for s in self.held:
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            conn.close()
            hit.append(s.getsockname()[1])
        return hit

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.held:
            s.close()


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(PARTY_CASES))
def test_party_rejects_its_bad_file_without_listening(case: str, tmp_path: Path, e2e) -> None:
    mutate, expect = PARTY_CASES[case]
    scenario = copy_scenario(e2e, tmp_path, "two-clinics", "breast_cancer")
    mutate(scenario.parent)
    certs = tmp_path / "certs"
    create_deployment(certs, ["clinic_a", "clinic_b", "dealer", "launcher"])
    own, peer, dealer, launcher = e2e.free_ports(4)
    # clinic_a is pid 0: a healthy one would listen on `own` and dial clinic_b, dealer, launcher.
    watch = PortWatch([peer, dealer, launcher], own)
    args = ["--scenario", str(scenario), "--name", "clinic_a", "--certs", str(certs),
            "--listen", f"127.0.0.1:{own}", "--peer", f"clinic_a=127.0.0.1:{own}",
            "--peer", f"clinic_b=127.0.0.1:{peer}", "--dealer", f"127.0.0.1:{dealer}",
            "--launcher", f"127.0.0.1:{launcher}", "--set", "train.epochs=1"]
    try:
        res = run_traced(e2e, tmp_path, "parties.party", args, "clinic_a",
                         while_running=lambda proc: watch.thread.start())
        time.sleep(0.1)  # a connection the process made just before exiting is queued by now
        connected = watch.accepted()
    finally:
        watch.close()
        _no_processes(e2e, tmp_path)
    assert res.rc == 2, res.show()
    assert "configuration error" in res.stderr, res.show()
    bad = scenario.parent / BC / "clinic_a.csv"
    assert str(bad) in res.stderr, f"message does not name {bad}\n{res.show()}"
    for want in expect:
        assert want in res.stderr, f"message lacks {want!r}\n{res.show()}"
    assert watch.probes > 0 and watch.probe_hits == 0, (
        f"something accepted connections on the party's port ({watch.probe_hits} of "
        f"{watch.probes} probes)\n{res.show()}")
    assert not connected, f"the party connected to ports {connected}\n{res.show()}"
    assert not res.trace, f"sockets or processes before the error\n{res.show()}"
    print(f"{case}: {res.stderr.strip()} ({res.seconds:.1f}s, {watch.probes} probes)")

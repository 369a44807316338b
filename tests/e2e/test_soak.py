"""Soak: 20 consecutive launcher runs of three-hospitals (1 epoch each) leave nothing behind.

Every run must exit 0 and write its outputs. After each run no process of that run may be
alive; after all runs no process naming this test's directory remains, none of them owns a
listening TCP socket, no temporary file was left outside the output directories (the children
run with ``TMPDIR`` pointed at an empty scratch directory, and the real temporary directory is
checked for names the toolkit could create), and the test process holds no more open file
descriptors than after the first run.

One run costs ~5 s on two cores (five processes, each importing torch): ~2 minutes in all.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest

RUNS = 20
PARTIES = ["hospital_a", "hospital_b", "hospital_c"]
# Names the toolkit could leave in the real temporary directory if it ignored TMPDIR (kept
# narrow: other sessions share that directory and write their own logs and caches there).
TOOLKIT_TEMP = re.compile(r"^(mpc[-_.]|certs$|weights|report\.json$)|\.(pem|key|npz|prof)$")


def _toolkit_temp_entries(where: str) -> set[str]:
    try:
        return {e for e in os.listdir(where) if TOOLKIT_TEMP.search(e)}
    except OSError:
        return set()


def _open_fds() -> list[str]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:  # the fd listing /proc/self/fd itself, closed by now
            pass
    return fds


def _listening_inodes() -> dict[int, str]:
    """Inode -> local address of every listening TCP socket (IPv4 and IPv6)."""
    out: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[3] == "0A":  # TCP_LISTEN
                out[int(cols[9])] = cols[1]
    return out


def _socket_owners(inodes: dict[int, str]) -> dict[int, list[str]]:
    """Pid -> listening addresses, for every process whose fds include one of ``inodes``."""
    owners: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inode = int(link[8:-1])
                if inode in inodes:
                    owners.setdefault(int(entry), []).append(inodes[inode])
    return owners


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_consecutive_runs_leave_nothing_behind(tmp_path: Path, procs, e2e,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_tmp = tempfile.gettempdir()  # before TMPDIR changes
    temp_before = _toolkit_temp_entries(real_tmp)
    scratch = tmp_path / "scratch-tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # inherited by the launcher and its children
    own_listening_before = set(_socket_owners(_listening_inodes()).get(os.getpid(), []))
    fds_after_first: list[str] = []
    seconds = []

    for i in range(RUNS):
        out = tmp_path / f"run{i:02d}"
        proc = procs.launch("three-hospitals", out, train__epochs=1)
        rc = proc.wait(120)

        def logs(proc=proc, out=out) -> str:
            return f"{proc.output()}\n{e2e.collect_logs(out)}"

        assert rc is not None, f"run {i}: launcher did not finish in 120 s\n{logs()}"
        seconds.append(time.monotonic() - proc.started)
        assert rc == 0, f"run {i}: launcher exited {rc}\n{logs()}"
        report = json.loads((out / "report.json").read_text())
        assert report["parties"] == PARTIES and report["epochs"] == 1, report
        assert (out / "weights.npz").is_file(), logs()
        assert sorted(p.name for p in (out / "logs").iterdir()) == sorted(
            f"{n}.log" for n in ["dealer", *PARTIES]), logs()
        left = e2e.wait_no_pids(out, 15)
        assert not left, (f"run {i}: processes {left} still alive after the launcher exited: "
                          f"{[_cmdline(p) for p in left]}\n{logs()}")
        if i == 0:
            fds_after_first = _open_fds()

    # No process of any run is left, and none of them holds a listening socket.
    left = e2e.wait_no_pids(tmp_path, 10)
    assert not left, f"processes left: {[(p, _cmdline(p)) for p in left]}"
    owners = _socket_owners(_listening_inodes())
    ours = {pid: addrs for pid, addrs in owners.items() if str(tmp_path) in _cmdline(pid)}
    assert not ours, f"listening sockets owned by processes of the runs: {ours}"
    own_listening = set(owners.get(os.getpid(), [])) - own_listening_before
    assert not own_listening, f"the test process listens on {own_listening}"

    # No temporary files outside the output directories.
    expected = {"scratch-tmp"} | {f"run{i:02d}" for i in range(RUNS)} | {
        f"run{i:02d}-launcher" for i in range(RUNS)}
    assert {p.name for p in tmp_path.iterdir()} == expected, sorted(os.listdir(tmp_path))
    assert not list(scratch.iterdir()), f"left in TMPDIR: {sorted(os.listdir(scratch))}"
    for i in range(RUNS):
        launcher_dir = tmp_path / f"run{i:02d}-launcher"
        assert sorted(os.listdir(launcher_dir)) == ["launcher.err", "launcher.out"], (
            sorted(os.listdir(launcher_dir)))
        out_entries = sorted(os.listdir(tmp_path / f"run{i:02d}"))
        assert out_entries == ["audit", "certs", "logs", "model.onnx", "model.pt", "report.html",
                               "report.json", "training.png", "weights.npz"], out_entries
    new_temp = _toolkit_temp_entries(real_tmp) - temp_before
    assert not new_temp, f"new entries in {real_tmp}: {sorted(new_temp)}"

    # The test process does not leak descriptors from run to run.
    fds_now = _open_fds()
    grown = sorted(set(fds_now) - set(fds_after_first))
    assert len(fds_now) <= len(fds_after_first) + 2, (
        f"open fds grew from {len(fds_after_first)} to {len(fds_now)}; new: {grown}")
    print(f"{RUNS} runs: {sum(seconds):.1f}s in all, {min(seconds):.1f}-{max(seconds):.1f}s each")

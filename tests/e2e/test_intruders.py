"""End to end: intruders knocking on the TLS ports of a real deployment are refused.

The processes are started by hand with explicit ports (picked by binding port 0): the launcher
in ``--coordinator`` mode, the dealer and ``clinic_b`` (pid 1, which only accepts). Before
``clinic_a`` starts, intruders connect to the launcher, the dealer and ``clinic_b`` with

* plain TCP garbage (no TLS at all),
* TLS without a client certificate,
* a certificate from another CA (named ``clinic_a``, a name the servers expect),
* a valid certificate of the deployment's CA with an unexpected name (``mallory``),
* an expired certificate of the deployment's CA (named ``clinic_a``).

Each must be refused: the intruder's handshake fails or the connection is closed before a
single application byte reaches it. Then ``clinic_a`` starts and the run must complete normally,
with every refusal logged as "refused connection".
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from mpc.net.certs import create_deployment, issue_certificate

pytestmark = pytest.mark.e2e

PARTIES = ("clinic_a", "clinic_b")


def _intruder_context(cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A client context that does not check the server (the intruder does not care)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _connect(port: int, deadline: float) -> socket.socket:
    """Connect, retrying while the target process is still starting up."""
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=15)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def knock(port: int, ctx: ssl.SSLContext | None, deadline: float) -> str:
    """One intrusion attempt; returns how it was refused, or 'ACCEPTED: ...' if it was not."""
    raw = _connect(port, deadline)
    try:
        if ctx is None:
            try:
                raw.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
                data = raw.recv(64)
            except TimeoutError:
                return "ACCEPTED: the server kept the connection open"
            except OSError as exc:  # reset: the server closed with our bytes unread
                return f"closed: {exc}"
            # The server may answer a non-TLS client with a (plaintext) TLS alert record.
            if data and data[0] != 0x15:
                return f"ACCEPTED: received {data!r}"
            return f"closed after {len(data)} alert bytes"
        try:
            tls = ctx.wrap_socket(raw, server_side=False)
        except (ssl.SSLError, OSError) as exc:
            return f"handshake failed: {exc}"
        # TLS 1.3: the client finishes first; a server that rejects our certificate answers
        # with an alert, one that rejects our name just closes. No byte may arrive.
        try:
            data = tls.recv(1)
        except TimeoutError:
            return "ACCEPTED: the server kept the connection open"
        except (ssl.SSLError, OSError) as exc:
            return f"closed after handshake: {exc}"
        if data:
            return f"ACCEPTED: received application data {data!r}"
        return "closed after handshake (EOF)"
    finally:
        raw.close()


@pytest.mark.timeout(150)
def test_intruders_are_refused_and_the_run_completes(tmp_path: Path, procs, e2e) -> None:
    certs = tmp_path / "certs"
    out = tmp_path / "out"
    logs = tmp_path / "logs"
    logs.mkdir()
    cli = subprocess.run(
        [sys.executable, "-m", "parties.certs", str(certs), *PARTIES, "dealer", "launcher"],
        cwd=e2e.ROOT, env=e2e.child_env(), capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    for name in (*PARTIES, "dealer", "launcher"):
        assert (certs / f"{name}.pem").is_file() and (certs / f"{name}.key").is_file()

    # Intruder identities.
    other = tmp_path / "other-ca"
    create_deployment(other, ["clinic_a"])  # right name, wrong CA
    create_deployment(certs, ["mallory"])  # right CA, unexpected name
    past = datetime.now(UTC) - timedelta(days=10)
    expired = tmp_path / "expired"
    issue_certificate(certs / "ca.pem", certs / "ca.key", "clinic_a", expired,
                      not_before=past, not_after=past + timedelta(days=5))
    intruders = {
        "plain TCP": None,
        "no client certificate": _intruder_context(None, None),
        "other CA": _intruder_context(other / "clinic_a.pem", other / "clinic_a.key"),
        "wrong name": _intruder_context(certs / "mallory.pem", certs / "mallory.key"),
        "expired": _intruder_context(expired / "clinic_a.pem", expired / "clinic_a.key"),
    }

    scenario = str(e2e.scenario_path("two-clinics"))
    p_launcher, p_dealer, p_a, p_b = e2e.free_ports(4)
    common = ["--scenario", scenario, "--certs", str(certs), "--set", "train.epochs=2",
              "--launcher", f"127.0.0.1:{p_launcher}", "--dealer", f"127.0.0.1:{p_dealer}"]
    peers = ["--peer", f"clinic_a=127.0.0.1:{p_a}", "--peer", f"clinic_b=127.0.0.1:{p_b}"]
    launcher = procs.start("launcher", [
        "-m", "parties.launch", scenario, "--coordinator", "--listen", f"127.0.0.1:{p_launcher}",
        "--certs", str(certs), "--out", str(out), "--quiet", "--set", "train.epochs=2",
    ], out_dir=logs)
    dealer = procs.start("dealer", ["-m", "parties.dealer", *common,
                                    "--listen", f"127.0.0.1:{p_dealer}"], out_dir=logs)
    party_b = procs.start("clinic_b", ["-m", "parties.party", *common, *peers, "--name",
                                       "clinic_b", "--listen", f"127.0.0.1:{p_b}"],
                          out_dir=logs)

    def all_logs() -> str:
        return e2e.collect_logs(logs, out)

    # Knock on every listening port with every intruder, concurrently, before clinic_a exists.
    targets = {"launcher": p_launcher, "dealer": p_dealer, "clinic_b": p_b}
    results: dict[tuple[str, str], str] = {}
    deadline = time.monotonic() + 20

    def attempt(target: str, intruder: str) -> None:
        try:
            results[target, intruder] = knock(targets[target], intruders[intruder], deadline)
        except Exception as exc:  # noqa: BLE001 - reported below
            results[target, intruder] = f"ERROR: {type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=attempt, args=(t, i), daemon=True)
               for t in targets for i in intruders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    summary = "\n".join(f"{t:>8} <- {i:<22} {r}" for (t, i), r in sorted(results.items()))
    print(summary)
    assert len(results) == len(targets) * len(intruders), f"{summary}\n{all_logs()}"
    bad = {k: v for k, v in results.items() if v.startswith(("ACCEPTED", "ERROR"))}
    assert not bad, f"intruders not refused: {bad}\n{summary}\n{all_logs()}"
    for p in (launcher, dealer, party_b):
        assert p.popen.poll() is None, f"{p.name} died from an intrusion\n{all_logs()}"

    # Now the legitimate party joins and the run completes.
    party_a = procs.start("clinic_a", ["-m", "parties.party", *common, *peers, "--name",
                                       "clinic_a", "--listen", f"127.0.0.1:{p_a}"],
                          out_dir=logs)
    rc = launcher.wait(90)
    assert rc == 0, f"launcher exit {rc}\n{summary}\n{all_logs()}"
    for p in (dealer, party_a, party_b):
        assert p.wait(20) == 0, f"{p.name} exit {p.popen.returncode}\n{all_logs()}"
    with np.load(out / "weights.npz") as npz:
        assert npz["w"].shape == (30, 1)
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["accuracy"] > 0.9, report["metrics"]

    # Every refusal was logged by the process that refused it.
    for target, path in (("launcher", launcher.stderr), ("dealer", dealer.stderr),
                         ("clinic_b", party_b.stderr)):
        text = path.read_text(errors="replace")
        refused = text.count("refused connection")
        assert refused >= len(intruders), (
            f"{target} logged {refused} refusals for {len(intruders)} intruders\n{text}")

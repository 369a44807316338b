"""End to end: the per-epoch loss (policy-gated), the launcher's console output, report.html,
and the signed audit record checked by ``mpc-audit verify`` (real processes over mutual TLS)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpc.config.audit import build_statement, canonical, sign_statement, utc_now
from mpc.net.certs import create_deployment
from tests.e2e.test_report import check_html

pytestmark = pytest.mark.e2e

EPOCHS = 4
PARTIES = ("clinic_a", "clinic_b")
ALLOW_LOSS = 'reveal.allow=[{what="weights",to="launcher"},{what="loss",to="launcher"}]'


def _verify(run: Path, e2e, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parties.audit", "verify", str(run), *extra],
                          cwd=e2e.ROOT, env=e2e.child_env(), capture_output=True, text=True,
                          timeout=60)


@pytest.mark.timeout(180)
def test_loss_console_report_and_audit(procs, tmp_path: Path, e2e) -> None:
    out = tmp_path / "run"
    # Not --quiet: stdout is a file (no TTY), so the console prints one plain line per epoch.
    proc = procs.start("launcher", ["-m", "parties.launch", str(e2e.scenario_path("two-clinics")),
                                    "--out", str(out), "--reference",
                                    "--set", f"train.epochs={EPOCHS}", "--set", ALLOW_LOSS])
    rc = proc.wait(150)
    assert rc == 0, f"{proc.output()}\n{e2e.collect_logs(out)}"
    report = json.loads((out / "report.json").read_text())

    # The loss: one value per epoch, decreasing, equal to the float64 reference to 1e-2.
    loss, ref = report["loss"], report["reference_loss"]
    assert len(loss) == len(ref) == EPOCHS
    assert all(b < a for a, b in zip(loss, loss[1:], strict=False)), loss
    assert max(abs(a - b) for a, b in zip(loss, ref, strict=True)) <= 1e-2, (loss, ref)
    for p in report["per_party"]:
        assert p["loss_computation"]["rounds"] > 0 and p["loss_computation"]["bytes_sent"] > 0
    # The ledger lists each loss reveal, once per party, to the launcher only.
    for party in PARTIES:
        mine = [(r["what"], r["to"], r["name"]) for r in report["reveals"] if r["party"] == party]
        assert mine == [("loss", "launcher", f"epoch{e}") for e in range(1, EPOCHS + 1)] + [
            ("weights", "launcher", "w"), ("weights", "launcher", "b")], mine

    # Console: one line per epoch, no carriage returns.
    stdout = proc.stdout.read_bytes()
    assert b"\r" not in stdout and b"\x1b[" not in stdout
    epoch_lines = [ln for ln in stdout.decode().splitlines() if ln.startswith("epoch ")]
    assert [ln.split()[1] for ln in epoch_lines] == [f"{e}/{EPOCHS}" for e in
                                                     range(1, EPOCHS + 1)], stdout
    assert all("loss " in ln and "steps/s" in ln and "sent " in ln for ln in epoch_lines)

    # The report page and figure.
    assert (out / "training.png").is_file()
    assert check_html(out / "report.html") == 1

    # The audit record: verifies as written ...
    audit = out / "audit"
    assert sorted(p.name for p in audit.iterdir()) == sorted(
        ["ca.pem", *[f"{n}.{x}" for n in (*PARTIES, "dealer") for x in ("json", "pem")]])
    ok = _verify(out, e2e)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "SHA-256 fingerprint" in ok.stdout and "loss -> launcher: 4" in ok.stdout
    stmt = json.loads((audit / "clinic_a.json").read_text())["statement"]
    assert stmt["scenario_digest"] == report["scenario_digest"] and stmt["dp"] is None
    pinned = _verify(out, e2e, "--ca", str(out / "certs" / "ca.pem"))
    assert pinned.returncode == 0, pinned.stdout

    def tampered(change) -> str:  # noqa: ANN001
        copy = tmp_path / f"copy{len(list(tmp_path.glob('copy*')))}"
        shutil.copytree(out, copy)
        change(copy / "audit")
        res = _verify(copy, e2e)
        assert res.returncode == 1, res.stdout
        return res.stdout

    def flip(audit_dir: Path) -> None:  # one byte in a digit of the traffic figures
        path = audit_dir / "dealer.json"
        raw = bytearray(path.read_bytes())
        i = raw.index(b'"bytes_sent": ') + len(b'"bytes_sent": ')
        raw[i] = ord("1") if raw[i] != ord("1") else ord("2")
        path.write_bytes(bytes(raw))

    def swap(audit_dir: Path) -> None:
        a, b = audit_dir / "clinic_a.json", audit_dir / "clinic_b.json"
        ra = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(ra)

    def foreign(audit_dir: Path) -> None:
        other = tmp_path / "foreign-ca"
        create_deployment(other, ["clinic_b"])
        doc = json.loads((audit_dir / "clinic_b.json").read_text())
        s = dict(doc["statement"], finished=utc_now())
        forged = build_statement(**{k: s[k] for k in ("name", "role", "scenario", "ledger",
                                                      "traffic", "started", "finished")},
                                 digest=s["scenario_digest"], parties=s["parties"])
        (audit_dir / "clinic_b.json").write_bytes(
            canonical(sign_statement(forged, other / "clinic_b.key")))
        shutil.copyfile(other / "clinic_b.pem", audit_dir / "clinic_b.pem")

    assert "dealer.json: signature does not verify" in tampered(flip)
    assert "clinic_a.json: the statement is by 'clinic_b'" in tampered(swap)
    assert "clinic_b.pem: certificate for 'clinic_b' was not issued by the deployment CA" in (
        tampered(foreign))


@pytest.mark.timeout(150)
def test_no_loss_without_permission_json_events(run_launch, e2e) -> None:
    res = run_launch("two-clinics", "--json", train__epochs=2)
    assert res.rc == 0, res.logs()
    report = json.loads((res.out / "report.json").read_text())
    assert "loss" not in report
    assert {(r["what"], r["name"]) for r in report["reveals"]} == {("weights", "w"),
                                                                   ("weights", "b")}
    assert all(p["loss_computation"] is None for p in report["per_party"])
    events = [json.loads(ln) for ln in res.proc.stdout.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "epoch", "epoch", "done"], events
    assert all(e["loss"] is None for e in events if e["event"] == "epoch")
    assert events[1]["bytes_sent"] > 0 and events[1]["steps_per_s"] > 0
    assert events[-1]["audit_ca_fingerprint"] and events[-1]["loss"] is None
    ok = _verify(res.out, e2e)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "loss ->" not in ok.stdout and "weights -> launcher: 2" in ok.stdout  # w and b
    assert check_html(res.out / "report.html") == 1


@pytest.mark.timeout(60)
def test_json_failure_event(run_launch) -> None:
    res = run_launch("two-clinics", "--json", **{"train.bogus": 1})
    assert res.rc == 2, res.logs()
    events = [json.loads(ln) for ln in res.proc.stdout.read_text().splitlines()]
    assert [e["event"] for e in events] == ["failed"], events
    assert events[0]["error"] == "ConfigError" and "train.bogus" in events[0]["message"]

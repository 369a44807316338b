"""Signed audit statements (``mpc.config.audit``) and ``mpc-audit verify`` on a synthetic run
record:
a fresh record verifies; an altered byte, swapped statements, a foreign-CA signer, a ledger that
disagrees with report.json and a missing statement each fail with their own message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mpc.config.audit import (
    build_statement,
    canonical,
    certificate_fingerprint,
    load_ca,
    sign_statement,
    utc_now,
    verify_record,
)
from mpc.net.certs import create_deployment
from parties.audit import main as audit_main

PARTIES = ["alice", "bob"]
LEDGER = [{"what": "loss", "to": "launcher", "name": "epoch1", "shape": [1]},
          {"what": "weights", "to": "launcher", "name": "w", "shape": [3, 1]}]
TRAFFIC = {"bytes_sent": 1000, "bytes_received": 1000, "rounds": 12,
           "per_op": {"open": {"bytes_sent": 1000, "bytes_received": 1000, "messages": 12,
                               "rounds": 12}}}


def _statement(name: str, role: str) -> dict:
    return build_statement(
        name=name, role=role, scenario="demo", digest="ab" * 32, parties=PARTIES,
        ledger=LEDGER if role == "party" else [],
        traffic=TRAFFIC if role == "party" else {"bytes_sent": 5000},
        started=utc_now(), finished=utc_now())


def _report() -> dict:
    return {
        "scenario": "demo", "scenario_digest": "ab" * 32, "parties": PARTIES,
        "per_party": [dict(TRAFFIC, name=n) for n in PARTIES],
        "dealer": {"bytes_sent": 5000},
        "reveals": [dict(r, party=n) for n in PARTIES for r in LEDGER],
        "loss": [0.5],
    }


def _write(audit: Path, certs: Path, name: str, role: str, key_dir: Path | None = None) -> None:
    doc = sign_statement(_statement(name, role), (key_dir or certs) / f"{name}.key")
    (audit / f"{name}.json").write_bytes(canonical(doc))
    shutil.copyfile((key_dir or certs) / f"{name}.pem", audit / f"{name}.pem")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    certs = tmp_path_factory.mktemp("certs")
    create_deployment(certs, [*PARTIES, "dealer"])
    return certs


@pytest.fixture
def run(tmp_path: Path, deployment: Path) -> Path:
    audit = tmp_path / "audit"
    audit.mkdir()
    shutil.copyfile(deployment / "ca.pem", audit / "ca.pem")
    for name in PARTIES:
        _write(audit, deployment, name, "party")
    _write(audit, deployment, "dealer", "dealer")
    (tmp_path / "report.json").write_text(json.dumps(_report()))
    return tmp_path


def _problems(run: Path, ca: Path | None = None) -> list[str]:
    return verify_record(run, ca).problems


def test_fresh_record_verifies(run: Path, deployment: Path, capsys) -> None:
    res = verify_record(run)
    assert res.ok, res.problems
    assert sorted(res.statements) == ["alice", "bob", "dealer"]
    assert res.ca_fingerprint == certificate_fingerprint(load_ca(deployment / "ca.pem"))
    assert audit_main(["verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert res.ca_fingerprint in out and "verifies: 3 signed statements" in out
    assert "loss -> launcher: 1" in out and "weights -> launcher: 1" in out


def test_statement_file_is_canonical_and_signed_with_p256(run: Path) -> None:
    raw = (run / "audit" / "alice.json").read_bytes()
    doc = json.loads(raw)
    assert canonical(doc) == raw and doc["algorithm"] == "ecdsa-p256-sha256"
    assert doc["statement"]["dp"] is None and doc["statement"]["software"]["mpc-toolkit"]


@pytest.mark.parametrize("name", ["alice", "bob", "dealer"])
def test_every_flipped_byte_fails(run: Path, name: str) -> None:
    path = run / "audit" / f"{name}.json"
    raw = path.read_bytes()
    # every 7th byte (all of them would take long): each flip must be caught
    for i in range(0, len(raw), 7):
        path.write_bytes(raw[:i] + bytes([raw[i] ^ 0x01]) + raw[i + 1 :])
        problems = _problems(run)
        assert problems, f"flip at byte {i} of {name}.json went unnoticed"
        assert any(f"{name}.json" in p or f"{name}.pem" in p for p in problems), problems
    path.write_bytes(raw)
    assert not _problems(run)


def test_altered_value_fails_signature(run: Path) -> None:
    path = run / "audit" / "bob.json"
    doc = json.loads(path.read_bytes())
    doc["statement"]["traffic"]["bytes_sent"] += 1  # re-canonicalised: only the signature
    path.write_bytes(canonical(doc))
    assert any("bob.json: signature does not verify" in p for p in _problems(run))


def test_non_canonical_file_fails(run: Path) -> None:
    path = run / "audit" / "alice.json"
    path.write_bytes(path.read_bytes().replace(b"\n ", b"\n  ", 1))
    assert any("alice.json: not in canonical form" in p for p in _problems(run))


def test_swapped_statements_fail(run: Path) -> None:
    a, b = run / "audit" / "alice.json", run / "audit" / "bob.json"
    ra, rb = a.read_bytes(), b.read_bytes()
    a.write_bytes(rb)
    b.write_bytes(ra)
    problems = _problems(run)
    assert any("alice.json: the statement is by 'bob'" in p and "swapped" in p
               for p in problems), problems
    assert any("bob.json: the statement is by 'alice'" in p for p in problems)


def test_foreign_ca_signer_fails(run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    foreign = tmp_path_factory.mktemp("foreign")
    create_deployment(foreign, ["bob"])  # same name, another CA
    _write(run / "audit", foreign, "bob", "party", key_dir=foreign)
    problems = _problems(run)
    assert any("bob.pem: certificate for 'bob' was not issued by the deployment CA" in p
               for p in problems), problems


def test_foreign_key_with_genuine_certificate_fails(run: Path, deployment: Path,
                                                    tmp_path_factory) -> None:
    foreign = tmp_path_factory.mktemp("foreign2")
    create_deployment(foreign, ["bob"])
    doc = sign_statement(_statement("bob", "party"), foreign / "bob.key")
    (run / "audit" / "bob.json").write_bytes(canonical(doc))  # bob.pem stays the genuine one
    assert any("bob.json: signature does not verify" in p for p in _problems(run))


def test_pinned_ca_differs(run: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("other")
    create_deployment(other, ["x"])
    problems = _problems(run, other / "ca.pem")
    assert sum("not issued by the deployment CA" in p for p in problems) == 3, problems
    assert audit_main(["verify", str(run), "--ca", str(other / "ca.pem")]) == 1


def test_disagreement_with_report_fails(run: Path) -> None:
    report = json.loads((run / "report.json").read_text())
    report["reveals"] = [r for r in report["reveals"] if r["what"] != "loss"]
    report["loss"] = []
    (run / "report.json").write_text(json.dumps(report))
    problems = _problems(run)
    assert any("alice.json: reveal ledger (2 entries) differs from report.json's reveals" in p
               for p in problems), problems
    report = _report()
    report["per_party"][1]["bytes_sent"] = 999
    (run / "report.json").write_text(json.dumps(report))
    assert any("bob.json: bytes_sent differs from report.json" in p for p in _problems(run))


def test_missing_statement_and_unreadable_ca(run: Path, capsys) -> None:
    (run / "audit" / "dealer.json").unlink()
    assert any("dealer.json: missing" in p for p in _problems(run))
    (run / "audit" / "ca.pem").write_text("not a certificate")
    assert audit_main(["verify", str(run)]) == 2
    assert "cannot read CA certificate" in capsys.readouterr().err

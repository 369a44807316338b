"""Signed audit record of a run: canonical JSON statements, signatures, and their verification.

At the end of a run every party and the dealer signs, with its own certificate's private key, a
statement of what it took part in: the scenario (name and digest), its reveal ledger, the bytes
and rounds it sent, the DP parameters (none yet: ``null``), start and end times and the
software version. The launcher files them as ``RUN_DIR/audit/NAME.json`` with ``NAME.pem`` and
the deployment CA ``ca.pem``; :func:`verify_run` checks them against the CA and report.json.

Format: a statement file is the canonical JSON (sorted keys, one-space indent, ASCII, no NaN,
trailing newline) of ``{"algorithm", "signature", "statement"}``; the signature covers the
canonical bytes of ``statement`` alone. Verification insists that the file *is* its canonical
form, so every altered byte fails: as invalid JSON, as a non-canonical file, or as a bad
signature. ECDSA P-256 with SHA-256 for the deployment's EC keys (Ed25519 also accepted).

Trust assumption: the CA (whose fingerprint an auditor compares with the agreed one) issued
only the consortium's certificates, and each private key stayed with its owner. What this does
not do: timestamping by a third party, revocation, or proving that the computation itself was
honest -- a statement is what its signer attests to, no more.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from mpc.core.errors import MPCError

__all__ = [
    "AuditError",
    "ALGORITHMS",
    "STATEMENT_VERSION",
    "canonical",
    "utc_now",
    "software_version",
    "build_statement",
    "sign_statement",
    "certificate_fingerprint",
    "AuditResult",
    "load_ca",
    "verify_record",
    "verify_statements",
]

STATEMENT_VERSION = 1
ALGORITHMS = ("ecdsa-p256-sha256", "ed25519")


class AuditError(MPCError):
    """An audit record that cannot be produced or read (missing key, unreadable CA)."""


def canonical(obj: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, indent 1, ASCII, no NaN, final newline."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
            + "\n").encode("ascii")


def utc_now() -> str:
    """Current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def software_version() -> dict[str, str]:
    """Versions of this toolkit and the runtime that produced a statement."""
    try:
        toolkit = metadata.version("mpc-toolkit")
    except metadata.PackageNotFoundError:
        toolkit = "unknown (not installed)"
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "unknown"
    return {"mpc-toolkit": toolkit, "python": platform.python_version(), "torch": torch_version}


def build_statement(
    *,
    name: str,
    role: str,
    scenario: str,
    digest: str,
    parties: list[str],
    ledger: list[dict[str, Any]],
    traffic: dict[str, Any],
    started: str,
    finished: str,
    dp: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The statement one signer attests to (``role``: "party" or "dealer")."""
    return {
        "version": STATEMENT_VERSION,
        "name": name,
        "role": role,
        "scenario": scenario,
        "scenario_digest": digest,
        "parties": list(parties),
        "ledger": list(ledger),
        "traffic": traffic,
        "dp": dp,
        "started": started,
        "finished": finished,
        "software": software_version(),
    }


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AuditError(f"cannot read signing key {path}: {exc}") from None
    if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        return key
    raise AuditError(f"signing key {path}: unsupported key type {type(key).__name__}")


def sign_statement(statement: dict[str, Any], key_path: Path) -> dict[str, Any]:
    """Sign ``canonical(statement)`` with the key at ``key_path``; returns the signed document."""
    key = _load_key(key_path)
    data = canonical(statement)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise AuditError(f"signing key {key_path}: curve {key.curve.name}, want P-256")
        algorithm, sig = ALGORITHMS[0], key.sign(data, ec.ECDSA(hashes.SHA256()))
    else:
        algorithm, sig = ALGORITHMS[1], key.sign(data)
    return {"algorithm": algorithm, "signature": base64.b64encode(sig).decode("ascii"),
            "statement": statement}


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER form, as colon-separated hex (as ``openssl x509``)."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _cert_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _verify_signature(cert: x509.Certificate, doc: dict[str, Any]) -> bool:
    try:
        sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
    except ValueError:
        return False
    data = canonical(doc.get("statement"))
    key = cert.public_key()
    try:
        if doc.get("algorithm") == ALGORITHMS[0] and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
        elif doc.get("algorithm") == ALGORITHMS[1] and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


@dataclass
class AuditResult:
    """Outcome of :func:`verify_record`: problems (empty: verified) and what was checked."""

    ca_fingerprint: str
    problems: list[str] = field(default_factory=list)
    statements: dict[str, dict[str, Any]] = field(default_factory=dict)
    certificates: dict[str, x509.Certificate] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def load_ca(path: Path) -> x509.Certificate:
    """The deployment CA certificate at ``path`` (PEM)."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read CA certificate {path}: {exc}") from None


def _read_statement(audit_dir: Path, name: str, ca: x509.Certificate,
                    res: AuditResult) -> None:
    """Check one signer's file, certificate and signature; record it in ``res``."""
    path, cert_path = audit_dir / f"{name}.json", audit_dir / f"{name}.pem"
    try:
        raw = path.read_bytes()
    except OSError:
        res.problems.append(f"{path.name}: missing (no statement from {name})")
        return
    try:
        doc = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        res.problems.append(f"{path.name}: not valid JSON ({exc.__class__.__name__}): "
                            "the file was altered")
        return
    if not isinstance(doc, dict) or not isinstance(doc.get("statement"), dict):
        res.problems.append(f"{path.name}: not a signed statement (no 'statement' object)")
        return
    if canonical(doc) != raw:
        res.problems.append(f"{path.name}: not in canonical form: the file was altered "
                            "after signing")
        return
    stmt = doc["statement"]
    if stmt.get("name") != name:
        res.problems.append(f"{path.name}: the statement is by {stmt.get('name')!r}, filed as "
                            f"{name!r} (statements swapped or renamed)")
        return
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        res.problems.append(f"{cert_path.name}: missing or unreadable certificate for {name}")
        return
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        res.problems.append(f"{cert_path.name}: certificate for {_cert_name(cert)!r} was not "
                            "issued by the deployment CA (foreign key or CA)")
        return
    if _cert_name(cert) != name:
        res.problems.append(f"{cert_path.name}: certificate is for {_cert_name(cert)!r}, "
                            f"not {name!r}")
        return
    if not _verify_signature(cert, doc):
        res.problems.append(f"{path.name}: signature does not verify with {name}'s certificate"
                            " (statement altered after signing, or signed with another key)")
        return
    try:
        when = datetime.fromisoformat(str(stmt.get("finished")))
    except ValueError:
        res.problems.append(f"{path.name}: 'finished' is not an ISO time")
        return
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        res.problems.append(f"{path.name}: signed at {stmt.get('finished')}, outside the "
                            "certificate's validity")
        return
    res.statements[name] = stmt
    res.certificates[name] = cert


def _cross_check(report: dict[str, Any], res: AuditResult, dealer: str) -> None:
    """Statements agree with each other and with report.json."""
    p = res.problems
    stmts = res.statements
    for key in ("scenario", "scenario_digest", "parties"):
        values = {json.dumps(s.get(key)) for s in stmts.values()}
        if len(values) > 1:
            p.append(f"statements disagree on {key!r}: {sorted(values)}")
    want = {"scenario": report.get("scenario"), "scenario_digest": report.get("scenario_digest"),
            "parties": report.get("parties")}
    for name, s in stmts.items():
        for key, value in want.items():
            if s.get(key) != value:
                p.append(f"{name}.json: {key} {s.get(key)!r} differs from report.json's "
                         f"{value!r}")
    for name, s in stmts.items():  # the DP parameters each signer attests to
        if s.get("dp") != report.get("privacy"):
            p.append(f"{name}.json: dp parameters differ from report.json's privacy block")
    per_party = {e.get("name"): e for e in report.get("per_party", [])}
    ledgers: dict[str, list[Any]] = {}
    for name in report.get("parties", []):
        if name not in stmts:
            continue
        s = stmts[name]
        traffic, entry = s.get("traffic") or {}, per_party.get(name, {})
        for key in ("bytes_sent", "bytes_received", "rounds", "per_op"):
            if traffic.get(key) != entry.get(key):
                p.append(f"{name}.json: {key} differs from report.json")
        ledger = [dict(r) for r in s.get("ledger", [])]
        reported = [{k: v for k, v in r.items() if k != "party"}
                    for r in report.get("reveals", []) if r.get("party") == name]
        if ledger != reported:
            p.append(f"{name}.json: reveal ledger ({len(ledger)} entries) differs from "
                     f"report.json's reveals for {name} ({len(reported)})")
        ledgers[name] = ledger
    if len({json.dumps(v, sort_keys=True) for v in ledgers.values()}) > 1:
        p.append("the parties' reveal ledgers differ (every party takes part in every reveal)")
    party_stmts = [stmts[n] for n in report.get("parties", []) if n in stmts]
    if len(party_stmts) == len(report.get("parties", [])):
        sent = sum(int((s.get("traffic") or {}).get("bytes_sent", 0)) for s in party_stmts)
        got = sum(int((s.get("traffic") or {}).get("bytes_received", 0)) for s in party_stmts)
        if sent != got:
            p.append(f"the parties' statements do not balance: {sent} bytes sent, {got} "
                     "received")
    d = stmts.get(dealer)
    if d is not None:
        if (d.get("traffic") or {}).get("bytes_sent") != (report.get("dealer") or {}).get(
            "bytes_sent"
        ):
            p.append(f"{dealer}.json: bytes_sent differs from report.json's dealer entry")
        if d.get("ledger"):
            p.append(f"{dealer}.json: the dealer lists reveals (it never takes part in one)")
    loss = report.get("loss")
    n_loss = sum(1 for r in next(iter(ledgers.values()), []) if r.get("what") == "loss")
    if (len(loss) if isinstance(loss, list) else 0) != n_loss:
        p.append(f"report.json lists {len(loss) if isinstance(loss, list) else 0} losses, the "
                 f"ledgers {n_loss} loss reveals")


def verify_record(run_dir: Path, ca_path: Path | None = None, dealer: str = "dealer"
                  ) -> AuditResult:
    """Verify ``run_dir/audit`` against the CA (default ``run_dir/audit/ca.pem``) and
    ``run_dir/report.json``. Raises :class:`AuditError` only if the CA or report is unreadable;
    every problem of the record itself is listed in the result."""
    audit_dir = Path(run_dir) / "audit"
    ca = load_ca(ca_path if ca_path is not None else audit_dir / "ca.pem")
    try:
        report = json.loads((Path(run_dir) / "report.json").read_text())
    except (OSError, ValueError) as exc:
        raise AuditError(f"cannot read {Path(run_dir) / 'report.json'}: {exc}") from None
    return verify_statements(audit_dir, report, ca, dealer)


def verify_statements(audit_dir: Path, report: dict[str, Any], ca: x509.Certificate,
                      dealer: str = "dealer") -> AuditResult:
    """The checks of :func:`verify_record` on an in-memory report (the launcher's own check)."""
    res = AuditResult(certificate_fingerprint(ca))
    names = [str(n) for n in report.get("parties", [])] + [dealer]
    for name in names:
        _read_statement(Path(audit_dir), name, ca, res)
    extra = sorted(p.stem for p in Path(audit_dir).glob("*.json") if p.stem not in names)
    if extra:
        res.problems.append(f"statements from unknown signers: {extra}")
    _cross_check(report, res, dealer)
    return res

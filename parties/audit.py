"""``mpc-audit verify RUN_DIR [--ca CA.pem]``: check a run's signed audit record.

Checks every statement in ``RUN_DIR/audit/`` (one per party and one for the dealer): the file is
its own canonical JSON, its certificate was issued by the deployment CA and names the signer,
the signature verifies, and all statements agree with each other and with ``RUN_DIR/report.json``.
Prints the CA's SHA-256 fingerprint (compare it with the one the consortium agreed on, or pin a
CA with ``--ca``) and a summary. Exit code 0 when everything verifies, 1 otherwise, 2 when the
CA or report cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpc.config.audit import AuditError, AuditResult, verify_record

__all__ = ["main", "summary"]


def summary(res: AuditResult) -> str:
    """Human-readable summary of a verified record (signers, traffic, reveals)."""
    lines = []
    party = next((s for s in res.statements.values() if s.get("role") == "party"), None)
    if party is not None:
        lines.append(f"scenario {party.get('scenario')} (digest {party.get('scenario_digest')})")
    for name, s in res.statements.items():
        t = s.get("traffic") or {}
        rounds = f", {t['rounds']} rounds" if "rounds" in t else ""
        lines.append(
            f"  {s.get('role', '?'):6} {name}: {s.get('started')} .. {s.get('finished')}, sent "
            f"{t.get('bytes_sent', 0):,} bytes{rounds}, {len(s.get('ledger', []))} reveals, "
            f"software {(s.get('software') or {}).get('mpc-toolkit')}, dp "
            f"{'none' if s.get('dp') is None else s.get('dp')}"
        )
    if party is not None:
        counts: dict[tuple[str, str], int] = {}
        for r in party.get("ledger", []):
            key = (str(r.get("what")), str(r.get("to")))
            counts[key] = counts.get(key, 0) + 1
        lines.append("reveals agreed by every party:")
        lines += [f"  {what} -> {to}: {k}" for (what, to), k in sorted(counts.items())]
        if not counts:
            lines.append("  none")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpc-audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="verify RUN_DIR/audit against the CA and report.json")
    v.add_argument("run_dir", type=Path)
    v.add_argument("--ca", type=Path, default=None,
                   help="pin the deployment CA (default: RUN_DIR/audit/ca.pem)")
    args = parser.parse_args(argv)
    try:
        res = verify_record(args.run_dir, args.ca)
    except AuditError as exc:
        print(f"mpc-audit: {exc}", file=sys.stderr)
        return 2
    source = args.ca if args.ca is not None else args.run_dir / "audit" / "ca.pem"
    print(f"CA {source}: SHA-256 fingerprint {res.ca_fingerprint}")
    if not res.ok:
        for problem in res.problems:
            print(f"FAIL {problem}")
        print(f"audit record of {args.run_dir} does NOT verify ({len(res.problems)} problems)")
        return 1
    print(summary(res))
    print(f"audit record of {args.run_dir} verifies: {len(res.statements)} signed statements")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

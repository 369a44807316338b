"""End to end: logs and the report of a real run carry neither input data nor shares.

two-clinics trains for two epochs; then every log file of the run, the launcher's own output
and ``report.json`` are scanned for

(a) every party's raw data values, as the CSV spells them and as Python would print them
    (``repr``, ``str``, ``%.6g``, ``%.4f``, ``%f``), compared as whole numeric tokens; only
    strings with at least five significant digits are looked for, so that counters, byte
    counts and the like cannot match by accident;
(b) share-like values: ring elements are uniform in Z_2^64, so a logged share is almost surely
    an integer (or float) of magnitude above 2^40, or a run of 16+ hex digits. Nothing the
    toolkit legitimately logs (byte counts, rounds, seconds, metrics) is that large.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from mpc.config.scenario import load_scenario, scenario_digest

pytestmark = pytest.mark.e2e

# A number is a token of its own: not the middle of a word or of a base64 blob (an audit
# signature may hold "R5E99r": not 5e99).
NUMBER = re.compile(
    r"(?<![0-9A-Za-z_./])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![0-9A-Za-z_/])")
HEX_RUN = re.compile(r"(?<![0-9A-Za-z.])(?:0[xX])?[0-9A-Fa-f]{16,}(?![0-9A-Za-z])")
SHARE_BOUND = 2.0**40
MIN_SIGNIFICANT = 5


def significant(text: str) -> int:
    """Significant digits of a formatted number (no sign, leading or trailing zeros)."""
    mantissa = re.split(r"[eE]", text.strip().lstrip("+-"))[0]
    digits = mantissa.replace(".", "").lstrip("0")
    if "." in mantissa:
        digits = digits.rstrip("0")
    return len(digits)


def renderings(cell: str) -> set[str]:
    """The ways a data cell could show up in a log: as written, and as Python prints it."""
    out = {cell.strip()}
    try:
        v = float(cell)
    except ValueError:
        return out
    if np.isfinite(v):
        out |= {repr(v), str(v), f"{v:.6g}", f"{v:.4f}", f"{v:f}"}  # %r, %s, %.6g, %.4f, %f
    return {s.lstrip("+-") for s in out if significant(s) >= MIN_SIGNIFICANT}


def data_needles(csv_paths: list[Path], skip_columns: set[str]) -> dict[str, str]:
    """Rendering -> 'file:column' for every cell of the given CSV files."""
    needles: dict[str, str] = {}
    for path in csv_paths:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
        header = [c.strip() for c in rows[0]]
        for row in rows[1:]:
            for col, cell in zip(header, row, strict=False):
                if col in skip_columns:
                    continue
                for s in renderings(cell):
                    needles.setdefault(s, f"{path.name}:{col}")
    return needles


def numeric_tokens(text: str) -> set[str]:
    return {t.lstrip("+-") for t in NUMBER.findall(text)}


def share_like(text: str) -> list[str]:
    """Tokens that look like ring elements: |value| > 2^40, or 16+ hex digits."""
    found = []
    for tok in NUMBER.findall(text):
        try:
            if abs(float(tok)) > SHARE_BOUND:
                found.append(tok)
        except (ValueError, OverflowError):
            found.append(tok)
    found += [h for h in HEX_RUN.findall(text) if not h.isdigit()]  # digits: counted above
    return found


def context(text: str, token: str, width: int = 80) -> str:
    i = text.find(token)
    return text[max(0, i - width): i + len(token) + width].replace("\n", " | ")


@pytest.mark.timeout(30)
def test_scanner_finds_what_it_looks_for() -> None:
    """The detectors are not vacuous (and do not fire on what a log legitimately holds)."""
    assert significant("-0.0012340") == 4 and significant("1.07267") == 6
    assert renderings("1.07267") == {"1.07267", "1.0727", "1.072670"}
    assert renderings("1") == set() and renderings("0.125") == set()
    benign = ("2026-11-23 02:13:39,015 clinic_a INFO epoch 2/2 done in 0.079s (sent 290992 "
              'bytes, 97 rounds so far) "train_seconds": 0.27530908300013834, "accuracy": '
              "0.9824561403508771, 1e-05")
    assert share_like(benign) == []
    assert share_like('"signature": "MEQCIDeAhe/NE4qm+CUFdXTSMaaNQ/R5E99rX114bFg7E1zg=="') == []
    assert not numeric_tokens(benign) & {"1.07267", "1.0727"}
    assert share_like("share -6148914691236517206 end") == ["-6148914691236517206"]
    assert share_like("value 3.2e+17.") == ["3.2e+17"]
    assert share_like("seed 9f86d081884c7d659a2feaa0c55ad015 x") == [
        "9f86d081884c7d659a2feaa0c55ad015"]
    assert numeric_tokens("w=[-1.07267, 2.0]") & {"1.07267"}


def precise_copy(tmp: Path, source: Path) -> Path:
    """A copy of a scenario whose party files carry 10 significant digits per feature cell (the
    shipped raw files have 3-5, too few to grep for without matching counters): every value is
    perturbed by a relative 1e-7 and written with %.10g."""
    scenario = load_scenario(source)
    rng = np.random.default_rng(0)
    keep = {scenario.data.label, scenario.data.id_column}
    for path in [p.data for p in scenario.parties] + [scenario.evaluate.data]:
        assert path is not None
        target = tmp / path.relative_to(source.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        for row in rows[1:]:
            for j, col in enumerate(rows[0]):
                if col not in keep:
                    row[j] = f"{float(row[j]) * (1 + 1e-7 * rng.uniform(1, 2)):.10g}"
        with open(target, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh, lineterminator="\n").writerows(rows)
    copy = tmp / source.name
    copy.write_text(source.read_text())
    return copy


@pytest.mark.timeout(120)
def test_logs_and_report_hold_no_data_and_no_shares(run_launch, e2e, tmp_path: Path) -> None:
    path = precise_copy(tmp_path / "scenario", e2e.scenario_path("two-clinics"))
    res = run_launch(path, train__epochs=2)
    assert res.rc == 0, f"launcher exited {res.rc}\n{res.logs()}"
    out = res.out

    scenario = load_scenario(path)
    party_files = [p.data for p in scenario.parties]
    needles = data_needles(party_files, {scenario.data.label, scenario.data.id_column})
    assert len(needles) > 1000, f"only {len(needles)} data renderings to look for"

    scanned = sorted((out / "logs").glob("*.log")) + [
        out / "report.json", res.proc.stdout, res.proc.stderr,
        *sorted((out / "audit").glob("*.json"))]
    # dealer + 2 parties + report + launcher out/err + 3 signed audit statements
    assert len(scanned) == 9, scanned
    # The scenario digest (a hash of the public scenario, 64 hex digits) is not a share.
    digest = scenario_digest(load_scenario(path, ["train.epochs=2"]))
    leaks: list[str] = []
    for path in scanned:
        text = path.read_text(errors="replace").replace(digest, "<scenario digest>")
        for tok in sorted(numeric_tokens(text) & needles.keys()):
            leaks.append(f"{path.name}: data value {tok!r} ({needles[tok]}): "
                         f"...{context(text, tok)}...")
        for tok in share_like(text):
            leaks.append(f"{path.name}: share-like value {tok!r}: ...{context(text, tok)}...")
    assert not leaks, "\n".join(leaks[:50])

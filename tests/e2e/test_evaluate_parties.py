"""End to end: ``evaluate.at = "parties"`` -- each party holds its own test file, the joint
metric is computed inside MPC over the union of the test rows, and only the metric values are
revealed (to the launcher, recorded in every party's ledger).

Scenario copies in ``tmp_path``: the shipped ``[evaluate] data`` file is split into one test
file per party (rows for horizontal, the party's own columns of every row for vertical).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from mpc.config.datasets import load_party_data, load_party_test
from mpc.config.scenario import load_scenario
from mpc.learn.evaluation import plain_metrics
from mpc.net.certs import create_deployment

pytestmark = pytest.mark.e2e

TOL = 1e-3
METRICS_RULE = '{ what = "metrics", to = "launcher" }'


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        table = list(csv.reader(fh))
    return table[0], table[1:]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])


def _scaled(path: Path, out: Path, scale: dict[str, float]) -> Path:
    """A copy of CSV ``path`` with each column in ``scale`` divided by its public factor."""
    header, rows = _rows(path)
    idx = {header.index(c): f for c, f in scale.items() if c in header}
    _write(out, header, [[repr(float(v) / idx[j]) if j in idx else v for j, v in enumerate(r)]
                         for r in rows])
    return out


def make_scenario(root: Path, name: str, tmp: Path, *, reveal: str | None = "add",
                  standardize: bool = True) -> Path:
    """A copy of scenario ``name`` with evaluate.at = "parties" and one test file per party.

    ``standardize``: the raw files with the joint standardisation (the default), where the
    test rows are standardised with the training statistics inside MPC; only a linear label is
    divided by a public factor (the joint R^2 needs |y| < 64). Without: data.standardize =
    false and every column divided by a public factor, the largest magnitude of the shipped
    files (a fixture, not a deployment practice).
    ``reveal``: "add" lists metrics in an explicit [reveal] table (or keeps the default
    policy where the file has none); "keep" leaves an explicit table as it is.
    """
    text = (root / "scenarios" / f"{name}.toml").read_text()
    found = re.search(r'\[evaluate\]\ndata = "([^"]+)"\n', text)
    assert found, name
    files = [found.group(1),
             *(d for _, d in re.findall(r'name = "([a-z_0-9]+)"\ndata = "([^"]+)"\n', text))]
    scale: dict[str, float] = {}
    for f in files:
        head, body = _rows(root / "scenarios" / f)
        for j, c in enumerate(head):
            if c in ("id", "target") and not (c == "target" and "linear" in text):
                continue
            if standardize and c != "target":
                continue
            top = max(abs(float(r[j])) for r in body)
            scale[c] = max(scale.get(c, 0.0), top, 1e-12)
    test_src = _scaled(root / "scenarios" / found.group(1), tmp / "test-scaled.csv", scale)
    if not standardize:
        text = text.replace('label = "target"\n', 'label = "target"\nstandardize = false\n',
                            1)
    header, rows = _rows(test_src)
    text = text.replace(found.group(0), '[evaluate]\nat = "parties"\n')
    parties = re.findall(r'name = "([a-z_0-9]+)"\ndata = "([^"]+)"\n', text)
    vertical = 'partition = "vertical"' in text
    cuts = np.linspace(0, len(rows), len(parties) + 1).astype(int)
    cuts[1] += 7  # unequal test blocks
    for i, (party, data) in enumerate(parties):
        test = tmp / f"{party}-test.csv"
        if vertical:  # the party's own columns of every test row
            cols = [header.index(c) for c in _rows(root / "scenarios" / data)[0]]
            _write(test, [header[c] for c in cols], [[r[c] for c in cols] for r in rows])
        else:
            _write(test, header, rows[cuts[i] : cuts[i + 1]])
        train = _scaled(root / "scenarios" / data, tmp / f"{party}-train.csv", scale)
        text = text.replace(f'name = "{party}"\ndata = "{data}"\n',
                            f'name = "{party}"\ndata = "{train.name}"\n'
                            f'test = "{test.name}"\n')
    if reveal == "add" and "[reveal]" in text:
        text = re.sub(r"(\[reveal\]\nallow = \[.*)\]\n", rf"\1, {METRICS_RULE}]\n", text)
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return path


def _union_metrics(path: Path, weights: list[np.ndarray],
                   biases: list[np.ndarray] | None) -> dict[str, float]:
    """The plaintext float64 metric of the released weights on the union of the test files."""
    s = load_scenario(path)
    tests = [load_party_test(s, p, load_party_data(s, p).feature_names) for p in s.party_names]
    if s.data.partition == "vertical":
        x = np.concatenate([t.features for t in tests], axis=1)
        y = next(t.labels for t in tests if t.labels is not None)
    else:
        x = np.concatenate([t.features for t in tests])
        y = np.concatenate([t.labels for t in tests])
    return plain_metrics(s.model.kind, weights, x, y, biases)


# diabetes-linear has no [reveal] table: the default policy allows the metrics there.
# Raw data, standardised jointly (test rows with the training statistics), except "unscaled".
CASES = [
    ("three-hospitals", 3, ("accuracy", "auc"), True),
    ("three-hospitals", 3, ("accuracy", "auc"), False),
    ("diabetes-linear", 3, ("mse", "r2"), True),
    pytest.param("two-banks-vertical", 2, ("accuracy", "auc"), True, marks=pytest.mark.slow),
]


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("name", "epochs", "keys", "standardize"), CASES,
                         ids=["three-hospitals", "three-hospitals-unscaled", "diabetes-linear",
                              "two-banks-vertical"])
def test_metrics_computed_at_the_parties(name, epochs, keys, standardize, tmp_path, e2e,
                                         run_launch):
    path = make_scenario(e2e.ROOT, name, tmp_path, standardize=standardize)
    res = run_launch(path, train__epochs=epochs)
    assert res.rc == 0, f"launcher exited {res.rc}\n{res.logs()}"
    report = json.loads((res.out / "report.json").read_text())
    with np.load(res.out / "weights.npz") as npz:
        wn = sorted(k for k in npz.files if k.startswith("w"))
        weights = [npz[k] for k in wn]
        biases = [npz["b" + k[1:]] for k in wn] if "b" + wn[0][1:] in npz.files else None
    want = _union_metrics(path, weights, biases)
    got = report["metrics"]
    assert tuple(got) == keys, got
    for k in keys:
        assert abs(got[k] - want[k]) <= TOL, (k, got, want)
    assert report["expect"]["got"] == got[report["expect"]["metric"]]
    # The ledger: exactly the final model and the metrics, to the launcher, at every party
    # (vertical runs also list the training ids' private set intersection, data.align = psi).
    parties = report["parties"]
    ledger = sorted((r["party"], r["what"], r["to"], r["name"]) for r in report["reveals"]
                    if not (name.endswith("vertical") and r["what"] == "intersection"))
    assert ledger == sorted([(p, "weights", "launcher", w) for p in parties for w in ("w", "b")]
                            + [(p, "metrics", "launcher", k) for p in parties for k in keys])
    ev = report["evaluation"]["per_party"]
    assert [e["name"] for e in ev] == parties and all(e["rounds"] > 0 for e in ev), ev
    print(f"{name}: metrics {got} vs plaintext {want}; evaluation {ev[0]}; "
          f"wall {res.seconds:.1f}s")


@pytest.mark.timeout(60)
def test_explicit_reveal_without_metrics_is_refused(tmp_path, e2e, run_launch):
    """An explicit [reveal] table must list metrics: PolicyError, nothing started or opened."""
    path = make_scenario(e2e.ROOT, "three-hospitals", tmp_path, reveal="keep")
    res = run_launch(path)
    stderr = res.proc.stderr.read_text(errors="replace")
    assert res.rc != 0, res.logs()
    assert "PolicyError" in stderr and "metrics" in stderr, stderr
    assert not (res.out / "report.json").exists() and not (res.out / "weights.npz").exists()
    assert not (res.out / "logs").exists(), res.logs()  # no process was started
    assert not e2e.run_pids(res.out)


@pytest.mark.timeout(60)
def test_party_refuses_without_metrics_rule(tmp_path, e2e, procs):
    """Every party enforces the rule itself (deployments whose launcher is elsewhere)."""
    path = make_scenario(e2e.ROOT, "three-hospitals", tmp_path, reveal="keep")
    text = path.read_text()
    assert "[reveal]" in text and "metrics" not in text
    certs = tmp_path / "certs"
    create_deployment(certs, ["hospital_a", "dealer", "launcher"])
    proc = procs.start("hospital_a", ["-m", "parties.party", "--scenario", str(path),
                                      "--certs", str(certs), "--name", "hospital_a"])
    assert proc.wait(45) == 1, proc.output()
    err = proc.stderr.read_text(errors="replace")
    assert "PolicyError" in err and "refusing before anything is opened" in err, err

"""Rounds per training step through the real processes (issue 18's targets), from report.json.

``rounds_per_step`` counts the training steps only (masking, data preparation, the epoch-end
range checks, loss, evaluation and the final reveal apart). With FSS comparisons (``auto``'s
choice for 2 parties across a link of 1 ms round trip or more, opt-in for more parties):
logistic 3 rounds for 2 parties and for 3 (plus, for n > 2, one per epoch: its last update's
own round); softmax <= 12 and a one-hidden-layer MLP <= 20 for 2 parties. The bitwise
comparison (``auto`` on loopback and for n > 2) keeps its 6 (plus that round for n > 2).
The secure model must still match the plaintext reference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _two_labs(e2e, tmp_path: Path, scenario: str) -> Path:
    """The digits scenario with its first two labs only (absolute data paths)."""
    text = e2e.scenario_path(scenario).read_text()
    data = e2e.ROOT / "scenarios" / "data"
    text = re.sub(r'data = "data/', f'data = "{data}/', text)
    head, *parties = text.split("[[party]]")
    third, tail = parties[2].split("[evaluate]", 1)
    del third
    out = tmp_path / f"{scenario}-2.toml"
    out.write_text(head + "[[party]]" + parties[0] + "[[party]]" + parties[1] + "[evaluate]"
                   + tail)
    return out


@pytest.mark.timeout(200)
@pytest.mark.parametrize(
    ("scenario", "comparison", "ran", "rounds"),
    [("two-clinics", "fss", "fss", 3), ("two-clinics", "auto", "bitwise", 6),
     ("three-hospitals", "fss", "fss", 3), ("three-hospitals", "auto", "bitwise", 6)],
)
def test_logistic_rounds_per_step(scenario, comparison, ran, rounds, run_launch) -> None:
    res = run_launch(scenario, "--reference", train__epochs=2,
                     protocol__comparison=f'"{comparison}"')
    assert res.rc == 0, res.logs()
    report = _report(res.out)
    assert report["comparison"] == ran
    # auto with 2 parties measured the loopback link (well below 1 ms): bitwise
    assert (report["link_rtt_ms"] is not None) == (comparison == "auto" and
                                                    scenario == "two-clinics")
    training = report["training"]
    assert training["steps"] > 0 and training["steps"] % 2 == 0  # the same steps per epoch
    # n > 2: every step applies the previous step's update in its first round, and each
    # epoch's last update takes a round of its own (mpc.learn.folded): 1 round per epoch
    settle = 2 / training["steps"] if scenario == "three-hospitals" else 0
    assert report["rounds_per_step"] == pytest.approx(rounds + settle)
    assert training["range_check_rounds_per_epoch"] > 0
    assert training["dealer_bytes_per_step"] > 0
    assert 0.0 <= report["offline_seconds"] <= report["dealer"]["generate_seconds"]
    assert abs(report["metrics"]["accuracy"] - report["reference"]["accuracy"]) <= 0.005


@pytest.mark.slow  # ~70 s; tests/protocols/test_rounds_per_step.py pins the same counts
@pytest.mark.timeout(300)
@pytest.mark.parametrize(("scenario", "limit"), [("digits-softmax", 12), ("digits-mlp", 20)])
def test_neural_rounds_per_step_two_parties(scenario, limit, e2e, tmp_path, run_launch) -> None:
    res = run_launch(_two_labs(e2e, tmp_path, scenario), "--reference", train__epochs=1,
                     timeout=240, protocol__comparison='"fss"')
    assert res.rc == 0, res.logs()
    report = _report(res.out)
    assert report["comparison"] == "fss"
    assert report["rounds_per_step"] <= limit
    # the splines (exp, 1/x) and FSS comparisons keep the model close to the float64 one
    assert abs(report["metrics"]["accuracy"] - report["reference"]["accuracy"]) <= 0.02

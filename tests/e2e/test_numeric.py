"""End to end: a run whose values leave a protocol's domain stops with NumericError.

Two-clinics with a learning rate so large that the activations pass 2^13 after a step: the
comparison inside the sigmoid would return wrong signs for |u| >= 2^14 and the run used to
finish with exit 0 and a model trained on them. Now every party's epoch-end range check fails,
every party logs NumericError, and no weights are written.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
def test_out_of_domain_activations_end_in_numeric_error(run_launch) -> None:
    res = run_launch("two-clinics", train__epochs=1, **{"train.learning_rate": 5000})
    logs = res.logs()
    assert res.rc != 0, f"launcher succeeded with activations outside the domain\n{logs}"
    assert not (res.out / "weights.npz").exists(), logs
    for name in ("clinic_a", "clinic_b"):
        text = (res.out / "logs" / f"{name}.log").read_text(errors="replace")
        assert "NumericError" in text and "secure range check" in text, logs

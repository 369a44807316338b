"""``[privacy]`` in scenario files (``mpc.config.privacy``): defaults, and every combination that
would
release a data-dependent value outside the budget (or is not implemented) refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpc.config.privacy import plan
from mpc.config.scenario import load_scenario, scenario_digest
from mpc.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DP = ROOT / "scenarios" / "three-hospitals-dp.toml"


def test_dp_scenario_defaults() -> None:
    s = load_scenario(DP)
    assert s.privacy is not None
    assert (s.privacy.epsilon, s.privacy.clip, s.privacy.collusion) == (1.0, 1.0, 1)
    assert s.privacy.delta is None
    acc = plan(s.privacy, 455, 64, 10)
    assert acc.delta == pytest.approx(1e-4) and acc.epsilon <= 1.0 and acc.steps == 80
    assert scenario_digest(s) != scenario_digest(load_scenario(DP, ["privacy.epsilon=2.0"]))
    assert load_scenario(ROOT / "scenarios" / "three-hospitals.toml").privacy is None
    vert = load_scenario(ROOT / "scenarios" / "two-banks-vertical.toml", ["privacy.epsilon=4.0"])
    assert vert.privacy is not None
    mlp = load_scenario(ROOT / "scenarios" / "digits-mlp.toml",
                        ["privacy.epsilon=8.0", "model.intercept=false"])
    assert mlp.privacy is not None
    with pytest.raises(ConfigError, match="mlp' needs model.intercept = false"):
        load_scenario(ROOT / "scenarios" / "digits-mlp.toml", ["privacy.epsilon=8.0"])
    soft = load_scenario(ROOT / "scenarios" / "digits-softmax.toml", ["privacy.epsilon=8.0"])
    assert soft.privacy is not None and soft.privacy.epsilon == 8.0


@pytest.mark.parametrize(("sets", "fragment"), [
    (["privacy.noise_multiplier=1.0"], "exactly one"),
    (["privacy.epsilon=0"], "privacy.epsilon"),
    (["privacy.collusion=3"], "privacy.collusion"),
    (["privacy.delta=1.5"], "privacy.delta"),
    (["privacy.bogus=1"], "unknown key 'privacy.bogus'"),
    (["reveal.allow=[{what = 'loss', to = 'launcher'}, {what = 'weights', to = 'launcher'}]"],
     "'loss' is refused"),
    (["data.standardize=true"], "data.standardize"),
])
def test_refused(sets: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        load_scenario(DP, sets)


def test_linear_vertical_refused() -> None:
    with pytest.raises(ConfigError, match="linear model needs"):
        load_scenario(ROOT / "scenarios" / "two-banks-vertical.toml",
                      ["privacy.epsilon=4.0", "model.kind=linear", "expect.metric=mse"])


def test_batch_larger_than_data_refused() -> None:
    s = load_scenario(DP)
    assert s.privacy is not None
    with pytest.raises(ConfigError, match="batch_size"):
        plan(s.privacy, 50, 64, 1)

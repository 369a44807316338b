"""``data.bounds`` (public per-column bounds for DP-SGD): each owner clips and scales its
columns at load; the launcher's raw-scale conversion of the released weights makes the model
apply to raw rows (within the bounds) exactly as the trained one applies to scaled rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mpc.config.datasets import apply_bounds, feature_order, load_party_data
from mpc.config.scenario import load_scenario, weights_to_raw_scale
from mpc.core.errors import ConfigError
from mpc.learn.reference import predict

CSV = "x1,x2,x3,target\n100,-0.5,3,1\n-250,0.25,7,0\n900,0.0,-2,1\n"


def _scenario(write_scenario: Callable[..., Path], bounds: str, privacy: bool = True) -> Path:
    path = write_scenario(f"bounds = {bounds}", "[privacy]\nepsilon = 1.0" if privacy else "",
                          name="bounded")
    for name in ("a", "b"):
        (path.parent / f"{name}.csv").write_text(CSV)
    return path


def test_owner_scales_and_launcher_converts_back(write_scenario: Callable[..., Path]) -> None:
    s = load_scenario(_scenario(write_scenario, '{ x1 = [-500, 1000], x3 = [-10, 8] }'))
    data = load_party_data(s, "a")
    np.testing.assert_allclose(data.features[:, 0],
                               [(100 - 250) / 750, -500 / 750, (900 - 250) / 750])
    np.testing.assert_allclose(data.features[:, 1], [-0.5, 0.25, 0.0])  # unbounded: as is
    np.testing.assert_allclose(data.features[:, 2], [4 / 9, 8 / 9, -1 / 9])
    raw = np.array([[100, -0.5, 3], [-250, 0.25, 7], [900, 0.0, -2]], dtype=float)
    w, b = [np.array([[0.7], [-1.2], [2.5]])], [np.array([0.3])]
    order = feature_order(s)
    w_raw, b_raw = weights_to_raw_scale(s, order, w, b)
    np.testing.assert_allclose(predict("logistic", w_raw, raw, b_raw),
                               predict("logistic", w, data.features, b), atol=1e-12)


def test_values_outside_their_bounds_are_clipped(write_scenario: Callable[..., Path]) -> None:
    s = load_scenario(_scenario(write_scenario, '{ x1 = [0, 500] }'))
    x = apply_bounds(s, ["x1", "x2", "x3"], np.array([[900.0, 1, 1], [-250, 1, 1]]))
    np.testing.assert_allclose(x[:, 0], [1.0, -1.0])


@pytest.mark.parametrize("bounds,fragment", [
    ('{ x1 = [5, 5] }', "lo < hi"),
    ('{ x1 = [1] }', "lo < hi"),
    ('{ target = [0, 1] }', "numeric feature column"),
    ('{ x9 = [0, 1] }', "no party holds"),
])
def test_bad_bounds(write_scenario: Callable[..., Path], bounds: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        s = load_scenario(_scenario(write_scenario, bounds))
        feature_order(s)


def test_bounds_need_privacy(write_scenario: Callable[..., Path]) -> None:
    with pytest.raises(ConfigError, match=r"data.bounds.*\[privacy\]"):
        load_scenario(_scenario(write_scenario, '{ x1 = [0, 1] }', privacy=False))

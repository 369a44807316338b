"""Accuracy of DP-SGD inside MPC at epsilon = 1 and 8 (breast cancer, 3 parties, the settings
of scenarios/three-hospitals-dp.toml) against plaintext float64 DP-SGD with per-example
clipping (``mpc.learn.dpreference``): secure mean over 4 runs (simulation, OS-entropy noise) within
2 pp or 3 standard errors of the plaintext mean over 20 seeds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mpc.config.datasets import apply_bounds, load_table
from mpc.config.privacy import PrivacySpec, plan
from mpc.config.scenario import load_party_data, load_scenario
from mpc.core import fixedpoint
from mpc.core.prg import fresh_seed
from mpc.core.sharing import reconstruct
from mpc.learn.dp import DPTraining, row_thresholds, share_thresholds
from mpc.learn.dpreference import dp_sgd_reference
from mpc.learn.training import Layout, Model, mask_inputs, train
from mpc.protocols.simulate import simulate

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", (1.0, 8.0))
def test_accuracy_matches_plaintext_dp_sgd(epsilon: float) -> None:
    sc = load_scenario(ROOT / "scenarios" / "three-hospitals-dp.toml")
    parts = [load_party_data(sc, n) for n in sc.party_names]
    table = load_table(sc.evaluate.data)
    cols = list(table.columns)
    names = parts[0].feature_names  # the training columns are scaled by data.bounds at load
    Xt = apply_bounds(sc, names, table.values[:, [cols.index(c) for c in names]])
    yt = table.values[:, cols.index("target")]
    tr, clip = sc.train, 1.0
    blocks = tuple(len(p.features) for p in parts)
    rows, d = sum(blocks), Xt.shape[1]
    sigma = plan(PrivacySpec(epsilon, None, clip, None, 1), rows, tr.batch_size,
                 tr.epochs).noise_multiplier
    layout = Layout("horizontal", blocks, rows, d, 1, False)

    def secure_run() -> float:
        seed = fresh_seed()

        def party(ctx, features, labels):  # noqa: ANN001, ANN202
            data = mask_inputs(ctx, layout, features, labels, None)
            mine = None if ctx.dry else row_thresholds(fixedpoint.encode(features), clip, 16)
            dp = DPTraining(sigma, clip, 1, tr.batch_size, seed,
                            share_thresholds(ctx, layout, mine))
            model = Model.from_public(ctx, "logistic", [np.zeros((d, 1))])
            train(ctx, model, data, epochs=tr.epochs, batch_size=tr.batch_size,
                  learning_rate=tr.learning_rate, seed=0, dp=dp)
            return model.weights[0]

        res = simulate(3, party, [p.features for p in parts], [p.labels for p in parts])
        w = fixedpoint.decode(reconstruct(list(res))).numpy()
        return float(np.mean(((Xt @ w)[:, 0] > 0) == yt))

    X = np.concatenate([p.features for p in parts])
    y = np.concatenate([p.labels for p in parts])
    plain = [float(np.mean(((Xt @ dp_sgd_reference(
        "logistic", X, y, epochs=tr.epochs, batch_size=tr.batch_size,
        learning_rate=tr.learning_rate, noise_multiplier=sigma, clip=clip, seed=s))[:, 0] > 0)
        == yt)) for s in range(20)]
    secure = [secure_run() for _ in range(4)]
    se = math.sqrt(np.var(plain) / len(plain) + np.var(plain) / len(secure))
    gap = abs(np.mean(secure) - np.mean(plain))
    assert gap <= max(0.02, 3 * se), (secure, np.mean(plain), np.std(plain))

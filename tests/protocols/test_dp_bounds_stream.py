"""DP-SGD's per-row clipping bounds from a party's rows streamed in chunks (the party process
reads its CSV chunk by chunk for every job but PSI): the shared bounds equal those computed
from the rows held in memory, the intercept's 1 column included."""

from __future__ import annotations

import os

import numpy as np
import torch

from mpc.config.scenario import load_scenario
from mpc.core.sharing import reconstruct
from mpc.learn import masked
from mpc.protocols.simulate import simulate
from parties.common import Job, dp_training

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Chunked:
    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self.rows, self.cols = x.shape

    def chunks(self, n: int):  # noqa: ANN201
        for lo in range(0, self.rows, n):
            yield self.x[lo : lo + n], None


def test_streamed_bounds_equal_in_memory(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(masked, "CHUNK_WORDS", 40)  # chunks of 6 rows: several per party
    import parties.common as common
    monkeypatch.setattr(common, "CHUNK_WORDS", 40)
    s = load_scenario(os.path.join(ROOT, "scenarios", "three-hospitals-dp.toml"))
    rng = np.random.default_rng(5)
    sizes = (23, 17, 30)
    x = rng.uniform(-1, 1, (sum(sizes), 5))
    job = Job("horizontal", sizes, sum(sizes), 5, 1, False)
    cuts = np.cumsum((0,) + sizes)
    parts = [x[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    def bounds(ctx, own):  # noqa: ANN001, ANN202
        return dp_training(ctx, s, job, own, b"\0" * 32, ones=True).thresholds

    held = reconstruct(list(simulate(3, bounds, parts)))
    streamed = reconstruct(list(simulate(3, bounds, [_Chunked(p) for p in parts])))
    assert torch.equal(held, streamed) and held.shape == (sum(sizes), 1)
    norms = np.linalg.norm(np.column_stack([x, np.ones(len(x))]), axis=1)
    want = s.privacy.clip / norms  # c_i = C / ||(x_i, 1)|| (2 ulps below, capped)
    np.testing.assert_allclose(held[:, 0].double().numpy() / 2**16, want, atol=4 * 2**-16)

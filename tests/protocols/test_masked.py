"""Masking with seed-derived masks, shared (A, 0, ..., 0), streamed in chunks (simulation):
X = E + A exactly, non-owners hold 0, no dealer bytes for masks, and training on the
out-of-core data still matches the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.core import fixedpoint
from mpc.core.sharing import reconstruct
from mpc.learn import masked, rowstores
from mpc.learn.reference import train_reference
from mpc.learn.training import Layout, Model, mask_inputs, train
from mpc.protocols.simulate import simulate


def _blocks(partition: str, n: int, rows: int, d: int) -> tuple[int, ...]:
    total = d if partition == "vertical" else rows
    return tuple([total // n] * (n - 1) + [total - total // n * (n - 1)])


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("partition", ["horizontal", "vertical"])
@pytest.mark.parametrize("chunk_words", [1 << 20, 40])
def test_mask_shares_are_owner_mask_and_zero(monkeypatch, n, partition, chunk_words):
    monkeypatch.setattr(masked, "CHUNK_WORDS", chunk_words)  # 40: many chunk rounds
    rows, d = 103, 7
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((rows, d)), (rng.random(rows) > 0.5).astype(float)
    blocks = _blocks(partition, n, rows, d)
    layout = Layout(partition, blocks, rows, d, 1, False)
    cuts = np.cumsum([0, *blocks])
    vertical = partition == "vertical"
    feats = [X[:, a:b] if vertical else X[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    labels = [y if p == 0 else None for p in range(n)] if vertical else \
        [y[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]

    def party(ctx, features, lab):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, lab, 0 if vertical else None)
        return data.E.full(), data.A.full(), data.Y.full()

    res = simulate(n, party, feats, labels)
    assert res.dealer_bytes == 0  # no mask/owner traffic any more
    E = res[0][0]
    for r in res:
        assert torch.equal(r[0], E)  # E is public and the same everywhere
    enc = fixedpoint.encode(torch.from_numpy(X))
    assert torch.equal(E + reconstruct([r[1] for r in res]), enc)
    for p, r in enumerate(res):  # party p's share of A: its own block's mask, zero elsewhere
        for q, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
            share = r[1][:, a:b] if vertical else r[1][a:b]
            assert bool((share == 0).all()) == (p != q)
    assert torch.equal(reconstruct([r[2] for r in res])[:, 0],
                       fixedpoint.encode(torch.from_numpy(y)))
    # A uniform ring mask hides the block: its top bits are balanced (Binomial(n, 1/2)).
    top = (res[0][1][: cuts[1]] if not vertical else res[0][1][:, : cuts[1]]) < 0
    assert 0.3 < float(top.double().mean()) < 0.7


@pytest.mark.parametrize("kind", ["logistic", "linear"])
def test_training_on_chunked_out_of_core_data_matches_reference(monkeypatch, kind):
    monkeypatch.setattr(masked, "CHUNK_WORDS", 64)
    monkeypatch.setattr(rowstores, "RESIDENT_BYTES", 0)  # the per-row pread path
    rows, d = 400, 5
    rng = np.random.default_rng(1)
    X = rng.standard_normal((rows, d))
    y = (X[:, 0] - X[:, 1] > 0).astype(float) if kind == "logistic" else X[:, 0] - 0.5 * X[:, 2]
    blocks = (150, 250)
    layout = Layout("horizontal", blocks, rows, d, 1, False)
    init = [np.zeros((d, 1))]

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, labels, None)
        model = Model.from_public(ctx, kind, init)
        train(ctx, model, data, epochs=2, batch_size=32, learning_rate=0.1, seed=4)
        return model.weights[0]

    res = simulate(2, party, [X[:150], X[150:]], [y[:150], y[150:]])
    secure = fixedpoint.decode(reconstruct(list(res))).numpy()
    ref = train_reference(kind, X, y, init, epochs=2, batch_size=32, learning_rate=0.1, seed=4,
                          outputs=1)[0]
    assert np.abs(secure - ref).max() < 0.02

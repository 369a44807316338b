"""The n > 2 update settled in the next step's first round (``mpc.learn.folded``, simulation):
w' = w - (x >> b) up to the truncation's 1 ulp, X_B w' exact in the ring, 1 round; the same
as the update settled on its own; wrap gates of both values taken (x near +-2^61)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.core import fixedpoint
from mpc.core.prg import PRG, fresh_seed
from mpc.core.sharing import reconstruct, share
from mpc.learn import folded
from mpc.learn.folded import PendingUpdate, fused_product, settle
from mpc.learn.reference import train_reference
from mpc.learn.training import Layout, Model, TrainCounters, mask_inputs, train
from mpc.protocols.simulate import simulate

BITS = 45  # 2f + extra for lr / B around 2^-13


def _case(n: int, partition: str, rows: int = 37, d: int = 9, k: int = 1):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((rows, d))
    total = d if partition == "vertical" else rows
    blocks = tuple([total // n] * (n - 1) + [total - total // n * (n - 1)])
    cuts = np.cumsum([0, *blocks])
    vertical = partition == "vertical"
    feats = [X[:, a:b] if vertical else X[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    labels = [None] * n if vertical else [np.zeros(b - a) for a, b in
                                          zip(cuts[:-1], cuts[1:], strict=True)]
    layout = Layout(partition, blocks, rows, d, k, k > 1)  # k > 1: class labels
    w = fixedpoint.encode(torch.from_numpy(rng.standard_normal((d, k))))
    # x anywhere in (-2^61, 2^61), the edges included
    x = torch.from_numpy(rng.integers(-(1 << 61) + 1, 1 << 61, (d, k), dtype=np.int64))
    x[0, 0], x[1, 0] = (1 << 61) - 1, -(1 << 61) + 1
    batch = torch.from_numpy(rng.permutation(rows)[:16])
    return X, feats, labels, layout, w, x, batch


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("partition", ["horizontal", "vertical"])
def test_fused_product_matches_the_update_and_the_exact_product(n, partition):
    X, feats, labels, layout, w, x, batch = _case(n, partition)
    w_sh, x_sh = share(w, n, PRG(fresh_seed())), share(x, n, PRG(fresh_seed()))

    def party(ctx, features, lab, w_i, x_i):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, lab, 0 if partition == "vertical" else None)
        pending = PendingUpdate.of(ctx, x_i, BITS)
        before = ctx.stats.rounds
        w_new, out = fused_product(ctx, data, batch, w_i, pending)
        rounds = ctx.stats.rounds - before
        again = PendingUpdate.of(ctx, x_i, BITS)
        return w_new, out, rounds, settle(ctx, w_i, again)

    res = simulate(n, party, feats, labels, w_sh, x_sh, local_truncation=False)
    assert all(r[2] == 1 for r in res)  # one round for the update and the product's opening
    w_new = reconstruct([r[0] for r in res])
    expected = w - (x >> BITS)
    assert bool(((expected - w_new) >= 0).all() and ((expected - w_new) <= 1).all())
    settled = reconstruct([r[3] for r in res])
    assert bool(((expected - settled) >= 0).all() and ((expected - settled) <= 1).all())
    enc = fixedpoint.encode(torch.from_numpy(X))[batch]
    assert torch.equal(reconstruct([r[1] for r in res]), enc @ w_new)  # exact, mod 2^64


def test_fused_product_several_outputs():
    X, feats, labels, layout, w, x, batch = _case(3, "horizontal", k=3)
    w_sh, x_sh = share(w, 3, PRG(fresh_seed())), share(x, 3, PRG(fresh_seed()))

    def party(ctx, features, lab, w_i, x_i):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, lab, None)
        return fused_product(ctx, data, batch, w_i, PendingUpdate.of(ctx, x_i, BITS))

    res = simulate(3, party, feats, labels, w_sh, x_sh, local_truncation=False)
    w_new = reconstruct([r[0] for r in res])
    diff = w - (x >> BITS) - w_new
    assert bool(((diff >= 0) & (diff <= 1)).all())
    enc = fixedpoint.encode(torch.from_numpy(X))[batch]
    assert torch.equal(reconstruct([r[1] for r in res]), enc @ w_new)


@pytest.mark.parametrize("kind", ["logistic", "linear"])
@pytest.mark.parametrize("fuse", [True, False])
def test_training_with_and_without_fusion_matches_the_reference(monkeypatch, kind, fuse):
    """3 parties, 2 epochs of 5 steps (the last batch shorter): the weights match the float64
    reference either way; fused, each epoch costs one round less per step but its last."""
    if not fuse:
        monkeypatch.setattr(folded, "FUSE_WORDS", 0)
    n, rows, d, batch, epochs = 3, 72, 6, 16, 2
    rng = np.random.default_rng(4)
    X = rng.standard_normal((rows, d))
    X -= X.mean(0)
    y = ((X[:, 0] + 0.5 * X[:, 1] > 0).astype(float) if kind == "logistic"
         else 0.7 * X[:, 0] - X[:, 2])
    init = [np.zeros((d, 1))]
    blocks = (24, 24, 24)
    layout = Layout("horizontal", blocks, rows, d, 1, False)

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, labels, None)
        model = Model.from_public(ctx, kind, init)
        counters = TrainCounters()
        train(ctx, model, data, epochs=epochs, batch_size=batch, learning_rate=0.5, seed=3,
              counters=counters)
        return model.weights[0], counters.as_dict()["rounds_per_step"]

    res = simulate(n, party, [X[i : i + 24] for i in (0, 24, 48)],
                   [y[i : i + 24] for i in (0, 24, 48)])
    secure = fixedpoint.decode(reconstruct([r[0] for r in res])).numpy()
    ref = train_reference(kind, X, y, init, epochs=epochs, batch_size=batch, learning_rate=0.5,
                          seed=3, shuffle=True, outputs=1)[0]
    assert np.abs(secure - ref).max() < 0.02
    unfused = 7 if kind == "logistic" else 4  # rounds of a step that settles on its own
    steps = -(-rows // batch)
    assert res[0][1] == pytest.approx(unfused if not fuse else unfused - 1 + 1 / steps)

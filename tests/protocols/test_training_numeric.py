"""Secure training never returns a model built on a wrapped truncation or an out-of-domain
value (NumericError instead), and applies lr / B exactly on every path (simulation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.core import fixedpoint
from mpc.core.errors import NumericError
from mpc.core.sharing import reconstruct
from mpc.learn import training
from mpc.learn.reference import train_reference
from mpc.learn.training import Layout, Model, initial_weights, mask_inputs, train
from mpc.protocols.simulate import simulate

KINDS = ("logistic", "linear", "softmax", "mlp")
CLASSES = 3


def _problem(kind: str, rows: int, d: int, scale: float, seed: int = 0):  # noqa: ANN202
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, d)) * scale
    X -= X.mean(0)  # centred: a constant error of the first step's activation cancels
    if kind == "logistic":
        y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(float)
    elif kind == "linear":
        y = 0.7 * X[:, 0] - X[:, 2]
    else:
        y = np.argmax(X[:, :CLASSES], 1).astype(float)
    outputs = CLASSES if kind in ("softmax", "mlp") else 1
    return X, y, outputs


def _run(n, kind, X, y, outputs, *, lr, batch, epochs=1, init=None):  # noqa: ANN001, ANN202
    rows, d = X.shape
    if init is None and kind == "mlp":
        # Output layer from zero: the first step's softmax sees logits 0 (p = 1/K to 1e-4),
        # so the step compares lr / B, not the softmax approximation (which the reference
        # does not have); the hidden layer gets no gradient through zero output weights.
        init = [initial_weights(1, [(d, 8)], "normal", 1.0)[0], np.zeros((8, outputs))]
    elif init is None:
        init = [np.zeros((d, outputs))]
    blocks = [rows // n] * (n - 1) + [rows - rows // n * (n - 1)]
    layout = Layout("horizontal", tuple(blocks), rows, d, outputs, kind in ("softmax", "mlp"))
    cuts = np.cumsum([0, *blocks])
    parts = list(zip(cuts[:-1], cuts[1:], strict=True))

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, labels, None)
        model = Model.from_public(ctx, kind, init)
        train(ctx, model, data, epochs=epochs, batch_size=batch, learning_rate=lr, seed=3,
              shuffle=False)
        return model.weights

    res = simulate(n, party, [X[a:b] for a, b in parts], [y[a:b] for a, b in parts])
    secure = [
        fixedpoint.decode(reconstruct([r[i] for r in res])).numpy() for i in range(len(init))
    ]
    ref = train_reference(kind, X, y, init, epochs=epochs, batch_size=batch, learning_rate=lr,
                          seed=3, shuffle=False, outputs=outputs)
    return init, secure, ref


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("lr", "batch"), [(0.001, 256), (0.01, 512)])
def test_one_step_is_the_reference_step(n, kind, lr, batch):
    """One SGD step: the secure update, projected on the float64 reference's update, is the
    same step to 0.1 % (lr / B used to be rounded to 16 bits: no step at all for lr = 0.001,
    B = 256, and 22 % short for lr = 0.01, B = 512)."""
    # Features large enough that the update spans thousands of weight ulps (2^-16): the
    # unbiased stochastic rounding of the weights then averages out below 0.1 %.
    X, y, outputs = _problem(kind, batch, 12, 8.0 if kind == "linear" else 80.0)
    init, secure, ref = _run(n, kind, X, y, outputs, lr=lr, batch=batch)
    for w0, ws, wr in zip(init, secure, ref, strict=True):
        ds, dr = (ws - w0).ravel(), (wr - w0).ravel()
        if not dr.any():  # the MLP's hidden layer (see _run)
            assert np.abs(ds).max() <= 2**-14
            continue
        ratio = float(ds @ dr / (dr @ dr))
        assert abs(ratio - 1) <= 1e-3, (ratio, kind, n)


def test_step_factor_is_exact_over_the_allowed_range():
    for lr in (1e-4, 3e-4, 1e-3, 0.01, 0.5, 1.0, 10.0):
        for batch in (1, 7, 64, 256, 512, 1000, 4096):
            scale = lr / batch
            factor, extra = training._step_factor(scale, 16)
            assert 2**13 <= factor <= 2**14
            assert abs(factor / 2.0 ** (16 + extra) / scale - 1) < 2**-14


def _wrap_once(monkeypatch, which: int) -> None:
    """Make the ``which``-th truncation training.py asks for (party 0, not the dealer's dry
    run) come back as a wrapped 2-party local truncation does: off by 2^(64 - k)."""
    real = training.truncate
    calls = {"n": 0}

    def truncate(ctx, x, bits=None):  # noqa: ANN001, ANN202
        out = real(ctx, x, bits)
        if ctx.pid == 0 and not ctx.dry:
            if calls["n"] == which:
                k = ctx.fxp.frac_bits if bits is None else bits
                out = out + (1 << (64 - k))
            calls["n"] += 1
        return out

    monkeypatch.setattr(training, "truncate", truncate)


@pytest.mark.parametrize(("lr", "batch", "which"), [
    (0.5, 32, 0), (0.5, 32, 1), (0.5, 32, 2), (0.5, 32, 4),  # u, gradient, update; u (step 2)
    (1e-4, 256, 1), (1e-4, 256, 2),  # small steps (k = 35): too small for the weights' check
])
def test_wrapped_local_truncation_ends_in_numeric_error(monkeypatch, lr, batch, which):
    """A wrap in any local truncation of a 2-party logistic step used to change the model
    by up to 2^32 (or flip a sample's sigmoid) and the run still finished; now it raises."""
    X, y, outputs = _problem("logistic", max(64, batch), 6, 1.0)
    _wrap_once(monkeypatch, which)
    with pytest.raises(NumericError, match="epoch 1: the secure range check"):
        _run(2, "logistic", X, y, outputs, lr=lr, batch=batch)


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("kind", ("logistic", "softmax"))
def test_activation_outside_the_comparison_domain_ends_in_numeric_error(n, kind):
    """A step size that sends activations past the domain of the comparison (|u| >= 2^14:
    wrong signs) or of exp (logits below -256) ends in NumericError, not a wrong model."""
    X, y, outputs = _problem(kind, 64, 4, 20.0)
    with pytest.raises(NumericError):
        _run(n, kind, X, y, outputs, lr=500.0, batch=16, epochs=1)


def test_no_error_and_reference_model_in_range():
    """The guard passes a normal run (and leaves its result alone)."""
    X, y, outputs = _problem("logistic", 64, 6, 1.0)
    _, secure, ref = _run(2, "logistic", X, y, outputs, lr=0.5, batch=16, epochs=2)
    assert np.abs(secure[0] - ref[0]).max() < 0.02
    assert torch.isfinite(torch.as_tensor(secure[0])).all()


def _checked(monkeypatch) -> list[tuple[bool, str]]:
    """(dry run?, name) of every range check ``train`` runs, the dealer's dry run included."""
    from mpc.protocols.rangecheck import RangeGuard
    real = RangeGuard.check
    names: list[tuple[bool, str]] = []

    def check(self, ctx, name, failure=None):  # noqa: ANN001, ANN202
        names.append((ctx.dry, name))
        return real(self, ctx, name, failure)

    monkeypatch.setattr(RangeGuard, "check", check)
    return names


def test_small_epochs_share_one_range_check(monkeypatch):
    """Three epochs of a small dataset end with one check of all three (13 rounds instead of
    39), in every party and in the dealer's dry run alike; a wrap in the first epoch is
    still caught, naming the epochs, before the model is returned."""
    names = _checked(monkeypatch)
    X, y, outputs = _problem("logistic", 64, 6, 1.0)
    _, secure, ref = _run(2, "logistic", X, y, outputs, lr=0.5, batch=32, epochs=3)
    assert sorted(set(names)) == [(False, "epochs 1-3"), (True, "epochs 1-3")]
    assert len(names) == 3  # two parties and the dealer, once each
    np.testing.assert_allclose(secure[0], ref[0], atol=5e-3)
    _wrap_once(monkeypatch, 0)
    with pytest.raises(NumericError, match="epochs 1-3: the secure range check"):
        _run(2, "logistic", X, y, outputs, lr=0.5, batch=32, epochs=3)


def test_epochs_with_many_pending_values_are_checked_at_their_end(monkeypatch):
    """An epoch that leaves CHECK_CHUNK level inputs pending is checked at its end, as is
    every epoch before a hook (the secure loss reveals; nothing unchecked may precede it)."""
    names = _checked(monkeypatch)
    X, y, outputs = _problem("logistic", 64, 6, 1.0)
    monkeypatch.setattr(training, "CHECK_CHUNK", 64 * 4)  # 64 rows x (3 + 1) levels
    _run(2, "logistic", X, y, outputs, lr=0.5, batch=32, epochs=3)
    assert sorted({name for _, name in names}) == ["epoch 1", "epoch 2", "epoch 3"]
    assert len(names) == 9
    names.clear()
    monkeypatch.setattr(training, "CHECK_CHUNK", 1 << 18)
    layout = Layout("horizontal", (32, 32), 64, 6, 1, False)
    ends: list[int] = []

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, labels, None)
        model = Model.from_public(ctx, "logistic", [np.zeros((6, 1))])
        train(ctx, model, data, epochs=3, batch_size=32, learning_rate=0.5, seed=3,
              shuffle=False, epoch_end=ends.append)

    simulate(2, party, [X[:32], X[32:]], [y[:32], y[32:]])
    assert sorted({name for _, name in names}) == ["epoch 1", "epoch 2", "epoch 3"]
    assert len(ends) == 9  # the hook ran in every epoch of the 3 participants

"""DP-SGD inside MPC (``mpc.learn.dp``, simulation): the clamp is exact, one DP step equals float64
per-example clipping, and the noise each party adds has the calibrated distribution while no
single party's (or the dealer's) view determines the total."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpc.core import fixedpoint
from mpc.core.noise import party_scale
from mpc.core.sharing import reconstruct
from mpc.learn.dp import (
    DPTraining,
    clamp,
    poisson_batches,
    row_norm_ratios,
    row_thresholds,
    share_thresholds,
)
from mpc.learn.dpreference import clip_residuals
from mpc.learn.training import Layout, Model, mask_inputs
from mpc.protocols.rangecheck import RangeGuard
from mpc.protocols.simulate import simulate

F = fixedpoint.DEFAULT.frac_bits


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("fused", (False, True))
def test_clamp_is_exact(n: int, fused: bool) -> None:
    """clamp(r, -c, c) from one comparison call: exact at f bits, within 1 ulp with the fused
    truncation of n > 2 (its two roundings are independent)."""
    if fused and n == 2:
        pytest.skip("n = 2 truncates first, locally")
    rng = np.random.default_rng(1)
    r = rng.uniform(-3, 3, (200, 1))
    c = rng.uniform(0, 2, (200, 1))
    c[:10] = 0.0
    r_enc, c_enc = fixedpoint.encode(r), fixedpoint.encode(c)
    if fused:
        r_enc = r_enc << F
    bits = F if fused else 0

    def party(ctx, rs, cs):  # noqa: ANN001, ANN202
        return clamp(ctx, rs, cs, truncate_bits=bits)

    def shares(x: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.randint(-2**62, 2**62, x.shape) for _ in range(n - 1)]
        return [x - sum(parts, torch.zeros_like(x)), *parts]

    out = reconstruct(simulate(n, party, shares(r_enc), shares(c_enc)))
    want = torch.clamp(fixedpoint.encode(r), -c_enc, c_enc)
    diff = (out - want).abs().max().item()
    assert diff <= (1 if fused else 0)
    assert bool(((out.abs() - c_enc) <= (1 if fused else 0)).all())


@pytest.mark.parametrize("n", (2, 3))
@pytest.mark.parametrize("kind", ("logistic", "linear", "softmax"))
def test_one_dp_step_is_float64_per_example_clipping(n: int, kind: str) -> None:
    """One DP-SGD step with negligible noise (sigma C = 2^-30): the secure update equals
    float64 per-example clipping of the same Poisson batch to 0.5 % of its norm (softmax: 3 %,
    its exp and reciprocal approximations), most rows being clipped (||x_i|| ~ 5, C = 0.5)."""
    rng = np.random.default_rng(2)
    rows, d, batch, lr, clip = 240, 6, 120, 0.5, 0.5
    k = 3 if kind == "softmax" else 1
    X = rng.standard_normal((rows, d)) * 2.0
    w0 = rng.standard_normal((d, k)) * 0.3
    if kind == "softmax":
        y = np.argmax(X[:, :k], 1).astype(float)
    else:
        y = (X[:, 0] > 0).astype(float) if kind == "logistic" else X[:, 1] * 0.8 + 0.2
    blocks = (80, 80, 80) if n == 3 else (120, 120)
    layout = Layout("horizontal", blocks, rows, d, k, kind == "softmax")
    cuts = np.cumsum([0, *blocks])
    seed = bytes(range(32))
    sigma = 2.0**-30 / clip  # a few ring units at 2f bits: noise far below the weights' ulp
    bounds = row_norm_ratios if kind == "softmax" else row_thresholds

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, labels, None)
        mine = None if ctx.dry else bounds(fixedpoint.encode(features), clip, F)
        dp = DPTraining(sigma, clip, 1, batch, seed, share_thresholds(ctx, layout, mine))
        model = Model.from_public(ctx, kind, [w0])
        (rows_b,) = dp.batches(0, rows)[:1]
        dp.step(ctx, model, data, torch.from_numpy(rows_b), lr, RangeGuard())
        return model.weights[0]

    parts = list(zip(cuts[:-1], cuts[1:], strict=True))
    res = simulate(n, party, [X[a:b] for a, b in parts], [y[a:b] for a, b in parts])
    got = fixedpoint.decode(reconstruct(list(res))).numpy()
    rows_b = poisson_batches(seed, 0, rows, batch)[0]
    xb = X[rows_b]
    z = xb @ w0
    if kind == "softmax":
        e = np.exp(z - z.max(1, keepdims=True))
        r = e / e.sum(1, keepdims=True) - np.eye(k)[y[rows_b].astype(int)]
    else:
        r = ((1 / (1 + np.exp(-z)) if kind == "logistic" else z) - y[rows_b, None])[:, 0]
    clipped = clip_residuals(r, xb, clip).reshape(len(rows_b), k)
    norm = lambda v: np.linalg.norm(v.reshape(len(rows_b), -1), axis=1)  # noqa: E731
    assert np.mean(norm(clipped) < norm(r) - 1e-9) > 0.5  # most rows are clipped
    want = w0 - lr / batch * (xb.T @ clipped)
    tol = 0.03 if kind == "softmax" else 5e-3
    assert np.linalg.norm(got - want) <= tol * np.linalg.norm(want - w0)


def test_poisson_batches_rate_and_secrecy() -> None:
    """Each row is sampled with probability B / N, independently per step; another seed gives
    other batches (the scenario seed plays no part)."""
    seed = bytes(32)
    sizes = [len(b) for e in range(40) for b in poisson_batches(seed, e, 1000, 50)]
    assert len(sizes) == 40 * 20
    assert abs(np.mean(sizes) - 50) < 4 * math.sqrt(50 / len(sizes)) * 1.0 + 0.5
    a = poisson_batches(seed, 0, 1000, 50)[0]
    b = poisson_batches(bytes([1]) + bytes(31), 0, 1000, 50)[0]
    assert not np.array_equal(a, b)


def test_noise_views_of_parties_and_dealer() -> None:
    """n = 3, collusion = 1: each party adds variance (sigma C)^2 / 2 (within 3 %, 6 x 10^4
    draws each); the sum has mean 0, and with any one party's own draw subtracted (its view)
    the rest still has variance >= (sigma C)^2 within 3 %; the dealer's dry run adds nothing
    and learns nothing (its share is zero)."""
    sigma, clip, count = 1.5, 0.5, 60_000
    dp = DPTraining(sigma, clip, 1, 10, bytes(32), torch.zeros(0))

    def party(ctx):  # noqa: ANN001, ANN202
        return dp.noise(ctx, (count,))

    res = simulate(3, party)
    draws = np.stack([r.numpy().astype(np.float64) for r in res]) / 2.0 ** (2 * F)
    target = (sigma * clip) ** 2
    for p in range(3):
        assert abs(draws[p].var() / (target / 2) - 1) < 0.03
        rest = draws.sum(0) - draws[p]
        assert rest.var() >= target * 0.97
    total = draws.sum(0)
    assert abs(total.mean()) < 4 * math.sqrt(1.5 * target / count)
    assert abs(np.corrcoef(draws[0], draws[1])[0, 1]) < 0.03  # independent sources
    assert party_scale(sigma, clip, 2 * F, 3, 2) == pytest.approx(sigma * clip * 2.0 ** (2 * F))


@pytest.mark.parametrize("n", (2, 3))
def test_softmax_rows_clipped_to_the_bound(n: int) -> None:
    """Softmax: r_i scaled by min(1, C / (||x_i|| ||r_i||)) (x 1 - 2^-7): within 1 % of the
    float64 factor, and never above the bound (every per-example norm <= C)."""
    rng = np.random.default_rng(4)
    B, K, clip = 120, 10, 0.7
    logits = rng.standard_normal((B, K)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    r = p - np.eye(K)[rng.integers(0, K, B)]
    x = rng.standard_normal((B, 8)) * rng.uniform(0.05, 2.0, (B, 1))
    ratio = row_norm_ratios(fixedpoint.encode(x), clip, F)
    from mpc.learn.dp import clip_rows

    def party(ctx, rs, cs):  # noqa: ANN001, ANN202
        return clip_rows(ctx, rs, cs)

    def shares(v: torch.Tensor) -> list[torch.Tensor]:
        parts = [torch.randint(-2**62, 2**62, v.shape) for _ in range(n - 1)]
        return [v - sum(parts, torch.zeros_like(v)), *parts]

    r_enc = fixedpoint.encode(r)
    out = fixedpoint.decode(reconstruct(simulate(n, party, shares(r_enc), shares(ratio))))
    xe = fixedpoint.decode(fixedpoint.encode(x)).numpy()
    re = fixedpoint.decode(r_enc).numpy()
    want = clip_residuals(re, xe, clip)
    norms = np.linalg.norm(out.numpy(), axis=1) * np.linalg.norm(xe, axis=1)
    assert norms.max() <= clip
    assert (np.linalg.norm(want, axis=1) * np.linalg.norm(xe, axis=1) <= clip + 1e-9).all()
    assert np.abs(out.numpy() - want).max() <= 0.01 * np.abs(want).max()
    assert np.mean(np.linalg.norm(re, axis=1) * np.linalg.norm(xe, axis=1) > clip) > 0.3


@pytest.mark.parametrize("n", (2, 3))
def test_vertical_dp_step_clips_by_the_joint_row_norm(n: int) -> None:
    """Vertical partition: each party shares its partial ||x_i||^2 / C^2 over its columns;
    the clipping uses the joint norm (never opened) and matches float64 per-example clipping
    of the whole row to 1 %."""
    rng = np.random.default_rng(5)
    rows, batch, lr, clip = 200, 100, 0.5, 0.5
    cols = (3, 3, 2)[:n] if n == 3 else (4, 3)
    d = sum(cols)
    X = rng.standard_normal((rows, d)) * 2.0
    w0 = rng.standard_normal((d, 1)) * 0.3
    y = (X[:, 0] - X[:, -1] > 0).astype(float)
    layout = Layout("vertical", cols, rows, d, 1, False)
    cuts = np.cumsum([0, *cols])
    seed = bytes(range(1, 33))

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, labels if ctx.pid == 0 else None, 0)
        mine = None if ctx.dry else row_norm_ratios(fixedpoint.encode(features), clip, F)
        dp = DPTraining(2.0**-30 / clip, clip, 1, batch, seed,
                        share_thresholds(ctx, layout, mine), ratios=True)
        model = Model.from_public(ctx, "logistic", [w0])
        (rows_b,) = dp.batches(0, rows)[:1]
        dp.step(ctx, model, data, torch.from_numpy(rows_b), lr, RangeGuard())
        return model.weights[0]

    feats = [X[:, a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    res = simulate(n, party, feats, [y] * n)
    got = fixedpoint.decode(reconstruct(list(res))).numpy()
    rows_b = poisson_batches(seed, 0, rows, batch)[0]
    xb = X[rows_b]
    r = 1 / (1 + np.exp(-(xb @ w0)[:, 0])) - y[rows_b]
    clipped = clip_residuals(r, xb, clip)
    assert np.mean(np.abs(clipped) < np.abs(r) - 1e-9) > 0.5
    want = w0[:, 0] - lr / batch * (xb.T @ clipped)
    assert np.linalg.norm(got[:, 0] - want) <= 0.01 * np.linalg.norm(want - w0[:, 0])


def _mlp_reference(X, Y, ws, clip):  # noqa: ANN001, ANN202
    """float64 per-example gradients of a ReLU MLP with softmax output, clipped to C."""
    out = [np.zeros_like(w) for w in ws]
    for x, y in zip(X, Y, strict=True):
        acts, hs = [x], []
        for w in ws[:-1]:
            hs.append(acts[-1] @ w)
            acts.append(np.maximum(hs[-1], 0))
        z = acts[-1] @ ws[-1]
        p = np.exp(z - z.max())
        p /= p.sum()
        delta = p - y
        grads = [None] * len(ws)
        for layer in range(len(ws) - 1, -1, -1):
            grads[layer] = np.outer(acts[layer], delta)
            if layer:
                delta = (delta @ ws[layer].T) * (hs[layer - 1] >= 0)
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
        for i, g in enumerate(grads):
            out[i] += g * min(1.0, clip / max(norm, 1e-300))
    return out


@pytest.mark.parametrize("n", (2, 3))
def test_mlp_dp_step_is_float64_per_example_clipping(n: int) -> None:
    """MLP: the secure clipped gradient sum (per-layer ||a_i|| ||delta_i||, one factor per
    row) matches float64 per-example clipping to 3 % (softmax approximations)."""
    rng = np.random.default_rng(6)
    rows, d, hidden, k, batch, lr, clip = 150, 5, 6, 3, 75, 0.5, 0.5
    X = rng.standard_normal((rows, d)) * 1.5
    y = np.argmax(X[:, :k], 1).astype(float)
    ws = [rng.standard_normal((d, hidden)) * 0.6, rng.standard_normal((hidden, k)) * 0.6]
    blocks = (50, 50, 50) if n == 3 else (75, 75)
    layout = Layout("horizontal", blocks, rows, d, k, True)
    cuts = np.cumsum([0, *blocks])
    seed = bytes(range(2, 34))

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = mask_inputs(ctx, layout, features, labels, None)
        mine = None if ctx.dry else row_norm_ratios(fixedpoint.encode(features), clip, F)
        dp = DPTraining(2.0**-30 / clip, clip, 1, batch, seed,
                        share_thresholds(ctx, layout, mine), ratios=True)
        model = Model.from_public(ctx, "mlp", ws)
        (rows_b,) = dp.batches(0, rows)[:1]
        dp.step(ctx, model, data, torch.from_numpy(rows_b), lr, RangeGuard())
        return model.weights

    parts = list(zip(cuts[:-1], cuts[1:], strict=True))
    res = simulate(n, party, [X[a:b] for a, b in parts], [y[a:b] for a, b in parts])
    rows_b = poisson_batches(seed, 0, rows, batch)[0]
    ref = _mlp_reference(X[rows_b], np.eye(k)[y[rows_b].astype(int)], ws, clip)
    unclipped = _mlp_reference(X[rows_b], np.eye(k)[y[rows_b].astype(int)], ws, 1e9)
    for i, w in enumerate(ws):
        got = fixedpoint.decode(reconstruct([r[i] for r in res])).numpy()
        want = w - lr / batch * ref[i]
        assert np.linalg.norm(got - want) <= 0.03 * np.linalg.norm(want - w)
        assert np.linalg.norm(ref[i]) < 0.9 * np.linalg.norm(unclipped[i])  # clipping bites

"""Data preparation inside MPC (``mpc.learn.dataprep``) against its float64 twin: joint statistics
of
raw columns spanning 7 orders of magnitude over parties of unequal size, constant columns hidden,
and a whole secure run (standardise, intercept, train, raw-scale conversion) against
``mpc.learn.reference.reference_model``, horizontal and vertical."""

from __future__ import annotations

import numpy as np
import pytest

from mpc.core.sharing import reconstruct
from mpc.learn import dataprep as dp
from mpc.learn import jointstats as js
from mpc.learn.reference import metrics, predict, reference_model, with_intercept
from mpc.learn.training import Layout, Model, initial_weights, train
from mpc.protocols.simulate import simulate

SIZES = (70, 130, 40)  # unequal blocks


def raw_data(rows: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Columns from ~1e-2 to ~1e5 (an income, a lab value, an age, a small ratio, a constant)
    and a logistic label that depends on all of them."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([
        rng.normal(8e4, 3e4, rows),      # income
        rng.normal(1500, 400, rows),     # lab value
        rng.uniform(18, 95, rows),       # age
        rng.normal(0.02, 0.008, rows),   # small ratio
        np.full(rows, 3.0),              # constant column
    ])
    z = (x[:, 0] - 8e4) / 3e4 - (x[:, 1] - 1500) / 400 + (x[:, 2] - 56) / 22 \
        + 2 * (x[:, 3] - 0.02) / 0.008 + 0.5
    y = (z + rng.normal(0, 0.7, rows) > 0).astype(float)
    return x, y


@pytest.mark.parametrize("n", [2, 3])
def test_joint_statistics_match_float64(n: int) -> None:
    sizes = SIZES[:n]
    x, _ = raw_data(sum(sizes))
    x[: sizes[0], 2] += 25  # the parties' means differ: the between-party term matters
    layout = Layout("horizontal", sizes, sum(sizes), x.shape[1], 1, False)
    bounds = np.cumsum((0,) + sizes)
    parts = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    res = simulate(n, lambda ctx, part: js.joint_statistics(ctx, layout, part, x.shape[1]),
                   parts)
    inv = reconstruct([r[1] for r in res]).double().numpy() / 2.0**js.F_S
    sigma = reconstruct([r[0].sigma for r in res]).double().numpy() / 2.0**js.F_X
    mu = reconstruct([r[0].mu for r in res]).double().numpy() / 2.0**js.F_X
    onehot = reconstruct([r[0].onehot for r in res]).numpy()
    want_mu, want_sigma, want_inv = js.plain_statistics(x)
    np.testing.assert_allclose(mu, want_mu, rtol=1e-9, atol=2**-20)
    live = want_inv > 0
    assert list(live) == [True, True, True, True, False]
    # 1/sigma: Newton to 2^-27 relative; the between-party term (12 fractional bits) costs the
    # 0.008-sigma column up to ~1 %
    np.testing.assert_allclose(inv[:3], want_inv[:3], rtol=1e-4)
    np.testing.assert_allclose(inv[3], want_inv[3], rtol=2e-2)
    np.testing.assert_allclose(sigma[live], want_sigma[live], rtol=2e-2)
    assert inv[4] == 0 and sigma[4] == 0 and not onehot[:, 4].any()  # constant: hidden zero
    m = np.floor(np.log(want_sigma[live] ** 2) / np.log(4.0)).astype(int)
    assert (onehot[:, live].argmax(0) + js.J_MIN == m).all()
    assert set(np.unique(onehot)) <= {0, 1} and (onehot.sum(0) == live).all()
    # 1/sigma loses a fractional bit per factor 4 of rows beyond 2^12 (|x_std| <= sqrt(N))
    assert js.inv_sigma_bits(sum(sizes)) == js.F_S == 31 and js.inv_sigma_bits(100_000) == 28
    assert js.INPUT_BOUND_BITS == 18


def _secure_run(ctx, layout, feats, labels, label_party, kind, init,  # noqa: ANN001, ANN202
                missing=False):  # noqa: ANN001
    prepared = dp.prepare_data(ctx, layout, feats, labels, label_party, standardize=True,
                               intercept=True, linear=kind == "linear", missing=missing)
    model = Model.from_public(ctx, kind, with_intercept(init), True)
    train(ctx, model, prepared.data, epochs=3, batch_size=32, learning_rate=0.5, seed=3)
    return dp.release_raw_model(ctx, model.weights, layout.features, True, prepared)


def _open(res: list) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
    out = {}
    for i, (name, _, bits) in enumerate(res[0]):
        out[name] = reconstruct([r[i][1] for r in res]).double().numpy() / 2.0**bits
    return out


@pytest.mark.parametrize("missing", [False, True], ids=["complete", "missing5pc"])
@pytest.mark.parametrize("partition", ["horizontal", "vertical"])
def test_secure_run_matches_reference_on_raw_data(partition: str, missing: bool) -> None:
    """Secure accuracy within 0.5 pp of the float64 twin, and the same raw-scale model; with
    ~5 % missing cells imputed by the joint mean (data.missing = "mean")."""
    x, y = raw_data(sum(SIZES) + 200)
    xt, yt = x[sum(SIZES):], y[sum(SIZES):]
    x, y = x[: sum(SIZES)], y[: sum(SIZES)]
    if missing:
        x = x.copy()
        x[np.random.default_rng(8).random(x.shape) < 0.05] = np.nan
    d = x.shape[1]
    init = initial_weights(3, [(d, 1)], "zeros", None)
    if partition == "horizontal":
        n, blocks = 3, SIZES
        bounds = np.cumsum((0,) + SIZES)
        feats = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        labels = [y[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        label_party = None
    else:
        n, blocks = 2, (2, 3)
        feats = [x[:, :2], x[:, 2:]]
        labels = [y, None]
        label_party = 0
    layout = Layout(partition, blocks, len(x), d, 1, False)
    res = simulate(n, _secure_run, layout, feats, labels, label_party, "logistic", init,
                   missing)
    got = _open(res)
    ref_w, ref_b = reference_model("logistic", x, y, init, standardize=True, intercept=True,
                                   epochs=3, batch_size=32, learning_rate=0.5, seed=3)
    assert ref_b is not None
    sec_w, sec_b = [got["w"]], [got["b"]]
    sigma = js.plain_impute(x).std(0)
    acc = metrics("logistic", sec_w, xt, yt, sec_b)["accuracy"]
    want = metrics("logistic", ref_w, xt, yt, ref_b)["accuracy"]
    assert acc > 0.85 and abs(acc - want) <= 0.005, (acc, want)
    p_sec, p_ref = predict("logistic", sec_w, xt, sec_b), predict("logistic", ref_w, xt, ref_b)
    assert np.abs(p_sec - p_ref).max() < 0.02
    np.testing.assert_allclose(got["w"][:4, 0] * sigma[:4], ref_w[0][:4, 0] * sigma[:4],
                               atol=0.02)
    if not missing:  # imputing a constant column with a mean 6e-5 off leaves tiny variance
        assert got["w"][4, 0] == 0  # the constant column gets no weight
    # without standardisation the same raw data would leave the fixed-point range
    assert np.nanmax(np.abs(x)) >= 2.0**8


@pytest.mark.parametrize("n", [2, 3])
def test_joint_mean_over_present_cells(n: int) -> None:
    """data.missing = "mean": the mean over present cells with secret per-column counts (one
    party has no value at all in a column), and the variance of the imputed column."""
    sizes = SIZES[:n]
    x, _ = raw_data(sum(sizes), seed=6)
    x[np.random.default_rng(1).random(x.shape) < 0.1] = np.nan
    x[: sizes[0], 1] = np.nan
    layout = Layout("horizontal", sizes, sum(sizes), x.shape[1], 1, False)
    bounds = np.cumsum((0,) + sizes)
    parts = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    res = simulate(n, lambda ctx, part: js.joint_statistics(ctx, layout, part, x.shape[1],
                                                            True), parts)
    mu = reconstruct([r[0].mu for r in res]).double().numpy() / 2.0**js.F_X
    inv = reconstruct([r[1] for r in res]).double().numpy() / 2.0**js.F_S
    want_mu, _, want_inv = js.plain_statistics(x)
    np.testing.assert_allclose(mu, np.nanmean(x, 0), rtol=1e-4)  # 1/count at 16 bits
    np.testing.assert_allclose(want_mu, np.nanmean(x, 0), rtol=1e-12)
    np.testing.assert_allclose(inv[:4], want_inv[:4], rtol=2e-2)
    assert inv[4] == 0  # the constant column, imputed, is still constant


def test_linear_label_is_standardised_and_converted_back() -> None:
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.normal(5e3, 1e3, 240), rng.normal(0.3, 0.1, 240)])
    y = 2e-2 * x[:, 0] - 300 * x[:, 1] + 400 + rng.normal(0, 5, 240)
    init = initial_weights(3, [(2, 1)], "zeros", None)
    layout = Layout("horizontal", (100, 140), 240, 2, 1, False)
    res = simulate(2, _secure_run, layout, [x[:100], x[100:]], [y[:100], y[100:]], None,
                   "linear", init)
    got = _open(res)
    ref_w, ref_b = reference_model("linear", x, y, init, standardize=True, intercept=True,
                                   epochs=3, batch_size=32, learning_rate=0.5, seed=3)
    assert ref_b is not None
    pred = predict("linear", [got["w"]], x, [got["b"]])[:, 0]
    want = predict("linear", ref_w, x, ref_b)[:, 0]
    assert np.abs(pred - want).max() < 0.02 * y.std()
    assert np.mean((pred - y) ** 2) < 0.1 * y.var()  # predicts the raw target


def test_intercept_without_standardisation_mlp() -> None:
    """model.intercept for the MLP: biases per hidden unit (public 1 column on the hidden
    activations) match the float64 twin."""
    rng = np.random.default_rng(4)
    x = rng.normal(2.0, 1.0, (120, 3))
    y = (x[:, 0] + x[:, 1] > 4).astype(float)
    init = initial_weights(1, [(3, 4), (4, 2)], "normal", None)
    layout = Layout("horizontal", (60, 60), 120, 3, 2, True)

    def fn(ctx, feats, labels):  # noqa: ANN001, ANN202
        prepared = dp.prepare_data(ctx, layout, feats, labels, None, standardize=False,
                                   intercept=True, linear=False)
        model = Model.from_public(ctx, "mlp", with_intercept(init), True)
        train(ctx, model, prepared.data, epochs=2, batch_size=20, learning_rate=0.2, seed=1)
        return dp.release_raw_model(ctx, model.weights, 3, True, prepared)

    got = _open(simulate(2, fn, [x[:60], x[60:]], [y[:60], y[60:]]))
    ref_w, ref_b = reference_model("mlp", x, y, init, standardize=False, intercept=True,
                                   epochs=2, batch_size=20, learning_rate=0.2, seed=1, outputs=2)
    assert ref_b is not None and sorted(got) == ["b1", "b2", "w1", "w2"]
    for i in (1, 2):
        np.testing.assert_allclose(got[f"w{i}"], ref_w[i - 1], atol=5e-3)
        np.testing.assert_allclose(got[f"b{i}"], ref_b[i - 1], atol=5e-3)
    assert np.abs(ref_b[0]).max() > 1e-3  # the hidden biases were trained


class _Chunked:
    """A row source that yields its rows in chunks, as a party streaming its CSV does."""

    def __init__(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.x, self.y = x, y
        self.rows, self.cols = x.shape
        self.passes = 0

    def chunks(self, n: int):  # noqa: ANN201
        self.passes += 1
        for lo in range(0, self.rows, n):
            yield self.x[lo : lo + n], None if self.y is None else self.y[lo : lo + n]


def test_moments_merged_chunk_by_chunk_equal_the_whole() -> None:
    """Chan's pairwise update over uneven chunks (one all-missing in a column) gives the
    whole array's count, mean and squared deviations."""
    x, _ = raw_data(331, seed=9)
    x[np.random.default_rng(3).random(x.shape) < 0.2] = np.nan
    x[40:90, 2] = np.nan
    whole = js.Moments.of(x)
    merged = js.Moments.empty(x.shape[1])
    for lo, hi in [(0, 7), (7, 40), (40, 90), (90, 91), (91, 331)]:
        merged = merged.add(js.Moments.of(x[lo:hi]))
    assert merged.rows == whole.rows == 331
    np.testing.assert_array_equal(merged.count, (~np.isnan(x)).sum(0))
    np.testing.assert_allclose(merged.mean, np.nanmean(x, 0), rtol=1e-12)
    np.testing.assert_allclose(merged.m2, np.nansum((x - np.nanmean(x, 0)) ** 2, 0),
                               rtol=1e-9, atol=1e-12)
    for a, b in zip(merged.standardization(), js.plain_statistics(x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize(("n", "kind", "missing"),
                         [(2, "logistic", True), (3, "logistic", False), (2, "linear", False)])
def test_streamed_standardisation_is_out_of_core(monkeypatch, n: int, kind: str,  # noqa: ANN001
                                                 missing: bool) -> None:
    """Horizontal data standardised from row sources in many chunks (64-word chunks: the
    masking and the re-masking both take several rounds): x_std = E + R (R's shares summed
    over the parties) matches the float64 standardisation, the labels are the owners', and
    the stores are disk- or seed-backed (nothing N x d held); each source is read once (twice
    with missing cells: the flags' pass)."""
    from mpc.learn import masked, rowstores
    from mpc.learn.rowstores import FileRows, MaskRows
    monkeypatch.setattr(rowstores, "RESIDENT_BYTES", 0)  # the out-of-core stores
    monkeypatch.setattr(masked, "CHUNK_WORDS", 64)
    monkeypatch.setattr(dp, "CHUNK_WORDS", 64)
    sizes = SIZES[:n]
    x, y = raw_data(sum(sizes), seed=11)
    x = x[:, :4]
    if missing:
        x[np.random.default_rng(2).random(x.shape) < 0.08] = np.nan
    linear = kind == "linear"
    if linear:
        y = 3.0 * np.nan_to_num(x[:, 2]) + 7.0
    bounds = np.cumsum((0,) + sizes)
    sources = [_Chunked(x[a:b], y[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    layout = Layout("horizontal", sizes, sum(sizes), x.shape[1], 1, False)

    def fn(ctx, source):  # noqa: ANN001, ANN202
        p = dp.prepare_data(ctx, layout, source, None, None, standardize=True,
                            intercept=False, linear=linear, missing=missing)
        return p.data.E, p.data.A, p.data.Y

    res = simulate(n, fn, sources)
    for E, A, _ in res:
        assert isinstance(E, FileRows) and isinstance(A, MaskRows)
    assert [s.passes for s in sources] == [2 if missing else 1] * n
    x_std = (res[0][0].full() + reconstruct([r[1].full() for r in res])).double().numpy()
    mu, _, inv = js.plain_statistics(np.column_stack([x, y]) if linear else x)
    want = dp.plain_standardize(x, mu[:4], inv[:4])
    got = x_std / 2.0**js.F
    np.testing.assert_allclose(got[:, :3], want[:, :3], atol=2e-3)
    # the 0.008-sigma column: the between-party term's 2^-13 costs 1/sigma up to ~1 %
    np.testing.assert_allclose(got[:, 3], want[:, 3], rtol=2e-2, atol=2e-3)
    Y = reconstruct([r[2].full() for r in res]).double().numpy()[:, 0] / 2.0**js.F
    want_y = (y - mu[4]) * inv[4] if linear else y
    np.testing.assert_allclose(Y, want_y, atol=2e-3)


@pytest.mark.parametrize(("partition", "kind", "missing"), [
    ("horizontal", "logistic", True), ("vertical", "logistic", False),
    ("horizontal", "linear", False)])
def test_joint_evaluation_standardises_test_rows(partition: str, kind: str,
                                                 missing: bool) -> None:
    """evaluate.at = "parties" after joint standardisation: the parties' raw test rows are
    standardised with the training statistics inside MPC (missing cells imputed with the
    training mean; vertical owners with their own), a linear model's predictions converted to
    raw label units, and the secure metrics equal the float64 metrics of the released raw-scale
    model on the raw test rows."""
    from mpc.learn.evaluation import evaluate, metric_names, plain_metrics
    x, y = raw_data(sum(SIZES) + 150, seed=13)
    if kind == "linear":
        y = 1e-4 * x[:, 0] - 2e-2 * x[:, 1] + 0.5 * x[:, 2] + 3.0
    if missing:
        x = x.copy()
        x[np.random.default_rng(4).random(x.shape) < 0.05] = np.nan
    xt, yt, x, y = x[sum(SIZES):], y[sum(SIZES):], x[: sum(SIZES)], y[: sum(SIZES)]
    d = x.shape[1]
    init = initial_weights(3, [(d, 1)], "zeros", None)
    if partition == "horizontal":
        n, cuts, tcuts = 3, np.cumsum((0,) + SIZES), np.array([0, 40, 90, 150])
        feats = [x[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        labels = [y[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        tfeats = [xt[a:b] for a, b in zip(tcuts[:-1], tcuts[1:], strict=True)]
        tlabels = [yt[a:b] for a, b in zip(tcuts[:-1], tcuts[1:], strict=True)]
        blocks, tblocks, label_party = SIZES, (40, 50, 60), None
    else:
        n = 2
        feats, tfeats = [x[:, :2], x[:, 2:]], [xt[:, :2], xt[:, 2:]]
        labels, tlabels = [y, None], [yt, None]
        blocks = tblocks = (2, 3)
        label_party = 0
    layout = Layout(partition, blocks, len(x), d, 1, False)
    tlayout = Layout(partition, tblocks, len(xt), d, 1, False)

    def fn(ctx, f, lab, tf, tl):  # noqa: ANN001, ANN202
        prepared = dp.prepare_data(ctx, layout, f, lab, label_party, standardize=True,
                                   intercept=True, linear=kind == "linear", missing=missing)
        model = Model.from_public(ctx, kind, with_intercept(init), True)
        train(ctx, model, prepared.data, epochs=3, batch_size=32, learning_rate=0.5, seed=3)
        released = dp.release_raw_model(ctx, model.weights, d, True, prepared)
        metrics = evaluate(ctx, kind, model.weights, tlayout, tf, tl, label_party,
                           intercept=True, prepared=prepared)
        return released, metrics

    res = simulate(n, fn, feats, labels, tfeats, tlabels)
    model = _open([r[0] for r in res])
    got = reconstruct([r[1] for r in res]).double().numpy() / 2.0**js.F
    # a missing test cell takes the training mean, as in the training rows
    xt_filled = np.where(np.isnan(xt), np.nanmean(x, 0), xt)
    want = plain_metrics(kind, [model["w"]], xt_filled, yt, [model["b"]])
    for name, value in zip(metric_names(kind), got, strict=True):
        assert abs(value - want[name]) <= 2e-3 * max(1.0, abs(want[name])), (name, got, want)
    if kind == "linear":
        assert want["r2"] > 0.9  # a non-trivial fit, measured in raw label units


def test_test_value_beyond_the_standardised_range_is_refused() -> None:
    """A test value 200 training standard deviations out (2^7 is the exact range at 31
    fractional bits of 1/sigma) ends the joint evaluation with NumericError from the secure
    range check instead of a wrong metric; the same test rows without it pass."""
    from mpc.core.errors import NumericError
    from mpc.learn.evaluation import evaluate
    x, y = raw_data(230, seed=21)
    xt, yt, x, y = x[200:], y[200:], x[:200], y[:200]
    layout = Layout("horizontal", (90, 110), 200, 5, 1, False)
    tlayout = Layout("horizontal", (12, 18), 30, 5, 1, False)
    init = initial_weights(3, [(5, 1)], "zeros", None)
    far = xt.copy()
    far[4, 3] = x[:, 3].mean() + 200 * x[:, 3].std()  # the 0.008-sigma ratio column

    def fn(ctx, f, lab, tf, tl):  # noqa: ANN001, ANN202
        prepared = dp.prepare_data(ctx, layout, f, lab, None, standardize=True,
                                   intercept=True, linear=False)
        model = Model.from_public(ctx, "logistic", with_intercept(init), True)
        try:
            evaluate(ctx, "logistic", model.weights, tlayout, tf, tl, intercept=True,
                     prepared=prepared)
        except NumericError as exc:
            return str(exc)
        return None

    for test, refused in ((xt, False), (far, True)):
        got = simulate(2, fn, [x[:90], x[90:]], [y[:90], y[90:]], [test[:12], test[12:]],
                       [yt[:12], yt[12:]])
        assert all((r is not None) == refused for r in got), got
        if refused:
            assert "128 or more training standard deviations" in got[0]
            assert str(round(far[4, 3], 3)) not in got[0]  # names no value

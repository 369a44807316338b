"""Data preparation inside MPC: joint standardisation; the model converted back to raw scale.

Not "preprocessing" (that word means dealer material here): this module turns the parties' raw
columns into standardised shared data once, before training, and turns the trained (shared)
standardised model into a raw-scale model before the reveal, so nobody sees a mean or a standard
deviation unless the reveal policy allows ``statistics``. The statistics themselves (mean,
sigma, 1/sigma per column, computed from each party's float64 summary) are
:mod:`mpc.learn.jointstats`.

Horizontal (rows split), out of core: one streaming pass over each party's rows masks them at
F_X = 24 fractional bits (E = X - A to disk, :func:`mpc.learn.masked.mask_inputs`) while
summarising them (:class:`~mpc.learn.jointstats.Moments`); with ``data.missing = "mean"`` a
second pass masks the 0/1 missing-cell flags M. After the joint statistics, the rows are
standardised chunk by chunk (``CHUNK_WORDS`` words of rows at a time, the same public chunks in
every party and the dealer): x = A + E (+ M * mu, one exact Beaver product), x_std =
trunc((x - mu) * (1/sigma)) (one exact Beaver product and one exact dealer truncation), and
x_std is re-masked with a mask R shared over all parties -- each party's share regenerated from
its own seed (:meth:`~mpc.core.preprocessing.Preprocessing.mask_seeds`), so no party knows R --
by opening x_std - R, which goes to an E file. Nobody learns x_std (not even the rows' owner:
that would reveal mu and sigma). Memory per party: one chunk, independent of N; the dealer's
dry run is shape-only and regenerates R per batch like the data masks. Vertical (columns split):
each column's owner summarises its own columns in one pass, shares the statistics
(:func:`~mpc.learn.jointstats.owner_statistics`) and masks its standardised columns in a second
pass, chunk by chunk.

Cost (horizontal, c columns, N rows, K = ceil(N c / CHUNK_WORDS) chunks): the statistics'
~40 rounds plus 3 rounds per chunk (4 with missing cells), opening 3 (4) N x c words in all and
the masking pass; conversion ~8 rounds, O(J d H) words.

Trust: semi-honest parties, non-colluding dealer (as the rest of the toolkit). Nothing here is
opened except masked values; ``statistics`` reveals go through the policy (``parties.party``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np
import torch

from mpc.core.fixedpoint import FixedPoint
from mpc.learn.jointstats import (
    F_OUT,
    F_X,
    F_Z,
    F,
    Moments,
    Statistics,
    exact,
    inv_sigma_bits,
    joint_statistics,
    owner_statistics,
    plain_standardize,
    select_shifts,
)
from mpc.learn.masked import (
    CHUNK_WORDS,
    Layout,
    MaskedData,
    RowSource,
    mask_inputs,
    row_source,
)
from mpc.learn.rowstores import (
    ConstRows,
    MaskRows,
    Rows,
    StackedRows,
    SumRows,
    ZeroRows,
    close_rows,
    written_rows,
)
from mpc.protocols.arith import add_public, matmul, mul, open_masked, truncate
from mpc.protocols.context import PartyContext
from mpc.protocols.rangecheck import RangeGuard

__all__ = [
    "Prepared", "Released", "Scale", "prepare_data", "prepare_test", "label_to_raw",
    "release_raw_model", "plain_to_raw", "with_intercept_column",
]

Released = list[tuple[str, torch.Tensor, int]]  # (name, shared tensor, fractional bits)


@dataclass
class Scale:
    """How rows are standardised like the training rows (for test rows: :func:`prepare_test`).
    Horizontal: the shared ``mu`` (F_X bits) and ``inv`` = 1/sigma (``s_bits`` bits) of the
    feature columns; vertical: this owner's own float64 (mu, inv_sigma) of its feature
    columns in ``owner`` (None in the dealer's dry run)."""

    partition: str
    missing: bool
    mu: torch.Tensor | None = None
    inv: torch.Tensor | None = None
    s_bits: int = 0
    owner: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class Prepared:
    """Masked training data plus, when standardised, the statistics for the conversion and
    the :class:`Scale` for test rows."""

    data: MaskedData
    stats: Statistics | None = None
    label: Statistics | None = None
    scale: Scale | None = None


def with_intercept_column(ctx: PartyContext, data: MaskedData) -> MaskedData:
    """Append the public constant-1 column (E = 1, A = 0): the bias rides in the data products."""
    ones = (data.E.shape[0], 1)
    return MaskedData(StackedRows([data.E, ConstRows(ones, ctx.fxp.scale)], 1),
                      StackedRows([data.A, ZeroRows(ones)], 1), data.Y)


def prepare_data(
    ctx: PartyContext,
    layout: Layout,
    features: np.ndarray | RowSource | None,
    labels: np.ndarray | None,
    label_party: int | None,
    *,
    standardize: bool,
    intercept: bool,
    linear: bool,
    missing: bool = False,
) -> Prepared:
    """Mask the inputs (standardised jointly when asked) and append the intercept column.

    ``features``: this party's block, as an array (with ``labels``) or a row source that
    yields the labels with the features (e.g. a CSV streamed from disk); None in the dealer's
    dry run. ``layout.features`` counts the raw feature columns (without the intercept
    column). With ``missing`` (``data.missing = "mean"``, standardisation only), NaN feature
    cells are imputed with the joint mean over the present cells, computed inside MPC (counts
    stay secret)."""
    if not standardize:
        data = mask_inputs(ctx, layout, features, labels, label_party)
        return Prepared(with_intercept_column(ctx, data) if intercept else data)
    source = None if ctx.dry else row_source(ctx.name, features, labels)
    d = layout.features
    if layout.partition == "vertical":
        prepared = _prepare_vertical(ctx, layout, source, label_party, linear)
    else:
        prepared = _prepare_horizontal(ctx, layout, source, linear, missing)
    if intercept:
        prepared.data = with_intercept_column(ctx, prepared.data)
    if prepared.data.E.shape[1] != d + intercept:
        raise ValueError(f"{ctx.name}: prepared data has {prepared.data.E.shape[1]} columns")
    return prepared


def _chunk_rows(cols: int) -> int:
    """Rows per chunk of the streaming passes (public: the same in every process)."""
    return max(1, CHUNK_WORDS // max(1, cols))


def _raw(x: np.ndarray, y: np.ndarray | None, with_label: bool) -> np.ndarray:
    """A chunk's raw matrix: the features, and the label as a last column when it is
    standardised with them (the linear model's)."""
    x = np.asarray(x, dtype=np.float64)
    if not with_label:
        return x
    if y is None:
        raise ValueError("the label column is missing from the data source")
    return np.column_stack([x, np.asarray(y, dtype=np.float64)])


class _Summarised:
    """The row source as the horizontal masking pass reads it: raw chunks (the label as a
    last column when ``with_label``) with missing cells as 0, summarised into ``moments``
    on the way when ``summarise`` (training rows; test rows use the training's)."""

    def __init__(self, source: RowSource, with_label: bool, summarise: bool = True) -> None:
        self.source, self.with_label, self.summarise = source, with_label, summarise
        self.rows, self.cols = source.rows, source.cols + int(with_label)
        self.moments = Moments.empty(self.cols)

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        self.moments = Moments.empty(self.cols)
        for x, y in self.source.chunks(n):
            raw = _raw(x, y, self.with_label)
            if self.summarise:
                self.moments = self.moments.add(Moments.of(raw))
            yield np.where(np.isnan(raw), 0.0, raw), (None if self.with_label else y)


class _Gaps:
    """The 0/1 missing-cell flags of the same chunks (the label column's included)."""

    def __init__(self, source: RowSource, with_label: bool) -> None:
        self.source, self.with_label = source, with_label
        self.rows, self.cols = source.rows, source.cols + int(with_label)

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for x, y in self.source.chunks(n):
            yield np.isnan(_raw(x, y, self.with_label)).astype(np.float64), None


class _Standardised:
    """A vertical owner's columns standardised with its own statistics (the label too when
    ``with_label``: the linear model's label party)."""

    def __init__(self, source: RowSource, mu: np.ndarray, inv: np.ndarray,
                 with_label: bool) -> None:
        self.source, self.mu, self.inv, self.with_label = source, mu, inv, with_label
        self.rows, self.cols = source.rows, source.cols

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for x, y in self.source.chunks(n):
            z = plain_standardize(_raw(x, y, self.with_label), self.mu, self.inv)
            yield (z[:, :-1], z[:, -1]) if self.with_label else (z, y)


def _prepare_vertical(ctx: PartyContext, layout: Layout, source: RowSource | None,
                      label_party: int | None, linear: bool) -> Prepared:
    std_label = linear and label_party is not None
    counts = [b + (1 if std_label and p == label_party else 0)
              for p, b in enumerate(layout.blocks)]
    mine = std_label and ctx.pid == label_party
    moments = None
    if source is not None:
        moments = Moments.empty(source.cols + int(mine))
        for x, y in source.chunks(_chunk_rows(source.cols + 1)):
            moments = moments.add(Moments.of(_raw(x, y, mine)))
    stats = owner_statistics(ctx, counts, moments)
    view = None
    scale = Scale("vertical", False)
    if source is not None and moments is not None:
        mu, _, inv = moments.standardization()
        view = _Standardised(source, mu, inv, mine)
        scale.owner = (mu[: source.cols], inv[: source.cols])
    data = mask_inputs(ctx, layout, view, None, label_party)
    if not std_label:
        return Prepared(data, _split_owner(stats, counts, None), scale=scale)
    lp = int(label_party)  # type: ignore[arg-type]
    at = sum(counts[: lp + 1]) - 1
    return Prepared(data, _split_owner(stats, counts, lp), stats.columns(at, at + 1), scale)


def _split_owner(stats: Statistics, counts: list[int], label_party: int | None) -> Statistics:
    keep: list[int] = []
    lo = 0
    for p, c in enumerate(counts):
        hi = lo + c - (1 if p == label_party else 0)
        keep.extend(range(lo, hi))
        lo += c
    idx = torch.tensor(keep, dtype=torch.int64)
    return Statistics(stats.onehot[:, idx], stats.z[idx], stats.t[idx], stats.mu[idx],
                      stats.sigma[idx])


def _shared_mask(ctx: PartyContext, shape: tuple[int, int]) -> Rows:
    """A fresh mask R shared over all parties: each party's share expanded from a seed derived
    from its own dealer seed (any rows regenerated by counter offset), the dealer's view the
    sum of all of them. No party knows R; no dealer traffic."""
    seeds = ctx.pre.mask_seeds()
    if ctx.pre.is_dealer:
        return SumRows([MaskRows(seeds[p], shape) for p in range(ctx.n)])
    return MaskRows(seeds[ctx.pid], shape)


def _mask_raw(ctx: PartyContext, layout: Layout, source: RowSource | None, with_label: bool,
              missing: bool, summarise: bool = True
              ) -> tuple[MaskedData, MaskedData | None, _Summarised | None]:
    """The raw rows masked at F_X bits (E to disk), summarised on the way unless not
    ``summarise`` (the label as a last column when ``with_label``; otherwise the labels are
    masked with the rows, at the training's encoding), and with ``missing`` the 0/1
    missing-cell flags M (a second pass)."""
    wide = replace(ctx, fxp=FixedPoint(frac_bits=F_X, max_bits=62))
    layout_cols = replace(layout, features=layout.features + int(with_label))
    summary = None if source is None else _Summarised(source, with_label, summarise)
    masked = mask_inputs(wide, layout_cols, summary, None, None, label_fxp=ctx.fxp)
    flags = None
    if missing:
        flag_ctx = replace(ctx, fxp=FixedPoint(frac_bits=0, max_bits=47))
        flags = mask_inputs(flag_ctx, layout_cols,
                            None if source is None else _Gaps(source, with_label), None, None)
    return masked, flags, summary


def _standardise(ctx: PartyContext, masked: MaskedData, flags: MaskedData | None,
                 mu: torch.Tensor, inv: torch.Tensor, s_bits: int, d: int,
                 guard: RangeGuard | None = None) -> MaskedData:
    """x_std = trunc((A + E (+ M mu) - mu) (1/sigma)) chunk by chunk, re-masked with a fresh
    mask R shared over all parties (E' = x_std - R opened, to disk); columns beyond ``d``
    (the linear model's label) become the label shares Y, else Y is ``masked.Y``. Closes the
    raw stores. ``guard`` records every x_std against its exact range, |x_std| < 2^(38 -
    s_bits) (the product before the truncation stays below 2^62): rows that are not the
    training rows themselves (whose |x_std| <= sqrt(N) holds by construction)."""
    ex = exact(ctx)
    N, cols = masked.E.shape
    mu_row, inv_row = mu.reshape(1, -1), inv.reshape(1, -1)
    R = _shared_mask(ctx, (N, d))
    E: Rows = ZeroRows((N, d)) if ctx.dry else written_rows((N, d))
    labels = cols > d
    Y: Rows = masked.Y
    if labels:
        Y = ZeroRows((N, cols - d)) if ctx.dry else written_rows((N, cols - d))
    step = _chunk_rows(cols)
    for lo in range(0, N, step):
        hi = min(N, lo + step)
        if ctx.dry:  # the dealer: shapes only (every product below takes fresh triples)
            x = torch.zeros((hi - lo, cols), dtype=torch.int64)
        else:
            x = add_public(ctx, masked.A.range(lo, hi), masked.E.range(lo, hi))
        if flags is not None:  # x + M * mu: a missing cell (0 in x, 1 in M) becomes mu
            m = (torch.zeros_like(x) if ctx.dry
                 else add_public(ctx, flags.A.range(lo, hi), flags.E.range(lo, hi)))
            x = x + mul(ex, m, mu_row, scaled=False)
        x_std = truncate(ex, mul(ex, x - mu_row, inv_row, scaled=False), F_X + s_bits - F)
        if guard is not None:
            guard.record(x_std, std_range_bits(s_bits))
        if ctx.dry:
            continue
        (e,) = open_masked(ctx, "prep/remask", [x_std[:, :d] - R.range(lo, hi)])
        E.write(lo, e)  # type: ignore[attr-defined]
        if labels:
            Y.write(lo, x_std[:, d:])  # type: ignore[attr-defined]
    close_rows(masked.E, masked.A, *(() if flags is None else (flags.E, flags.A, flags.Y)))
    if labels:
        close_rows(masked.Y)
    return MaskedData(E, R, Y)


def _prepare_horizontal(ctx: PartyContext, layout: Layout, source: RowSource | None,
                        linear: bool, missing: bool = False) -> Prepared:
    d = layout.features
    masked, flags, summary = _mask_raw(ctx, layout, source, linear, missing)
    stats, inv_sigma = joint_statistics(ctx, layout, None if summary is None
                                        else summary.moments, d + int(linear), missing)
    s_bits = inv_sigma_bits(layout.rows)
    data = _standardise(ctx, masked, flags, stats.mu, inv_sigma, s_bits, d)
    scale = Scale("horizontal", missing, stats.mu[:d], inv_sigma[:d], s_bits)
    if linear:
        return Prepared(data, stats.columns(0, d), stats.columns(d, d + 1), scale)
    return Prepared(data, stats, scale=scale)


def prepare_test(ctx: PartyContext, layout: Layout, features: np.ndarray | RowSource | None,
                 labels: np.ndarray | None, label_party: int | None,
                 prepared: Prepared | None) -> MaskedData:
    """Test rows masked for a joint evaluation, standardised like the training rows when the
    training was (``prepared.scale``): horizontal with the shared training mu and 1/sigma
    (missing cells imputed with the training mean), vertical by each owner with its own
    training statistics. The labels stay raw (a linear model's predictions are converted to
    raw units instead: :func:`label_to_raw`). Without standardisation: the plain masking.
    Cost (horizontal): the masking pass plus 3 rounds per chunk (4 with missing cells) and
    one secure range check (13 rounds, one bit opened). Bound: a test value's
    |x - mu| / sigma must stay below 2^(38 - s_bits) (s_bits = 31 up to 2^12 training rows:
    2^7 sigma), else :class:`~mpc.core.errors.NumericError` from that check (never a wrong
    metric); vertical owners standardise in float64 and their encoding refuses values out of
    range by name."""
    scale = None if prepared is None else prepared.scale
    if scale is None:
        return mask_inputs(ctx, layout, features, labels, label_party)
    source = None if ctx.dry else row_source(ctx.name, features, labels)
    if scale.partition == "vertical":
        view = None
        if source is not None and scale.owner is not None:
            view = _Standardised(source, scale.owner[0], scale.owner[1], False)
        return mask_inputs(ctx, layout, view, None, label_party)
    if scale.mu is None or scale.inv is None:
        raise ValueError(f"{ctx.name}: the training scale has no statistics")
    masked, flags, _ = _mask_raw(ctx, layout, source, False, scale.missing, summarise=False)
    guard = RangeGuard(dry=ctx.dry)
    data = _standardise(ctx, masked, flags, scale.mu, scale.inv, scale.s_bits,
                        layout.features, guard)
    limit = 2 ** (std_range_bits(scale.s_bits) - F)
    guard.check(ctx, "test rows", f"standardised test values failed: a test value lies "
                f"{limit} or more training standard deviations from the training mean, "
                "beyond the fixed-point range of the evaluation; no metric is computed")
    return data


def std_range_bits(s_bits: int) -> int:
    """Ring bits (F fractional) of the exact range of a standardised value when 1/sigma has
    ``s_bits`` fractional bits: (x - mu) (1/sigma) at F_X + s_bits bits must stay below
    2^62, so |x_std| < 2^(62 - F_X - s_bits) = 2^(38 - s_bits) (2^7 for s_bits = 31)."""
    return 62 - F_X - s_bits + F


def label_to_raw(ctx: PartyContext, h: torch.Tensor, label: Statistics) -> torch.Tensor:
    """A linear model's predictions (F bits, standardised label units) in raw label units:
    mu_y + sigma_y h, one exact Beaver product and truncation (2 rounds + 2 for the
    statistics' truncations)."""
    ex = exact(ctx)
    sigma_y = truncate(ex, label.sigma, F_X - F).reshape(1)
    mu_y = truncate(ex, label.mu, F_X - F).reshape(1)
    return truncate(ex, mul(ex, h, sigma_y, scaled=False), F) + mu_y


def release_raw_model(
    ctx: PartyContext,
    weights: list[torch.Tensor],
    features: int,
    intercept: bool,
    prepared: Prepared,
) -> Released:
    """The trained model as named shared tensors ready for the reveal, with their fractional
    bits: weights w_l and intercepts b_l; with standardisation the first layer is converted to
    raw scale (and, for the linear model, the label back to raw units) inside MPC:
    W_raw = diag(1/sigma) W, b_raw = b - (mu / sigma) W; ~6 rounds."""
    ex = exact(ctx)
    single = len(weights) == 1
    out: Released = []
    widths = [features] + [int(w.shape[1]) for w in weights[:-1]]
    for i, (w, fan_in) in enumerate(zip(weights, widths, strict=True)):
        suffix = "" if single else str(i + 1)
        wt = w[:fan_in]
        b = w[fan_in:] if intercept else torch.zeros((1, w.shape[1]), dtype=torch.int64)
        if i > 0 or prepared.stats is None:
            out.append((f"w{suffix}", wt, F))
            if intercept:
                out.append((f"b{suffix}", b.reshape(-1), F))
            continue
        stats = prepared.stats
        if prepared.label is not None:  # y = mu_y + sigma_y y_std (linear)
            sigma_y = truncate(ex, prepared.label.sigma, F_X - F).reshape(1, 1)
            mu_y = truncate(ex, prepared.label.mu, F_X - F).reshape(1, 1)
            wt = truncate(ex, mul(ex, wt, sigma_y, scaled=False), F)
            b = truncate(ex, mul(ex, b, sigma_y, scaled=False), F) + mu_y
        zw = mul(ex, stats.z.reshape(-1, 1).expand(wt.shape).contiguous(), wt, scaled=False)
        w_raw = select_shifts(ex, stats.onehot, zw, F_OUT - F_Z - F, -1)
        tw = matmul(ex, stats.t.reshape(1, -1), wt, scaled=False)  # 2F bits
        b_raw = b * (1 << (F_OUT - F)) - tw * (1 << (F_OUT - 2 * F))
        out.append((f"w{suffix}", w_raw, F_OUT))
        out.append((f"b{suffix}", b_raw.reshape(-1), F_OUT))
    return out


def plain_to_raw(
    weights: list[np.ndarray], features: int, intercept: bool,
    x_stats: tuple[np.ndarray, np.ndarray] | None,
    y_stats: tuple[float, float] | None,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """float64 twin of :func:`release_raw_model`: (weights, biases) of the raw-scale model;
    ``x_stats`` = (mu, inv_sigma) per feature column, ``y_stats`` = (mu_y, sigma_y)."""
    ws, bs = [], []
    widths = [features] + [int(w.shape[1]) for w in weights[:-1]]
    for i, (w, fan_in) in enumerate(zip(weights, widths, strict=True)):
        wt = w[:fan_in]
        b = w[fan_in] if intercept else np.zeros(w.shape[1])
        if i == 0 and x_stats is not None:
            if y_stats is not None:
                wt, b = wt * y_stats[1], b * y_stats[1] + y_stats[0]
            mu, inv = x_stats
            wt = wt * inv[:, None]
            b = b - mu @ wt
        ws.append(wt)
        bs.append(b)
    return ws, (bs if intercept or x_stats is not None else None)

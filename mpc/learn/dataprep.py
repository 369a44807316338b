"""Data preparation inside MPC: joint standardisation; the model converted back to raw scale.

Not "preprocessing" (that word means dealer material here): this module turns the parties' raw
columns into standardised shared data once, before training, and turns the trained (shared)
standardised model into a raw-scale model before the reveal, so nobody sees a mean or a standard
deviation unless the reveal policy allows ``statistics``.

Horizontal (rows split): every party shares, per column, its local sum / N, its local mean and
its local sum of squared deviations / N (float64 locally, pairwise combination [CGL79]:
var = sum_p M2_p / N + sum_p (n_p / N) (m_p - mu)^2, no cancellation of large squares). The
joint variance is range-normalised by comparisons with 4^j (j in [J_MIN, J_MAX], a one-hot
vector o of the exponent m, never opened), y = var / 4^m in [1, 4) gets 4 Newton iterations of
1/sqrt, and 1/sigma = z 2^-m is formed by the one-hot selection of public shifts of z. Columns
with var < 4^J_MIN (constant pixels, ...) select nothing: 1/sigma = 0 without anyone learning
which. Vertical (columns split): each column's owner computes the same quantities in float64 and
standardises its own columns locally; it only shares the values the conversion needs.

Missing cells (``data.missing = "mean"``): horizontal parties share per-column sums over their
present cells and present fractions instead, so the counts stay secret; the joint mean is a
secret division (:func:`_reciprocal_mean`), the imputation x + M * mu one exact Beaver product
with the owner's 0/1 mask M, and the variance that of the imputed column (Chan's formula with
secret weights). Vertical owners impute locally.

Precision (ring Z_2^64, exact dealer truncations only): raw inputs |x| < 2^18 at F_X = 24
fractional bits (8 more than training: a column with sigma ~ 2^-10 keeps 14 bits); variances at
F_V = 24 bits (var < 2^36 -> < 2^60); Newton at F_Z = 28 bits; 1/sigma at F_S = 31 bits (a
column with sigma ~ 2^18 keeps 13 bits of 1/sigma; (x - mu) * (1/sigma) is then at 55 bits and
|x_std| <= sqrt(N) <= 2^6 for N <= 2^12 rows; one bit less per factor 4 of rows beyond); the
released first layer (raw-scale weights and intercepts) at F_OUT = 36 bits (a weight
w / sigma for sigma ~ 10^5 keeps ~20 bits, where 16 fractional bits would round it to 0).
The between-party spread term is computed at 12 fractional bits (its square at 24 bits stays
< 2^60), so sigma carries an absolute error of about 2^-13 from it.
Limits: sigma in [2^-10, 2^18) (smaller counts as constant); |mu| / sigma < 2^17.

Cost (horizontal, d columns, n > 2, measured figures in the notes): ~40 rounds independent of
the number of rows; per party O(J d) words for the statistics plus 3 N_p-row openings of the
(N x d) data (input mask, Beaver product, exact truncation) and one re-masking. Vertical: one
input round of (J + 4) c_p words per owner. Conversion: ~8 rounds, O(J d H) words.

Trust: semi-honest parties, non-colluding dealer (as the rest of the toolkit). Nothing here is
opened except masked values; ``statistics`` reveals go through the policy (``parties.party``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from mpc.config.datasets import STANDARDIZED_BOUND_BITS as INPUT_BOUND_BITS  # |x| < 2^18
from mpc.core.fixedpoint import FixedPoint
from mpc.learn.masked import (
    ConstRows,
    Layout,
    MaskedData,
    RowSource,
    StackedRows,
    ZeroRows,
    mask_inputs,
)
from mpc.protocols.arith import (
    TruncationMask,
    add_public,
    matmul,
    mul,
    open_masked,
    square,
    truncate,
    truncate_then_mul,
)
from mpc.protocols.compare import compare_thresholds
from mpc.protocols.context import PartyContext

__all__ = [
    "F_X", "F_V", "F_Z", "F_S", "F_OUT", "J_MIN", "J_MAX", "INPUT_BOUND_BITS",
    "Statistics", "Released", "inv_sigma_bits", "input_vectors", "joint_statistics",
    "owner_statistics",
    "prepare_data", "release_raw_model", "plain_statistics", "plain_standardize", "plain_impute",
    "plain_to_raw", "with_intercept_column",
]

F_X = 24
F_V = 24
F_Z = 28
F_S = 31
F_OUT = 36
F = 16  # the training's fractional bits
J_MIN = -10
_STAGE = 8  # thresholds per comparison call: 2^14 .. 2^28 in ring units (compare's domain)
_STAGES = 4
J_MAX = J_MIN + _STAGE * _STAGES - 1
_NEWTON = 4

Released = list[tuple[str, torch.Tensor, int]]  # (name, shared tensor, fractional bits)


@dataclass
class Statistics:
    """Shared per-column statistics: ``onehot`` (J x c, 0/1: the exponent m, var in
    [4^m, 4^(m+1)); all zero for a constant column), ``z`` = 1/sqrt(var / 4^m) (F_Z bits),
    ``t`` = mu / sigma (F bits), ``mu`` and ``sigma`` (F_X bits)."""

    onehot: torch.Tensor
    z: torch.Tensor
    t: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor

    def columns(self, lo: int, hi: int) -> Statistics:
        return Statistics(self.onehot[:, lo:hi], self.z[lo:hi], self.t[lo:hi], self.mu[lo:hi],
                          self.sigma[lo:hi])


def _exact(ctx: PartyContext) -> PartyContext:
    """The same context with dealer-assisted (exact) truncation also for n = 2: the values
    here reach 2^61, where local truncation would fail with probability ~1/4."""
    return replace(ctx, local_truncation=False)


def _enc(values: np.ndarray, bits: int) -> torch.Tensor:
    return torch.round(torch.as_tensor(np.asarray(values, dtype=np.float64)) * 2.0**bits).to(
        torch.int64)


def input_vectors(
    ctx: PartyContext, mine: torch.Tensor | None, shapes: list[tuple[int, ...]]
) -> list[torch.Tensor]:
    """Share one ring tensor per party (shape ``shapes[p]``): 1 round; the dealer hands each
    owner the full mask a of its tensor, the owner publishes x - a [SecureML17 sec. IV-A].
    Sends sum of |x_p| words to each peer; the dealer sends each owner |x_p| words."""
    own_e = None
    masks = []
    for owner, shape in enumerate(shapes):
        a = ctx.pre.random(shape)
        full = ctx.pre.deliver("prep/mask", shape, lambda a=a: a, receiver=owner)  # type: ignore[misc]
        masks.append(a)
        if owner == ctx.pid and full is not None:
            x = mine if mine is not None and not ctx.dry else torch.zeros(shape, dtype=torch.int64)
            own_e = x - full
    if own_e is None:
        raise ValueError(f"{ctx.name}: no input slot for pid {ctx.pid}")
    got = ctx.channel.exchange(
        "prep/input", {p: [own_e] for p in ctx.channel.peers},
        {p: [shapes[p]] for p in ctx.channel.peers})
    return [add_public(ctx, a, own_e if p == ctx.pid else got[p][0]) for p, a in enumerate(masks)]


def _shifts(ctx: PartyContext, x: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """Shares of x * 2^k for each k (left shifts local; right shifts exact dealer truncations,
    all opened together): 1 round if any k < 0, (n-1)|x| words per right shift."""
    shape = tuple(x.shape)
    masks = {k: TruncationMask.draw(ctx, shape, -k) for k in ks if k < 0}
    if ctx.dry:
        return torch.zeros((len(ks),) + shape, dtype=torch.int64)
    opened = dict(zip(masks, open_masked(ctx, "prep/shift",
                                         [m.masked(ctx, x) for m in masks.values()]),
                      strict=True)) if masks else {}
    out = []
    for k in ks:
        if k >= 0:
            out.append(x * (1 << k))
        else:
            gate, public = masks[k].opened(opened[k])
            out.append(add_public(ctx, gate.to(torch.int64) * masks[k].wrap() - masks[k].high,
                                  public))
    return torch.stack(out)


def _select(ctx: PartyContext, onehot: torch.Tensor, x: torch.Tensor, k0: int, sign: int
            ) -> torch.Tensor:
    """sum_j o_j * x * 2^(k0 + sign*j) for the secret one-hot o (J x c) and x (c or c x H): the
    public shifts of x, then one exact Beaver product with the 0/1 o_j: 2 rounds."""
    ks = [k0 + sign * j for j in range(J_MIN, J_MAX + 1)]
    shifted = _shifts(ctx, x, ks)
    o = onehot.reshape(onehot.shape + (1,) * (x.dim() - 1))
    o = o.expand(shifted.shape).contiguous()
    return mul(ctx, o, shifted, scaled=False).sum(0)


def _onehot_exponent(ctx: PartyContext, var: torch.Tensor) -> torch.Tensor:
    """One-hot o (J x c) of m with 4^m <= var < 4^(m+1), from var at F_V bits: each stage of 8
    thresholds 4^j compares var shifted so that 4^lo is 2^14 in ring units (compare's domain);
    a stage's bits are forced to 1 when the stage above says var >= 4^(its lowest j):
    4 x 4 rounds of comparison + 1 round of shifts + 3 rounds of fix-up."""
    cmp_ctx = replace(ctx, fxp=FixedPoint(frac_bits=0, max_bits=47))
    ks = [-(2 * (J_MIN + _STAGE * s) + F_V - 14) for s in range(_STAGES)]
    xs = _shifts(ctx, var, ks)
    thresholds = [float(2 ** (14 + 2 * i)) for i in range(_STAGE)]
    raw = [compare_thresholds(cmp_ctx, xs[s], thresholds, with_products=False)[0]
           for s in range(_STAGES)]
    bits = [raw[-1]]
    for s in range(_STAGES - 2, -1, -1):
        above = bits[0][0:1].expand(raw[s].shape).contiguous()  # [var >= 4^(lo of stage s+1)]
        forced = mul(ctx, above, add_public(ctx, -raw[s], 1), scaled=False)
        bits.insert(0, raw[s] + forced)
    b = torch.cat(bits)  # (J, c): b_j = [var >= 4^j], monotone in j
    nxt = torch.cat([b[1:], torch.zeros_like(b[:1])])
    return b - nxt


def _inv_sqrt(ctx: PartyContext, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, y z) at F_Z bits with z = 1/sqrt(y) for y in [1, 4) at F_Z bits: z0 = 1.1 - 0.15 y,
    then 4 Newton steps z <- z (3 - y z^2) / 2, 3 rounds each (truncations fused with the
    products, ``truncate_then_mul``); error below 2^-27. 0 for y = 0 is not needed: constant
    columns are cancelled by their all-zero one-hot."""
    one = 1 << F_Z
    z2 = add_public(ctx, -y * round(0.15 * one), round(1.1 * one) << F_Z)  # z at 2 F_Z bits
    yz = y
    for _ in range(_NEWTON):
        yz2, z = truncate_then_mul(ctx, z2, F_Z, y)  # y z at 2F_Z, z at F_Z
        yzz, _ = truncate_then_mul(ctx, yz2, F_Z, z)  # y z^2 at 2F_Z
        # (3 - y z^2) / 2 at F_Z: truncate -y z^2 by F_Z + 1 and add 1.5
        z2, _ = truncate_then_mul(ctx, -yzz, F_Z + 1, z, offset=3 << (F_Z - 1))
    yz2, z = truncate_then_mul(ctx, z2, F_Z, y)
    yz = truncate(ctx, yz2, F_Z)
    return z, yz


def inv_sigma_bits(rows: int) -> int:
    """Fractional bits of 1/sigma for N rows: F_S = 31 while (x - mu) / sigma (|.| <= sqrt(N))
    at F_X + F_S bits stays below 2^61 (N <= 2^12), one bit less per factor 4 of rows."""
    return min(F_S, 61 - F_X - math.ceil(math.log2(max(rows, 1)) / 2))


def _finish(ctx: PartyContext, mu: torch.Tensor, var: torch.Tensor, s_bits: int = F_S
            ) -> tuple[Statistics, torch.Tensor]:
    """Statistics and 1/sigma (``s_bits`` bits) from mu (F_X) and var (F_V)."""
    onehot = _onehot_exponent(ctx, var)
    y = _select(ctx, onehot, var, F_Z - F_V, -2)  # var / 4^m at F_Z bits
    z, yz = _inv_sqrt(ctx, y)
    inv_sigma = _select(ctx, onehot, z, s_bits - F_Z, -1)
    sigma = _select(ctx, onehot, yz, F_X - F_Z, 1)
    mu_scaled = _select(ctx, onehot, mu, F - F_X, -1)  # mu 2^-m at F bits
    t = truncate(ctx, mul(ctx, mu_scaled, z, scaled=False), F_Z)
    return Statistics(onehot, z, t, mu, sigma), inv_sigma


def joint_statistics(
    ctx: PartyContext, layout: Layout, raw: np.ndarray | None, cols: int, missing: bool = False
) -> tuple[Statistics, torch.Tensor]:
    """Horizontal: statistics of ``cols`` columns over all parties' rows, and 1/sigma (at
    :func:`inv_sigma_bits` fractional bits).

    Each party inputs (sum/N, local mean, local M2/N) per column in float64 (no per-row MPC);
    ~40 rounds in all, O(J cols) words."""
    ctx = _exact(ctx)
    n_rows = layout.rows
    if missing:
        return _joint_statistics_missing(ctx, layout, raw, cols)
    shape = (3, cols)
    mine = None
    if raw is not None and not ctx.dry:
        m = raw.mean(0)
        mine = torch.stack([_enc(raw.sum(0) / n_rows, F_X), _enc(m, F_X),
                            _enc(((raw - m) ** 2).sum(0) / n_rows, F_V)])
    shared = input_vectors(ctx, mine, [shape] * ctx.n)
    mu = sum((s[0] for s in shared), torch.zeros(cols, dtype=torch.int64))
    d = torch.stack([s[1] - mu for s in shared])  # (P, cols) at F_X
    coef = torch.tensor([[round(math.sqrt(b / n_rows) * 2**16)] for b in layout.blocks])
    e = truncate(ctx, d * coef, F_X + 16 - F_V // 2)  # sqrt(n_p/N) (m_p - mu) at F_V/2
    var = sum((s[2] for s in shared), torch.zeros(cols, dtype=torch.int64))
    var = var + square(ctx, e, scaled=False).sum(0)
    return _finish(ctx, mu, var, inv_sigma_bits(n_rows))


_FRACTION_J = list(range(-7, 1))  # present fraction B = n / N >= 4^-7 (N <= 2^14 rows)


def _reciprocal_mean(ctx: PartyContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mu = a / b (F_X bits) for a = sum / N (F_X) and the present fraction b = count / N in
    (0, 1] (F_Z), without opening b: one comparison stage (4^j, j = -7..0) gives the one-hot
    exponent m, y = b / 4^m in [1, 4) (exact left shifts), 6 Newton steps of 1/y
    (z <- z (2 - y z), 2 rounds each, error below 2^-27), and mu = (a z) 4^-m by the one-hot
    selection of left shifts. 4 + 1 + 12 + 1 + 1 rounds; a column with no present cell
    (b = 0) selects nothing: mu = 0."""
    cmp_ctx = replace(ctx, fxp=FixedPoint(frac_bits=0, max_bits=47))
    bits, _ = compare_thresholds(cmp_ctx, b, [float(2 ** (F_Z + 2 * j)) for j in _FRACTION_J],
                                 with_products=False)
    onehot = bits - torch.cat([bits[1:], torch.zeros_like(bits[:1])])
    ks = [-2 * j for j in _FRACTION_J]
    y = mul(ctx, onehot, torch.stack([b * (1 << k) for k in ks]), scaled=False).sum(0)
    one = 1 << F_Z
    z_raw = add_public(ctx, -y * round(0.25 * one), round(1.25 * one) << F_Z)
    for _ in range(6):
        yz, z = truncate_then_mul(ctx, z_raw, F_Z, y)
        z_raw, _ = truncate_then_mul(ctx, -yz, F_Z, z, offset=2 << F_Z)
    z16 = truncate(ctx, z_raw, 2 * F_Z - F)  # 1/y at 16 bits: a z stays below 2^58
    az = mul(ctx, a, z16, scaled=False)  # mu 4^m at F_X + F bits
    mu = mul(ctx, onehot, torch.stack([az * (1 << k) for k in ks]), scaled=False).sum(0)
    return truncate(ctx, mu, F)


def _joint_statistics_missing(
    ctx: PartyContext, layout: Layout, raw: np.ndarray | None, cols: int
) -> tuple[Statistics, torch.Tensor]:
    """``data.missing = "mean"``: the per-column present counts n_p stay secret. Each party
    shares (sum over present / N, n_p / N, M2_p / N, r_p = sqrt(n_p / N), r_p m_p); the joint
    mean over present cells is sum / count (:func:`_reciprocal_mean`), and the variance of the
    imputed column over all N rows is sum_p M2_p / N + sum_p (r_p m_p - r_p mu)^2 (imputed
    cells add no deviation). ~60 rounds in all."""
    n_rows = layout.rows
    mine = None
    if raw is not None and not ctx.dry:
        present = ~np.isnan(raw)
        count = present.sum(0)
        vals = np.where(present, raw, 0.0)
        m = vals.sum(0) / np.maximum(count, 1)
        m2 = np.where(present, (raw - m) ** 2, 0.0).sum(0)
        r = np.sqrt(count / n_rows)
        mine = torch.stack([_enc(vals.sum(0) / n_rows, F_X), _enc(count / n_rows, F_Z),
                            _enc(m2 / n_rows, F_V), _enc(r, F), _enc(r * m, F_V // 2)])
    shared = input_vectors(ctx, mine, [(5, cols)] * ctx.n)
    total = torch.stack(shared).sum(0)
    mu = _reciprocal_mean(ctx, total[0], total[1])
    r = torch.stack([s[3] for s in shared])
    rm = torch.stack([s[4] for s in shared])
    e = rm - truncate(ctx, mul(ctx, r, mu.expand(r.shape).contiguous(), scaled=False),
                      F + F_X - F_V // 2)
    var = total[2] + square(ctx, e, scaled=False).sum(0)
    return _finish(ctx, mu, var, inv_sigma_bits(n_rows))


def plain_impute(x: np.ndarray) -> np.ndarray:
    """Missing cells (NaN) replaced by their column's mean over the present cells (0 for a
    column with none): the float64 twin of the imputation inside MPC."""
    if not np.isnan(x).any():
        return x
    present = ~np.isnan(x)
    counts = present.sum(0)
    mean = np.where(present, x, 0.0).sum(0) / np.maximum(counts, 1)
    return np.where(present, x, mean)


def plain_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float64 (mu, sigma, inv_sigma) with the secure rule: var < 4^J_MIN -> inv_sigma = 0;
    missing cells (NaN) are imputed with the column mean first."""
    x = plain_impute(x)
    mu = x.mean(0)
    var = x.var(0)
    sigma = np.sqrt(var)
    inv = np.where(var >= 4.0**J_MIN, 1.0 / np.where(sigma > 0, sigma, 1.0), 0.0)
    return mu, sigma, inv


def plain_standardize(x: np.ndarray, mu: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """(x - mu) / sigma, missing cells (NaN) imputed with mu (so they become 0)."""
    return np.where(np.isnan(x), 0.0, (x - mu) * inv)


def owner_statistics(
    ctx: PartyContext, counts: list[int], raw: np.ndarray | None
) -> Statistics:
    """Vertical: every owner shares the statistics of its own ``counts[p]`` columns (computed
    in float64 locally): 1 round, (J + 4) counts[p] words from owner p to each peer."""
    J = J_MAX - J_MIN + 1
    mine = None
    if raw is not None and not ctx.dry:
        mu, sigma, inv = plain_statistics(raw)
        var = sigma**2
        m = np.clip(np.floor(np.log(np.maximum(var, 1e-300)) / np.log(4.0)), J_MIN, J_MAX)
        live = inv > 0
        onehot = np.zeros((J, raw.shape[1]))
        onehot[(m - J_MIN).astype(int)[live], np.nonzero(live)[0]] = 1.0
        z = np.where(live, 2.0**m * inv, 0.0)
        mine = torch.cat([_enc(onehot, 0), torch.stack([
            _enc(z, F_Z), _enc(mu * inv, F), _enc(mu, F_X), _enc(sigma, F_X)])])
    shared = input_vectors(ctx, mine, [(J + 4, c) for c in counts])
    full = torch.cat(shared, dim=1)
    return Statistics(full[:J], full[J], full[J + 1], full[J + 2], full[J + 3])


def _labels_shared(ctx: PartyContext, layout: Layout, labels: np.ndarray | None,
                   label_party: int | None) -> torch.Tensor:
    """Y as in ``mask_inputs``: the holder's share is the encoded labels, the others' zero."""
    Y = torch.zeros((layout.rows, layout.outputs), dtype=torch.int64)
    if labels is None or ctx.dry:
        return Y
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    y = (torch.nn.functional.one_hot(y.long(), layout.outputs).to(torch.float64)
         if layout.one_hot else y.reshape(-1, 1))
    if layout.partition == "vertical":
        Y[:] = ctx.fxp.encode(y, what="labels")
    else:
        lo, hi = layout.row_ranges()[ctx.pid]
        Y[lo:hi] = ctx.fxp.encode(y, what="labels")
    return Y


@dataclass
class Prepared:
    """Masked training data plus, when standardised, the statistics for the conversion."""

    data: MaskedData
    stats: Statistics | None = None
    label: Statistics | None = None


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

    ``layout.features`` counts the raw feature columns (without the intercept column). With
    ``missing`` (``data.missing = "mean"``, standardisation only), NaN feature cells are imputed
    with the joint mean over the present cells, computed inside MPC (counts stay secret)."""
    if not standardize:
        data = mask_inputs(ctx, layout, features, labels, label_party)
        return Prepared(with_intercept_column(ctx, data) if intercept else data)
    if features is not None and not isinstance(features, np.ndarray):
        raise ValueError(f"{ctx.name}: joint standardisation needs the features in memory")
    d = layout.features
    if layout.partition == "vertical":
        prepared = _prepare_vertical(ctx, layout, features, labels, label_party, linear)
    else:
        prepared = _prepare_horizontal(ctx, layout, features, labels, linear, missing)
    if intercept:
        prepared.data = with_intercept_column(ctx, prepared.data)
    if prepared.data.E.shape[1] != d + intercept:
        raise ValueError(f"{ctx.name}: prepared data has {prepared.data.E.shape[1]} columns")
    return prepared


def _prepare_vertical(ctx: PartyContext, layout: Layout, features: np.ndarray | None,
                      labels: np.ndarray | None, label_party: int | None, linear: bool
                      ) -> Prepared:
    std_label = linear and label_party is not None
    counts = [b + (1 if std_label and p == label_party else 0)
              for p, b in enumerate(layout.blocks)]
    raw = None
    if features is not None:
        raw = features if not (std_label and ctx.pid == label_party and labels is not None) \
            else np.column_stack([features, labels])
    stats = owner_statistics(ctx, counts, raw)
    x_std = y_std = None
    if raw is not None and not ctx.dry:
        mu, _, inv = plain_statistics(raw)  # missing cells imputed with the column mean
        z = plain_standardize(raw, mu, inv)
        x_std = z[:, : layout.blocks[ctx.pid]]
        y_std = z[:, -1] if std_label and ctx.pid == label_party else None
    data = mask_inputs(ctx, layout, x_std, y_std if std_label else labels, label_party)
    if not std_label:
        return Prepared(data, _split_owner(stats, counts, None))
    lp = int(label_party)  # type: ignore[arg-type]
    at = sum(counts[: lp + 1]) - 1
    return Prepared(data, _split_owner(stats, counts, lp), stats.columns(at, at + 1))


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


def _prepare_horizontal(ctx: PartyContext, layout: Layout, features: np.ndarray | None,
                        labels: np.ndarray | None, linear: bool, missing: bool = False
                        ) -> Prepared:
    ex = _exact(ctx)
    d = layout.features
    cols = d + (1 if linear else 0)
    raw = None
    if features is not None and not ctx.dry:
        raw = np.column_stack([features, np.asarray(labels)]) if linear else features
    stats, inv_sigma = joint_statistics(ctx, layout, raw, cols, missing)
    wide = replace(ctx, fxp=FixedPoint(frac_bits=F_X, max_bits=62))
    layout_cols = replace(layout, features=cols)
    gaps = None if raw is None else np.isnan(raw)
    filled = None if raw is None or gaps is None else np.where(gaps, 0.0, raw)
    masked = mask_inputs(wide, layout_cols, filled, None, None)
    x = add_public(ctx, masked.A.full(), masked.E.full())
    if missing:  # x + M * mu: a missing cell (0 in x, 1 in the owner's mask M) becomes mu
        flags = replace(ctx, fxp=FixedPoint(frac_bits=0, max_bits=47))
        m = mask_inputs(flags, layout_cols, None if gaps is None else gaps.astype(float),
                        None, None)
        m_sh = add_public(ctx, m.A.full(), m.E.full())
        x = x + mul(ex, m_sh, stats.mu.reshape(1, -1), scaled=False)
    x = x - stats.mu
    s_bits = inv_sigma_bits(layout.rows)
    x_std = truncate(ex, mul(ex, x, inv_sigma.reshape(1, -1), scaled=False), F_X + s_bits - F)
    Y = x_std[:, d:] if linear else _labels_shared(ctx, layout, labels, None)
    a = ctx.pre.random((layout.rows, d))
    if ctx.dry:
        e = torch.zeros_like(a)
    else:
        (e,) = open_masked(ctx, "prep/remask", [x_std[:, :d] - a])
    data = MaskedData.from_tensors(e, a, Y)
    if linear:
        return Prepared(data, stats.columns(0, d), stats.columns(d, d + 1))
    return Prepared(data, stats)


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
    ex = _exact(ctx)
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
        w_raw = _select(ex, stats.onehot, zw, F_OUT - F_Z - F, -1)
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

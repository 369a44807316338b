"""Joint statistics of the parties' raw columns, inside MPC: mean, standard deviation and 1/sigma.

Used by :mod:`mpc.learn.dataprep` (joint standardisation and the raw-scale conversion). Each party
summarises its own rows in float64 (:class:`Moments`: count, mean and sum of squared deviations
per column, built chunk by chunk so that a file is summarised in one streaming pass) and shares
only those per-column figures; nothing per row enters this module.

Horizontal (rows split): every party shares, per column, its local sum / N, its local mean and
its local sum of squared deviations / N (pairwise combination [CGL79]:
var = sum_p M2_p / N + sum_p (n_p / N) (m_p - mu)^2, no cancellation of large squares). The
joint variance is range-normalised by comparisons with 4^j (j in [J_MIN, J_MAX], a one-hot
vector o of the exponent m, never opened), y = var / 4^m in [1, 4) gets 4 Newton iterations of
1/sqrt, and 1/sigma = z 2^-m is formed by the one-hot selection of public shifts of z. Columns
with var < 4^J_MIN (constant pixels, ...) select nothing: 1/sigma = 0 without anyone learning
which. Vertical (columns split): each column's owner computes the same quantities in float64
and shares them (:func:`owner_statistics`).

Missing cells (``data.missing = "mean"``): horizontal parties share per-column sums over their
present cells and present fractions instead, so the counts stay secret; the joint mean is a
secret division (:func:`_reciprocal_mean`), and the variance that of the imputed column
(Chan's formula with secret weights).

Precision (ring Z_2^64, exact dealer truncations only): raw inputs |x| < 2^18 at F_X = 24
fractional bits; variances at F_V = 24 bits (var < 2^36 -> < 2^60); Newton at F_Z = 28 bits;
1/sigma at F_S = 31 bits (:func:`inv_sigma_bits`: one bit less per factor 4 of rows beyond
2^12, as |x_std| <= sqrt(N)). The between-party spread term is computed at 12 fractional bits
(its square at 24 bits stays < 2^60), so sigma carries an absolute error of about 2^-13 from it.
Limits: sigma in [2^-10, 2^18) (smaller counts as constant); |mu| / sigma < 2^17.

Cost (horizontal, c columns): ~40 rounds (~60 with missing cells) independent of the number of
rows, O(J c) words per party. Vertical: one input round of (J + 4) c_p words per owner.

[CGL79] Chan, Golub, LeVeque, Updating formulae and a pairwise algorithm for computing sample
variances, Stanford CS report 79-773 (1979).

Trust: semi-honest parties, non-colluding dealer. Nothing here is opened except masked values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from mpc.config.datasets import STANDARDIZED_BOUND_BITS as INPUT_BOUND_BITS  # |x| < 2^18
from mpc.core.fixedpoint import FixedPoint
from mpc.learn.masked import Layout
from mpc.protocols.arith import (
    TruncationMask,
    add_public,
    mul,
    open_masked,
    square,
    truncate,
    truncate_then_mul,
)
from mpc.protocols.compare import compare_thresholds
from mpc.protocols.context import PartyContext

__all__ = [
    "F_X", "F_V", "F_Z", "F_S", "F_OUT", "F", "J_MIN", "J_MAX", "INPUT_BOUND_BITS",
    "Statistics", "Moments", "exact", "input_vectors", "select_shifts", "inv_sigma_bits",
    "joint_statistics", "owner_statistics", "plain_impute", "plain_statistics",
    "plain_standardize",
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


@dataclass(frozen=True)
class Moments:
    """One party's float64 summary of its rows, per column: ``rows`` (all rows), ``count``
    (present cells), ``mean`` over the present cells and ``m2``, their sum of squared
    deviations from it. :meth:`add` merges two summaries (the pairwise update of [CGL79]), so a
    file is summarised chunk by chunk in one streaming pass; missing cells (NaN) are skipped."""

    rows: int
    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, cols: int) -> Moments:
        return cls(0, np.zeros(cols), np.zeros(cols), np.zeros(cols))

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"Moments.of: want a 2-D array, got {x.ndim}-D")
        present = ~np.isnan(x)
        count = present.sum(0).astype(np.float64)
        mean = np.where(present, x, 0.0).sum(0) / np.maximum(count, 1.0)
        m2 = np.where(present, (x - mean) ** 2, 0.0).sum(0)
        return cls(int(x.shape[0]), count, mean, m2)

    def add(self, other: Moments) -> Moments:
        count = self.count + other.count
        delta = other.mean - self.mean
        weight = other.count / np.maximum(count, 1.0)
        return Moments(self.rows + other.rows, count, self.mean + delta * weight,
                       self.m2 + other.m2 + delta**2 * self.count * weight)

    @property
    def total(self) -> np.ndarray:
        """Sum of the present cells per column."""
        return self.mean * self.count

    def standardization(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mu, sigma, inv_sigma) of the columns with missing cells imputed by the mean
        (imputed cells add no deviation: var = m2 / rows); inv_sigma = 0 where
        var < 4^J_MIN (the secure rule)."""
        var = self.m2 / max(self.rows, 1)
        sigma = np.sqrt(var)
        inv = np.where(var >= 4.0**J_MIN, 1.0 / np.where(sigma > 0, sigma, 1.0), 0.0)
        return self.mean.copy(), sigma, inv


def exact(ctx: PartyContext) -> PartyContext:
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


def select_shifts(ctx: PartyContext, onehot: torch.Tensor, x: torch.Tensor, k0: int, sign: int
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
    y = select_shifts(ctx, onehot, var, F_Z - F_V, -2)  # var / 4^m at F_Z bits
    z, yz = _inv_sqrt(ctx, y)
    inv_sigma = select_shifts(ctx, onehot, z, s_bits - F_Z, -1)
    sigma = select_shifts(ctx, onehot, yz, F_X - F_Z, 1)
    mu_scaled = select_shifts(ctx, onehot, mu, F - F_X, -1)  # mu 2^-m at F bits
    t = truncate(ctx, mul(ctx, mu_scaled, z, scaled=False), F_Z)
    return Statistics(onehot, z, t, mu, sigma), inv_sigma


def joint_statistics(
    ctx: PartyContext, layout: Layout, raw: np.ndarray | Moments | None, cols: int,
    missing: bool = False
) -> tuple[Statistics, torch.Tensor]:
    """Horizontal: statistics of ``cols`` columns over all parties' rows, and 1/sigma (at
    :func:`inv_sigma_bits` fractional bits). ``raw``: this party's rows, or their
    :class:`Moments` (None in the dealer's dry run).

    Each party inputs (sum/N, local mean, local M2/N) per column in float64 (no per-row MPC);
    ~40 rounds in all, O(J cols) words."""
    ctx = exact(ctx)
    n_rows = layout.rows
    mom = Moments.of(raw) if isinstance(raw, np.ndarray) else raw
    if mom is not None and mom.mean.shape != (cols,):
        raise ValueError(f"{ctx.name}: statistics of {mom.mean.shape[0]} columns, want {cols}")
    if missing:
        return _joint_statistics_missing(ctx, layout, mom, cols)
    shape = (3, cols)
    mine = None
    if mom is not None and not ctx.dry:
        mine = torch.stack([_enc(mom.total / n_rows, F_X), _enc(mom.mean, F_X),
                            _enc(mom.m2 / n_rows, F_V)])
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
    ctx: PartyContext, layout: Layout, mom: Moments | None, cols: int
) -> tuple[Statistics, torch.Tensor]:
    """``data.missing = "mean"``: the per-column present counts n_p stay secret. Each party
    shares (sum over present / N, n_p / N, M2_p / N, r_p = sqrt(n_p / N), r_p m_p); the joint
    mean over present cells is sum / count (:func:`_reciprocal_mean`), and the variance of the
    imputed column over all N rows is sum_p M2_p / N + sum_p (r_p m_p - r_p mu)^2 (imputed
    cells add no deviation). ~60 rounds in all."""
    n_rows = layout.rows
    mine = None
    if mom is not None and not ctx.dry:
        root = np.sqrt(mom.count / n_rows)
        mine = torch.stack([_enc(mom.total / n_rows, F_X), _enc(mom.count / n_rows, F_Z),
                            _enc(mom.m2 / n_rows, F_V), _enc(root, F),
                            _enc(root * mom.mean, F_V // 2)])
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
    return Moments.of(x).standardization()


def plain_standardize(x: np.ndarray, mu: np.ndarray, inv: np.ndarray) -> np.ndarray:
    """(x - mu) / sigma, missing cells (NaN) imputed with mu (so they become 0)."""
    return np.where(np.isnan(x), 0.0, (x - mu) * inv)


def owner_statistics(
    ctx: PartyContext, counts: list[int], raw: np.ndarray | Moments | None
) -> Statistics:
    """Vertical: every owner shares the statistics of its own ``counts[p]`` columns (computed
    in float64 locally from its rows or their :class:`Moments`): 1 round, (J + 4) counts[p]
    words from owner p to each peer."""
    J = J_MAX - J_MIN + 1
    mine = None
    if raw is not None and not ctx.dry:
        mu, sigma, inv = (Moments.of(raw) if isinstance(raw, np.ndarray) else raw
                          ).standardization()
        var = sigma**2
        m = np.clip(np.floor(np.log(np.maximum(var, 1e-300)) / np.log(4.0)), J_MIN, J_MAX)
        live = inv > 0
        onehot = np.zeros((J, len(mu)))
        onehot[(m - J_MIN).astype(int)[live], np.nonzero(live)[0]] = 1.0
        z = np.where(live, 2.0**m * inv, 0.0)
        mine = torch.cat([_enc(onehot, 0), torch.stack([
            _enc(z, F_Z), _enc(mu * inv, F), _enc(mu, F_X), _enc(sigma, F_X)])])
    shared = input_vectors(ctx, mine, [(J + 4, c) for c in counts])
    full = torch.cat(shared, dim=1)
    return Statistics(full[:J], full[J], full[J + 1], full[J + 2], full[J + 3])


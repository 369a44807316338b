"""Evaluation where the data is: a joint test metric computed inside MPC [SecureML17, CrypTen21].

With ``evaluate.at = "parties"`` every party holds its own test rows (horizontal; vertical: its
columns of the same test ids, the labels at ``data.label_party``). The test blocks are masked
once (:func:`mpc.learn.dataprep.prepare_test`: standardised with the training statistics inside
MPC when the training was, 3 more rounds per chunk), the final shared weights score them (a
linear model's scores converted back to raw label units), and the metric
over the union of the test rows stays secret-shared until the party process opens *only* the
aggregate values to the launcher (reveal kind ``metrics``). No party sees another's test rows,
labels, scores or predictions; the per-party test row counts are public metadata.

Metrics (all as fixed-point shares, 16 fractional bits, in :func:`metric_names` order):

* logistic: accuracy = mean([u >= 0] == y) over the scores u = x w; AUC = sum over ordered
  pairs of y_i (1 - y_j) ([u_i > u_j] + 1/2 [u_i = u_j]) / (n_pos n_neg), with all
  N (N - 1) pairwise comparisons in one batched call (O(N^2): meant for test sets of up to a
  few thousand rows) and the labels kept secret (the numerator is the bilinear form
  y^T H (1 - y)); AUC is 1/2 when the test rows hold a single class.
* softmax / mlp: accuracy = mean([logit of the true class >= row max]).
* linear: MSE = SSE / N; R^2 = 1 - SSE / SST with SST = sum (y - mean y)^2 (mean from the
  shared sum); R^2 is 0 when SST = 0, and is reported as -1 when it is below -1.

Divisions by the public N are products with the public 2^E / N; divisions by a secret count
(AUC, R^2) are restoring long division, one comparison and one product per quotient bit (17
bits: values in [0, 2) at 2^-16 resolution) [CrypTen21 uses Newton iterations; long division
is exact to one ulp here because numerator and denominator are bounded ring integers].

Costs per party, measured (``report.json`` ``evaluation``; 3 parties over TLS): the
breast-cancer test set (114 rows, 30 features) 102 rounds, ~0.5 MB sent, 1.3-2.5 s; the
diabetes test set (89 rows, linear) 99 rounds, ~24 kB, ~1 s. Rounds: masking 1; scores 1
(+1 for n > 2); logistic comparisons 4, label products 2 (with the integer labels'
truncation 1), long division 91; linear mean 1, squares 1, divisions by N 1, long division
91; softmax/mlp row max 5 (bitwise, K <= 11; 6 up to 16; else ceil(log2 K) comparison sets),
true-class logit 1, comparison 4. Bytes: O(N^2) for the logistic AUC (each pairwise
comparison sends ~2 words plus ~10 bits to each peer), O(N d) otherwise.

Bounds (the comparisons are exact for |x| < 2^30 ring units): R^2 needs the test labels'
variance below 2^12 and the MSE below 2^22 (label units squared); AUC needs N < 16384 and is
limited to N <= 2048 (memory of the O(N^2) comparison batch: :func:`check_test_rows`).
Outside them the revealed R^2 / AUC would be wrong: the scenario's data must respect them
(a linear model's test labels are refused beyond |y| < 64 when the test file is loaded:
``mpc.config.datasets.TEST_LABEL_BOUND``).

Not done here: nothing is opened; :func:`require_metrics_reveal` checks the policy and the
party process reveals the returned shares (``mpc.config.policy``).
"""

from __future__ import annotations

import numpy as np
import torch

from mpc.config.policy import RevealPolicy
from mpc.core.errors import ConfigError, PolicyError
from mpc.learn.dataprep import Prepared, label_to_raw, prepare_test, with_intercept_column
from mpc.learn.reference import predict
from mpc.learn.training import Layout, MaskedData, _masked_product
from mpc.protocols.arith import add_public, matmul, mul, square, truncate
from mpc.protocols.compare import compare_thresholds, relu
from mpc.protocols.context import PartyContext
from mpc.protocols.rowmax import row_max

__all__ = [
    "MAX_PAIRWISE_ROWS",
    "metric_names",
    "check_test_rows",
    "evaluate",
    "require_metrics_reveal",
    "plain_metrics",
]

MAX_PAIRWISE_ROWS = 2048  # logistic AUC compares all N (N - 1) ordered pairs in one call
_DIV_BITS = 24  # bits of the public constant 2^E / N (relative error < N / 2^25)


def metric_names(kind: str) -> tuple[str, ...]:
    """The metrics computed for a model kind, in the order of :func:`evaluate`'s output."""
    if kind == "logistic":
        return ("accuracy", "auc")
    if kind in ("softmax", "mlp"):
        return ("accuracy",)
    return ("mse", "r2")


def check_test_rows(kind: str, rows: int) -> None:
    """Refuse a joint test set the evaluation cannot handle (public row count): at least one
    row; for logistic (pairwise AUC) at most :data:`MAX_PAIRWISE_ROWS`."""
    if rows < 1:
        raise ConfigError("evaluate.at = 'parties': the parties hold no test rows")
    if kind == "logistic" and rows > MAX_PAIRWISE_ROWS:
        raise ConfigError(
            f"evaluate.at = 'parties': {rows} test rows in all; the joint AUC compares every "
            f"pair of rows and accepts at most {MAX_PAIRWISE_ROWS} (use a smaller test split)"
        )


def require_metrics_reveal(policy: RevealPolicy, to: str) -> None:
    """Refuse up front (before any training or opening) when the policy does not allow
    revealing the metrics to ``to``: :class:`PolicyError`."""
    if not policy.allows("metrics", to):
        raise PolicyError(
            f"{policy.party}: evaluate.at = 'parties' needs the reveal policy to allow "
            f"{{what = \"metrics\", to = \"{to}\"}}; the scenario's [reveal] table does not "
            "list it (refusing before anything is opened)"
        )


def evaluate(
    ctx: PartyContext,
    kind: str,
    weights: list[torch.Tensor],
    layout: Layout,
    features: np.ndarray | None,
    labels: np.ndarray | None,
    label_party: int | None = None,
    *,
    intercept: bool = False,
    prepared: Prepared | None = None,
) -> torch.Tensor:
    """Shares of the joint test metrics (fixed point, shape ``(len(metric_names(kind)),)``).

    ``layout`` is the public test layout (rows per party, or columns per party for vertical);
    ``features``/``labels`` are this party's own test block (None in the dealer's dry run).
    ``intercept``: the weights carry a bias row last (``model.intercept``), so the test rows
    and the hidden activations get the same public 1 column as in training. ``prepared``: the
    training's data preparation; when it standardised, the test rows are standardised with the
    training statistics inside MPC (:func:`mpc.learn.dataprep.prepare_test`) and a linear
    model's predictions are converted back to raw label units before the metrics.
    """
    check_test_rows(kind, layout.rows)
    data = prepare_test(ctx, layout, features, labels, label_party, prepared)
    if intercept:
        data = with_intercept_column(ctx, data)
    rows = torch.arange(layout.rows)
    if kind == "logistic":  # scores at 2f bits: equal rows give exactly equal scores (ties)
        u_2f = _masked_product(ctx, data, rows, weights[0], transpose=False, scaled=False)
        return _logistic(ctx, u_2f[:, 0], data)
    h = _masked_product(ctx, data, rows, weights[0], transpose=False)
    for w in weights[1:]:  # mlp: ReLU hidden layers, as in training
        a, _ = relu(ctx, h)
        if intercept:
            ones = torch.full((a.shape[0], 1), ctx.fxp.scale if ctx.pid == 0 else 0)
            a = torch.cat([a, ones], 1)
        h = matmul(ctx, a, w)
    if kind in ("softmax", "mlp"):
        return _argmax_accuracy(ctx, h, data).reshape(1)
    pred = h[:, 0]
    if prepared is not None and prepared.label is not None:  # standardised label units
        pred = label_to_raw(ctx, pred, prepared.label)
    return _regression(ctx, pred, data)


def _div_public(ctx: PartyContext, x: torch.Tensor, count: int) -> torch.Tensor:
    """x / count for a public count (x at f bits, |x / count| < 2^(46 - f))."""
    return truncate(ctx, x * round(2.0**_DIV_BITS / count), _DIV_BITS)


def _bits(ctx: PartyContext, x: torch.Tensor, truncate_bits: int = 0) -> torch.Tensor:
    """Integer shares of [x >= 0] (ring comparison, |x / 2^truncate_bits| < 2^30)."""
    return compare_thresholds(ctx, x, [0.0], with_products=False,
                              truncate_bits=truncate_bits)[0][0]


def _logistic(ctx: PartyContext, u: torch.Tensor, data: MaskedData) -> torch.Tensor:
    """Accuracy and AUC from the scores ``u`` at 2f fractional bits (each comparison truncates
    its input exactly where it is a multiple of 2^f, e.g. the difference of tied scores)."""
    f = ctx.fxp.frac_bits
    n_rows = u.shape[0]
    y = truncate(ctx, data.Y.full()[:, 0], f)  # integer 0/1 (exact: Y is a multiple of 2^f)
    iu, ju = torch.triu_indices(n_rows, n_rows, 1)
    diff = u[iu] - u[ju]
    m = diff.shape[0]
    # One comparison call: predictions [u >= 0], and [u_i >= u_j], [u_j >= u_i] for i < j.
    b = _bits(ctx, torch.cat([u, diff, -diff]), f)
    pred, ge, le = b[:n_rows], b[n_rows : n_rows + m], b[n_rows + m :]
    s = y.sum().reshape(1)
    # pred * y per row, and n_pos * n_neg = S (N - S), in one round.
    prods = mul(ctx, torch.cat([pred, s]), torch.cat([y, add_public(ctx, -s, n_rows)]),
                scaled=False)
    by, pos_neg = prods[:n_rows], prods[n_rows:]
    correct = add_public(ctx, 2 * by - pred - y, 1).sum()  # integer count of [pred == y]
    accuracy = _div_public(ctx, correct << f, n_rows)
    # H_ij = 2 [u_i > u_j] + [u_i = u_j] = 1 + [u_i >= u_j] - [u_j >= u_i]; H_ji = 2 - H_ij.
    h = torch.zeros((n_rows, n_rows), dtype=torch.int64)
    h[iu, ju] = ge - le
    h[ju, iu] = le - ge
    h = add_public(ctx, h, 1)  # the diagonal is multiplied by y_i (1 - y_i) = 0
    v = matmul(ctx, h, add_public(ctx, -y, 1).reshape(-1, 1), scaled=False)
    twice = matmul(ctx, y.reshape(1, -1), v, scaled=False).reshape(1)  # 2 * AUC numerator
    auc = _ratio(ctx, twice, 2 * pos_neg, default=0.5)
    return torch.cat([accuracy.reshape(1), auc])


def _argmax_accuracy(ctx: PartyContext, h: torch.Tensor, data: MaskedData) -> torch.Tensor:
    f = ctx.fxp.frac_bits
    top = row_max(ctx, h)  # exactly one of the row's logits
    true_2f = mul(ctx, data.Y.full(), h, scaled=False).sum(1)  # the true class's logit, at 2f bits
    correct = compare_thresholds(ctx, true_2f - (top << f), [0.0], with_products=False,
                                 truncate_bits=f)[0][0]
    return _div_public(ctx, correct.sum() << f, h.shape[0])


def _regression(ctx: PartyContext, u: torch.Tensor, data: MaskedData) -> torch.Tensor:
    n_rows = u.shape[0]
    y = data.Y.full()[:, 0]
    mean = _div_public(ctx, y.sum(), n_rows)
    sq = square(ctx, torch.cat([u - y, y - mean]))  # per-element truncation: tiny values
    mse = _div_public(ctx, sq[:n_rows].sum(), n_rows)
    var = _div_public(ctx, sq[n_rows:].sum(), n_rows)
    ratio = _ratio(ctx, mse.reshape(1), var.reshape(1), default=1.0)
    r2 = add_public(ctx, -ratio, 1 << ctx.fxp.frac_bits)
    return torch.cat([mse.reshape(1), r2])


def _ratio(
    ctx: PartyContext, num: torch.Tensor, den: torch.Tensor, default: float
) -> torch.Tensor:
    """Fixed-point shares of min(num / den, 2 - 2^-f) for ring values 0 <= den < 2^28 and
    0 <= num < 2^38, and of ``default`` where den = 0: restoring long division, one
    comparison (4 rounds) and one product (1 round) per quotient bit, f + 1 bits; + 4 rounds
    for the clamp and zero test, + 1 for the clamp, + 1 for the selection: 91 rounds.
    Exact ring arithmetic: the result is floor(2^f num / den) / 2^f (or the clamp)."""
    f = ctx.fxp.frac_bits
    # Compared after an exact truncation by 8 bits (fused, no extra round), so that num may
    # exceed the comparison's 2^30 range: [num - 2 den + 1 >= 0] (the sign survives the
    # truncation up to a 1-ulp borrow, which at worst leaves num a few ulps above 2 den: the
    # quotient bits then all come out 1, the clamp's value) and [2 den - 1 >= 0] = [den >= 1].
    over = add_public(ctx, num - 2 * den, 1)
    zero_test = add_public(ctx, den << 9, -(1 << 8))
    bits = compare_thresholds(ctx, torch.cat([over, zero_test]), [0.0], with_products=False,
                              truncate_bits=8)[0][0]
    r = num - mul(ctx, bits[:1], over, scaled=False)  # min(num, 2 den - 1)
    nonzero = bits[1:]
    q = torch.zeros_like(num)
    for j in range(f + 1):
        if j:
            r = 2 * r
        bit = _bits(ctx, r - den)  # quotient bit [r >= den]
        r = r - mul(ctx, bit, den, scaled=False)
        q = q + (bit << (f - j))
    enc = int(ctx.fxp.encode(default))
    # den = 0: the quotient is meaningless; default + [den >= 1] (q - default) selects.
    return add_public(ctx, mul(ctx, nonzero, add_public(ctx, q, -enc), scaled=False), enc)


def plain_metrics(
    kind: str, weights: list[np.ndarray], x: np.ndarray, y: np.ndarray,
    biases: list[np.ndarray] | None = None,
) -> dict[str, float]:
    """The same metrics in float64 (the reference of the tests and of ``--reference``);
    ``biases``: one intercept vector per layer (None: no intercept)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if kind in ("softmax", "mlp"):
        p = predict(kind, weights, x, biases)
        return {"accuracy": float(np.mean(p.argmax(1) == y.astype(np.int64)))}
    u = x @ np.asarray(weights[0], dtype=np.float64)[:, 0]
    if biases is not None:
        u = u + float(np.asarray(biases[0]).reshape(-1)[0])
    if kind == "logistic":
        pos, neg = u[y == 1], u[y == 0]
        if len(pos) and len(neg):
            d = pos[:, None] - neg[None, :]
            auc = float(((d > 0).sum() + 0.5 * (d == 0).sum()) / (len(pos) * len(neg)))
        else:
            auc = 0.5
        return {"accuracy": float(np.mean((u >= 0) == (y == 1))), "auc": auc}
    mse = float(np.mean((u - y) ** 2))
    var = float(np.var(y))
    return {"mse": mse, "r2": max(-1.0, 1.0 - mse / var) if var > 0 else 0.0}

"""Secure mini-batch SGD with hand-derived gradients: linear, logistic, softmax, MLP.

Data are masked once for all epochs [SecureML17 sec. IV-A]: each data owner learns a dealer
mask A for its own block, publishes E = X - A, and from then on X = E + A with E public and A
secret-shared. A batch product X_B W then costs one opening of W - V (|W| words) with a dealer
triple Z = A_B V, instead of opening B x d elements every step; likewise X_B^T R for gradients.

Per logistic step (n = 2): open W - V (1 round), sigmoid (4), open R - V' (1): 6 rounds;
n > 2 adds one round for the truncation of the update (the forward product's truncation shares
the sigmoid's first round): 7. Weights stay shared;
nothing is revealed here (see ``reveal`` in the party process, guarded by the policy).

The schedule (batch order) is public and derived from the scenario seed, so the dealer's dry run
and the plaintext reference (``reference.py``) see the same batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from mpc import ring
from mpc.compare import relu
from mpc.context import PartyContext
from mpc.functions import sigmoid, softmax_rows
from mpc.protocols import matmul, mul, mul_public, open_masked, truncate

__all__ = [
    "Layout",
    "MaskedData",
    "mask_inputs",
    "batch_schedule",
    "initial_weights",
    "Model",
    "train",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Public shape metadata of the joint dataset (agreed between the parties at start).

    ``blocks``: per party, rows (horizontal) or feature columns (vertical) it contributes.
    ``label_owners``: per party, whether it holds labels for its block (horizontal: all;
    vertical: the label party only, for every row).
    """

    partition: str
    blocks: tuple[int, ...]
    rows: int
    features: int
    outputs: int
    one_hot: bool

    def row_ranges(self) -> list[tuple[int, int]]:
        starts = np.cumsum((0,) + self.blocks)
        return [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]


@dataclass
class MaskedData:
    """X = E + A with E public (N x d) and A shared; Y shared (N x K), fixed point."""

    E: torch.Tensor
    A: torch.Tensor
    Y: torch.Tensor
    _batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(
        default=None, repr=False, compare=False
    )

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_B, A_B) for a batch; the last batch is kept, as a step uses it twice."""
        if self._batch is None or self._batch[0] is not rows:
            self._batch = (
                rows,
                torch.index_select(self.E, 0, rows),
                torch.index_select(self.A, 0, rows),
            )
        return self._batch[1], self._batch[2]


def mask_inputs(
    ctx: PartyContext,
    layout: Layout,
    features: np.ndarray | None,
    labels: np.ndarray | None,
    label_party: int | None,
) -> MaskedData:
    """Mask every party's block with dealer randomness and publish E: 1 round.

    The owner of a block sends its (rows x cols) E block to each peer; the dealer sends the
    owner the full mask of its block (one element per data element).
    """
    fxp = ctx.fxp
    spans = layout.row_ranges()
    vertical = layout.partition == "vertical"
    shapes = [
        (layout.rows, hi - lo) if vertical else (hi - lo, layout.features) for lo, hi in spans
    ]
    a_blocks: list[torch.Tensor] = []
    own_e: torch.Tensor | None = None
    for owner, shape in enumerate(shapes):
        a = ctx.pre.random(shape)
        full = ctx.pre.deliver("mask/owner", shape, lambda a=a: a, receiver=owner)  # type: ignore[misc]
        a_blocks.append(a)
        if owner == ctx.pid and full is not None:
            x = (
                fxp.encode(features, what="features")
                if features is not None and not ctx.dry
                else torch.zeros(shape, dtype=torch.int64)
            )
            if tuple(x.shape) != shape:
                raise ValueError(f"{ctx.name}: features have shape {tuple(x.shape)}, want {shape}")
            own_e = x - full
    if own_e is None:
        raise ValueError(f"{ctx.name}: no data block for pid {ctx.pid}")
    got = ctx.channel.exchange(
        "mask/publish",
        {p: [own_e] for p in ctx.channel.peers},
        {p: [shapes[p]] for p in ctx.channel.peers},
    )
    e_blocks = [own_e if p == ctx.pid else got[p][0] for p in range(ctx.n)]
    dim = 1 if vertical else 0
    E = torch.cat(e_blocks, dim=dim)
    A = torch.cat(a_blocks, dim=dim)
    Y = torch.zeros((layout.rows, layout.outputs), dtype=torch.int64)
    if labels is not None and not ctx.dry:
        y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
        if layout.one_hot:
            y = torch.nn.functional.one_hot(y.long(), layout.outputs).to(torch.float64)
        else:
            y = y.reshape(-1, 1)
        lo, hi = (0, layout.rows) if vertical else spans[ctx.pid]
        if vertical and ctx.pid != label_party:
            raise ValueError(f"{ctx.name}: holds labels but is not the label party")
        Y[lo:hi] = fxp.encode(y, what="labels")
    return MaskedData(E, A, Y)


def batch_schedule(
    seed: int, epoch: int, rows: int, batch: int, shuffle: bool
) -> list[np.ndarray]:
    """Public batch order of one epoch (same for parties, dealer and plaintext reference)."""
    order = np.random.default_rng([seed, epoch]).permutation(rows) if shuffle else np.arange(rows)
    return [order[i : i + batch] for i in range(0, rows, batch)]


def initial_weights(
    seed: int, shapes: Sequence[tuple[int, int]], init: str, scale: float | None
) -> list[np.ndarray]:
    """Public initial weights (zeros, or normal with He scale) from the scenario seed."""
    rng = np.random.default_rng([seed, 7919])
    out = []
    for fan_in, fan_out in shapes:
        if init == "zeros":
            out.append(np.zeros((fan_in, fan_out)))
        else:
            std = scale if scale is not None else float(np.sqrt(2.0 / fan_in))
            out.append(rng.standard_normal((fan_in, fan_out)) * std)
    return out


def _masked_product(
    ctx: PartyContext,
    data: MaskedData,
    rows: torch.Tensor,
    w: torch.Tensor,
    transpose: bool,
    scaled: bool = True,
) -> torch.Tensor:
    """X_B w (or X_B^T w) for shared w, with a dealer triple on the data mask: 1 round.

    ``scaled=False`` leaves the result at 2f fractional bits (no truncation).
    """
    E_b, A_b = data.rows(rows)
    if transpose:
        E_b, A_b = E_b.T, A_b.T
    v = ctx.pre.random(tuple(w.shape))
    z = ctx.pre.correlated("triple/data", (E_b.shape[0], w.shape[1]), lambda: ring.matmul(A_b, v))
    if ctx.dry:  # the dealer's dry run needs only the material (truncation's too)
        out = torch.zeros_like(z)
    else:
        (f,) = open_masked(ctx, "data", [w - v])
        # (E + A)(f + v) with E public, f public: E [w] + [A] f + [A v], summed over parties.
        out = ring.matmul(E_b, w) + ring.matmul(A_b, f) + z
    return truncate(ctx, out) if scaled else out


def _sgd_update(
    ctx: PartyContext, w: torch.Tensor, grad_2f: torch.Tensor, scale: float
) -> torch.Tensor:
    """w - scale * grad for a gradient at 2f fractional bits.

    Two local truncations for n = 2 (free); for n > 2 one exact dealer truncation by 2f of
    enc(scale) * grad (3f bits, within the 2^62 bound for |grad| < 2^13), saving a round.
    """
    if ctx.truncate_locally:
        return w - mul_public(ctx, truncate(ctx, grad_2f), scale)
    factor = ctx.fxp.encode(scale, what="learning rate / batch")
    return w - truncate(ctx, grad_2f * factor, 2 * ctx.fxp.frac_bits)


@dataclass
class Model:
    """Shared weights of a model: one matrix per layer (with ``intercept``, a bias row last)."""

    kind: str
    weights: list[torch.Tensor]
    names: list[str] = field(default_factory=list)
    # intercept: the last row of every matrix is the bias (inputs carry a public 1 column)
    intercept: bool = False

    @classmethod
    def from_public(
        cls, ctx: PartyContext, kind: str, init: list[np.ndarray], intercept: bool = False
    ) -> Model:
        enc = [ctx.fxp.encode(w, what="initial weights") for w in init]
        weights = [w if ctx.pid == 0 else torch.zeros_like(w) for w in enc]
        names = ["w"] if len(init) == 1 else [f"w{i + 1}" for i in range(len(init))]
        return cls(kind, weights, names, intercept)


def _step(
    ctx: PartyContext, model: Model, data: MaskedData, rows: torch.Tensor, lr: float
) -> None:
    scale = lr / len(rows)
    y_b = data.Y[rows]
    if model.kind == "mlp":
        _mlp_step(ctx, model, data, rows, y_b, scale)
        return
    (w,) = model.weights
    if not ctx.truncate_locally and model.kind in ("logistic", "linear"):
        _folded_update(ctx, model, data, rows, y_b, scale)
        return
    u = _masked_product(ctx, data, rows, w, transpose=False)
    if model.kind == "logistic":
        p = sigmoid(ctx, u)
    elif model.kind == "softmax":
        p = softmax_rows(ctx, u)
    else:
        p = u
    grad = _masked_product(ctx, data, rows, p - y_b, transpose=True, scaled=False)
    model.weights[0] = _sgd_update(ctx, w, grad, scale)


def _folded_update(
    ctx: PartyContext,
    model: Model,
    data: MaskedData,
    rows: torch.Tensor,
    y_b: torch.Tensor,
    scale: float,
) -> None:
    """n > 2: fold lr/B into the residual so one truncation per step serves the activation and
    the update (saves a round); for logistic, the truncation of X_B w is fused with the
    sigmoid's first comparison round (saves another): 1 + 4 + 1 + 1 = 7 rounds.
    r = scale * (p - y) is formed at 2f fractional bits: the
    activation's coefficients carry the scale with ``extra`` more fractional bits (so that
    scale * 2^extra is in [1/2, 1) and no precision is lost), and scale * y is a public-times-
    share product. X^T r then has 3f + extra bits and stays below the 2^62 bound while
    |X^T (p - y)| < 2^14; one exact dealer truncation by 2f + extra yields the update."""
    f = ctx.fxp.frac_bits
    extra = min(12, max(0, math.floor(-math.log2(scale))))
    factor = round(scale * 2.0 ** (f + extra))
    w = model.weights[0]
    if model.kind == "logistic":
        u_2f = _masked_product(ctx, data, rows, w, transpose=False, scaled=False)
        acc = sigmoid(ctx, u_2f, scale=scale, truncated=False, extra_bits=extra, input_bits=f)
    else:
        acc = _masked_product(ctx, data, rows, w, transpose=False) * factor
    residual = acc - y_b * factor
    grad = _masked_product(ctx, data, rows, residual, transpose=True, scaled=False)
    model.weights[0] = model.weights[0] - truncate(ctx, grad, 2 * f + extra)


def _mlp_step(
    ctx: PartyContext,
    model: Model,
    data: MaskedData,
    rows: torch.Tensor,
    y_b: torch.Tensor,
    scale: float,
) -> None:
    """ReLU hidden layers, softmax output; backprop with Beaver matmuls and ReLU bits."""
    ws = model.weights
    acts = []
    derivs = []
    h = _masked_product(ctx, data, rows, ws[0], transpose=False)
    for w in ws[1:]:
        a, bit = relu(ctx, h)
        if model.intercept:  # public 1 column (party 0 holds the encoding) carries the bias
            ones = torch.full((a.shape[0], 1), ctx.fxp.scale if ctx.pid == 0 else 0)
            a = torch.cat([a, ones], 1)
        acts.append(a)
        derivs.append(bit)
        h = matmul(ctx, a, w)
    p = softmax_rows(ctx, h)
    delta = p - y_b
    grads: list[torch.Tensor] = [torch.empty(0)] * len(ws)
    for layer in range(len(ws) - 1, 0, -1):
        a = acts[layer - 1]
        grads[layer] = matmul(ctx, a.T.contiguous(), delta, scaled=False)
        back = matmul(ctx, delta, ws[layer].T.contiguous())
        if model.intercept:
            back = back[:, :-1].contiguous()  # the bias column has no predecessor
        delta = mul(ctx, back, derivs[layer - 1], scaled=False)
    grads[0] = _masked_product(ctx, data, rows, delta, transpose=True, scaled=False)
    for i in range(len(ws)):
        ws[i] = _sgd_update(ctx, ws[i], grads[i], scale)


def train(
    ctx: PartyContext,
    model: Model,
    data: MaskedData,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    shuffle: bool = True,
    on_epoch: Callable[[int, float], None] | None = None,
    epoch_end: Callable[[int], None] | None = None,
) -> Model:
    """Run mini-batch SGD for ``epochs``; ``on_epoch(epoch, seconds)`` after each epoch.

    ``epoch_end(epoch)`` runs after the epoch's steps and before ``on_epoch`` (e.g. the secure
    loss of ``mpc.loss``); its time is not counted in ``seconds``.
    """
    rows = data.E.shape[0]
    for epoch in range(epochs):
        start = time.perf_counter()
        for batch in batch_schedule(seed, epoch, rows, batch_size, shuffle):
            _step(ctx, model, data, torch.from_numpy(batch), learning_rate)
        seconds = time.perf_counter() - start
        if epoch_end is not None:
            epoch_end(epoch)
        if on_epoch is not None:
            on_epoch(epoch, seconds)
    return model

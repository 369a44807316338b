"""Masked training data, out of core: E = X - A on disk, the mask A regenerated from a seed.

Data are masked once for all epochs [SecureML17 sec. IV-A]: X = E + A with E public and A
secret. Here the mask of a block is expanded from a seed that only the block's owner and the
dealer hold (:meth:`mpc.core.preprocessing.Preprocessing.mask_seeds`, one fresh label per block
and call), by AES-CTR counter offset, so any rows of it can be regenerated when a batch needs
them (:meth:`mpc.core.prg.PRG.spans_at`) instead of being held. The sharing of A is
(A, 0, ..., 0): the owner's share is A, every other party's is 0.

Why this is as secure as a dealer-sent mask: the owner of a block learnt its whole mask before
too (the dealer sent it); a non-owner now holds 0 instead of a uniform share of A, and learns
nothing about A either way (A is pseudorandom to anyone without the owner's dealer seed; the
dealer does not collude). E = X - A is published exactly as before. Every protocol on the data
opens only values masked with fresh dealer randomness (W - V for a triple Z = A_B V whose
shares the dealer computes from A_B, which it regenerates from the same seed), so no party's
view depends on the shares of A beyond its own. X = E + A stays an additive sharing over the
parties, so every consumer of :class:`MaskedData` is unchanged.

The row stores (memory, seed, file, stacked) are :mod:`mpc.learn.rowstores`.

Memory: per party O(batch * d + model), independent of N, above ``RESIDENT_BYTES`` per block
(a smaller block's mask is expanded once and held, as a batch gather is cheaper than its AES
regeneration). E is written once, as it is
computed (own block) or arrives (peers' blocks, sent in row chunks of ``CHUNK_WORDS``), to an
unlinked temporary file (raw int64, row-major; ``tempfile``'s directory, i.e. ``TMPDIR``); a
batch reads its rows with one ``pread`` each (page-cache reads do not count in RSS; mapped
pages do). A block of up to ``RESIDENT_BYTES`` goes to memory instead (``HeldRows``: a file
that size would be mapped whole by training anyway, and writing it through the page cache
cost more than the rest of masking). Labels likewise
(Y shares: the owner's encoded labels, 0 elsewhere). The dealer's dry run holds neither: E is
shape-only there and A is regenerated per batch. Masking costs no dealer bytes, and one round
per chunk of ``CHUNK_WORDS`` words of the largest block (1 for blocks of up to 2^20 words).

Data prepared jointly (standardisation, imputation: ``mpc.learn.dataprep``) is re-masked
chunk by chunk with a mask shared over all parties: each party's share a :class:`MaskRows` of
its own seed, the dealer's view their :class:`SumRows`; E again goes to a :class:`FileRows`
(memory up to ``RESIDENT_BYTES``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from mpc.core.fixedpoint import FixedPoint
from mpc.learn.rowstores import (
    ConstRows,
    FileRows,
    HeldRows,
    MaskRows,
    Rows,
    RowSplit,
    StackedRows,
    SumRows,
    TensorRows,
    ZeroRows,
    as_rows,
    close_rows,
    written_rows,
)
from mpc.protocols.context import PartyContext

__all__ = [
    "Layout",
    "Rows",
    "TensorRows",
    "ZeroRows",
    "ConstRows",
    "MaskRows",
    "SumRows",
    "FileRows",
    "HeldRows",
    "StackedRows",
    "RowSplit",
    "RowSource",
    "ArraySource",
    "MaskedData",
    "mask_inputs",
    "row_source",
    "close_rows",
    "CHUNK_WORDS",
]

CHUNK_WORDS = 1 << 20  # words (8 MiB) per masking chunk of a block


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
    """X = E + A with E public (N x d) and A shared; Y shared (N x K), fixed point. Each is a
    :class:`Rows` store (tensors given here are held in memory)."""

    E: Rows
    A: Rows
    Y: Rows
    _batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.E, self.A, self.Y = as_rows(self.E), as_rows(self.A), as_rows(self.Y)

    @classmethod
    def from_tensors(cls, E: torch.Tensor, A: torch.Tensor, Y: torch.Tensor) -> MaskedData:
        """Data held in memory (jointly prepared data, small tests)."""
        return cls(TensorRows(E), TensorRows(A), TensorRows(Y))

    def rows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(E_B, A_B) for a batch; the last batch is kept, as a step uses it twice."""
        if self._batch is None or self._batch[0] is not rows:
            idx = rows.numpy()
            self._batch = (rows, self.E.take(idx), self.A.take(idx))
        return self._batch[1], self._batch[2]


class RowSource(Protocol):
    """A party's own block read in row chunks (e.g. a CSV file streamed from disk):
    ``chunks(n)`` yields (features, labels or None) float64 arrays of ``n`` rows (the last
    may be shorter), in file order."""

    rows: int
    cols: int

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]: ...


class ArraySource:
    """A :class:`RowSource` over arrays already in memory."""

    def __init__(self, features: np.ndarray, labels: np.ndarray | None) -> None:
        self.features = np.asarray(features)
        self.labels = None if labels is None else np.asarray(labels)
        self.rows = int(self.features.shape[0]) if self.features.ndim else 0
        self.cols = int(self.features.shape[1]) if self.features.ndim == 2 else -1

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for lo in range(0, self.rows, n):
            yield (self.features[lo : lo + n],
                   None if self.labels is None else self.labels[lo : lo + n])


def row_source(name: str, features: np.ndarray | RowSource | None,
               labels: np.ndarray | None) -> RowSource | None:
    """A party's block as a row source: an array (with its ``labels``) wrapped in an
    :class:`ArraySource`, a row source as it is (it yields its own labels), None as None."""
    if features is None or not isinstance(features, np.ndarray):
        if labels is not None:
            raise ValueError(f"{name}: labels come from the row source")
        return features
    return ArraySource(features, labels)


def _encode_labels(fxp: FixedPoint, layout: Layout, y: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y, dtype=np.float64))
    if layout.one_hot:
        t = torch.nn.functional.one_hot(t.long(), layout.outputs).to(torch.float64)
    else:
        t = t.reshape(-1, 1)
    return fxp.encode(t, what="labels")


def mask_inputs(
    ctx: PartyContext,
    layout: Layout,
    features: np.ndarray | RowSource | None,
    labels: np.ndarray | None,
    label_party: int | None,
    *,
    directory: str | None = None,
    label_fxp: FixedPoint | None = None,
) -> MaskedData:
    """Mask every party's block with a seed-derived mask and publish E, streaming.

    ``features``: this party's block (an array, or a :class:`RowSource` that also yields the
    labels, in which case ``labels`` is None); None in the dealer's dry run. Each owner encodes
    its block in chunks of ``CHUNK_WORDS`` words, subtracts its mask for those rows (held or
    regenerated: ``MaskRows``), writes E to its store and sends the chunk to every peer, which
    writes it to its own store as it arrives (``written_rows``: memory up to
    ``RESIDENT_BYTES``, else a file): ceil(largest block / CHUNK_WORDS) rounds (1 for small
    data), each party sending (its block's words) to every peer; no dealer traffic (see the
    module docstring for why the (A, 0, ..., 0) sharing is secure). ``directory``: where E and
    label files go (default: ``tempfile``'s, i.e. ``TMPDIR``); ``label_fxp``: the labels'
    encoding when it differs from the features' (``ctx.fxp``).
    """
    fxp = ctx.fxp
    spans = layout.row_ranges()
    vertical = layout.partition == "vertical"
    shapes = [
        (layout.rows, hi - lo) if vertical else (hi - lo, layout.features) for lo, hi in spans
    ]
    dim = 1 if vertical else 0
    seeds = ctx.pre.mask_seeds()
    a_parts: list[Rows] = [
        MaskRows(seeds[p], shapes[p]) if p in seeds else ZeroRows(shapes[p])
        for p in range(ctx.n)
    ]
    y_shape = (layout.rows, layout.outputs)
    split = RowSplit()  # E, A and Y gather the same batches
    if ctx.dry:  # the dealer's dry run: shapes only, A regenerated per batch
        return MaskedData(StackedRows([ZeroRows(s) for s in shapes], dim, split),
                          StackedRows(a_parts, dim, split), ZeroRows(y_shape))
    me = ctx.pid
    source = row_source(ctx.name, features, labels)
    own = shapes[me]
    if source is None or source.rows != own[0] or source.cols != own[1]:
        got = "none" if source is None else f"({source.rows}, {source.cols})"
        raise ValueError(f"{ctx.name}: features have shape {got}, want {own}")
    if vertical and labels is not None and me != label_party:
        raise ValueError(f"{ctx.name}: holds labels but is not the label party")
    step = max(1, CHUNK_WORDS // max(1, max(s[1] for s in shapes)))  # rows per chunk (public)
    rounds = max(1, max(-(-s[0] // step) for s in shapes))
    e_parts = [written_rows(s, directory) for s in shapes]
    own_y: FileRows | HeldRows | None = None
    own_a = a_parts[me]
    chunks = source.chunks(step)
    for k in range(rounds):
        lo = k * step
        hi = min(own[0], lo + step)
        if lo < own[0]:
            try:
                x_np, y_np = next(chunks)
            except StopIteration:
                raise ValueError(f"{ctx.name}: data source ended at row {lo} of {own[0]}"
                                 ) from None
            e = fxp.encode(x_np, what="features")  # a fresh tensor: masked in place
            if tuple(e.shape) != (hi - lo, own[1]):
                raise ValueError(f"{ctx.name}: a chunk of rows {lo}..{hi} has shape "
                                 f"{tuple(e.shape)}")
            e -= own_a.range(lo, hi)
            e_parts[me].write(lo, e)
            if y_np is not None:
                if own_y is None:
                    own_y = written_rows((own[0], layout.outputs), directory)
                own_y.write(lo, _encode_labels(label_fxp or fxp, layout, y_np))
        else:
            e = torch.zeros((0, own[1]), dtype=torch.int64)
        incoming = {p: [(max(0, min(shapes[p][0], lo + step) - lo), shapes[p][1])]
                    for p in ctx.channel.peers}
        arrived = ctx.channel.exchange("mask/publish", {p: [e] for p in ctx.channel.peers},
                                       incoming)
        for p in ctx.channel.peers:
            e_parts[p].write(lo, arrived[p][0])
    E = StackedRows(e_parts, dim, split)
    A = StackedRows(a_parts, dim, split)
    if own_y is None:
        Y: Rows = ZeroRows(y_shape)
    elif vertical:
        Y = own_y
    else:
        Y = StackedRows([own_y if p == me else ZeroRows((shapes[p][0], layout.outputs))
                         for p in range(ctx.n)], 0, split)
    return MaskedData(E, A, Y)

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

Memory: per party O(batch * d + model), independent of N, above ``RESIDENT_BYTES`` per block
(a smaller block's mask is expanded once and held, as a batch gather is cheaper than its AES
regeneration). E is written once, as it is
computed (own block) or arrives (peers' blocks, sent in row chunks of ``CHUNK_WORDS``), to an
unlinked temporary file (raw int64, row-major; ``tempfile``'s directory, i.e. ``TMPDIR``); a
batch reads its rows with one ``pread`` each (page-cache reads do not count in RSS; mapped
pages do), or through a mapping for files up to ``RESIDENT_BYTES``. Labels likewise
(Y shares: the owner's encoded labels, 0 elsewhere). The dealer's dry run holds neither: E is
shape-only there and A is regenerated per batch. Masking costs no dealer bytes, and one round
per chunk of ``CHUNK_WORDS`` words of the largest block (1 for blocks of up to 2^20 words).

Data prepared jointly (standardisation, imputation: ``mpc.learn.dataprep``) is re-masked
chunk by chunk with a mask shared over all parties: each party's share a :class:`MaskRows` of
its own seed, the dealer's view their :class:`SumRows`; E again goes to a :class:`FileRows`.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import numpy as np
import torch

from mpc.core.fixedpoint import FixedPoint
from mpc.core.prg import PRG
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
    "StackedRows",
    "RowSplit",
    "RowSource",
    "ArraySource",
    "MaskedData",
    "mask_inputs",
    "close_rows",
    "CHUNK_WORDS",
]

CHUNK_WORDS = 1 << 20  # words (8 MiB) per masking chunk of a block
RESIDENT_BYTES = 64 << 20  # files up to this size are gathered through a mapping


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


class Rows:
    """An (N x k) int64 matrix read by rows: ``store[rows]`` gathers a batch (a LongTensor of
    row indices), :meth:`range` a contiguous slice, :meth:`full` the whole (small data only)."""

    shape: tuple[int, int]

    def take(self, rows: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def range(self, lo: int, hi: int) -> torch.Tensor:
        return self.take(np.arange(lo, hi, dtype=np.int64))

    def take_array(self, rows: np.ndarray) -> np.ndarray:
        """:meth:`take` as a numpy array (the stores that gather in numpy skip a conversion)."""
        return self.take(rows).numpy()

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        if not isinstance(rows, torch.Tensor) or rows.dtype != torch.int64 or rows.dim() != 1:
            raise TypeError("Rows[...] takes a 1-d int64 tensor of row indices")
        return self.take(rows.numpy())

    def full(self) -> torch.Tensor:
        return self.range(0, self.shape[0])

    def chunks(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, rows x k tensor) over the whole matrix, ``rows`` rows at a time."""
        for lo in range(0, self.shape[0], max(1, rows)):
            yield lo, self.range(lo, min(self.shape[0], lo + max(1, rows)))

    def close(self) -> None:
        """Release what the store holds on disk (nothing for most stores)."""


class TensorRows(Rows):
    """Rows held in memory."""

    def __init__(self, t: torch.Tensor) -> None:
        if t.dim() != 2:
            raise ValueError(f"TensorRows: want a matrix, got shape {tuple(t.shape)}")
        self.t = t
        self.shape = (int(t.shape[0]), int(t.shape[1]))

    def take(self, rows: np.ndarray) -> torch.Tensor:
        return torch.index_select(self.t, 0, torch.from_numpy(np.asarray(rows, dtype=np.int64)))

    def range(self, lo: int, hi: int) -> torch.Tensor:
        return self.t[lo:hi]

    def full(self) -> torch.Tensor:
        return self.t


class ConstRows(Rows):
    """Every element equal to a public ``value`` (0: a non-owner's share; the intercept's 1)."""

    def __init__(self, shape: tuple[int, int], value: int = 0) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.value = value

    def take(self, rows: np.ndarray) -> torch.Tensor:
        return torch.full((len(rows), self.shape[1]), self.value, dtype=torch.int64)

    def range(self, lo: int, hi: int) -> torch.Tensor:
        return torch.full((max(0, hi - lo), self.shape[1]), self.value, dtype=torch.int64)


def ZeroRows(shape: tuple[int, int]) -> ConstRows:  # noqa: N802 - reads as a type
    """A share of 0 (a non-owner's share of a mask, a party's share of labels it lacks)."""
    return ConstRows(shape, 0)


class MaskRows(Rows):
    """A uniform ring matrix expanded from ``seed`` by AES-CTR, row-major: row r is stream
    words [r k, (r + 1) k). Up to ``RESIDENT_BYTES`` it is expanded once, at the first batch,
    and held (a gather per batch); above, any rows are regenerated by counter offset per
    batch (never held)."""

    def __init__(self, seed: bytes, shape: tuple[int, int]) -> None:
        self.prg = PRG(seed)
        self.shape = (int(shape[0]), int(shape[1]))
        self._held: np.ndarray | None = None
        self._holds = 0 < 8 * self.shape[0] * self.shape[1] <= RESIDENT_BYTES

    def take(self, rows: np.ndarray) -> torch.Tensor:
        if self._holds:
            return torch.from_numpy(self.take_array(rows))
        k = self.shape[1]
        return self.prg.spans_at(np.asarray(rows, dtype=np.int64) * k, k)

    def take_array(self, rows: np.ndarray) -> np.ndarray:
        if not self._holds:
            return self.take(rows).numpy()
        if self._held is None:
            self._held = self.prg.ring_at(0, self.shape).numpy()
        return self._held[rows]

    def range(self, lo: int, hi: int) -> torch.Tensor:
        return self.prg.ring_at(lo * self.shape[1], (max(0, hi - lo), self.shape[1]))


class SumRows(Rows):
    """The elementwise ring sum of stores of one shape: the dealer's view of a mask shared
    additively over the parties (each party's share regenerated from its own seed)."""

    def __init__(self, parts: Sequence[Rows]) -> None:
        if not parts or any(p.shape != parts[0].shape for p in parts):
            raise ValueError("SumRows: want one or more stores of one shape")
        self.parts = list(parts)
        self.shape = parts[0].shape

    def take(self, rows: np.ndarray) -> torch.Tensor:
        out = self.parts[0].take(rows).clone()
        for p in self.parts[1:]:
            out += p.take(rows)
        return out

    def range(self, lo: int, hi: int) -> torch.Tensor:
        out = self.parts[0].range(lo, hi).clone()
        for p in self.parts[1:]:
            out += p.range(lo, hi)
        return out


class FileRows(Rows):
    """Raw int64 rows in an unlinked temporary file: written once (:meth:`write`, by row
    ranges), then read by batch -- through a read-only mapping for files up to
    ``RESIDENT_BYTES``, with one ``pread`` per row above -- and by :meth:`range` with one
    ``pread``."""

    def __init__(self, shape: tuple[int, int], directory: str | None = None) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self._row_bytes = 8 * self.shape[1]
        self._size = self._row_bytes * self.shape[0]
        self._file: IO[bytes] = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - owned
        os.ftruncate(self._file.fileno(), self._size)
        self._map: mmap.mmap | None = None
        self._view: np.ndarray | None = None

    def write(self, lo: int, block: torch.Tensor) -> None:
        """Rows ``lo, lo + 1, ...`` (a (rows x k) int64 tensor)."""
        if block.shape[0] == 0:
            return
        if block.dim() != 2 or block.shape[1] != self.shape[1] or lo + block.shape[0] > \
                self.shape[0]:
            raise ValueError(f"FileRows.write: rows {lo}+{tuple(block.shape)} outside "
                             f"{self.shape}")
        data = block.contiguous().numpy().data.cast("B")
        at, done = lo * self._row_bytes, 0
        while done < len(data):
            done += os.pwrite(self._file.fileno(), data[done:], at + done)

    def range(self, lo: int, hi: int) -> torch.Tensor:
        hi = min(hi, self.shape[0])
        out = torch.empty((max(0, hi - lo), self.shape[1]), dtype=torch.int64)
        buf = out.numpy().data.cast("B")
        at, done = lo * self._row_bytes, 0
        while done < len(buf):
            got = os.preadv(self._file.fileno(), [buf[done:]], at + done)
            if got <= 0:
                raise OSError(f"FileRows: short read at byte {at + done}")
            done += got
        return out

    def take(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        if self._size == 0 or len(rows) == 0:
            return torch.zeros((len(rows), self.shape[1]), dtype=torch.int64)
        if self._size > RESIDENT_BYTES:
            # One pread per row: page-cache reads do not count in RSS, where a gather through
            # a mapping can map whole large folios around every row (measured: 4096 random
            # rows of a 0.8 GB file mapped 0.76 GB before the pages could be dropped).
            out = torch.empty((len(rows), self.shape[1]), dtype=torch.int64)
            buf = out.numpy().data.cast("B")
            fd, size = self._file.fileno(), self._row_bytes
            for i, r in enumerate(rows.tolist()):
                if os.preadv(fd, [buf[i * size : (i + 1) * size]], r * size) != size:
                    raise OSError(f"FileRows: short read of row {r}")
            return out
        return torch.from_numpy(self._mapped()[rows])

    def take_array(self, rows: np.ndarray) -> np.ndarray:
        if self._size == 0 or len(rows) == 0 or self._size > RESIDENT_BYTES:
            return self.take(rows).numpy()
        return self._mapped()[rows]

    def _mapped(self) -> np.ndarray:
        if self._view is None:  # small file: a mapping, at most RESIDENT_BYTES resident
            self._map = mmap.mmap(self._file.fileno(), self._size, prot=mmap.PROT_READ)
            self._view = np.frombuffer(self._map, dtype=np.int64).reshape(self.shape)
        return self._view

    def close(self) -> None:
        self._view = None
        if self._map is not None:
            self._map.close()
            self._map = None
        self._file.close()


class RowSplit:
    """Which blocks of a row-stacked store a batch touches: (block, positions in the batch or
    None for all, rows within the block) per block. The stores of one dataset (E, A, Y) have
    the same blocks and gather the same batch: they share one RowSplit, which keeps the last
    batch's split (matched by value)."""

    def __init__(self) -> None:
        self._last: tuple[tuple[bytes, bytes], list[Any]] | None = None

    def __call__(
        self, starts: np.ndarray, rows: np.ndarray
    ) -> list[tuple[int, np.ndarray | None, np.ndarray]]:
        key = (starts.tobytes(), rows.tobytes())
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        which = np.searchsorted(starts, rows, side="right") - 1
        split: list[tuple[int, np.ndarray | None, np.ndarray]]
        if len(rows) and which[0] == which[-1] and (which == which[0]).all():
            i = int(which[0])
            split = [(i, None, rows - starts[i])]
        else:
            split = []
            for i in range(len(starts) - 1):
                at = np.flatnonzero(which == i)
                if len(at):
                    split.append((i, at, rows[at] - starts[i]))
        self._last = (key, split)
        return split


class StackedRows(Rows):
    """Blocks stacked along rows (``dim=0``: horizontal partition) or columns (``dim=1``:
    vertical partition, or a public column appended). ``split``: the dataset's shared
    :class:`RowSplit` (a store of its own by default)."""

    def __init__(self, parts: Sequence[Rows], dim: int, split: RowSplit | None = None) -> None:
        self.parts = list(parts)
        self.dim = dim
        self._split = split if split is not None else RowSplit()
        if dim == 0:
            self.starts = np.cumsum([0] + [p.shape[0] for p in self.parts])
            self.shape = (int(self.starts[-1]), self.parts[0].shape[1])
        else:
            self.shape = (self.parts[0].shape[0], sum(p.shape[1] for p in self.parts))
        # zero blocks (a non-owner's shares) need no gather: the batch starts from zeros
        self._zeros = [isinstance(p, ConstRows) and p.value == 0 for p in self.parts]

    def take(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        if self.dim == 1:
            return torch.cat([p.take(rows) for p in self.parts], 1)
        split = self._split(self.starts, rows)
        if len(split) == 1 and split[0][1] is None:
            i, _, local = split[0]  # one block (e.g. a batch of an unshuffled schedule)
            return self.parts[i].take(local)
        zeros = self._zeros
        out = (np.zeros if any(zeros) else np.empty)((len(rows), self.shape[1]), dtype=np.int64)
        for i, at, local in split:
            if not zeros[i]:
                out[at] = self.parts[i].take_array(local)
        return torch.from_numpy(out)

    def range(self, lo: int, hi: int) -> torch.Tensor:
        if self.dim == 1:
            return torch.cat([p.range(lo, hi) for p in self.parts], 1)
        pieces = [part.range(max(lo, a) - a, min(hi, b) - a)
                  for part, a, b in zip(self.parts, self.starts[:-1], self.starts[1:],
                                        strict=True) if max(lo, a) < min(hi, b)]
        if not pieces:
            return torch.zeros((0, self.shape[1]), dtype=torch.int64)
        return torch.cat(pieces, 0) if len(pieces) > 1 else pieces[0]


def close_rows(*stores: Rows) -> None:
    """Close stores and, for stacked ones, their parts (their files are unlinked already:
    closing frees the disk space now instead of at exit)."""
    for store in stores:
        if isinstance(store, StackedRows):
            close_rows(*store.parts)
        else:
            store.close()


def _as_rows(x: Rows | torch.Tensor) -> Rows:
    return x if isinstance(x, Rows) else TensorRows(x)


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
        self.E, self.A, self.Y = _as_rows(self.E), _as_rows(self.A), _as_rows(self.Y)

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
    its block in chunks of ``CHUNK_WORDS`` words, subtracts the mask regenerated for those
    rows, writes E to its file and sends the chunk to every peer, which writes it to its own
    file as it arrives: ceil(largest block / CHUNK_WORDS) rounds (1 for small data), each
    party sending (its block's words) to every peer; no dealer traffic (see the module
    docstring for why the (A, 0, ..., 0) sharing is secure). ``directory``: where the E and
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
    source: RowSource | None
    if features is None:
        source = None
    elif isinstance(features, np.ndarray):
        source = ArraySource(features, labels)
    else:
        if labels is not None:
            raise ValueError(f"{ctx.name}: labels come from the row source")
        source = features
    own = shapes[me]
    if source is None or source.rows != own[0] or source.cols != own[1]:
        got = "none" if source is None else f"({source.rows}, {source.cols})"
        raise ValueError(f"{ctx.name}: features have shape {got}, want {own}")
    if vertical and labels is not None and me != label_party:
        raise ValueError(f"{ctx.name}: holds labels but is not the label party")
    step = max(1, CHUNK_WORDS // max(1, max(s[1] for s in shapes)))  # rows per chunk (public)
    rounds = max(1, max(-(-s[0] // step) for s in shapes))
    e_parts = [FileRows(s, directory) for s in shapes]
    own_y: FileRows | None = None
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
            x = fxp.encode(x_np, what="features")
            if tuple(x.shape) != (hi - lo, own[1]):
                raise ValueError(f"{ctx.name}: a chunk of rows {lo}..{hi} has shape "
                                 f"{tuple(x.shape)}")
            e = x - own_a.range(lo, hi)
            e_parts[me].write(lo, e)
            if y_np is not None:
                if own_y is None:
                    own_y = FileRows((own[0], layout.outputs), directory)
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

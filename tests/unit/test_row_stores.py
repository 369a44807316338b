"""Out-of-core building blocks: AES-CTR random access equals the sequential stream, and the
row stores (file, mask, stacked) return the rows they were given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mpc.core.prg import PRG, fresh_seed
from mpc.learn import rowstores
from mpc.learn.rowstores import (
    ConstRows,
    FileRows,
    HeldRows,
    MaskRows,
    StackedRows,
    TensorRows,
    written_rows,
)


@pytest.mark.parametrize("offset", [0, 1, 2, 7, 4095, 4096, 9999])
def test_ring_at_equals_sequential_stream(offset):
    seed = fresh_seed()
    stream = PRG(seed).ring((20_000,))
    prg = PRG(seed)
    prg.ring((3,))  # random access does not depend on (or move) the sequential position
    assert torch.equal(prg.ring_at(offset, (5, 7)), stream[offset : offset + 35].reshape(5, 7))
    assert torch.equal(prg.ring((2,)), stream[3:5])


def test_keystream_in_pieces_equals_one_call(monkeypatch):
    """Large draws are encrypted piece by piece (a bounded zero plaintext): the words equal
    those of one call, for sequential draws and random access at any offset."""
    seed = fresh_seed()
    whole = PRG(seed).ring((50_000,))
    monkeypatch.setattr(PRG, "PIECE_BYTES", 48)  # 6 words a piece
    prg = PRG(seed)
    assert len(prg._plain(0)) == 0
    assert torch.equal(torch.cat([prg.ring((5,)), prg.ring((30_000,)), prg.ring((19_995,))]),
                       whole)
    for offset in (0, 1, 7, 12_345):
        assert torch.equal(PRG(seed).ring_at(offset, (101, 33)),
                           whole[offset : offset + 101 * 33].reshape(101, 33))
    assert len(prg._zeros) <= 96  # the plaintext never grew to a draw's size


@pytest.mark.parametrize("width", [1, 2, 3, 50, 51])
def test_spans_at_equals_sequential_stream(width):
    seed = fresh_seed()
    stream = PRG(seed).ring((60_000,))
    starts = np.array([0, 1, 2, 3, 77, 1000, 999, 59_000, 5])
    got = PRG(seed).spans_at(starts, width)
    want = torch.stack([stream[s : s + width] for s in starts])
    assert torch.equal(got, want)


@pytest.mark.parametrize("resident", [0, 1 << 20], ids=["regenerated", "held"])
def test_mask_rows_regenerate_any_rows(monkeypatch, resident):
    monkeypatch.setattr(rowstores, "RESIDENT_BYTES", resident)
    seed = fresh_seed()
    full = PRG(seed).ring((1000, 13))
    store = MaskRows(seed, (1000, 13))
    rows = np.random.default_rng(0).permutation(1000)[:64]
    for _ in range(2):  # held: expanded at the first batch, gathered at the second
        assert torch.equal(store.take(rows), full[torch.from_numpy(rows)])
        assert np.array_equal(store.take_array(rows[:5]), full[torch.from_numpy(rows[:5])].numpy())
    assert (store._held is not None) == bool(resident)
    assert torch.equal(store.range(123, 456), full[123:456])
    assert torch.equal(store.full(), full)


def test_file_rows_round_trip(monkeypatch):
    monkeypatch.setattr(rowstores, "RESIDENT_BYTES", 0)  # the per-row pread path
    data = PRG(fresh_seed()).ring((5000, 9))
    store = FileRows((5000, 9))
    for lo in range(0, 5000, 700):  # written in chunks, as at masking
        store.write(lo, data[lo : lo + 700])
    rows = np.random.default_rng(1).permutation(5000)[:300]
    for _ in range(2):
        assert torch.equal(store.take(rows), data[torch.from_numpy(rows)])
    assert torch.equal(store.range(4990, 5000), data[4990:])
    assert torch.equal(store[torch.tensor([4, 2])], data[[4, 2]])
    with pytest.raises(ValueError, match="outside"):
        store.write(4999, data[:2])
    with pytest.raises(TypeError):
        store[np.array([1])]  # type: ignore[index]
    store.close()


@pytest.mark.parametrize("chunk", [700, 5000], ids=["chunks", "whole"])
def test_held_rows_round_trip(chunk):
    """Memory stores take what they were given; a first write of the whole matrix is kept
    as it is (no copy), chunks go into one buffer."""
    data = PRG(fresh_seed()).ring((5000, 9))
    store = written_rows((5000, 9))
    assert isinstance(store, HeldRows)
    for lo in range(0, 5000, chunk):
        store.write(lo, data[lo : lo + chunk])
    assert (store.range(0, 5000).data_ptr() == data.data_ptr()) == (chunk == 5000)
    rows = np.random.default_rng(1).permutation(5000)[:300]
    assert torch.equal(store.take(rows), data[torch.from_numpy(rows)])
    assert np.array_equal(store.take_array(rows[:7]), data[torch.from_numpy(rows[:7])].numpy())
    assert torch.equal(store.range(4990, 5000), data[4990:])
    assert torch.equal(store[torch.tensor([4, 2])], data[[4, 2]])
    with pytest.raises(ValueError, match="outside"):
        store.write(4999, data[:2])


def test_written_rows_past_the_resident_bound_go_to_disk(monkeypatch):
    monkeypatch.setattr(rowstores, "RESIDENT_BYTES", 8 * 5000 * 9 - 8)
    store = written_rows((5000, 9))
    assert isinstance(store, FileRows)
    store.close()
    assert isinstance(written_rows((5000, 8)), HeldRows)


@pytest.mark.parametrize("dim", [0, 1])
def test_stacked_rows(dim):
    a = PRG(fresh_seed()).ring((40, 3))
    b = PRG(fresh_seed()).ring((40 if dim else 25, 3 if not dim else 2))
    parts = [TensorRows(a), TensorRows(b), ConstRows((40 if dim else 5, 1 if dim else 3), 7)]
    whole = torch.cat([a, b, torch.full(parts[2].shape, 7)], dim)
    store = StackedRows(parts, dim)
    assert store.shape == tuple(whole.shape)
    rows = np.random.default_rng(2).permutation(whole.shape[0])[:30]
    assert torch.equal(store.take(rows), whole[torch.from_numpy(rows)])
    assert torch.equal(store.range(3, 44 if not dim else 33), whole[3 : 44 if not dim else 33])

"""mpc.config.streaming: a CSV read in chunks gives the values and the errors of the whole-file
reader (line and column named, never a value), and a party's stream yields exactly the rows of
load_party_data in masking-sized chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mpc.config import streaming
from mpc.config.datasets import load_party_data, load_table
from mpc.config.scenario import load_scenario
from mpc.config.streaming import PartyStream, iter_table, validate_all
from mpc.core.errors import ConfigError


def _csv(path: Path, rows: int, seed: int, ids: bool = False, blank_every: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines = [("id," if ids else "") + "x1,x2,target"]
    for i in range(rows):
        x = rng.uniform(-3, 3, 2)
        lines.append((f"{i}," if ids else "") + f"{x[0]:.6g},{x[1]:.6g},{int(x[0] > 0)}")
        if blank_every and i % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunks_equal_the_whole_table(tmp_path, chunk):
    _csv(tmp_path / "a.csv", 50, 1, blank_every=9)
    whole = load_table(tmp_path / "a.csv")
    parts = list(iter_table(tmp_path / "a.csv", chunk_rows=chunk))
    np.testing.assert_array_equal(np.concatenate([t.values for t in parts]), whole.values)
    np.testing.assert_array_equal(np.concatenate([t.lines for t in parts]), whole.lines)


@pytest.mark.parametrize(("cell", "message"), [
    ("abc", "line 41, column 'x2': not a number"),
    ("", "line 41, column 'x2': missing value"),
    ("nan", "line 41, column 'x2': not a finite number"),
])
def test_bad_cell_in_a_late_chunk_is_named(tmp_path, cell, message):
    _csv(tmp_path / "a.csv", 60, 2)
    lines = (tmp_path / "a.csv").read_text().splitlines()
    first, second, _ = lines[40].split(",")
    lines[40] = f"{first},{cell},1"
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=message) as err:
        list(iter_table(tmp_path / "a.csv", chunk_rows=8))
    assert second not in str(err.value)


def test_quoted_cells_and_empty_file(tmp_path):
    (tmp_path / "q.csv").write_text('x1,"x2",target\n"1.5",2,1\n3," -4 ",0\n')
    (table,) = iter_table(tmp_path / "q.csv")
    np.testing.assert_array_equal(table.values, load_table(tmp_path / "q.csv").values)
    (tmp_path / "e.csv").write_text("x1,x2,target\n\n")
    with pytest.raises(ConfigError, match="no data rows"):
        list(iter_table(tmp_path / "e.csv"))


@pytest.mark.parametrize("keep", [0, 1 << 10], ids=["reread", "kept"])
def test_party_stream_yields_the_loaded_rows_in_exact_chunks(tmp_path, monkeypatch,
                                                             write_scenario, keep):
    """Re-read from the file (too large to keep) or kept from the checking pass: the same
    rows in the same exact chunks."""
    monkeypatch.setattr(streaming, "STREAM_ROWS", 6)  # chunks of the file != masking chunks
    monkeypatch.setattr(streaming, "KEEP_VALUES", keep)
    _csv(tmp_path / "a.csv", 47, 3, blank_every=5)
    _csv(tmp_path / "b.csv", 20, 4)
    s = load_scenario(write_scenario("standardize = false"))
    whole = load_party_data(s, "a")
    stream = PartyStream(s, "a")
    assert (len(stream), stream.cols, stream.has_labels) == (47, 2, True)
    assert stream.feature_names == whole.feature_names
    assert (stream._kept is not None) == bool(keep)
    got = list(stream.chunks(10))
    assert [len(x) for x, _ in got] == [10, 10, 10, 10, 7]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), whole.features)
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), whole.labels)
    validate_all(s)


def test_duplicate_ids_across_chunks_and_misaligned_ordered_ids(tmp_path, monkeypatch,
                                                                write_scenario):
    monkeypatch.setattr(streaming, "STREAM_ROWS", 4)
    _csv(tmp_path / "a.csv", 20, 5, ids=True)
    _csv(tmp_path / "b.csv", 20, 6, ids=True)
    text = (tmp_path / "b.csv").read_text().replace("target", "x3")
    (tmp_path / "b.csv").write_text(text.replace("x1,x2", "x4,x5"))
    extra = 'standardize = false\nlabel_party = "a"\nalign = "ordered"\nid_column = "id"'
    s = load_scenario(write_scenario(extra, partition="vertical"))
    validate_all(s)
    lines = (tmp_path / "b.csv").read_text().splitlines()
    lines[15] = "3," + lines[15].split(",", 1)[1]  # id 3 again, 3 chunks later (line 16)
    (tmp_path / "b.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="line 16, column 'id': duplicate id"):
        validate_all(s)
    lines[15] = "99," + lines[15].split(",", 1)[1]
    (tmp_path / "b.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="line 16, column 'id': id differs"):
        validate_all(s)


def test_standardized_jobs_stream_their_files_with_missing_cells(tmp_path, monkeypatch,
                                                                  write_scenario):
    """Joint standardisation and imputation read the file in chunks too: the stream yields the
    loaded rows, missing cells as NaN."""
    monkeypatch.setattr(streaming, "STREAM_ROWS", 5)
    monkeypatch.setattr(streaming, "KEEP_VALUES", 0)
    _csv(tmp_path / "a.csv", 23, 7)
    _csv(tmp_path / "b.csv", 9, 8)
    lines = (tmp_path / "a.csv").read_text().splitlines()
    for i in (3, 12, 20):  # an empty x2 cell, in three different file chunks
        x1, _, t = lines[i].split(",")
        lines[i] = f"{x1},,{t}"
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    s = load_scenario(write_scenario('missing = "mean"'))
    assert s.data.standardize
    whole = load_party_data(s, "a")
    got = list(PartyStream(s, "a").chunks(4))
    x = np.concatenate([c[0] for c in got])
    assert [len(c[0]) for c in got] == [4, 4, 4, 4, 4, 3]
    np.testing.assert_array_equal(x, whole.features)  # NaN where the cell is empty
    assert np.isnan(x).sum() == 3


def test_aligned_stream_gathers_rows_in_intersection_order(tmp_path, monkeypatch,
                                                           write_scenario):
    """The PSI alignment's row source: the checked file written once to a temporary file and
    gathered back in the given order, chunk by chunk (the per-row pread path too), with the
    ids and labels of those rows."""
    from mpc.learn import rowstores
    from parties.align import AlignedStream
    monkeypatch.setattr(streaming, "STREAM_ROWS", 7)
    monkeypatch.setattr(streaming, "KEEP_VALUES", 0)
    monkeypatch.setattr(rowstores, "RESIDENT_BYTES", 0)
    _csv(tmp_path / "a.csv", 40, 9, ids=True)
    _csv(tmp_path / "b.csv", 40, 10, ids=True)
    extra = 'standardize = false\nlabel_party = "a"\nalign = "psi"\nid_column = "id"'
    s = load_scenario(write_scenario(extra, partition="vertical"))
    whole = load_party_data(s, "a")
    order = np.array([33, 2, 17, 5, 39, 0, 21, 8, 8 + 3])
    aligned = AlignedStream(PartyStream(s, "a"), order)
    assert (len(aligned), aligned.cols, aligned.has_labels) == (9, 2, True)
    got = list(aligned.chunks(4))
    assert [len(x) for x, _ in got] == [4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), whole.features[order])
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), whole.labels[order])
    np.testing.assert_array_equal(aligned.ids, whole.ids[order])
    aligned.close()

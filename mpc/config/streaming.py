"""Datasets read in row chunks: a party's CSV checked and consumed without ever being held whole.

:func:`iter_table` reads a CSV ``STREAM_ROWS`` lines at a time (numpy's C parser for plain
numeric chunks; the cell-by-cell walk of :mod:`mpc.config.datasets` for anything else, which
also names the first bad line and column). :class:`PartyStream` is one party's file under the
partition rules of its scenario: opening it checks every row (the same checks as
:func:`~mpc.config.datasets.load_party_data`, chunk by chunk) and counts them; :meth:`chunks`
then reads it again, chunk by chunk, for masking (it is a
:class:`mpc.learn.masked.RowSource`) -- unless the checked rows fit in ``KEEP_VALUES`` values,
which the first pass then keeps, so that a small file is parsed once (its second parse would
sit inside the training clock). Memory: one chunk, or at most ``KEEP_VALUES`` values (64 MB),
plus the id column where the file has one (8 bytes a row, for the uniqueness and alignment
checks). :func:`validate_all` checks every
party's file this way before any network traffic.

Trust: the files are the parties' secret inputs: errors name file, line and column, never a
value. A quoted cell holding a line break must not straddle two chunks (plain numeric CSVs
have none).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mpc.config.datasets import (
    PartyData,
    Table,
    _bad_row,
    _rows,
    _table_from_rows,
    check_party_table,
    expand_header,
    feature_order,
    header_columns,
    load_evaluation,
    load_party_test,
    party_entry,
)
from mpc.core.errors import ConfigError

if TYPE_CHECKING:  # mpc.config.scenario re-exports mpc.config.datasets, which re-exports us
    from mpc.config.scenario import Scenario

__all__ = ["STREAM_ROWS", "iter_table", "PartyStream", "validate_all",
           "header_feature_names"]

STREAM_ROWS = 1 << 15  # CSV lines parsed at a time
KEEP_VALUES = 1 << 23  # a checked file of at most this many values (64 MB) is kept, not re-read


def _header(path: Path, reader: Iterator[list[str]]) -> tuple[str, ...]:
    return header_columns(path, next(reader, None))


def _parse(path: Path, columns: tuple[str, ...], lines: list[tuple[int, str]],
           categories: Mapping[str, Sequence[str]] | None, missing: bool) -> Table | None:
    """The table of a chunk of physical lines (None if all are blank)."""
    cats = [c for c in (categories or {}) if c in columns]
    text = [t for _, t in lines if t.strip()]
    if not text:
        return None
    if not cats and not missing:  # fast path: numpy's parser, Python float rules
        try:
            values = np.loadtxt(text, delimiter=",", dtype=np.float64, comments=None,
                                quotechar='"', ndmin=2)
            if values.shape == (len(text), len(columns)) and np.isfinite(values).all():
                nums = np.array([ln for ln, t in lines if t.strip()], dtype=np.int64)
                return Table(path, columns, values, nums)
        except ValueError:
            pass
    # The csv module's walk: blank rows dropped, first bad cell named by line and column.
    reader = csv.reader([t for _, t in lines])
    first = lines[0][0] - 1
    rows = [(first + reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    return _table_from_rows(path, columns, rows, categories, missing) if rows else None


def iter_table(path: Path, categories: Mapping[str, Sequence[str]] | None = None,
               missing: bool = False, chunk_rows: int = STREAM_ROWS) -> Iterator[Table]:
    """The CSV at ``path`` as tables of at most ``chunk_rows`` rows each, in file order
    (the same values and errors as :func:`~mpc.config.datasets.load_table`)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            columns = _header(path, reader)
            line = reader.line_num
            buf: list[tuple[int, str]] = []
            any_rows = False
            for text in fh:
                line += 1
                buf.append((line, text))
                if len(buf) >= chunk_rows:
                    table = _parse(path, columns, buf, categories, missing)
                    buf = []
                    if table is not None:
                        any_rows = True
                        yield table
            table = _parse(path, columns, buf, categories, missing) if buf else None
            if table is not None:
                any_rows = True
                yield table
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read data file ({exc.strerror})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({exc})") from exc
    if not any_rows:
        raise ConfigError(f"{path}: no data rows")


def header_feature_names(s: Scenario, name: str) -> tuple[str, ...]:
    """A party's feature columns read from its header alone, in the order of
    :func:`~mpc.config.datasets.load_party_data` (one-hot columns expanded)."""
    path = party_entry(s, name).data
    columns = expand_header(_rows(path, header_only=True)[0], s.data.categories)
    return tuple(c for c in columns if c not in (s.data.label, s.data.id_column))


class PartyStream:
    """One party's data file, checked row by row and read again in chunks for masking.

    ``rows``/``cols``: its shape after the scenario's encoding (one-hot, bounds);
    ``feature_names``; ``has_labels``; ``ids`` (int64, or None without an id column) and the
    file ``lines`` they sit on (for error messages)."""

    def __init__(self, s: Scenario, name: str, path: Path | None = None) -> None:
        self.scenario = s
        self.name = name
        self.path = Path(path if path is not None else party_entry(s, name).data)
        self.rows = 0
        self.cols = 0
        self.feature_names: tuple[str, ...] = ()
        self.has_labels = False
        ids: list[np.ndarray] = []
        lines: list[np.ndarray] = []
        kept: list[PartyData] | None = []
        held = 0
        for table, data in self._checked(STREAM_ROWS):
            self.rows += len(table.values)
            self.feature_names = data.feature_names
            self.has_labels = data.labels is not None
            if data.ids is not None:
                ids.append(data.ids)
                lines.append(table.lines)
            if kept is not None:
                held += data.features.size
                if held <= KEEP_VALUES:
                    kept.append(data)
                else:
                    kept = None  # too large to keep: chunks() parses the file again
        self._kept = kept
        self.cols = len(self.feature_names)
        self.ids = np.concatenate(ids) if ids else None
        self.lines = np.concatenate(lines) if lines else np.zeros(0, dtype=np.int64)
        if self.ids is not None:  # unique across chunks too
            order = np.argsort(self.ids, kind="stable")
            dup = np.zeros(len(self.ids), dtype=bool)
            dup[order[1:]] = self.ids[order[1:]] == self.ids[order[:-1]]
            _bad_row(Table(self.path, (), np.zeros((0, 0)), self.lines), s.data.id_column, dup,
                     "duplicate id")

    def _checked(self, chunk_rows: int) -> Iterator[tuple[Table, PartyData]]:
        s = self.scenario
        for table in iter_table(self.path, s.data.categories, s.data.missing == "mean",
                                chunk_rows):
            yield table, check_party_table(s, self.name, table)

    def __len__(self) -> int:
        return self.rows

    @property
    def features(self) -> PartyStream:
        """The features as a row source (labels ride along in :meth:`chunks`)."""
        return self

    labels = None  # labels come with the features' chunks

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(features, labels or None) of exactly ``n`` rows each (the last may be shorter)."""
        feats: list[np.ndarray] = []
        labs: list[np.ndarray] = []
        held = 0
        source = (self._kept if self._kept is not None
                  else (data for _, data in self._checked(min(n, STREAM_ROWS))))
        for data in source:
            feats.append(data.features)
            if data.labels is not None:
                labs.append(data.labels)
            held += len(data.features)
            while held >= n:
                x, y = np.concatenate(feats), np.concatenate(labs) if labs else None
                yield x[:n], None if y is None else y[:n]
                feats, labs = [x[n:]], ([] if y is None else [y[n:]])
                held -= n
        if held:
            yield np.concatenate(feats), np.concatenate(labs) if labs else None


def validate_all(s: Scenario) -> None:
    """Check every data file of ``s`` and their consistency, before any network traffic,
    reading each file in chunks (:class:`PartyStream`).

    Horizontal parties must have the same feature columns in the same order; vertical parties
    with ``data.align = "ordered"`` the same ids in the same order (with ``"psi"`` each file's
    ids need only be unique); the evaluation file must hold exactly the features of
    :func:`feature_order`, the label and optionally ids.
    """
    streams = [PartyStream(s, p.name) for p in s.parties]
    first = streams[0]
    for data in streams[1:]:
        if s.data.partition == "horizontal" and data.feature_names != first.feature_names:
            a, b = data.feature_names, first.feature_names
            if len(a) != len(b):
                missing = [c for c in b if c not in a]
                extra = [c for c in a if c not in b]
                detail = "; ".join(
                    part for part in (
                        f"missing {missing}" if missing else "",
                        f"not in {first.path.name}: {extra}" if extra else "",
                    ) if part
                )
                raise ConfigError(f"{data.path}: {len(a)} feature columns, {first.path} "
                                  f"has {len(b)} ({detail}; horizontal parties need the same "
                                  "columns)")
            i = next(i for i in range(len(a)) if a[i] != b[i])
            raise ConfigError(f"{data.path}: feature column {i + 1} is {a[i]!r}, "
                              f"{first.path} has {b[i]!r} (same columns, same order)")
        if (data.ids is not None and first.ids is not None and s.data.partition == "vertical"
                and s.data.align == "ordered"):
            if len(data.ids) != len(first.ids):
                raise ConfigError(f"{data.path}: {len(data.ids)} rows, {first.path} has "
                                  f"{len(first.ids)} (vertical parties need the same ids)")
            _bad_row(Table(data.path, (), np.zeros((0, 0)), data.lines), s.data.id_column,
                     data.ids != first.ids,
                     f"id differs from the same row of {first.path} (vertical parties "
                     "need the same ids in the same order)")
    feature_order(s)
    load_evaluation(s)
    if s.evaluate.at == "parties":
        _validate_tests(s, [d.feature_names for d in streams])


def _validate_tests(s: Scenario, names: list[tuple[str, ...]]) -> None:
    """Every party's test file, and (vertical) the same test ids in the same order."""
    tests = [load_party_test(s, p.name, n) for p, n in zip(s.parties, names, strict=True)]
    if s.data.partition != "vertical":
        return
    first = tests[0]
    for party, data in zip(s.parties[1:], tests[1:], strict=True):
        if (data.ids is None or first.ids is None or len(data.ids) != len(first.ids)
                or bool((data.ids != first.ids).any())):
            raise ConfigError(f"{party.test}: test ids differ from those of "
                              f"{s.parties[0].test} (vertical parties need the same test ids "
                              "in the same order)")

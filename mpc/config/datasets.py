"""Datasets of a scenario: the parties' CSV files, read and checked before any network traffic.

:func:`load_party_data` reads one party's file under the partition rules of a
:class:`~mpc.config.scenario.Scenario`; :func:`feature_order` gives the model's feature columns in
weight
order; :func:`load_evaluation` reads the launcher's held-out file; :func:`validate_all` checks
every file and their consistency. Failures raise :class:`ConfigError` naming file, line and
column.

Trust: the CSV files are the parties' secret inputs: error messages never quote a cell value.

Vertical rows: with ``data.align = "ordered"`` every file must carry the same ids in the same
order (checked here); with ``data.align = "psi"`` (the default) the files may hold different
ids in any order and the parties align them with :mod:`mpc.protocols.psi` at run time.
:func:`common_rows` computes that alignment in plaintext, for the launcher's ``--reference``
and tests only (it reads every party's ids). Nothing here opens a connection.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mpc.core.errors import ConfigError

# annotations only: mpc.config.scenario re-exports this module's names at its end
if TYPE_CHECKING:
    from mpc.config.scenario import Scenario

__all__ = [
    "Table", "PartyData", "load_table", "load_party_data", "load_evaluation", "feature_order",
    "validate_all", "expand_header", "header_columns", "common_rows", "apply_bounds",
    "weights_to_raw_scale", "load_party_test", "TEST_LABEL_BOUND", "input_bound_bits",
    "check_magnitudes", "check_party_table", "party_entry",
]

# |y| bound of a linear model's test labels with evaluate.at = "parties": keeps the label
# variance below 2^12, inside the exact range of the joint R^2's division (mpc.learn.evaluation).
TEST_LABEL_BOUND = 64.0

# Raw inputs must stay below 2^bits: with data.standardize (mpc.learn.dataprep: raw values at 24
# fractional bits, variances < 2^36 at 24 bits) 2^18; without, the training's products of
# unscaled values (|X^T r| < 2^14 per update at 16 fractional bits) allow 2^8.
STANDARDIZED_BOUND_BITS = 18
RAW_BOUND_BITS = 8


def input_bound_bits(s: Scenario) -> int:
    """The magnitude bound (as a power of two) on feature cells and linear labels."""
    return STANDARDIZED_BOUND_BITS if s.data.standardize else RAW_BOUND_BITS


def check_magnitudes(s: Scenario, table: Table, columns: Sequence[str]) -> None:
    """ConfigError naming file, line, column and the bound for the first cell too large for
    the fixed-point encoding and the protocols' domains."""
    bits = input_bound_bits(s)
    for col in columns:
        v = table.values[:, table.columns.index(col)]
        hint = ("" if s.data.standardize else
                "; set data.standardize = true to standardise jointly inside MPC")
        _bad_row(table, col, np.abs(v) >= 2.0**bits,
                 f"magnitude exceeds the bound 2^{bits} = {2**bits} for "
                 f"data.standardize = {str(s.data.standardize).lower()}{hint}")


@dataclass(frozen=True, eq=False)
class Table:
    """A numeric CSV: header ``columns``, ``values`` (rows x columns, float64), and the file
    line of every row (``lines``) so messages can point at it without quoting the value."""

    path: Path
    columns: tuple[str, ...]
    values: np.ndarray
    lines: np.ndarray


@dataclass(frozen=True, eq=False)
class PartyData:
    """One party's input: ``features`` (rows x features, float64) with their column names,
    ``labels`` (float64, or None where the party holds none) and ``ids`` (int64, or None)."""

    features: np.ndarray
    feature_names: tuple[str, ...]
    labels: np.ndarray | None
    ids: np.ndarray | None


def _rows(path: Path, header_only: bool = False) -> tuple[tuple[str, ...], list[Any]]:
    """Header and the non-blank rows, as (line number, cells), of a CSV file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = [] if header_only else [
                (reader.line_num, row) for row in reader if any(c.strip() for c in row)]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read data file ({exc.strerror})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({exc})") from exc
    return header_columns(path, header), rows


def header_columns(path: Path, header: list[str] | None) -> tuple[str, ...]:
    """A CSV header row's column names, stripped; :class:`ConfigError` naming the file for a
    missing or empty header, an empty column name or a duplicate one."""
    if not header or not any(c.strip() for c in header):
        raise ConfigError(f"{path}: empty file (expected a header row)")
    columns = tuple(c.strip() for c in header)
    for i, col in enumerate(columns):
        if not col or col in columns[:i]:
            kind = "empty" if not col else f"duplicate {col!r}"
            raise ConfigError(f"{path}: header column {i + 1} is {kind}")
    return columns


def expand_header(columns: Sequence[str], categories: Mapping[str, Sequence[str]]) -> list[str]:
    """Column names after one-hot encoding: a categorical column ``c`` with categories
    ``a, b`` becomes ``c=a, c=b`` in its place."""
    out: list[str] = []
    for col in columns:
        out += [f"{col}={v}" for v in categories[col]] if col in categories else [col]
    return out


def _one_hot(path: Path, column: str, cats: Sequence[str], rows: list[Any], j: int) -> np.ndarray:
    """Rows x len(cats) 0/1 matrix of column ``j``; an unlisted value is a ConfigError naming its
    line (never the value: it is data)."""
    index = {c: k for k, c in enumerate(cats)}
    out = np.zeros((len(rows), len(cats)))
    for i, (line, row) in enumerate(rows):
        k = index.get(row[j].strip())
        if k is None:
            what = "missing value" if not row[j].strip() else "value"
            raise ConfigError(f"{path}: line {line}, column {column!r}: {what} is not one of "
                              f"the {len(cats)} categories listed in data.categorical")
        out[i, k] = 1.0
    return out


MISSING_CELLS = ("", "na", "nan", "n/a")  # spellings of a missing cell (case-insensitive)


def load_table(path: Path, categories: Mapping[str, Sequence[str]] | None = None,
               missing: bool = False) -> Table:
    """Read a CSV with a header row and finite numeric cells into a float64 :class:`Table`;
    with ``missing`` (``data.missing = "mean"``), empty / NA / nan numeric cells become NaN.

    Cells are parsed with Python's ``float`` rules, all at once by numpy; only when that fails
    is the file walked cell by cell to name the first offending line and column. Columns named
    in ``categories`` (``data.categorical``) hold category strings instead: they are one-hot
    encoded here, by the file's owner, into columns ``name=category`` (:func:`expand_header`).
    """
    columns, rows = _rows(Path(path))
    if not rows:
        raise ConfigError(f"{path}: no data rows")
    return _table_from_rows(Path(path), columns, rows, categories, missing)


def _table_from_rows(path: Path, columns: tuple[str, ...], rows: list[Any],
                     categories: Mapping[str, Sequence[str]] | None, missing: bool) -> Table:
    """The :class:`Table` of ``rows`` ((line, cells) pairs) under header ``columns``."""
    for line, row in rows:
        if len(row) != len(columns):
            raise ConfigError(f"{path}: line {line}: {len(row)} cells, header has {len(columns)}")
    cats = {c: v for c, v in (categories or {}).items() if c in columns}
    numeric = [j for j, c in enumerate(columns) if c not in cats]
    plain = [[row[j] for j in numeric] for _, row in rows] if cats else [r for _, r in rows]
    if missing:
        plain = [["nan" if c.strip().lower() in MISSING_CELLS else c for c in r] for r in plain]
    try:
        values = np.array(plain, dtype=np.float64).reshape(len(rows), len(numeric))
        ok = bool((np.isfinite(values) | (np.isnan(values) & missing)).all())
    except ValueError:
        ok = False
    if not ok:
        _first_bad_cell(path, tuple(columns[j] for j in numeric),
                        [(ln, [row[j] for j in numeric]) for ln, row in rows], missing)
    if cats:
        blocks, k = [], 0
        for j, col in enumerate(columns):
            if col in cats:
                blocks.append(_one_hot(Path(path), col, cats[col], rows, j))
            else:
                blocks.append(values[:, k : k + 1])
                k += 1
        values = np.concatenate(blocks, axis=1)
        columns = tuple(expand_header(columns, cats))
    return Table(Path(path), columns, values, np.array([ln for ln, _ in rows], dtype=np.int64))


def _first_bad_cell(path: Path, columns: tuple[str, ...], rows: list[Any],
                    missing: bool = False) -> None:
    """Raise ConfigError for the first cell that is not a finite number (nor, with
    ``missing``, a missing cell)."""
    for line, row in rows:
        for column, cell in zip(columns, row, strict=True):
            if missing and cell.strip().lower() in MISSING_CELLS:
                continue
            if cell.strip().lower() in ("", "na", "n/a"):
                raise ConfigError(f"{path}: line {line}, column {column!r}: missing value "
                                  "(set data.missing = \"mean\" to impute it inside MPC, "
                                  "or fill or drop the row)")
            try:
                value = float(cell)
            except ValueError:
                raise ConfigError(f"{path}: line {line}, column {column!r}: "
                                  "not a number") from None
            if not math.isfinite(value):
                raise ConfigError(f"{path}: line {line}, column {column!r}: "
                                  "not a finite number (NaN or inf)")
    raise ConfigError(f"{path}: cells could not be read as numbers")


def _bad_row(table: Table, column: str, bad: np.ndarray, message: str) -> None:
    if bad.any():
        line = table.lines[int(np.argmax(bad))]
        raise ConfigError(f"{table.path}: line {line}, column {column!r}: {message}")


def _labels(s: Scenario, table: Table) -> np.ndarray:
    """The label column, checked against the model kind (0/1; class index; any finite)."""
    y = table.values[:, table.columns.index(s.data.label)].copy()
    _bad_row(table, s.data.label, np.isnan(y), "missing value (labels are never imputed)")
    if s.model.kind == "logistic":
        _bad_row(table, s.data.label, (y != 0) & (y != 1), "label must be 0 or 1")
    elif s.model.classes is not None:
        bad = (y != np.round(y)) | (y < 0) | (y >= s.model.classes)
        _bad_row(table, s.data.label, bad, f"label must be an integer in [0, {s.model.classes})")
    return y


def _ids(s: Scenario, table: Table) -> np.ndarray:
    """The id column as unique int64 values."""
    col = s.data.id_column
    v = table.values[:, table.columns.index(col)]
    _bad_row(table, col, np.isnan(v), "missing value (ids are never imputed)")
    _bad_row(table, col, (v != np.round(v)) | (np.abs(v) >= 2.0**53), "id must be an integer")
    ids = v.astype(np.int64)
    order = np.argsort(ids, kind="stable")
    dup = np.zeros(len(ids), dtype=bool)
    dup[order[1:]] = ids[order[1:]] == ids[order[:-1]]
    _bad_row(table, col, dup, "duplicate id")
    return ids


def party_entry(s: Scenario, name: str) -> Any:
    """The ``[[party]]`` entry named ``name`` (ConfigError naming the parties if none)."""
    party = next((p for p in s.parties if p.name == name), None)
    if party is None:
        raise ConfigError(f"{s.path}: no party named {name!r} (parties: "
                          f"{', '.join(s.party_names)})")
    return party


def _party(s: Scenario, name: str) -> tuple[Table, PartyData]:
    party = party_entry(s, name)
    table = load_table(party.data, s.data.categories, s.data.missing == "mean")
    return table, check_party_table(s, name, table)


def check_party_table(s: Scenario, name: str, table: Table) -> PartyData:
    """A party's table (or a chunk of its rows) checked under the partition rules of ``s``:
    its features (bounded columns mapped onto [-1, 1]), labels and ids (unique within it)."""
    label, id_col, cols = s.data.label, s.data.id_column, table.columns
    if s.data.partition == "horizontal" and label not in cols:
        raise ConfigError(f"{table.path}: missing label column {label!r} (data.label; every "
                          "party holds labels in a horizontal partition)")
    if s.data.partition == "vertical":
        if id_col not in cols:
            raise ConfigError(f"{table.path}: missing id column {id_col!r} (data.id_column; "
                              "required for a vertical partition)")
        if name == s.data.label_party and label not in cols:
            raise ConfigError(f"{table.path}: missing label column {label!r} (party {name!r} "
                              "is data.label_party)")
        if name != s.data.label_party and label in cols:
            raise ConfigError(f"{table.path}: has label column {label!r} but data.label_party "
                              f"is {s.data.label_party!r}")
    names = tuple(c for c in cols if c not in (label, id_col))
    if not names:
        raise ConfigError(f"{table.path}: no feature columns")
    bounded = s.data.scale_bounds  # clipped into [-1, 1] below: checked by their bounds
    check_magnitudes(s, table, [*(c for c in names if c not in bounded),
                                *([label] if s.model.kind == "linear" and label in cols else [])])
    features = table.values[:, [cols.index(c) for c in names]]
    features = apply_bounds(s, names, features)
    labels = _labels(s, table) if label in cols else None
    return PartyData(features, names, labels, _ids(s, table) if id_col in cols else None)


def _bound_affine(s: Scenario, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per feature in ``names``: the public (centre, half-width) of its ``data.bounds``;
    (0, 1) for unbounded columns."""
    bounds = s.data.scale_bounds
    centre = np.array([(bounds[c][0] + bounds[c][1]) / 2 if c in bounds else 0.0
                       for c in names])
    half = np.array([(bounds[c][1] - bounds[c][0]) / 2 if c in bounds else 1.0 for c in names])
    return centre, half


def apply_bounds(s: Scenario, names: Sequence[str], features: np.ndarray) -> np.ndarray:
    """An owner's columns clipped to their public ``data.bounds`` [lo, hi] and mapped onto
    [-1, 1] by (x - (lo + hi)/2) / ((hi - lo)/2); other columns unchanged."""
    bounds = s.data.scale_bounds
    if not bounds or not any(c in bounds for c in names):
        return features
    out = features.copy()
    for j, c in enumerate(names):
        if c in bounds:
            out[:, j] = np.clip(out[:, j], *bounds[c])
    centre, half = _bound_affine(s, names)
    return (out - centre) / half


def weights_to_raw_scale(
    s: Scenario, order: Sequence[str], weights: Sequence[np.ndarray],
    biases: Sequence[np.ndarray] | None,
) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The released model for raw columns (public post-processing of the released model):
    first-layer rows of bounded features divided by their half-width and the first bias
    shifted by the centres. A raw row outside its bounds is not clipped by the converted
    model. Bounds need the intercept (``model.intercept``), checked at load."""
    if not s.data.bounds:
        return list(weights), None if biases is None else list(biases)
    if biases is None:
        raise ConfigError("data.bounds needs model.intercept = true (the centring moves into "
                          "the bias)")
    centre, half = _bound_affine(s, order)
    first = weights[0] / half[:, None]
    b0 = np.asarray(biases[0]) - centre @ first
    return [first, *weights[1:]], [b0, *biases[1:]]


def load_party_data(s: Scenario, party_name: str) -> PartyData:
    """Load and check the data of one party under the partition rules of ``s``.

    Horizontal: every party has the label column; the id column is optional and is never a
    feature. Vertical: the id column is required, the label column is at ``label_party`` only.
    """
    return _party(s, party_name)[1]


def feature_order(s: Scenario) -> list[str]:
    """Names of all model features in weight order, read from the CSV headers only.

    Horizontal: the first party's feature columns. Vertical: each party's feature columns in
    party (pid) order; a column held by two parties is an error.
    """
    drop = (s.data.label, s.data.id_column)
    seen: dict[str, Path] = {}
    for party in s.parties[: 1 if s.data.partition == "horizontal" else None]:
        for col in expand_header(_rows(party.data, header_only=True)[0], s.data.categories):
            if col in seen:
                raise ConfigError(f"{party.data}: feature column {col!r} is also held by "
                                  f"{seen[col]}; vertical parties hold disjoint features")
            if col not in drop:
                seen[col] = party.data
    unknown = [c for c in s.data.scale_bounds if c not in seen]
    if unknown:
        raise ConfigError(f"{s.path}: data.bounds names {unknown}, which no party holds as a "
                          "feature column")
    return list(seen)


def load_evaluation(s: Scenario) -> PartyData | None:
    """Load ``[evaluate] data`` (all features in :func:`feature_order`), or None if unset."""
    if s.evaluate.data is None:
        return None
    table, order = load_table(s.evaluate.data, s.data.categories), feature_order(s)
    for col in [*order, s.data.label]:
        if col not in table.columns:
            raise ConfigError(f"{table.path}: missing column {col!r} (a party feature column "
                              "or data.label)")
    for col in table.columns:
        if col not in (*order, s.data.label, s.data.id_column):
            raise ConfigError(f"{table.path}: column {col!r} is not a feature of any party")
    features = table.values[:, [table.columns.index(c) for c in order]]
    ids = _ids(s, table) if s.data.id_column in table.columns else None
    return PartyData(features, tuple(order), _labels(s, table), ids)


def load_party_test(s: Scenario, party_name: str, feature_names: Sequence[str]) -> PartyData:
    """One party's own test file (``party.test``, with ``evaluate.at = "parties"``): the same
    rules as its training file, and the same feature columns (``feature_names``) in the same
    order. A linear model's test labels must satisfy ``|y| < TEST_LABEL_BOUND``."""
    party = next((p for p in s.parties if p.name == party_name), None)
    if party is None or party.test is None:
        raise ConfigError(f"{s.path}: party {party_name!r} has no test file (party.test)")
    test = party.test
    swapped = tuple(replace(p, data=test) if p.name == party_name else p for p in s.parties)
    table, data = _party(replace(s, parties=swapped), party_name)
    if data.feature_names != tuple(feature_names):
        raise ConfigError(f"{table.path}: feature columns differ from the party's training "
                          f"file {party.data} ({len(data.feature_names)} vs "
                          f"{len(feature_names)}; the same columns in the same order)")
    if s.model.kind == "linear" and data.labels is not None:
        _bad_row(table, s.data.label, np.abs(data.labels) >= TEST_LABEL_BOUND,
                 f"test label must satisfy |y| < {TEST_LABEL_BOUND:g} (range of the joint "
                 "R^2 computed with evaluate.at = 'parties')")
    return data


def common_rows(ids: list[np.ndarray]) -> list[np.ndarray]:
    """Per party, the row indices of the ids held by every party, in ascending id order (the
    order :func:`mpc.protocols.psi.private_intersection` gives). Plaintext: verification only."""
    common = ids[0]
    for other in ids[1:]:
        common = np.intersect1d(common, other)
    out = []
    for own in ids:
        order = np.argsort(own, kind="stable")
        out.append(order[np.searchsorted(own, common, sorter=order)])
    return out



def validate_all(s: Scenario) -> None:
    """Check every data file of ``s`` and their consistency before any network traffic,
    reading each file in chunks: :func:`mpc.config.streaming.validate_all`."""
    from mpc.config.streaming import validate_all as validate_streamed  # imports this module

    validate_streamed(s)

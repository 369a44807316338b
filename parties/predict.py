"""``mpc-predict RUN_DIR DATA.csv [--out preds.csv]``: apply a released model to a raw CSV.

Reads ``RUN_DIR/model.pt`` (written by ``mpc-launch``), takes the model's feature columns from
``DATA.csv`` by name (other columns, e.g. an id or the label, are ignored) and writes one row
of predictions per data row: ``p1`` and ``prediction`` (0/1 at 0.5) for logistic regression,
``p0 .. p{K-1}`` and ``prediction`` (the most probable class) for softmax and MLP models, and
``prediction`` for linear regression. A missing or non-numeric cell in a feature column is
refused with its line and column: the released model does not impute.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from mpc.core.errors import ConfigError
from mpc.learn.model import ModelSpec, build_module, load_spec

__all__ = ["main", "read_features", "predict_rows"]

_MISSING = ("", "na", "nan", "n/a", "null", "none")


def read_features(
    path: Path, names: Sequence[str], categories: Mapping[str, Sequence[str]] | None = None
) -> np.ndarray:
    """The model's input columns ``names`` from CSV ``path`` as float64 (rows x len(names)).

    A name ``col=value`` of a categorical column (``categories``) is taken from an already
    one-hot column of that name or, if the file holds the raw column ``col``, encoded from it.
    Any missing, non-numeric or unlisted cell raises :class:`ConfigError` naming its line and
    column (never its value).
    """
    cats = dict(categories or {})
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{path}: empty file (no header row)")
            header = [h.strip() for h in header]
            # per model input: (header index, category or None for a numeric column)
            sources: list[tuple[int, str | None]] = []
            missing = []
            for name in names:
                col, _, value = name.partition("=")
                if name in header:
                    sources.append((header.index(name), None))
                elif col in cats and col in header and value in cats[col]:
                    sources.append((header.index(col), value))
                else:
                    missing.append(name)
            if missing:
                raise ConfigError(f"{path}: missing feature column(s) {missing}")
            rows: list[tuple[int, list[str]]] = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise ConfigError(
                        f"{path}: line {reader.line_num}: {len(row)} cells, header has "
                        f"{len(header)}"
                    )
                rows.append((reader.line_num, [cell.strip() for cell in row]))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{path}: not a readable CSV file ({type(exc).__name__})") from None
    if not rows:
        raise ConfigError(f"{path}: no data rows")
    out = np.empty((len(rows), len(names)))
    numeric = [k for k, (_, cat) in enumerate(sources) if cat is None]
    for k, (j, cat) in enumerate(sources):
        if cat is None:
            continue
        allowed = set(cats[header[j]])
        for line, row in rows:
            if row[j] not in allowed:
                raise ConfigError(f"{path}: line {line}, column {header[j]!r}: value is not one "
                                  f"of the {len(allowed)} categories the model was trained on")
        out[:, k] = [row[j] == cat for _, row in rows]
    cells = [[row[sources[k][0]] for k in numeric] for _, row in rows]
    try:
        values = np.array(cells, dtype=np.float64).reshape(len(rows), len(numeric))
        ok = bool(np.isfinite(values).all())
    except ValueError:
        ok = False
    if ok:
        out[:, numeric] = values
        return out
    for (line, _), cells_row in zip(rows, cells, strict=True):
        for k, cell in zip(numeric, cells_row, strict=True):
            name = names[k]
            if cell.lower() in _MISSING:
                raise ConfigError(
                    f"{path}: line {line}, column {name!r}: missing value; the released model "
                    "does not impute missing cells"
                )
            try:
                number = float(cell)
            except ValueError:
                raise ConfigError(f"{path}: line {line}, column {name!r}: not a number") from None
            if not np.isfinite(number):
                raise ConfigError(f"{path}: line {line}, column {name!r}: not a finite number")
    raise ConfigError(f"{path}: cells could not be read as numbers")


def predict_rows(spec: ModelSpec, x: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Column names and values of the prediction table for feature rows ``x``."""
    with torch.no_grad():
        out = build_module(spec)(torch.as_tensor(x, dtype=torch.float64)).numpy()
    if spec.kind == "linear":
        return ["prediction"], out
    if spec.kind == "logistic":
        return ["p1", "prediction"], np.column_stack([out[:, 0], out[:, 0] >= 0.5])
    cols = [f"p{k}" for k in range(out.shape[1])]
    return [*cols, "prediction"], np.column_stack([out, out.argmax(1)])


def _write(out: TextIO, cols: list[str], values: np.ndarray, kind: str) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(cols)
    integer_last = kind != "linear"
    for row in values:
        cells = [repr(float(v)) for v in row]
        if integer_last:
            cells[-1] = str(int(row[-1]))
        writer.writerow(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpc-predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="output directory of mpc-launch")
    parser.add_argument("data", type=Path, help="CSV with the model's feature columns")
    parser.add_argument("--out", type=Path, default=None, help="write here (default: stdout)")
    args = parser.parse_args(argv)
    try:
        model_file = args.run_dir / "model.pt"
        if not model_file.is_file():
            raise ConfigError(f"{model_file}: no model file (is {args.run_dir} a finished run?)")
        spec = load_spec(model_file)
        x = read_features(args.data, spec.features, spec.categories)
        cols, values = predict_rows(spec, x)
        if args.out is None:
            try:
                _write(sys.stdout, cols, values, spec.kind)
                sys.stdout.flush()
            except BrokenPipeError:  # e.g. `mpc-predict ... | head`: the reader has enough
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        else:
            with open(args.out, "w", newline="") as fh:
                _write(fh, cols, values, spec.kind)
            print(f"wrote {len(values)} predictions to {args.out}", file=sys.stderr)
    except ConfigError as exc:
        print(f"mpc-predict: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

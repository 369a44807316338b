"""Write the small CSV datasets used by the shipped scenarios (deterministic; run from anywhere).

    python scenarios/make_data.py

Sources are the datasets bundled with scikit-learn (no download): breast_cancer (binary),
diabetes (regression) and digits (10 classes). Each is split 80/20 into train/test with a fixed
seed; the train rows are then dealt to the parties in contiguous, near-equal blocks.
Files are written under ``scenarios/data/``; every file has a header row and numeric cells.
The values are raw (unstandardised), as a real consortium holds them: the toolkit standardises
jointly inside MPC (``data.standardize``, mpc/learn/dataprep.py), with statistics nobody sees.

The vertical ("banks") files are deliberately *unaligned*, as real partners' files are: each
customer has a random 15-digit id (distinctive, so tests can grep logs for them), every bank
lists its customers in its own random order, and about 10-20 % of a bank's customers are
unknown to the other banks (for three banks, a few more are shared by two banks only). The
parties find the common customers with private set intersection (``data.align = "psi"``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits

SEED = 20240601
TEST_FRACTION = 0.2
OUT = Path(__file__).resolve().parent / "data"


def split(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a shuffled 80/20 train/test split of ``n`` rows."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = round(n * TEST_FRACTION)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def snake(name: str) -> str:
    return name.strip().replace(" ", "_").replace("-", "_")


def cell(value: float, integer: bool) -> str:
    return str(int(value)) if integer else f"{value:.6g}"


def write(path: Path, columns: Sequence[str], blocks: Sequence[np.ndarray],
          integer_columns: Sequence[str] = ()) -> None:
    """Write ``blocks`` (column groups with the same number of rows) side by side as one CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.column_stack(blocks)
    flags = [c in integer_columns for c in columns]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(columns)
        out.writerows([cell(v, f) for v, f in zip(row, flags, strict=True)] for row in values)
    print(f"wrote {path.relative_to(OUT.parent)} ({len(values)} rows, {len(columns)} columns)")


def horizontal(folder: str, names: Sequence[str], features: list[str], x: np.ndarray,
               y: np.ndarray, integer_label: bool) -> None:
    """Deal the rows of (x, y) to ``names`` in contiguous near-equal blocks."""
    ints = ["target"] if integer_label else []
    for name, rows in zip(names, np.array_split(np.arange(len(x)), len(names)), strict=True):
        write(OUT / folder / f"{name}.csv", [*features, "target"], [x[rows], y[rows]], ints)


def customer_ids(n: int, seed: int = SEED) -> np.ndarray:
    """``n`` distinct random 15-digit ids (exact in float64: below 2**53)."""
    return 10**14 + np.random.default_rng(seed + 1).choice(9 * 10**14, n, replace=False)


def holders(n_rows: int, groups: Sequence[tuple[tuple[int, ...], int]],
            seed: int) -> list[tuple[int, ...]]:
    """Which parties hold each row: ``groups`` gives (parties, count) for all but the rows held
    by everyone; the rows are assigned at random."""
    order = np.random.default_rng(seed).permutation(n_rows)
    out: list[tuple[int, ...]] = [()] * n_rows
    start = 0
    for who, count in groups:
        for r in order[start : start + count]:
            out[r] = who
        start += count
    everyone = tuple(range(max(p for who, _ in groups for p in who) + 1))
    return [who or everyone for who in out]


def vertical(folder: str, names: Sequence[str], features: list[str], ids: np.ndarray,
             x: np.ndarray, y: np.ndarray, held: Sequence[tuple[int, ...]], seed: int) -> None:
    """Split the columns of x among ``names`` in order (the first party also holds the label);
    party i gets the rows r with i in held[r], in its own random order."""
    rng = np.random.default_rng(seed)
    for i, cols in enumerate(np.array_split(np.arange(x.shape[1]), len(names))):
        rows = np.array([r for r in range(len(ids)) if i in held[r]])
        rows = rows[rng.permutation(len(rows))]
        header = ["id", *(features[c] for c in cols)]
        blocks = [ids[rows], x[rows][:, cols]]
        if i == 0:
            header, blocks = [*header, "target"], [*blocks, y[rows]]
        write(OUT / folder / f"{names[i]}.csv", header, blocks, ["id", "target"])


def main() -> None:
    # breast_cancer: 569 x 30, binary label (1 = benign). Raw features (0.001 .. 4254).
    bc = load_breast_cancer()
    features = [snake(n) for n in bc.feature_names]
    train, test = split(len(bc.target))
    x_train, x_test = bc.data[train], bc.data[test]
    y_train, y_test = bc.target[train].astype(float), bc.target[test].astype(float)
    horizontal("breast_cancer", ["hospital_a", "hospital_b", "hospital_c"], features,
               x_train, y_train, True)
    horizontal("breast_cancer", ["clinic_a", "clinic_b"], features, x_train, y_train, True)
    write(OUT / "breast_cancer" / "test.csv", [*features, "target"], [x_test, y_test],
          ["target"])

    # Vertical splits of the same rows, unaligned (see the module docstring). Of the 455 train
    # rows, two banks share 350 (bank_a alone holds 55, bank_b alone 50); three banks share
    # 300, each holds 40-45 alone and 10 with one other bank only.
    ids = customer_ids(len(bc.target)).astype(float)
    splits = {
        "banks": (["bank_a", "bank_b"], [((0,), 55), ((1,), 50)]),
        "banks3": (["bank_a", "bank_b", "bank_c"],
                   [((0,), 45), ((1,), 40), ((2,), 40), ((0, 1), 10), ((1, 2), 10),
                    ((0, 2), 10)]),
    }
    for k, (folder, (names, groups)) in enumerate(splits.items()):
        held = holders(len(train), groups, SEED + 10 + k)
        vertical(folder, names, features, ids[train], x_train, y_train, held, SEED + 20 + k)
        write(OUT / folder / "test.csv", ["id", *features, "target"],
              [ids[test], x_test, y_test], ["id", "target"])

    # diabetes: 442 x 10, regression. Raw features (age in years, sex 1/2, bmi, blood pressure,
    # six serum measurements) and the raw target (disease progression, 25 .. 346).
    db = load_diabetes(scaled=False)
    features = [snake(n) for n in db.feature_names]
    train, test = split(len(db.target))
    x_train, x_test = db.data[train], db.data[test]
    y_train, y_test = db.target[train], db.target[test]
    horizontal("diabetes", ["site_a", "site_b", "site_c"], features, x_train, y_train, False)
    write(OUT / "diabetes" / "test.csv", [*features, "target"], [x_test, y_test])

    # digits: 1797 x 64 raw pixels in 0..16, 10 classes (constant border pixels: the joint
    # standardisation gives them weight 0 without revealing which they are).
    dg = load_digits()
    features = [snake(n) for n in dg.feature_names]
    train, test = split(len(dg.target))
    x_train, x_test = dg.data[train], dg.data[test]
    y_train, y_test = dg.target[train].astype(float), dg.target[test].astype(float)
    horizontal("digits", ["lab_a", "lab_b", "lab_c"], features, x_train, y_train, True)
    write(OUT / "digits" / "test.csv", [*features, "target"], [x_test, y_test], ["target"])


if __name__ == "__main__":
    main()

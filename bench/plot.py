"""Plot training time per epoch from ``bench/scaling.py`` and ``bench/train_bench.py`` JSON.

Usage (from the repository root)::

    python bench/plot.py RESULTS.json [MORE.json ...] [--out scaling.png]
                         [--parties-workload breast_cancer] [--size-parties 2] [--no-plaintext]
                         [--json SUMMARY.json]

Inputs: ``scaling.py --json`` files (``{"meta": ..., "rows": [...]}``) and/or
``train_bench.py --json`` files (a list of rows). A row has ``workload``, ``parties``,
``ours`` (with ``s_per_epoch``; null if the run failed), ``crypten`` (``s_per_epoch`` or null)
and ``plaintext``. If several files hold the same (workload, parties), the last file wins.

Output: one PNG (matplotlib, Agg backend) with two panels, both with a log y axis:

1. seconds per epoch vs number of parties on ``--parties-workload``;
2. seconds per epoch vs training rows (log x) at ``--size-parties`` parties, one point per
   workload (labelled).

Each panel shows ours (solid), CrypTen (dashed, where present, with the CrypTen/ours ratio
next to its points) and the plaintext torch reference (dotted, unless ``--no-plaintext``).
``--json`` also writes the plotted series. Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Training rows of the bench workloads (bench/data.py), for rows that do not record them.
TRAIN_ROWS = {"breast_cancer": 455, "synthetic10k": 10_000, "synthetic100k": 100_000}
SERIES = (  # key in a row, label, line style, colour
    ("ours", "ours (MPC, TLS processes)", "-", "tab:blue"),
    ("crypten", "CrypTen 0.4.1", "--", "tab:red"),
    ("plaintext", "plaintext torch", ":", "tab:gray"),
)


def load_rows(paths: list[Path]) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str]]:
    """Rows keyed by (workload, parties), later files overriding earlier ones."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    notes: list[str] = []
    for path in paths:
        data = json.loads(path.read_text())
        items = data["rows"] if isinstance(data, dict) else data
        meta = data.get("meta", {}) if isinstance(data, dict) else {}
        if meta.get("epochs"):
            notes.append(f"{path.name}: {meta['epochs']} epoch(s)")
        for row in items:
            if "ops" in row or "workload" not in row:
                raise SystemExit(f"{path}: not a scaling.py / train_bench.py result")
            rows[(row["workload"], int(row["parties"]))] = row
    return rows, notes


def seconds(row: dict[str, Any], key: str) -> float | None:
    entry = row.get(key)
    if not entry or entry.get("s_per_epoch") is None:
        return None
    return float(entry["s_per_epoch"])


def train_rows(row: dict[str, Any]) -> int:
    if row.get("train_rows"):
        return int(row["train_rows"])
    if row["workload"] in TRAIN_ROWS:
        return TRAIN_ROWS[row["workload"]]
    from bench.data import load  # only for workloads added after this script

    return int(load(row["workload"])[0].shape[0])


def series(points: list[tuple[float, dict[str, Any]]], key: str) -> list[tuple[float, float]]:
    out = []
    for x, row in sorted(points, key=lambda p: p[0]):
        s = seconds(row, key)
        if s is not None:
            out.append((x, s))
    return out


def draw(ax: Any, points: list[tuple[float, dict[str, Any]]], keys: list[str]) -> dict[str, Any]:
    plotted: dict[str, Any] = {}
    ours = dict(series(points, "ours"))
    for key, label, style, colour in SERIES:
        if key not in keys:
            continue
        xy = series(points, key)
        if not xy:
            continue
        xs, ys = zip(*xy, strict=True)
        marker = {"ours": "o", "crypten": "s"}.get(key, "^")
        ax.plot(xs, ys, style, marker=marker, color=colour, label=label,
                linewidth=2 if key != "plaintext" else 1.5, markersize=6)
        plotted[key] = [list(p) for p in xy]
        if key == "crypten":
            for x, y in xy:
                if x in ours and ours[x] > 0:
                    ax.annotate(f"{y / ours[x]:.0f}x", (x, y), textcoords="offset points",
                                xytext=(6, 4), fontsize=8, color=colour)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("seconds per epoch (log)")
    return plotted


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("scaling.png"))
    ap.add_argument("--parties-workload", default="breast_cancer")
    ap.add_argument("--size-parties", type=int, default=2)
    ap.add_argument("--no-plaintext", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the plotted series")
    args = ap.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("bench/plot.py needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, notes = load_rows(args.inputs)
    keys = ["ours", "crypten"] + ([] if args.no_plaintext else ["plaintext"])
    by_parties = [(float(n), r) for (w, n), r in rows.items() if w == args.parties_workload]
    by_size = [(float(train_rows(r)), r) for (_, n), r in rows.items() if n == args.size_parties]

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    summary: dict[str, Any] = {}
    summary["parties"] = draw(left, by_parties, keys)
    left.set_xlabel("parties")
    left.set_title(f"{args.parties_workload}: time per epoch vs parties")
    if by_parties:
        left.set_xticks(sorted({int(x) for x, _ in by_parties}))
    else:
        left.text(0.5, 0.5, f"no rows for {args.parties_workload}", ha="center",
                  transform=left.transAxes)

    summary["size"] = draw(right, by_size, keys)
    right.set_xscale("log")
    right.set_xlabel("training rows (log)")
    right.set_title(f"{args.size_parties} parties: time per epoch vs dataset size")
    for x, row in by_size:
        s = seconds(row, "ours")
        if s is not None:
            right.annotate(row["workload"], (x, s), textcoords="offset points", xytext=(0, -14),
                           ha="center", fontsize=8)
    if by_size:
        xs = sorted(x for x, _ in by_size)
        right.set_xlim(xs[0] / 2, xs[-1] * 2)
    else:
        right.text(0.5, 0.5, f"no rows with {args.size_parties} parties", ha="center",
                   transform=right.transAxes)
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9, loc="best")
    fig.suptitle("Logistic-regression SGD, seconds per epoch" +
                 (f" ({'; '.join(notes)})" if notes else ""), fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(by_parties)} points vs parties, {len(by_size)} vs size)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""End-to-end logistic-regression training benchmark: our real processes (mutual TLS, loopback)
vs plaintext torch, and optionally CrypTen 0.4.1 run side by side (``--crypten``).

Usage: python bench/train_bench.py [--workloads breast_cancer synthetic10k] [--parties 2 3]
                                   [--epochs N] [--crypten] [--crypten-steps 20] [--json OUT]
                                   [--comparison auto fss bitwise] [--repeats N]

For each (workload, parties) it writes the data as per-party CSVs plus a scenario file into a
temporary directory, runs ``mpc-launch`` (dealer + one process per party), and reads seconds
per epoch counted whole (report.json ``train_seconds`` -- masking and data preparation
included -- plus ``offline_seconds``, the dealer's generation before training started, divided
by the epochs), bytes and rounds per training step (report.json ``training``: one-time setup
and the epoch-end range checks apart), dealer bytes per step, CPU per step (party and dealer) and
test accuracy, next to the launcher's plaintext reference (float64 torch, exact sigmoid, same
data, batches and initialisation: ``ref acc``). ``plain s/ep`` times plaintext torch SGD.

``--repeats N`` (as ``bench/neural_bench.py``): per (workload, parties) CrypTen and each of our
comparison rows run N times, alternating (CrypTen, ours per comparison, CrypTen, ...); a row
shows each column's median run (``neural_bench.median_runs``: for an even N ours' slower and
CrypTen's faster middle run), and ``runs`` gives the lowest and highest CrypTen/ours ratio of
a pair run side by side. This machine's epochs vary by up to ~40% between runs of the same code.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.data import load, split_rows  # noqa: E402
from bench.neural_bench import median_runs  # noqa: E402
from bench.plaintext import accuracy, train_logreg  # noqa: E402

BATCH = {"breast_cancer": 64, "synthetic10k": 128, "synthetic100k": 128}
# Issue 6's settings: 10 epochs of breast_cancer (8 steps each), 3 of the synthetic sets.
EPOCHS = {"breast_cancer": 10, "synthetic10k": 3, "synthetic100k": 3}


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([f"f{i}" for i in range(X.shape[1])] + ["target"])
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="",
               fmt="%.10g")


def run_ours(workload: str, parties: int, epochs: int, work: Path,
             comparison: str = "auto") -> dict[str, Any]:
    Xtr, ytr, Xte, yte = load(workload)
    names = [f"p{i}" for i in range(parties)]
    for name, (X, y) in zip(names, split_rows(Xtr, ytr, parties), strict=True):
        _write_csv(work / f"{name}.csv", X, y)
    _write_csv(work / "test.csv", Xte, yte)
    batch = BATCH[workload]
    # Issue 6's setting: data standardised by bench/data.py, no intercept, no data preparation.
    toml = [f'name = "bench-{workload}-{parties}"', "seed = 0", "[model]", 'kind = "logistic"',
            "intercept = false",
            "[train]", f"epochs = {epochs}", f"batch_size = {batch}", "learning_rate = 0.5",
            "[data]", 'partition = "horizontal"', 'label = "target"', "standardize = false",
            "[evaluate]",
            'data = "test.csv"', "[network]", "timeout_s = 300.0",
            "[protocol]", f'comparison = "{comparison}"']
    for name in names:
        toml += ["[[party]]", f'name = "{name}"', f'data = "{name}.csv"']
    scenario = work / "scenario.toml"
    scenario.write_text("\n".join(toml) + "\n")
    out = work / "out"
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "parties.launch", str(scenario), "--out", str(out), "--quiet",
           "--reference"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"launch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    log = (out / "logs" / f"{names[0]}.log").read_text()
    epoch_s = [float(m) for m in re.findall(r"epoch \d+/\d+ done in ([0-9.]+)s", log)]
    steps = -(-Xtr.shape[0] // batch)
    training = report["training"]
    total_steps = steps * epochs
    # Time counted whole: the parties' training clock (masking and data preparation included)
    # plus any dealer generation before it started (offline_seconds).
    whole = report["train_seconds"] + report["offline_seconds"]
    return {
        "s_per_epoch": whole / epochs,
        "ms_per_step": 1000 * whole / total_steps,
        "offline_seconds": report["offline_seconds"],
        "epoch_seconds": epoch_s,  # the epochs' own clocks (steps + range check)
        "comparison": report["comparison"],
        "bytes_per_party_per_step": training["bytes_sent_per_step"][names[0]],
        "rounds_per_step": report["rounds_per_step"],
        "dealer_bytes_per_step": training["dealer_bytes_per_step"],
        "range_check_rounds_per_epoch": training["range_check_rounds_per_epoch"],
        "dealer_bytes": report["dealer"]["bytes_sent"],
        "party_cpu_ms_per_step": 1000 * max(p["cpu_seconds"] for p in report["per_party"])
        / total_steps,
        "dealer_cpu_ms_per_step": 1000 * report["dealer"]["cpu_seconds"] / total_steps,
        "accuracy": report["metrics"]["accuracy"],
        # plaintext float64 torch, same data, schedule and initialisation, exact sigmoid
        "reference_accuracy": report["reference"]["accuracy"],
        "max_abs_weight_diff": report["max_abs_weight_diff"],
        "wall_seconds": wall,
        "steps_per_epoch": steps,
    }


def run_plain(workload: str, epochs: int) -> dict[str, Any]:
    Xtr, ytr, Xte, yte = load(workload)
    w, s_epoch = train_logreg(Xtr, ytr, epochs, BATCH[workload], 0.5, 0)
    return {"s_per_epoch": s_epoch, "accuracy": accuracy(Xte, yte, w)}


def run_crypten(workload: str, parties: int, steps: int, work: Path) -> dict[str, Any] | None:
    out = work / "crypten.json"
    cmd = [sys.executable, str(ROOT / "bench" / "crypten" / "run_crypten.py"), "--workload",
           workload, "--parties", str(parties), "--epochs", "1", "--max-steps", str(steps),
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0 or not out.exists():
        print(f"crypten run failed: {proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(out.read_text())


HEAD = (f"{'workload':<15}{'n':>3}{'cmp':>8}{'ours s/ep':>11}{'ms/step':>9}{'KB/step':>9}"
        f"{'rounds':>8}{'cpu ms':>8}{'dealer':>8}{'acc':>7}{'plain s/ep':>12}{'ref acc':>10}"
        f"{'CrypTen s/ep':>14}{'speedup':>9}{'runs':>6}{'speedups':>12}")


def row_text(row: dict[str, Any]) -> str:
    """One line of the table: the row's median runs, its repeat count and ratio range."""
    ours, plain, peer = row["ours"], row["plaintext"], row["crypten"]
    peer_s = peer["s_per_epoch"] if peer else float("nan")
    ratios = row.get("ratio_runs") or []
    spread = f"{min(ratios):.1f}-{max(ratios):.1f}" if ratios else "-"
    return (f"{row['workload']:<15}{row['parties']:>3}{ours['comparison']:>8}"
            f"{ours['s_per_epoch']:>11.3f}{ours['ms_per_step']:>9.2f}"
            f"{ours['bytes_per_party_per_step'] / 1000:>9.1f}{ours['rounds_per_step']:>8.1f}"
            f"{ours['party_cpu_ms_per_step']:>8.2f}{ours['dealer_cpu_ms_per_step']:>8.2f}"
            f"{ours['accuracy']:>7.3f}{plain['s_per_epoch']:>12.4f}"
            f"{ours['reference_accuracy']:>10.3f}"
            f"{peer_s:>14.2f}{peer_s / ours['s_per_epoch']:>9.1f}"
            f"{row.get('repeats', 1):>6}{spread:>12}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workloads", nargs="+", default=["breast_cancer", "synthetic10k"])
    ap.add_argument("--parties", nargs="+", type=int, default=[2, 3])
    ap.add_argument("--epochs", type=int, default=None,
                    help=f"epochs per run (default per workload: {EPOCHS})")
    ap.add_argument("--crypten", action="store_true", help="also run CrypTen side by side")
    ap.add_argument("--crypten-steps", type=int, default=20)
    ap.add_argument("--comparison", nargs="+", default=["auto"],
                    choices=["auto", "fss", "bitwise"],
                    help="[protocol] comparison of our runs (one row each)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each column per row, alternating; the median run is shown")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    rows = []
    print(HEAD, flush=True)
    for workload in args.workloads:
        epochs = args.epochs or EPOCHS[workload]
        plain = run_plain(workload, epochs)
        for n in args.parties:
            peer_runs: list[dict[str, Any] | None] = []
            ours_runs: dict[str, list[dict[str, Any]]] = {c: [] for c in args.comparison}
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as tmp:
                    peer_runs.append(run_crypten(workload, n, args.crypten_steps, Path(tmp))
                                     if args.crypten else None)
                for comparison in args.comparison:
                    with tempfile.TemporaryDirectory() as tmp:
                        ours_runs[comparison].append(
                            run_ours(workload, n, epochs, Path(tmp), comparison))
            for comparison in args.comparison:
                row = {"workload": workload, "parties": n, "epochs": epochs,
                       "plaintext": plain, **median_runs(ours_runs[comparison], peer_runs)}
                rows.append(row)
                print(row_text(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

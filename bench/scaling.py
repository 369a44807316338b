"""Scaling of end-to-end logistic-regression training: time per epoch vs the number of parties
and vs the dataset size (real processes over mutual TLS on loopback, via ``mpc-launch``).

Usage (from the repository root)::

    python bench/scaling.py [--parties 2 3 4 5 6] [--parties-workload breast_cancer]
                            [--workloads breast_cancer synthetic10k] [--synthetic100k]
                            [--size-parties 2] [--epochs 2] [--crypten] [--crypten-steps 20]
                            [--skip-parties-sweep] [--skip-size-sweep] [--json OUT]

Each configuration is one run of ``bench/train_bench.py``'s ``run_ours`` (per-party CSVs from
``bench.data.split_rows`` and a scenario file in a temporary directory, then ``mpc-launch`` with
one process per party plus the dealer; the launcher pins every process to one torch thread).
Seconds per epoch are the mean of party 0's own epoch timings; bytes and rounds per step
exclude the one-time input masking. The plaintext torch reference (``run_plain``) runs once per
workload. With ``--crypten`` the same configuration also runs CrypTen 0.4.1 via
``train_bench.run_crypten`` (``--crypten-steps`` steps, extrapolated to an epoch) for 2 to 6
parties.

Sweeps: parties ``--parties`` on ``--parties-workload``; dataset size ``--workloads`` (plus
``synthetic100k`` with ``--synthetic100k``) at ``--size-parties`` parties. A configuration
in both sweeps runs once. A failed run is reported and recorded with its error; the others go on.

The JSON (``--json``) is ``{"meta": ..., "rows": [...]}``; every row has the keys of a
``train_bench.py --json`` row (``workload``, ``parties``, ``ours``, ``crypten``, ``plaintext``)
plus ``sweeps`` (``"parties"`` and/or ``"size"``), ``train_rows`` and ``features``;
``bench/plot.py`` reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data import load  # noqa: E402
from bench.train_bench import run_crypten, run_ours, run_plain  # noqa: E402

CRYPTEN_PARTIES = (2, 3, 4, 5, 6)  # bench/crypten/run_crypten.py --parties accepts these


def plan(args: argparse.Namespace) -> list[tuple[str, int, list[str]]]:
    """(workload, parties, sweeps) in run order, each configuration once."""
    configs: dict[tuple[str, int], list[str]] = {}
    if not args.skip_parties_sweep:
        for n in args.parties:
            configs.setdefault((args.parties_workload, n), []).append("parties")
    if not args.skip_size_sweep:
        workloads = list(args.workloads)
        if args.synthetic100k and "synthetic100k" not in workloads:
            workloads.append("synthetic100k")
        for w in workloads:
            configs.setdefault((w, args.size_parties), []).append("size")
    return [(w, n, sweeps) for (w, n), sweeps in configs.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    ap.add_argument("--parties-workload", default="breast_cancer")
    ap.add_argument("--workloads", nargs="+", default=["breast_cancer", "synthetic10k"])
    ap.add_argument("--synthetic100k", action="store_true", help="add synthetic100k (slow)")
    ap.add_argument("--size-parties", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--crypten", action="store_true", help="also run CrypTen side by side")
    ap.add_argument("--crypten-steps", type=int, default=20)
    ap.add_argument("--skip-parties-sweep", action="store_true")
    ap.add_argument("--skip-size-sweep", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    configs = plan(args)
    shapes: dict[str, tuple[int, int]] = {}
    plain: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    print(f"{len(configs)} configurations, {args.epochs} epoch(s) each, {os.cpu_count()} CPUs")
    head = (f"{'sweep':<13}{'workload':<15}{'n':>3}{'rows':>8}{'ours s/ep':>11}{'ms/step':>10}"
            f"{'KB/step':>10}{'rounds':>8}{'acc':>7}{'plain s/ep':>12}{'CrypTen s/ep':>14}"
            f"{'ratio':>7}")
    print(head)
    for workload, n, sweeps in configs:
        if workload not in shapes:
            Xtr = load(workload)[0]
            shapes[workload] = (int(Xtr.shape[0]), int(Xtr.shape[1]))
            plain[workload] = run_plain(workload, args.epochs)
        row: dict[str, Any] = {"workload": workload, "parties": n, "sweeps": sweeps,
                               "train_rows": shapes[workload][0],
                               "features": shapes[workload][1], "ours": None,
                               "crypten": None, "plaintext": plain[workload]}
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="scaling_") as tmp:
            try:
                row["ours"] = run_ours(workload, n, args.epochs, Path(tmp))
            except (RuntimeError, OSError, ValueError, KeyError) as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"ours failed for {workload} n={n}: {row['error'][-2000:]}",
                      file=sys.stderr)
            if args.crypten and n in CRYPTEN_PARTIES:
                row["crypten"] = run_crypten(workload, n, args.crypten_steps, Path(tmp))
            elif args.crypten:
                row["crypten_note"] = f"run_crypten.py supports {CRYPTEN_PARTIES} parties only"
        row["wall_seconds"] = time.perf_counter() - start
        rows.append(row)
        ours, peer = row["ours"], row["crypten"]
        nan = float("nan")
        ours_s = ours["s_per_epoch"] if ours else nan
        peer_s = peer["s_per_epoch"] if peer else nan
        print(f"{'+'.join(sweeps):<13}{workload:<15}{n:>3}{shapes[workload][0]:>8}"
              f"{ours_s:>11.3f}{ours['ms_per_step'] if ours else nan:>10.2f}"
              f"{ours['bytes_per_party_per_step'] / 1e3 if ours else nan:>10.1f}"
              f"{ours['rounds_per_step'] if ours else nan:>8.1f}"
              f"{ours['accuracy'] if ours else nan:>7.3f}"
              f"{plain[workload]['s_per_epoch']:>12.4f}{peer_s:>14.2f}"
              f"{peer_s / ours_s:>7.1f}", flush=True)
    if args.json:
        meta = {"epochs": args.epochs, "cpus": os.cpu_count(), "crypten_steps": args.crypten_steps
                if args.crypten else None, "parties_workload": args.parties_workload,
                "size_parties": args.size_parties}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0 if all(r["ours"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

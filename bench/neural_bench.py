"""Neural-model benchmark: digits softmax regression and MLP, ours vs CrypTen vs plaintext.

Usage (repository root; CrypTen from ``bench/crypten/install.sh``)::

    python bench/neural_bench.py [--models digits-softmax digits-mlp] [--parties 2 3]
        [--epochs 5] [--crypten-steps 5] [--repeats 3] [--no-crypten] [--out-dir bench/results]

Workloads (``bench/neural_data.py``): the scenario's digits, pixels standardised in plaintext
(public data), no intercept: ``digits-softmax`` 64 -> 10 (batch 64, lr 0.5, zero init) and
``digits-mlp`` 64 -> 32 ReLU -> 10 softmax (batch 32, lr 0.1, He-normal init), the settings
of ``scenarios/digits-*.toml``. All three columns train on the same rows, batches and initial
weights with the same hand-derived gradients:

- **ours**: a scenario written to a temporary directory (one CSV per party, in-order shards),
  run through the real processes (``python -m parties.launch``: dealer + one process per party
  over mutual TLS on loopback). Time is counted whole: ``(train_seconds + offline_seconds) /
  epochs`` from report.json (``offline_seconds``: the dealer's generation before training,
  where the report has it), so one-time setup (masking) is amortised over ``--epochs``; the
  mean of the epochs' own timings (party 0's log) is in the JSON as ``epoch_log_s``. Bytes
  per step: what a party sends to the other parties (most of any party), one-time setup
  excluded; the dealer's bytes separately. Rounds per step: report.json's ``rounds_per_step``
  when present, else (rounds - setup ops' rounds) / steps (``rounds_source`` says which).
  Accuracy next to the launcher's float64 reference (``--reference``, same schedule).
- **CrypTen** 0.4.1 (``bench/crypten/run_crypten_neural.py``): the same training with its own
  softmax and comparison, TTP dealer, ``--crypten-steps`` steps timed and s/epoch = ms/step x
  steps per epoch (it takes ~1.8 s per MLP step); bytes = OS write counter per party;
  communicator calls and TTP round trips per step counted by ``bench/crypten/comm_counter.py``.
  Its accuracy is after those steps only, next to the plaintext twin after the same steps.
- **plaintext**: float64 torch, exact softmax, ``--epochs`` epochs (``bench/neural_data.py``).

``--repeats N`` runs ours and CrypTen N times each per row, alternating (ours, CrypTen, ours,
...), so that the machine's drift reaches both columns alike (on a shared 2-core machine one
configuration's epoch varies by up to ~40% between runs). The row shows the median run of
each column (for an even N the slower of ours' two middle runs and the faster of CrypTen's:
the ratio errs low); the JSON keeps every run's s/epoch and the ratio of each pair.

Writes ``neural.json`` and ``neural.txt`` into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.data import split_rows  # noqa: E402
from bench.neural_data import MODELS, NeuralModel, accuracy, digits, train_plain  # noqa: E402

__all__ = ["SETUP_OPS", "code_label", "ours_figures", "median_runs", "render_text",
           "write_party_data", "scenario_text", "main"]

# report.json per_op kinds that are one-time setup, not training steps: data masking, data
# preparation, PSI, the batched range check, the final reveal / evaluation.
SETUP_OPS = frozenset({"mask", "prep", "psi", "rangecheck", "stats", "impute", "reveal",
                       "result", "loss", "eval", "evaluate", "metrics"})


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray, features: Sequence[str]) -> None:
    header = ",".join([*features, "target"])
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="",
               fmt=["%.17g"] * X.shape[1] + ["%d"])


def write_party_data(work: Path, X: np.ndarray, y: np.ndarray, Xte: np.ndarray, yte: np.ndarray,
                     parties: int) -> list[str]:
    """One CSV per party (in-order row shards) plus test.csv in ``work``; returns the names."""
    names = [f"p{i}" for i in range(parties)]
    features = [f"f{i}" for i in range(X.shape[1])]
    for name, (Xi, yi) in zip(names, split_rows(X, y, parties), strict=True):
        _write_csv(work / f"{name}.csv", Xi, yi, features)
    _write_csv(work / "test.csv", Xte, yte, features)
    return names


def scenario_text(name: str, model: NeuralModel, names: Sequence[str], epochs: int,
                  timeout_s: float = 300.0, comparison: str | None = None) -> str:
    """The scenario TOML of one run (data preparation off, no intercept, seed 0);
    ``comparison`` sets ``[protocol] comparison`` (None: the scenario default)."""
    lines = [f'name = "{name}"', "seed = 0", "[model]", f'kind = "{model.kind}"', "classes = 10",
             "intercept = false"]
    if model.hidden:
        lines.append(f"hidden = [{', '.join(str(h) for h in model.hidden)}]")
    lines += ["[train]", f"epochs = {epochs}", f"batch_size = {model.batch}",
              f"learning_rate = {model.lr}", f'init = "{model.init}"',
              "[data]", 'partition = "horizontal"', 'label = "target"', "standardize = false",
              "[evaluate]", 'data = "test.csv"', "[network]", f"timeout_s = {timeout_s}"]
    if comparison is not None:
        lines += ["[protocol]", f'comparison = "{comparison}"']
    for n in names:
        lines += ["[[party]]", f'name = "{n}"', f'data = "{n}.csv"']
    return "\n".join(lines) + "\n"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def ours_figures(report: Mapping[str, Any], epoch_log_s: Sequence[float],
                 steps_per_epoch: int) -> dict[str, Any]:
    """Per-epoch and per-step figures of one of our runs from its report.json.

    Time whole: ``(train_seconds + offline_seconds) / epochs`` (``offline_seconds`` at top
    level or under ``dealer``; 0 when absent). Rounds per step: the report's
    ``rounds_per_step`` (top level, else the most of any party's), else the most of any
    party's rounds outside :data:`SETUP_OPS` per step. Bytes per step: the most of any party's
    ``training.bytes_sent_per_step``, else of its bytes sent outside :data:`SETUP_OPS` per
    step; the dealer's apart (``training.dealer_bytes_per_step``, else all it sent / steps).
    """
    epochs = int(report["epochs"])
    steps = steps_per_epoch * epochs
    if steps <= 0:
        raise ValueError(f"no training steps (epochs {epochs}, steps/epoch {steps_per_epoch})")
    dealer = report.get("dealer") or {}
    offline = _number(report.get("offline_seconds"))
    if offline is None:
        offline = _number(dealer.get("offline_seconds"))
    train = float(report["train_seconds"])
    whole = (train + (offline or 0.0)) / epochs
    parties = report["per_party"]

    def training(p: Mapping[str, Any], key: str) -> float:
        setup = sum(float(v.get(key, 0)) for k, v in p.get("per_op", {}).items()
                    if k in SETUP_OPS)
        return float(p[key]) - setup

    rounds = _number(report.get("rounds_per_step"))
    source = "report"
    if rounds is None:
        per_party = [_number(p.get("rounds_per_step")) for p in parties]
        if per_party and all(r is not None for r in per_party):
            rounds = max(r for r in per_party if r is not None)
        else:
            rounds = max(training(p, "rounds") for p in parties) / steps
            source = "per_op"
    dealer_bytes = _number(dealer.get("bytes_sent"))
    bytes_step = max(training(p, "bytes_sent") for p in parties) / steps
    dealer_step = None if dealer_bytes is None else dealer_bytes / steps
    block = report.get("training")
    checks = None
    if isinstance(block, Mapping):  # the steps' own counters (range checks apart)
        sent = block.get("bytes_sent_per_step")
        if isinstance(sent, Mapping) and sent:
            bytes_step = max(float(v) for v in sent.values())
        dealer_step = _number(block.get("dealer_bytes_per_step")) or dealer_step
        checks = _number(block.get("range_check_rounds_per_epoch"))
    return {
        "s_per_epoch": whole,
        "ms_per_step": 1000.0 * whole / steps_per_epoch,
        "train_seconds": train,
        "offline_seconds": offline,
        "epoch_log_s": list(epoch_log_s),
        "epoch_log_s_mean": statistics.mean(epoch_log_s) if epoch_log_s else None,
        "rounds_per_step": rounds,
        "rounds_source": source,
        "bytes_per_party_per_step": bytes_step,
        "dealer_bytes_per_step": dealer_step,
        "dealer_bytes_total": dealer_bytes,
        "range_check_rounds_per_epoch": checks,
        "comparison": report.get("comparison"),
        "dealer_cpu_seconds": _number(dealer.get("cpu_seconds")),
        "party_cpu_ms_per_step": 1000.0 * max(float(p.get("cpu_seconds", 0.0)) for p in parties)
        / steps,
        "accuracy": float(report["metrics"]["accuracy"]),
        "reference_accuracy": _number((report.get("reference") or {}).get("accuracy")),
        "max_abs_weight_diff": _number(report.get("max_abs_weight_diff")),
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
    }


def code_label(root: Path = ROOT) -> str | None:
    """The measured code: ``git describe``-like short commit of ``root`` (+dirty), or None."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def epoch_seconds(log_text: str) -> list[float]:
    import re

    return [float(m) for m in re.findall(r"epoch \d+/\d+ done in ([0-9.]+)s", log_text)]


def run_ours(model: NeuralModel, parties: int, epochs: int, work: Path, timeout: float,
             comparison: str | None = None) -> dict[str, Any]:
    Xtr, ytr, Xte, yte = digits()
    names = write_party_data(work, Xtr, ytr, Xte, yte, parties)
    scenario = work / "scenario.toml"
    scenario.write_text(scenario_text(f"bench-{model.name}-{parties}", model, names, epochs,
                                      comparison=comparison))
    out = work / "out"
    cmd = [sys.executable, "-m", "parties.launch", str(scenario), "--out", str(out), "--quiet",
           "--reference", "--timeout", str(timeout)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"launch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    log = (out / "logs" / f"{names[0]}.log").read_text()
    steps = -(-Xtr.shape[0] // model.batch)
    figures = ours_figures(report, epoch_seconds(log), steps)
    figures["wall_seconds"] = wall
    return figures


def run_crypten(model: str, parties: int, steps: int, work: Path,
                timeout: float) -> dict[str, Any] | None:
    out = work / "crypten.json"
    cmd = [sys.executable, str(ROOT / "bench" / "crypten" / "run_crypten_neural.py"), "--model",
           model, "--parties", str(parties), "--max-steps", str(steps), "--out", str(out),
           "--timeout", str(timeout)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)
    if proc.returncode != 0 or not out.exists():
        print(f"crypten run failed: {proc.stderr[-1500:]}", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(out.read_text())
    os_bytes = result.get("os_bytes_written_per_step_by_rank") or []
    result["os_bytes_per_party_per_step"] = max(os_bytes) if os_bytes else None
    return result


def _f(value: float | None, fmt: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{fmt}}"


HEAD = (f"{'model':<15}{'n':>2}{'cmp':>8}{'ours s/ep':>10}{'ms/step':>9}{'KB/step':>9}"
        f"{'rounds':>8}{'dealer KB':>10}{'acc':>7}{'ref acc':>8}{'plain acc':>10}"
        f"{'plain s/ep':>11}"
        f"{'CT s/ep':>9}{'CT ms/st':>9}{'CT KB/st':>9}{'CT calls':>9}{'CT TTP':>7}"
        f"{'CT acc/plain':>14}{'CT/ours':>9}{'runs':>5}{'CT/ours runs':>14}")


def row_text(row: Mapping[str, Any]) -> str:
    o, p, c = row["ours"], row["plaintext"], row.get("crypten")
    dealer = o["dealer_bytes_per_step"]
    dealer_kb = None if dealer is None else dealer / 1000
    c_bytes = c.get("os_bytes_per_party_per_step") if c else None
    c_acc = f"{c['accuracy']:.3f}/{c['plaintext_accuracy_same_steps']:.3f}" if c else "-"
    return (f"{row['model']:<15}{row['parties']:>2}{o.get('comparison') or '-':>8}"
            f"{o['s_per_epoch']:>10.2f}"
            f"{o['ms_per_step']:>9.1f}{o['bytes_per_party_per_step'] / 1000:>9.1f}"
            f"{o['rounds_per_step']:>8.1f}{_f(dealer_kb, '.1f', 10)}"
            f"{o['accuracy']:>7.3f}{_f(o['reference_accuracy'], '.3f', 8)}"
            f"{p['accuracy']:>10.3f}{p['s_per_epoch']:>11.4f}"
            f"{_f(c['s_per_epoch'] if c else None, '.1f', 9)}"
            f"{_f(c['ms_per_step'] if c else None, '.0f', 9)}"
            f"{_f(None if c_bytes is None else c_bytes / 1000, '.0f', 9)}"
            f"{_f(c['party_calls_per_step'] if c else None, '.0f', 9)}"
            f"{_f(c['dealer_round_trips_per_step'] if c else None, '.0f', 7)}"
            f"{c_acc:>14}{_f(row.get('ratio_crypten_over_ours'), '.1f', 9)}"
            f"{row.get('repeats', 1):>5}{_ratio_range(row.get('ratio_runs')):>14}")


def _ratio_range(ratios: Sequence[float] | None) -> str:
    return f"{min(ratios):.1f}-{max(ratios):.1f}" if ratios else "-"


def median_runs(ours: Sequence[Mapping[str, Any]], peer: Sequence[Mapping[str, Any] | None]
                ) -> dict[str, Any]:
    """A row's figures from repeated runs: ours' and CrypTen's median runs by s/epoch (for an
    even count ours' slower middle run and CrypTen's faster one, so the ratio errs low), every
    run's s/epoch, and the ratio of each (ours, CrypTen) pair run side by side."""
    if not ours:
        raise ValueError("median_runs: no runs of ours")
    by_time = sorted(ours, key=lambda r: float(r["s_per_epoch"]))
    chosen = by_time[len(by_time) // 2]
    done = [c for c in peer if c is not None]
    c_chosen = None
    if done:
        c_sorted = sorted(done, key=lambda r: float(r["s_per_epoch"]))
        c_chosen = c_sorted[(len(c_sorted) - 1) // 2]
    ratios = [float(c["s_per_epoch"]) / float(o["s_per_epoch"])
              for o, c in zip(ours, peer, strict=True) if c is not None]
    return {
        "ours": chosen, "crypten": c_chosen,
        "ratio_crypten_over_ours": None if c_chosen is None
        else float(c_chosen["s_per_epoch"]) / float(chosen["s_per_epoch"]),
        "repeats": len(ours),
        "ours_s_per_epoch_runs": [float(r["s_per_epoch"]) for r in ours],
        "crypten_s_per_epoch_runs": [float(c["s_per_epoch"]) for c in done],
        "ratio_runs": ratios,
    }


METHOD = """\
ours: real processes on loopback (dealer + parties, mutual TLS); s/epoch = (train_seconds +
  offline_seconds) / epochs from report.json (time counted whole, setup amortised over the
  epochs run); cmp = comparison protocol (report.json); KB/step = most any party sends to the
  other parties per training step (setup and epoch-end range checks excluded where report.json
  has its `training` block); dealer KB = dealer bytes per step; rounds = rounds per training
  step; acc = test accuracy, ref acc = launcher's float64 reference (same schedule),
  plain acc = plaintext twin.
CrypTen 0.4.1 (CT): same data, batches, init, lr and hand-derived gradients with its own softmax
  and ReLU comparison, TTP dealer, gloo on loopback, one thread per process; CT_STEPS steps timed,
  s/epoch = ms/step x steps/epoch; KB/step = OS bytes written per party per step (most of any
  party); calls = communicator calls per step between the parties, TTP = party 0's synchronous
  TTP round trips per step; CT acc/plain = accuracy after the timed steps vs the plaintext twin
  after the same steps. CT/ours = CrypTen s/epoch / ours s/epoch.
runs: each column's runs per row, alternating ours and CrypTen; the row shows each column's
  median run (even count: ours' slower middle run, CrypTen's faster one); CT/ours runs = the
  lowest and highest ratio of a pair of runs made side by side.
plaintext: float64 torch, exact softmax, same schedule."""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    ap.add_argument("--parties", nargs="+", type=int, default=[2, 3])
    ap.add_argument("--epochs", type=int, default=5, help="epochs of ours and plaintext")
    ap.add_argument("--crypten-steps", type=int, default=5, help="CrypTen steps timed per run")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each column per row, alternating; the median run is shown")
    ap.add_argument("--no-crypten", action="store_true", help="leave the CrypTen column out")
    ap.add_argument("--comparison", default=None,
                    help="[protocol] comparison of our runs (auto, fss, bitwise; default: unset)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per run, seconds")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--code-label", default=None,
                    help="what code was measured (default: the checkout's git commit)")
    ap.add_argument("--render", type=Path, default=None, metavar="NEURAL_JSON",
                    help="only rewrite neural.txt in --out-dir from an existing neural.json")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.render is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "neural.txt").write_text(render_text(json.loads(args.render.read_text())))
        return 0
    started = time.perf_counter()
    code = args.code_label or code_label()
    Xtr, ytr, Xte, yte = digits()
    rows: list[dict[str, Any]] = []
    print(HEAD, flush=True)
    for name in args.models:
        model = MODELS[name]
        train_plain(model, Xtr, ytr, 1, max_steps=2)  # warm-up: torch's first-use costs untimed
        w, plain_s = train_plain(model, Xtr, ytr, args.epochs)
        plain = {"s_per_epoch": plain_s, "accuracy": accuracy(w, Xte, yte),
                 "epochs": args.epochs}
        for n in args.parties:
            ours_runs: list[dict[str, Any]] = []
            peer_runs: list[dict[str, Any] | None] = []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory(prefix="neural-bench-") as tmp:
                    ours_runs.append(run_ours(model, n, args.epochs, Path(tmp), args.timeout,
                                              args.comparison))
                    peer_runs.append(None if args.no_crypten else run_crypten(
                        name, n, args.crypten_steps, Path(tmp), args.timeout))
            picked = median_runs(ours_runs, peer_runs)
            ours = picked["ours"]
            row: dict[str, Any] = {
                "model": name, "parties": n, "epochs": args.epochs, "batch": model.batch,
                "lr": model.lr, "plaintext": plain, **picked,
                "accuracy_gap_pp_vs_plaintext": 100.0 * (ours["accuracy"] - plain["accuracy"]),
            }
            rows.append(row)
            print(row_text(row), flush=True)
    runtime = time.perf_counter() - started
    command = "python bench/neural_bench.py " + shlex.join(argv if argv is not None
                                                           else sys.argv[1:])
    data = {"command": command.strip(), "code": code,
            "method": METHOD.replace("CT_STEPS", str(args.crypten_steps)),
            "runtime_seconds": runtime, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "neural.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out_dir / "neural.txt").write_text(render_text(data))
    return 0


def render_text(data: Mapping[str, Any]) -> str:
    """neural.txt from the contents of neural.json."""
    return (f"{data['command']}\n(code {data.get('code')}; runtime "
            f"{data['runtime_seconds']:.0f} s)\n\n{HEAD}\n"
            + "\n".join(row_text(r) for r in data["rows"]) + "\n\n" + data["method"] + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

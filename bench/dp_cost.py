"""Cost of DP-SGD per training step inside MPC: rounds, bytes sent per party and time per step,
with and without ``[privacy]``, for logistic (30 features), softmax (64 -> 10) and the MLP
64-32-10, batch 64, in the in-process simulation (``mpc.protocols.simulate``: the protocol
code of the party processes, all parties and the dealer's dry run in one process, so times are
indicative only). Rounds and bytes count the training steps only (``TrainCounters``: the
epoch's range check apart); the time per step is the epoch's (its range check included) over
its steps; DP-SGD's Poisson batches have the batch size in expectation. Each comparison
protocol of ``--comparison`` is measured (FSS is opt-in for more than 2 parties). Writes a
table to stdout and, with ``--json``, the figures.

    python bench/dp_cost.py [--parties 2 3] [--comparison fss bitwise] [--steps 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mpc.core import fixedpoint  # noqa: E402
from mpc.learn import dp as dpsgd  # noqa: E402
from mpc.learn import training as tr  # noqa: E402
from mpc.protocols.simulate import simulate  # noqa: E402

MODELS = {  # kind -> (features, classes, layer shapes)
    "logistic": (30, 1, [(30, 1)]),
    "softmax": (64, 10, [(64, 10)]),
    "mlp": (64, 10, [(64, 32), (32, 10)]),
}
BATCH = 64


def measure(kind: str, n: int, steps: int, private: bool, comparison: str) -> dict[str, Any]:
    d, classes, shapes = MODELS[kind]
    rows = BATCH * steps
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, d)) * 0.5
    y = (rng.integers(0, classes, rows) if classes > 1 else (X[:, 0] > 0)).astype(float)
    init = tr.initial_weights(1, shapes, "normal", 0.1)
    blocks = tuple([rows // n] * (n - 1) + [rows - rows // n * (n - 1)])
    layout = tr.Layout("horizontal", blocks, rows, d, classes, classes > 1)
    cuts = np.cumsum([0, *blocks])
    clip, sigma = 1.0, 1.0
    bounds = dpsgd.row_norm_ratios if kind != "logistic" else dpsgd.row_thresholds

    def party(ctx, features, labels):  # noqa: ANN001, ANN202
        data = tr.mask_inputs(ctx, layout, features, labels, None)
        model = tr.Model.from_public(ctx, kind, init)
        dp = None
        if private:
            mine = None if ctx.dry else bounds(fixedpoint.encode(features), clip, 16)
            dp = dpsgd.DPTraining(sigma, clip, 1, BATCH, bytes(32),
                                  dpsgd.share_thresholds(ctx, layout, mine))
        counters = tr.TrainCounters()
        start = time.perf_counter()
        tr.train(ctx, model, data, epochs=1, batch_size=BATCH, learning_rate=0.1, seed=3, dp=dp,
              counters=counters)
        seconds = time.perf_counter() - start
        c = counters.as_dict()
        return c["rounds_per_step"], c["bytes_sent_per_step"], seconds / max(counters.steps, 1)

    parts = list(zip(cuts[:-1], cuts[1:], strict=True))
    res = simulate(n, party, [X[a:b] for a, b in parts], [y[a:b] for a, b in parts],
                   comparison=comparison)
    rounds, sent, seconds = res[0]
    return {"rounds": rounds, "bytes_sent": sent, "ms": 1000 * seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--comparison", nargs="+", default=["fss", "bitwise"],
                    choices=["fss", "bitwise"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = []
    measure("logistic", args.parties[0], 1, True, "bitwise")  # warm-up (imports, first calls)
    print(f"{'model':9} {'n':>2} {'comparison':>10} {'rounds':>13} {'kB sent/party':>15} "
          f"{'ms/step':>15}")
    for kind in MODELS:
        for n in args.parties:
            for cmp in args.comparison:
                plain = measure(kind, n, args.steps, False, cmp)
                dp = measure(kind, n, args.steps, True, cmp)
                out.append({"model": kind, "parties": n, "comparison": cmp, "plain": plain,
                            "dp": dp})
                print(f"{kind:9} {n:>2} {cmp:>10} {plain['rounds']:>5.0f} -> {dp['rounds']:<5.0f}"
                      f" {plain['bytes_sent'] / 1e3:>6.1f} -> {dp['bytes_sent'] / 1e3:<6.1f}"
                      f" {plain['ms']:>6.1f} -> {dp['ms']:<6.1f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

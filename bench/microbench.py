"""Micro-benchmark of the engine's operations in the in-process simulation, plus both exact
ring-matmul paths (int64 and limb-split float64) on CPU.

Usage: python bench/microbench.py [--parties 2 3] [--sizes 1000 10000 100000] [--json OUT]
Prints seconds, bytes sent per party and rounds per operation and size. Simulation time
includes all parties and the dealer's dry run on one machine (threads), so it is an upper
bound on per-party compute; see bench/train_bench.py for real processes over TLS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpc.core import fixedpoint, ring
from mpc.core.prg import PRG, fresh_seed  # noqa: E402
from mpc.core.sharing import share  # noqa: E402
from mpc.protocols import arith as protocols  # noqa: E402
from mpc.protocols import compare, functions  # noqa: E402
from mpc.protocols.simulate import simulate  # noqa: E402

OPS: dict[str, Callable[..., torch.Tensor]] = {
    "mul": lambda ctx, x, y: protocols.mul(ctx, x, y),
    "truncate": lambda ctx, x, y: protocols.truncate(ctx, x),
    "relu": lambda ctx, x, y: compare.relu(ctx, x)[0],
    "sigmoid": lambda ctx, x, y: functions.sigmoid(ctx, x),
    "exp": lambda ctx, x, y: functions.exp(ctx, x),
    "reciprocal": lambda ctx, x, y: functions.reciprocal(ctx, y, 10.0),
}


def bench_op(name: str, n: int, size: int, prg: PRG) -> dict[str, object]:
    gen = torch.Generator().manual_seed(size)
    x = -torch.rand(size, generator=gen, dtype=torch.float64) * 4
    y = 1 + torch.rand(size, generator=gen, dtype=torch.float64) * 9
    xs = share(fixedpoint.encode(x), n, prg)
    ys = share(fixedpoint.encode(y), n, prg)
    start = time.perf_counter()
    res = simulate(n, OPS[name], xs, ys, timeout=600)
    seconds = time.perf_counter() - start
    st = res.stats[0]
    return {"op": name, "parties": n, "elements": size, "seconds": seconds,
            "bytes_per_party": st.bytes_sent, "rounds": st.rounds,
            "dealer_bytes": res.dealer_bytes}


def bench_matmul_paths() -> list[dict[str, object]]:
    out = []
    torch.set_num_threads(1)
    for m, k, p in ((128, 784, 128), (1000, 1000, 1000)):
        a = torch.randint(-(2**63), 2**63 - 1, (m, k), dtype=torch.int64)
        b = torch.randint(-(2**63), 2**63 - 1, (k, p), dtype=torch.int64)
        af, bf = a.to(torch.float64), b.to(torch.float64)
        row: dict[str, object] = {"shape": f"{m}x{k} @ {k}x{p}"}
        for label, fn, args in (("int64", ring.matmul_int64, (a, b)),
                                ("limbs", ring.matmul_limbs, (a, b)),
                                ("float64", torch.matmul, (af, bf))):
            reps = 3 if m == 1000 else 20
            fn(*args)
            t = time.perf_counter()
            for _ in range(reps):
                fn(*args)
            row[f"{label}_ms"] = 1000 * (time.perf_counter() - t) / reps
        row["limbs_exact"] = bool(torch.equal(ring.matmul_int64(a, b), ring.matmul_limbs(a, b)))
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parties", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--ops", nargs="+", default=list(OPS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    prg = PRG(fresh_seed())
    rows = []
    print(f"{'op':<11}{'n':>3}{'elements':>10}{'seconds':>10}{'bytes/party':>13}{'rounds':>8}")
    for n in args.parties:
        for size in args.sizes:
            for op in args.ops:
                r = bench_op(op, n, size, prg)
                rows.append(r)
                print(f"{op:<11}{n:>3}{size:>10}{r['seconds']:>10.4f}{r['bytes_per_party']:>13}"
                      f"{r['rounds']:>8}", flush=True)
    mm = bench_matmul_paths()
    print("\nexact ring matmul (1 thread):")
    for r in mm:
        print(f"  {r['shape']:<22} int64 {r['int64_ms']:8.2f} ms   limbs {r['limbs_ms']:8.2f} ms"
              f"   float64 BLAS {r['float64_ms']:8.2f} ms   limbs exact: {r['limbs_exact']}")
    if args.json:
        args.json.write_text(json.dumps({"ops": rows, "matmul": mm}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

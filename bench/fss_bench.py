"""FSS comparison figures (``mpc.protocols.fsscompare``) beside the bitwise backend.

For the sigmoid (16 knots: 16 DCF evaluations per element under one key) at B = 128 and
B = 1024, and ReLU on a 32 x 32 tensor (1 evaluation per element): the DCF's Gen at the dealer
and Eval at party 0 (ms over ``--reps`` calls, one torch thread: best CPU time / median wall
clock, the CPU time being the steadier figure on a shared machine), dealer bytes per element
and per call, bytes each party sends, and rounds, for 2 parties; the same call with the
bitwise backend for comparison. The "simulation" column is the whole call in the in-process
simulation (2 parties + the dealer's dry run as threads on this machine, no network), an upper
bound on one party's compute; over real processes and TLS see ``bench/ops_tls.py``.

Usage: python bench/fss_bench.py [--reps 20] [--json bench/results/fss.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpc.core import dcf, fixedpoint  # noqa: E402
from mpc.core.prg import PRG, fresh_seed  # noqa: E402
from mpc.core.sharing import share  # noqa: E402
from mpc.protocols import compare, fsscompare, functions  # noqa: E402
from mpc.protocols.simulate import simulate  # noqa: E402

CASES: list[tuple[str, tuple[int, ...], int, Callable[..., object]]] = [
    ("sigmoid", (128,), len(functions.SIGMOID.knots), lambda ctx, x: functions.sigmoid(ctx, x)),
    ("sigmoid", (1024,), len(functions.SIGMOID.knots), lambda ctx, x: functions.sigmoid(ctx, x)),
    ("relu", (32, 32), 1, lambda ctx, x: compare.relu(ctx, x)[0]),
]


def _median_ms(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    """(median wall ms, best CPU ms) over ``reps`` calls after one warm-up call (other jobs
    on a shared machine only ever add CPU time: the best is the steadiest estimate)."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(1000 * (time.perf_counter() - w))
        cpu.append(1000 * (time.process_time() - c))
    return statistics.median(wall), min(cpu)


def bench_case(
    name: str, shape: tuple[int, ...], k: int, op: Callable[..., object], reps: int, prg: PRG
) -> dict[str, object]:
    m = 1
    for s in shape:
        m *= s
    payload = 2  # (1, r): bits and products
    alpha = prg.below((m,), fsscompare.DOMAIN_BITS)
    beta = prg.ring((m, payload))
    s0, s1 = prg.ring((m, 2)), prg.ring((m, 2))
    key = dcf.gen(alpha, beta, s0, s1, fsscompare.DOMAIN_BITS)
    words = key.words()
    # the gate's points: c - t_k mod 2^30 for a uniform opened c and the op's thresholds
    knots = list(functions.SIGMOID.knots) if name == "sigmoid" else [0.0]
    t = fixedpoint.encode(knots).unsqueeze(1)
    points = (prg.ring((1, m)) - t) & ((1 << fsscompare.DOMAIN_BITS) - 1)
    gen_wall, gen_cpu = _median_ms(
        lambda: dcf.gen(alpha, beta, s0, s1, fsscompare.DOMAIN_BITS).words(), reps
    )
    def evaluate() -> None:  # as the gate does it: key chunks of ~2^13 evaluations
        for lo, hi in fsscompare._chunks(m, k):
            key = dcf.DCFKey.from_words(words[lo:hi], fsscompare.DOMAIN_BITS, payload)
            dcf.evaluate(0, s0[lo:hi], key, points[:, lo:hi].contiguous())

    eval_wall, eval_cpu = _median_ms(evaluate, reps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(m), dtype=torch.float64) * 4
    xs = share(fixedpoint.encode(x), 2, prg)
    row: dict[str, object] = {
        "op": name,
        "shape": list(shape),
        "elements": m,
        "evaluations_per_element": k,
        "key_bytes": 8 * dcf.key_words(fsscompare.DOMAIN_BITS, payload),
        "gen_ms": gen_wall,
        "gen_cpu_ms": gen_cpu,
        "eval_ms": eval_wall,
        "eval_cpu_ms": eval_cpu,
    }
    for mode in ("fss", "bitwise"):
        sim_ms = []
        for _ in range(max(3, reps // 4)):
            start = time.perf_counter()
            res = simulate(2, op, xs, comparison=mode)
            sim_ms.append(1000 * (time.perf_counter() - start))
        st = res.stats[0]
        row[mode] = {
            "rounds": st.rounds,
            "bytes_per_party": st.bytes_sent,
            "dealer_bytes_per_call": res.dealer_bytes,
            "dealer_bytes_per_element": res.dealer_bytes / m,
            "simulation_ms": statistics.median(sim_ms),
        }
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prg = PRG(fresh_seed())
    rows = [bench_case(*case, args.reps, prg) for case in CASES]
    print(
        f"{'op':<8}{'elements':>9}{'K':>4}{'Gen ms cpu/wall':>16}{'Eval ms cpu/wall':>17}"
        f"{'backend':>9}{'rounds':>7}"
        f"{'bytes/party':>12}{'dealer B/elem':>14}{'dealer B/call':>14}{'sim ms':>8}"
    )
    for r in rows:
        for mode in ("fss", "bitwise"):
            b = r[mode]
            assert isinstance(b, dict)
            gen = f"{r['gen_cpu_ms']:.2f}/{r['gen_ms']:.2f}"
            ev = f"{r['eval_cpu_ms']:.2f}/{r['eval_ms']:.2f}"
            timing = f"{gen:>16}{ev:>17}" if mode == "fss" else f"{'':>33}"
            print(
                f"{r['op']:<8}{r['elements']:>9}{r['evaluations_per_element']:>4}{timing}"
                f"{mode:>9}{b['rounds']:>7}{b['bytes_per_party']:>12}"
                f"{b['dealer_bytes_per_element']:>14.0f}{b['dealer_bytes_per_call']:>14}"
                f"{b['simulation_ms']:>8.1f}"
            )
    if args.json:
        args.json.write_text(json.dumps({"fss": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

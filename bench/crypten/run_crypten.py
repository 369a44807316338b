"""CrypTen 0.4.1 logistic-regression SGD in its real multi-process mode (the benchmark's peer).

Usage (from the repository root)::

    python bench/crypten/run_crypten.py --workload breast_cancer --parties 2 --epochs 2
    python bench/crypten/run_crypten.py --workload synthetic10k --parties 2 --epochs 1 \\
        --max-steps 20 --out runs/crypten-10k-2p.json

The launcher starts ``parties`` party processes plus CrypTen's TTP dealer (rank = parties) as
subprocesses of this script (env RANK / WORLD_SIZE / RENDEZVOUS, gloo on 127.0.0.1), waits for
them under an overall timeout and prints the JSON result that rank 0 wrote.

Each party encrypts its own horizontal shard of the rows (``crypten.cryptensor(.., src=i)``;
the others pass zeros of the public shape) and the shards are concatenated in order. Training is
explicit SGD with CrypTen ops: ``p = sigmoid(X_B w)``, ``w -= lr/B * X_B^T (p - y_B)``, zero
init, no intercept, batches in the order of ``torch.randperm`` seeded with ``epoch`` (same as
``bench/plaintext.py``). Rank 0 measures wall time; every party's CrypTen communicator stats
(``cfg.communicator.verbose``) and its OS write counter (``/proc/self/io`` wchar) give bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from bench.crypten.comm_counter import CallCounter, install, per_step  # noqa: E402
from bench.data import load, split_rows  # noqa: E402
from bench.plaintext import accuracy, train_logreg  # noqa: E402

LR = 0.5
BATCH = {"breast_cancer": 64, "synthetic10k": 128, "synthetic100k": 128}


def import_crypten() -> types.ModuleType:
    """Import crypten on torch 2.13, whose ``torch.onnx._internal.registration`` is gone."""
    name = "torch.onnx._internal.registration"
    if name not in sys.modules:
        shim = types.ModuleType(name)
        shim.registry = None  # type: ignore[attr-defined]
        sys.modules[name] = shim
    import crypten

    return crypten


def os_bytes_written() -> int:
    """Bytes this process handed to write()/writev() so far (gloo sends with writev)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def party(
    args: argparse.Namespace, rank: int, crypten: types.ModuleType, counter: CallCounter
) -> None:
    """One CrypTen party: encrypt its shard, train, decrypt w; rank 0 writes the JSON."""
    crypten.init()
    comm = crypten.comm.get()
    n_parties = args.parties
    Xtr, ytr, Xte, yte = load(args.workload)
    shards = split_rows(Xtr, ytr, n_parties)
    xs, ys = [], []
    for i, (Xi, yi) in enumerate(shards):
        own = i == rank
        xi = torch.tensor(Xi) if own else torch.zeros(Xi.shape, dtype=torch.float64)
        yi_t = torch.tensor(yi).reshape(-1, 1) if own else torch.zeros(len(yi), 1)
        xs.append(crypten.cryptensor(xi, src=i))
        ys.append(crypten.cryptensor(yi_t, src=i))
    X, y = crypten.cat(xs, dim=0), crypten.cat(ys, dim=0)
    n, d = Xtr.shape
    batch = BATCH[args.workload]
    steps_per_epoch = -(-n // batch)
    steps = steps_per_epoch if args.max_steps is None else min(args.max_steps, steps_per_epoch)
    w = crypten.cryptensor(torch.zeros(d, 1), src=0)

    wchar0 = start_counters(crypten, comm, counter)
    seconds = 0.0
    for epoch in range(args.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        comm.barrier()
        t0 = time.perf_counter()
        for step in range(steps):
            idx = perm[step * batch : (step + 1) * batch]
            Xb, yb = X[idx], y[idx]
            p = Xb.matmul(w).sigmoid()
            grad = Xb.t().matmul(p - yb)
            w = w - grad * (LR / idx.numel())
        calls = counter.snapshot()
        comm.barrier()
        seconds += time.perf_counter() - t0
    stats = comm.get_communication_stats()
    total_steps = steps * args.epochs
    figures = gather_step_figures(comm, rank, stats, calls, wchar0, total_steps)
    w_plain = w.get_plain_text().reshape(-1).double()
    if figures is None:
        return
    ms_per_step = 1000.0 * seconds / total_steps
    extrapolated = steps < steps_per_epoch
    w_ref, _ = train_logreg(Xtr, ytr, args.epochs, batch, LR, seed=0, max_steps=steps)
    result: dict[str, Any] = {
        "workload": args.workload,
        "parties": n_parties,
        "epochs": args.epochs,
        "steps_per_epoch": steps_per_epoch,
        "s_per_epoch": (
            ms_per_step * steps_per_epoch / 1000.0 if extrapolated else seconds / args.epochs
        ),
        "ms_per_step": ms_per_step,
        **figures,
        "accuracy": accuracy(Xte, yte, w_plain),
        "extrapolated": extrapolated,
        "crypten_version": crypten.__version__,
        "steps_timed_per_epoch": steps,
        "comm_rounds_per_step_rank0": stats["rounds"] / total_steps,
        "plaintext_accuracy_same_steps": accuracy(Xte, yte, w_ref),
        "max_abs_w_diff_vs_plaintext": float((w_plain - w_ref).abs().max()),
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.result_file).write_text(json.dumps(result, indent=2))


def start_counters(
    crypten: types.ModuleType, comm: Any, counter: CallCounter  # noqa: ANN401
) -> int:
    """Before the timed steps, on every rank: a barrier, then CrypTen's communication stats and
    ``counter`` set to zero; returns the OS write counter that ``gather_step_figures`` takes."""
    comm.barrier()
    crypten.reset_communication_stats()
    counter.reset()
    return os_bytes_written()


def gather_step_figures(
    comm: Any,  # noqa: ANN401
    rank: int,
    stats: Mapping[str, Any],
    calls: Mapping[str, Any],
    wchar0: int,
    steps: int,
) -> dict[str, Any] | None:
    """After the timed steps, on every rank (``comm.gather`` is a collective): send rank 0 this
    rank's CrypTen bytes (``stats``, read before the gather adds its own), OS bytes written
    since ``wchar0``, communicator calls and TTP round trips (``calls``, a ``CallCounter``
    snapshot). Rank 0 gets the per-step figures of the result JSON; the other ranks None."""
    sent = torch.tensor([int(stats["bytes"]), os_bytes_written() - wchar0, calls["party_calls"],
                         calls["dealer_round_trips"]], dtype=torch.long)
    per_rank = comm.gather(sent, 0)  # crypten's gather receives into int64 buffers
    if rank != 0:
        return None
    per = torch.stack(per_rank).double() / steps
    return {
        "bytes_per_party_per_step": float(per[:, 0].mean()),
        "crypten_bytes_per_step_by_rank": [float(b) for b in per[:, 0]],
        "os_bytes_written_per_step_by_rank": [float(b) for b in per[:, 1]],
        "party_calls_per_step_by_rank": [float(c) for c in per[:, 2]],
        # bench/crypten/comm_counter.py: rank 0's communicator calls (all but the TTP's) and its
        # synchronous TTP round trips, per step; the other ranks' party calls beside them
        **per_step(calls, steps),
    }


def run_rank(args: argparse.Namespace, party_fn: Any) -> None:  # noqa: ANN401
    """A spawned rank: ``party_fn(args, rank, crypten, counter)``, or the TTP dealer when
    rank == parties (shared by the logistic and the neural runners)."""
    torch.set_num_threads(1)
    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True
    counter = install()
    rank = int(os.environ["RANK"])
    if rank == args.parties:
        crypten.mpc.provider.TTPServer()  # serves until rank 0 sends "terminate"
    else:
        party_fn(args, rank, crypten, counter)
    crypten.uninit()


def worker(args: argparse.Namespace) -> None:
    """Entry point of a spawned rank of the logistic runner."""
    run_rank(args, party)


def launch(
    args: argparse.Namespace, argv: list[str], script: Path | None = None
) -> dict[str, Any]:
    """Start parties + TTP as subprocesses of ``script`` (default: this file) with ``argv
    --worker``; wait under ``args.timeout``; return rank 0's JSON."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` reaps the ranks
    with tempfile.TemporaryDirectory(prefix="crypten-bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        base_env = dict(
            os.environ,
            WORLD_SIZE=str(args.parties),
            DISTRIBUTED_BACKEND="gloo",
            RENDEZVOUS=f"tcp://127.0.0.1:{free_port()}",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            GLOO_SOCKET_IFNAME="lo",
        )
        cmd = [
            sys.executable,
            str(Path(__file__).resolve() if script is None else script),
            *argv,
            "--worker",
            "--result-file",
            str(result_file),
        ]
        procs = [
            subprocess.Popen(cmd, env=dict(base_env, RANK=str(r))) for r in range(args.parties + 1)
        ]
        deadline = time.monotonic() + args.timeout
        try:
            while any(p.poll() is None for p in procs):
                failed = [p for p in procs if p.returncode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    why = "timeout" if not failed else f"rank exit code {failed[0].returncode}"
                    raise RuntimeError(f"CrypTen run failed: {why}")
                time.sleep(0.1)
            codes = [p.returncode for p in procs]
            if any(codes):
                raise RuntimeError(f"CrypTen ranks exited with codes {codes}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return json.loads(result_file.read_text())


def main(argv: list[str] | None = None) -> None:
    """Parse the CLI; run as launcher, or as a rank when ``--worker`` is given."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(BATCH), required=True)
    ap.add_argument("--parties", type=int, choices=(2, 3, 4, 5, 6), default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="time only the first S steps of each epoch and extrapolate s/epoch",
    )
    run_cli(ap, argv, worker, Path(__file__).resolve())


def run_cli(
    ap: argparse.ArgumentParser,
    argv: list[str] | None,
    worker_fn: Any,  # noqa: ANN401
    script: Path,
) -> None:
    """The CLI shared by the CrypTen runners: add --out, --timeout and the hidden worker
    flags to ``ap``; run as a rank (``worker_fn``) or launch ``script``'s ranks and print
    (and optionally write) rank 0's JSON."""
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--timeout", type=float, default=1800.0, help="overall limit in seconds")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.worker:
        worker_fn(args)
        return
    result = launch(args, argv, script)
    text = json.dumps(result, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

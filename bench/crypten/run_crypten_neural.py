"""CrypTen 0.4.1 digits softmax regression / MLP training in its multi-process mode (the peer).

Usage (from the repository root)::

    python bench/crypten/run_crypten_neural.py --model digits-mlp --parties 3 --max-steps 5

Same launcher as ``run_crypten.py`` (``parties`` ranks + CrypTen's TTP dealer, gloo on
127.0.0.1, one torch thread each). The training is the one ours and the plaintext twin do
(``bench/neural_data.py``): same standardised rows, party i encrypts its in-order shard
(``crypten.cryptensor(.., src=i)``), same batches (``mpc.learn.training.batch_schedule``),
same initial weights, learning rate and hand-derived gradients, with CrypTen's own operations:
``softmax`` (its max-subtracted exp and reciprocal), ``ge`` for the ReLU mask (CrypTen's
``relu`` is ``x * x.ge(0)``; the mask is kept for the backward pass, so one comparison per
step, as ours). No autograd.

Rank 0 times ``--max-steps`` steps of each epoch (s/epoch is scaled from ms/step when fewer
steps than an epoch ran: ``extrapolated``), and reports bytes (CrypTen's communicator stats
and the OS write counter), communicator calls and TTP round trips per step
(``comm_counter.py``), and the test accuracy next to the plaintext twin after the same steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from bench.crypten.comm_counter import CallCounter  # noqa: E402
from bench.crypten.run_crypten import (  # noqa: E402
    gather_step_figures,
    run_cli,
    run_rank,
    start_counters,
)
from bench.data import split_rows  # noqa: E402
from bench.neural_data import (  # noqa: E402
    CLASSES,
    MODELS,
    SEED,
    accuracy,
    digits,
    init_weights,
    steps_per_epoch,
    train_plain,
)
from mpc.learn.training import batch_schedule  # noqa: E402


def party(
    args: argparse.Namespace, rank: int, crypten: types.ModuleType, counter: CallCounter
) -> None:
    """One CrypTen party: encrypt its shard, train, decrypt the weights; rank 0 writes JSON."""
    crypten.init()
    comm = crypten.comm.get()
    model = MODELS[args.model]
    Xtr, ytr, Xte, yte = digits()
    xs, ys = [], []
    for i, (Xi, yi) in enumerate(split_rows(Xtr, ytr, args.parties)):
        own = i == rank
        onehot = torch.nn.functional.one_hot(torch.as_tensor(yi).long(), CLASSES).double()
        xi = torch.tensor(Xi) if own else torch.zeros(Xi.shape, dtype=torch.float64)
        yi_t = onehot if own else torch.zeros(onehot.shape, dtype=torch.float64)
        xs.append(crypten.cryptensor(xi, src=i))
        ys.append(crypten.cryptensor(yi_t, src=i))
    X, Y = crypten.cat(xs, dim=0), crypten.cat(ys, dim=0)
    rows = Xtr.shape[0]
    per_epoch = steps_per_epoch(rows, model.batch)
    steps = per_epoch if args.max_steps is None else min(args.max_steps, per_epoch)
    ws = [crypten.cryptensor(torch.tensor(w), src=0) for w in init_weights(model, Xtr.shape[1])]

    wchar0 = start_counters(crypten, comm, counter)
    seconds = 0.0
    for epoch in range(args.epochs):
        schedule = batch_schedule(SEED, epoch, rows, model.batch, True)[:steps]
        comm.barrier()
        t0 = time.perf_counter()
        for batch in schedule:
            idx = torch.from_numpy(batch)
            xb, yb = X[idx], Y[idx]
            scale = model.lr / len(batch)
            if model.kind == "softmax":
                delta = xb.matmul(ws[0]).softmax(1) - yb
                ws[0] = ws[0] - xb.t().matmul(delta) * scale
                continue
            h = xb.matmul(ws[0])
            mask = h.ge(0)
            a = h * mask
            delta = a.matmul(ws[1]).softmax(1) - yb
            g2 = a.t().matmul(delta)
            g1 = xb.t().matmul(delta.matmul(ws[1].t()) * mask)
            ws = [ws[0] - g1 * scale, ws[1] - g2 * scale]
        calls = counter.snapshot()
        comm.barrier()
        seconds += time.perf_counter() - t0
    total = steps * args.epochs
    figures = gather_step_figures(comm, rank, comm.get_communication_stats(), calls, wchar0,
                                  total)
    plain = [w.get_plain_text().double().numpy() for w in ws]
    if figures is None:
        return
    ms_per_step = 1000.0 * seconds / total
    ref, _ = train_plain(model, Xtr, ytr, args.epochs, max_steps=steps)
    result: dict[str, Any] = {
        "model": args.model,
        "parties": args.parties,
        "epochs": args.epochs,
        "steps_per_epoch": per_epoch,
        "steps_timed_per_epoch": steps,
        "extrapolated": steps < per_epoch,
        "s_per_epoch": ms_per_step * per_epoch / 1000.0,
        "ms_per_step": ms_per_step,
        **figures,
        "accuracy": accuracy(plain, Xte, yte),
        "plaintext_accuracy_same_steps": accuracy(ref, Xte, yte),
        "max_abs_w_diff_vs_plaintext": max(float(np.abs(a - b).max())
                                           for a, b in zip(plain, ref, strict=True)),
        "crypten_version": crypten.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.result_file).write_text(json.dumps(result, indent=2))


def worker(args: argparse.Namespace) -> None:
    """Entry point of a spawned rank of the neural runner."""
    run_rank(args, party)


def main(argv: list[str] | None = None) -> None:
    """Parse the CLI; run as launcher, or as a rank when ``--worker`` is given."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--parties", type=int, choices=(2, 3, 4, 5), default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=None,
                    help="time only the first S steps of each epoch and scale s/epoch")
    run_cli(ap, argv, worker, Path(__file__).resolve())


if __name__ == "__main__":
    main()

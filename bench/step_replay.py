"""What one party's training step costs in computation alone: no peers, no network, no dealer.

Usage (from the repository root)::

    python bench/step_replay.py [--model logistic|linear|softmax|mlp] [--parties 2]
                                [--comparison bitwise|fss] [--rows 10000] [--party 0]
                                [--profile N] [--repeat N] [--dealer]

It trains one epoch in the in-process simulation (``mpc.protocols.simulate``) and records
what party ``--party`` receives: every round's incoming tensors and every dealer correction, in
order. It then runs that party's program again, alone in this thread, against the recording:
each round returns the recorded tensors at once and each correction is the recorded one. The
process time of that epoch, divided by its steps, is the party's compute per step: the tensor
operations and Python of the protocols, without transport, waiting on peers or the dealer's
stream, and without other processes on the same cores. (Its own masks are fresh, so the values
differ from the recorded run's and the epoch-end range check may fail: that check comes after
the last step and the clock stops there.) ``--profile N`` prints the N most expensive functions
of the replay (cProfile, own time). ``--repeat N`` replays the recorded epoch N times and reports
the fastest (this machine's timings vary by +-30% from run to run; the minimum is the stable
figure to compare code changes by).

``--dealer`` times the other side instead: the dealer's dry run of the same epoch alone
(``dealer_replay``), generating every party's material from fresh seeds and serialising the
corrections as its stream would, without the network or its writer threads; it prints the
dealer's CPU and correction bytes per step. Steps and range check are timed, masking is not.

Logistic/linear: synthetic data 10k x 50, batch 128, lr 0.5 (as ``bench/train_bench.py``);
softmax/MLP: 64 features, 10 classes, batch 32, lr 0.1, MLP hidden width 32 (as the digits
scenarios).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpc.core.errors import NumericError  # noqa: E402
from mpc.core.preprocessing import Preprocessing  # noqa: E402
from mpc.core.prg import fresh_seed  # noqa: E402
from mpc.learn.training import (  # noqa: E402
    Layout,
    Model,
    TrainCounters,
    initial_weights,
    mask_inputs,
    train,
)
from mpc.net.transport import CommStats  # noqa: E402
from mpc.protocols.context import DryChannel, PartyContext  # noqa: E402
from mpc.protocols.simulate import simulate  # noqa: E402


class _Recorded:
    """The recorded rounds (as a channel) and corrections (as a correction source), in order."""

    def __init__(self, pid: int, n: int, rounds: list[Any], corrections: list[torch.Tensor],
                 stats: Any) -> None:
        self.pid, self.n, self.stats = pid, n, stats
        self.peers = [p for p in range(n) if p != pid]
        self._rounds, self._corrections = iter(rounds), iter(corrections)

    def exchange(self, op: str, outgoing: Any, incoming: Any) -> Any:
        return next(self._rounds)

    def all_to_all(self, op: str, tensors: Any) -> Any:
        return next(self._rounds)

    def read(self, op: str, shape: tuple[int, ...]) -> torch.Tensor:
        return next(self._corrections)

    def left(self) -> tuple[int, int]:
        """Rounds and corrections the replay did not consume (0, 0 when it followed the
        recorded program to the end)."""
        return sum(1 for _ in self._rounds), sum(1 for _ in self._corrections)


def _workload(kind: str, n: int, rows: int) -> tuple[np.ndarray, np.ndarray, int, float,
                                                     list[np.ndarray], Layout, np.ndarray]:
    """The replayed workload (see the module doc): features, labels, batch, learning rate,
    initial weights, the horizontal layout over n parties and its row cuts."""
    rng = np.random.default_rng(0)
    neural = kind in ("softmax", "mlp")
    d, batch, lr = (64, 32, 0.1) if neural else (50, 128, 0.5)
    X = rng.standard_normal((rows, d))
    y = rng.integers(0, 10, rows) if neural else (X[:, 0] > 0).astype(float)
    outputs = 10 if neural else 1
    shapes = [(d, 32), (32, outputs)] if kind == "mlp" else [(d, outputs)]
    init = initial_weights(1, shapes, "normal", 0.1)
    blocks = tuple([rows // n] * (n - 1) + [rows - rows // n * (n - 1)])
    layout = Layout("horizontal", blocks, rows, d, outputs, neural)
    return X, y, batch, lr, init, layout, np.cumsum([0, *blocks])


class _Serialising:
    """The dealer's correction sink, minus the network: each correction serialised as
    ``parties.stream.LinkSink`` does it (one copy into bytes), and counted."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, to: int, op: str, value: torch.Tensor) -> None:
        self.bytes += len(value.contiguous().numpy().tobytes())


def _timed_train(ctx: PartyContext, kind: str, init: list[np.ndarray], data: Any, batch: int,
                 lr: float, profile: bool, tolerate: bool) -> tuple[float, Any]:
    """One epoch of ``train`` on masked ``data`` from the public initial weights: its process
    time and its cProfile (``profile``) or None. ``tolerate``: a NumericError (the epoch-end
    range check of a replay, whose fresh masks differ from the recording's) ends the epoch
    instead of propagating; the clock stops there either way."""
    model = Model.from_public(ctx, kind, init)
    prof = cProfile.Profile() if profile else None
    start = time.process_time()
    if prof is not None:
        prof.enable()
    try:
        train(ctx, model, data, epochs=1, batch_size=batch, learning_rate=lr, seed=3,
              counters=TrainCounters())
    except NumericError:
        if not tolerate:
            raise
    if prof is not None:
        prof.disable()
    return time.process_time() - start, prof


def dealer_replay(kind: str = "logistic", n: int = 2, comparison: str = "bitwise",
                  rows: int = 10000, profile: int = 0, repeat: int = 1) -> dict[str, Any]:
    """The dealer's side of one epoch alone: its dry run of the parties' program (DryChannel,
    ``ctx.dry``), generating every party's material from fresh seeds and serialising the
    corrections it would send, without the network and the writer threads. Returns the
    fastest of ``repeat`` epochs' ``ms_per_step`` (process time; masking untimed, the
    epoch-end range check included), ``steps``, the ``dealer_bytes_per_step`` and the
    cProfile of the last epoch (``profile`` > 0) or None."""
    torch.set_num_threads(1)
    _, _, batch, lr, init, layout, _ = _workload(kind, n, rows)
    runs = []  # (seconds, correction bytes, profile) per epoch
    for _ in range(max(1, repeat)):
        sink = _Serialising()
        ctx = PartyContext(0, n, DryChannel(0, n, 600.0),
                           Preprocessing.for_dealer(n, {p: fresh_seed() for p in range(n)},
                                                    sink),
                           dry=True, comparison=comparison)
        data = mask_inputs(ctx, layout, None, None, None)
        sink.bytes = 0  # the epoch's corrections only
        seconds, prof = _timed_train(ctx, kind, init, data, batch, lr, profile > 0, False)
        runs.append((seconds, sink.bytes, prof))
    steps = -(-rows // batch)
    _, sent, prof = runs[-1]
    return {"ms_per_step": 1000 * min(r[0] for r in runs) / steps, "steps": steps,
            "dealer_bytes_per_step": sent / steps, "profile": prof}


def replay(kind: str = "logistic", n: int = 2, comparison: str = "bitwise", rows: int = 10000,
           me: int = 0, profile: int = 0, repeat: int = 1) -> dict[str, Any]:
    """Record one epoch of party ``me`` in the simulation, replay it alone; returns the replay's
    ``ms_per_step`` (process time), ``steps``, the recorded ``rounds`` and ``corrections``,
    what the replay ``left`` unconsumed, and its cProfile (``profile`` > 0) or None."""
    torch.set_num_threads(1)
    X, y, batch, lr, init, layout, cuts = _workload(kind, n, rows)
    rounds: list[Any] = []
    corrections: list[torch.Tensor] = []
    clock: dict[str, Any] = {}

    def epoch(ctx: PartyContext, features: np.ndarray, labels: np.ndarray,
              timed: bool = False) -> None:
        data = mask_inputs(ctx, layout, features, labels, None)
        seconds, prof = _timed_train(ctx, kind, init, data, batch, lr, timed and profile > 0,
                                     timed)
        clock.update(seconds=seconds, profile=prof)

    def recording(ctx: PartyContext, features: np.ndarray, labels: np.ndarray) -> None:
        if not ctx.dry and ctx.pid == me:
            channel, source = ctx.channel, ctx.pre._source
            exchange, read = channel.exchange, source.read  # type: ignore[union-attr]

            def exchange_recorded(*a: Any) -> Any:
                got = exchange(*a)
                rounds.append(got)
                return got

            def read_recorded(op: str, shape: tuple[int, ...]) -> torch.Tensor:
                got = read(op, shape)
                corrections.append(got)
                return got

            channel.exchange = exchange_recorded  # type: ignore[method-assign]
            source.read = read_recorded  # type: ignore[union-attr]
            clock["pair_prgs"] = ctx.pair_prgs
        epoch(ctx, features, labels)

    parts = [(X[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    simulate(n, recording, [p[0] for p in parts], [p[1] for p in parts],
             comparison=comparison, timeout=600)
    best = float("inf")
    for _ in range(max(1, repeat)):
        recorded = _Recorded(me, n, rounds, corrections, CommStats())
        ctx = PartyContext(me, n, recorded,  # type: ignore[arg-type]
                           Preprocessing.for_party(n, me, fresh_seed(), recorded),
                           pair_prgs=clock["pair_prgs"], comparison=comparison)
        epoch(ctx, *parts[me], timed=True)
        best = min(best, clock["seconds"])
    steps = -(-rows // batch)
    return {"ms_per_step": 1000 * best / steps, "steps": steps,
            "rounds": len(rounds), "corrections": len(corrections), "left": recorded.left(),
            "profile": clock["profile"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["logistic", "linear", "softmax", "mlp"],
                    default="logistic")
    ap.add_argument("--parties", type=int, default=2)
    ap.add_argument("--comparison", choices=["bitwise", "fss"], default="bitwise")
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--party", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    ap.add_argument("--repeat", type=int, default=1, metavar="N")
    ap.add_argument("--dealer", action="store_true",
                    help="time the dealer's dry run of the epoch instead of a party")
    args = ap.parse_args()
    if args.dealer:
        got = dealer_replay(args.model, args.parties, args.comparison, args.rows, args.profile,
                            args.repeat)
        print(f"{args.model}, {args.parties} parties, {args.comparison}, dealer: "
              f"{got['ms_per_step']:.3f} ms of CPU per step, "
              f"{got['dealer_bytes_per_step'] / 1000:.1f} KB of corrections per step "
              f"({got['steps']} steps, dry run alone)")
        if got["profile"] is not None:
            pstats.Stats(got["profile"]).sort_stats("tottime").print_stats(args.profile)
        return 0
    got = replay(args.model, args.parties, args.comparison, args.rows, args.party, args.profile,
                 args.repeat)
    print(f"{args.model}, {args.parties} parties, {args.comparison}, party {args.party}: "
          f"{got['ms_per_step']:.3f} ms of CPU per step ({got['steps']} steps, replayed)")
    if got["profile"] is not None:
        pstats.Stats(got["profile"]).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

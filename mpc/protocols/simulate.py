"""Run n parties and the dealer in one process (threads + queues) for fast protocol tests.

``simulate(n, fn, *args)`` calls ``fn(ctx, *party_args)`` for every party over
:class:`~mpc.net.transport.LocalChannel`, and once more as the dealer's dry run, which produces the
preprocessing exactly as the dealer process does. Arguments that are lists of length n are
per-party (e.g. shares); anything else is passed to every party unchanged.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import torch

from mpc.config.policy import RevealPolicy
from mpc.core.errors import PreprocessingExhausted
from mpc.core.fixedpoint import DEFAULT, FixedPoint
from mpc.core.preprocessing import Preprocessing
from mpc.core.prg import PRG, derive_seed, fresh_seed
from mpc.core.sharing import pair_prgs as pairwise_prgs
from mpc.net.transport import CommStats, local_channels, run_threads
from mpc.protocols.context import DryChannel, PartyContext

__all__ = ["simulate", "QueueCorrections", "SimulationResult"]

Shape = tuple[int, ...]


class QueueCorrections:
    """In-memory dealer -> party correction stream, with op/shape checks and a timeout."""

    def __init__(self, n: int, timeout: float = 30.0) -> None:
        self.queues: dict[int, queue.Queue[tuple[str, torch.Tensor]]] = {
            p: queue.Queue() for p in range(n)
        }
        self.timeout = timeout
        self.bytes_sent = 0

    def write(self, to: int, op: str, value: torch.Tensor) -> None:
        self.bytes_sent += 8 * value.numel()
        self.queues[to].put((op, value.clone()))

    def reader(self, pid: int) -> _Reader:
        return _Reader(self, pid)


class _Reader:
    def __init__(self, owner: QueueCorrections, pid: int) -> None:
        self.owner = owner
        self.pid = pid

    def read(self, op: str, shape: Shape) -> torch.Tensor:
        try:
            got_op, value = self.owner.queues[self.pid].get(timeout=self.owner.timeout)
        except queue.Empty:
            raise PreprocessingExhausted(
                f"P{self.pid}: {op} {shape}: no dealer material"
            ) from None
        if got_op != op or tuple(value.shape) != tuple(shape):
            raise PreprocessingExhausted(
                f"P{self.pid}: dealer material mismatch: wanted {op} {shape}, "
                f"got {got_op} {tuple(value.shape)}"
            )
        return value


class SimulationResult(list):  # type: ignore[type-arg]
    """Per-party return values, plus per-party CommStats and dealer bytes."""

    stats: list[CommStats]
    dealer_bytes: int


def simulate(
    n: int,
    fn: Callable[..., Any],
    *args: Any,
    fxp: FixedPoint = DEFAULT,
    timeout: float = 60.0,
    local_truncation: bool | None = None,
    policy_rules: Any = None,
    comparison: str = "bitwise",
) -> SimulationResult:
    """Run ``fn(ctx, *args)`` as n parties plus the dealer's dry run; return party results.

    ``comparison`` selects the comparison backend of every context ("bitwise" or "fss").
    """
    seeds = {p: fresh_seed() for p in range(n)}
    master = fresh_seed()
    sink = QueueCorrections(n, timeout)
    channels = local_channels(n, timeout)

    pair_seed = {
        (i, j): derive_seed(master, f"pair/{i}/{j}") for i in range(n) for j in range(i + 1, n)
    }

    def pair_prgs(pid: int) -> dict[int, PRG]:
        """The same derivation as the party processes: one common seed per pair."""
        return pairwise_prgs(
            pid, {q: pair_seed[(min(pid, q), max(pid, q))] for q in range(n) if q != pid}
        )

    def party_args(pid: int) -> list[Any]:
        return [a[pid] if isinstance(a, list) and len(a) == n else a for a in args]

    def dealer_args() -> list[Any]:
        out = []
        for a in party_args(0):
            out.append(torch.zeros_like(a) if isinstance(a, torch.Tensor) else a)
        return out

    def make_party(pid: int) -> Callable[[], Any]:
        def run() -> Any:
            policy = RevealPolicy(f"P{pid}", policy_rules) if policy_rules else None
            ctx = PartyContext(
                pid,
                n,
                channels[pid],
                Preprocessing.for_party(n, pid, seeds[pid], sink.reader(pid)),
                fxp=fxp,
                pair_prgs=pair_prgs(pid),
                policy=policy,
                local_truncation=local_truncation,
                comparison=comparison,
            )
            try:
                return fn(ctx, *party_args(pid))
            except BaseException:
                channels[pid].close()
                raise

        return run

    def run_dealer() -> None:
        ctx = PartyContext(
            0,
            n,
            DryChannel(0, n, timeout),
            Preprocessing.for_dealer(n, seeds, sink),
            fxp=fxp,
            pair_prgs=pair_prgs(0),
            dry=True,
            local_truncation=local_truncation,
            comparison=comparison,
        )
        fn(ctx, *dealer_args())

    results = run_threads([make_party(p) for p in range(n)] + [run_dealer], timeout)
    out = SimulationResult(results[:n])
    out.stats = [ch.stats for ch in channels]
    out.dealer_bytes = sink.bytes_sent
    return out

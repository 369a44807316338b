"""``PartyContext``: everything a protocol needs from one party, passed explicitly.

There is no global runtime: every protocol takes a context as its first argument, so n parties
can run in one process (simulation), in n processes (TLS), or as the dealer's dry run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from mpc.config.policy import RevealPolicy
from mpc.core.fixedpoint import DEFAULT, FixedPoint
from mpc.core.preprocessing import Preprocessing
from mpc.core.prg import PRG
from mpc.net.transport import Channel, tensors_nbytes

__all__ = ["COMPARISONS", "PartyContext", "DryChannel"]

COMPARISONS = ("bitwise", "fss")  # comparison backends (``protocols.compare`` dispatches)


@dataclass
class PartyContext:
    """One party's view: its pid, links, dealer material, fixed-point format and policy.

    ``dry`` is set for the dealer's dry run: the protocols execute only to request material in
    the right order; values are meaningless.
    """

    pid: int
    n: int
    channel: Channel
    pre: Preprocessing
    fxp: FixedPoint = DEFAULT
    pair_prgs: dict[int, PRG] = field(default_factory=dict)
    policy: RevealPolicy | None = None
    names: tuple[str, ...] = ()
    dry: bool = False
    local_truncation: bool | None = None  # None: local for n == 2, dealer-assisted for n > 2
    # "bitwise": 4-round GF(2) tree (compare.py); "fss": 1 round from DCF keys (fsscompare.py)
    comparison: str = "bitwise"

    def __post_init__(self) -> None:
        if self.comparison not in COMPARISONS:
            raise ValueError(
                f"PartyContext: comparison must be one of {COMPARISONS}, got {self.comparison!r}"
            )

    @property
    def name(self) -> str:
        return self.names[self.pid] if self.names else f"P{self.pid}"

    @property
    def truncate_locally(self) -> bool:
        if self.local_truncation is None:
            return self.n == 2
        return self.local_truncation and self.n == 2

    @property
    def stats(self):  # noqa: ANN201 - CommStats, re-exported for convenience
        return self.channel.stats


class DryChannel(Channel):
    """A channel that returns zeros of the expected shapes: used by the dealer's dry run."""

    def exchange(
        self,
        op: str,
        outgoing: Mapping[int, Sequence[torch.Tensor]],
        incoming: Mapping[int, Sequence[tuple[int, ...]]],
    ) -> dict[int, list[torch.Tensor]]:
        sent = sum(tensors_nbytes([tuple(t.shape) for t in ts]) for ts in outgoing.values())
        self.stats.record(op, sent, 0, 0, 1)
        return {
            q: [torch.zeros(s, dtype=torch.int64) for s in shapes]
            for q, shapes in incoming.items()
        }

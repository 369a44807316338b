"""Count CrypTen 0.4.1's communication rounds, and turn them into a WAN time estimate.

:func:`install` wraps, in one CrypTen process, every method of
``crypten.communicator.DistributedCommunicator`` that talks to other processes (send, recv,
isend, irecv, scatter, reduce, all_reduce, gather, all_gather, broadcast, send_obj, recv_obj,
broadcast_obj, barrier) and the TTP client's ``ttp_request``. Calls made inside a
``ttp_request`` (party 0 asks the TTP dealer for a triple: send_obj, recv_obj, broadcast) are
booked as one *dealer round trip* each; every other call is a *party call* (one communicator
round between the parties). ``barrier`` is counted apart and left out of both: the benchmark
loops use it only around the timed region.

:func:`wan_estimate_ms` is the model the WAN bench puts beside our measured figures::

    ms/step(delay) = loopback ms/step + (party calls + dealer round trips) per step x RTT

with RTT = 2 x the one-way delay. Every party call is counted as one RTT: CrypTen opens values
with gloo's all_reduce, a ring algorithm whose reduce-scatter and all-gather phases take
2 (n - 1) sequential one-way hops (= one RTT for 2 parties, exact; two for 3); its other calls
(gather in 3-party truncation) take one hop. As long as all_reduce dominates the mix, which it
does in every workload measured, the model is a lower bound for n > 2 and favours CrypTen.
A dealer round trip is request + reply between party 0 and the TTP, synchronous in CrypTen's
online phase (one RTT); the other parties wait for party 0 at the next opening, so both counts
lie on the critical path.

Nothing here imports crypten at module level, so the formula is testable without it.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["COMM_METHODS", "CallCounter", "install", "per_step", "wan_estimate_ms"]

COMM_METHODS = (
    "send", "recv", "isend", "irecv", "scatter", "reduce", "all_reduce", "gather", "all_gather",
    "broadcast", "send_obj", "recv_obj", "broadcast_obj", "barrier",
)


class CallCounter:
    """Communicator calls of one process, split into party calls, dealer round trips, barriers."""

    def __init__(self) -> None:
        self.party: Counter[str] = Counter()
        self.dealer_requests = 0
        self.barriers = 0
        self._in_ttp = threading.local()

    def reset(self) -> None:
        self.party.clear()
        self.dealer_requests = 0
        self.barriers = 0

    def snapshot(self) -> dict[str, Any]:
        """Totals so far: ``party_calls``, ``dealer_round_trips``, ``by_kind`` (party calls)."""
        return {
            "party_calls": sum(self.party.values()),
            "dealer_round_trips": self.dealer_requests,
            "by_kind": dict(sorted(self.party.items())),
        }

    def _comm(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if getattr(self._in_ttp, "depth", 0):
                pass  # part of a dealer round trip, booked by _ttp
            elif name == "barrier":
                self.barriers += 1
            else:
                self.party[name] += 1
            return func(*args, **kwargs)

        return wrapper

    def _ttp(self, func: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.dealer_requests += 1
            self._in_ttp.depth = getattr(self._in_ttp, "depth", 0) + 1
            try:
                return func(*args, **kwargs)
            finally:
                self._in_ttp.depth -= 1

        return wrapper


def install() -> CallCounter:
    """Wrap CrypTen's communicator and TTP client in this process; returns the counter.

    Call after ``import crypten`` and before ``crypten.init()``.
    """
    from crypten.communicator.distributed_communicator import DistributedCommunicator
    from crypten.mpc.provider.ttp_provider import TTPClient

    counter = CallCounter()
    for name in COMM_METHODS:
        setattr(DistributedCommunicator, name,
                counter._comm(name, getattr(DistributedCommunicator, name)))
    client = TTPClient._TTPClient__TTPClient  # type: ignore[attr-defined]
    client.ttp_request = counter._ttp(client.ttp_request)
    return counter


def wan_estimate_ms(
    loopback_ms_per_step: float,
    party_calls_per_step: float,
    dealer_round_trips_per_step: float,
    one_way_delay_ms: float,
) -> float:
    """CrypTen ms per step at a one-way delay: loopback time + every round trip x RTT."""
    if one_way_delay_ms < 0:
        raise ValueError(f"one-way delay must be >= 0 ms, got {one_way_delay_ms}")
    if min(loopback_ms_per_step, party_calls_per_step, dealer_round_trips_per_step) < 0:
        raise ValueError("loopback time and call counts must be >= 0")
    rtt = 2.0 * one_way_delay_ms
    return loopback_ms_per_step + (party_calls_per_step + dealer_round_trips_per_step) * rtt


def per_step(snapshot: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """A :meth:`CallCounter.snapshot` divided by the number of steps it covers."""
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    return {
        "party_calls_per_step": snapshot["party_calls"] / steps,
        "dealer_round_trips_per_step": snapshot["dealer_round_trips"] / steps,
        "calls_per_step_by_kind": {k: v / steps for k, v in snapshot["by_kind"].items()},
    }

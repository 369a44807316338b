"""bench/step_replay.py: the replayed party follows the recorded program to its end (every
recorded round and dealer correction consumed, none missing), for both comparison protocols,
a neural model, and parties other than 0. Seconds."""

from __future__ import annotations

import pytest

from bench.step_replay import replay


@pytest.mark.parametrize(("kind", "n", "comparison", "me"), [
    ("logistic", 2, "bitwise", 0), ("logistic", 3, "fss", 1), ("mlp", 2, "bitwise", 1),
])
def test_replay_consumes_exactly_the_recording(kind: str, n: int, comparison: str,
                                               me: int) -> None:
    got = replay(kind, n, comparison, rows=300, me=me)
    assert got["steps"] == (3 if kind == "logistic" else 10)
    assert got["rounds"] > got["steps"]
    # party 0 reads the dealer's corrections; party 1 of 2 expands all its material from seeds
    # (FSS keys go to parties 0 and 1)
    assert (got["corrections"] > 0) == (me == 0 or comparison == "fss")
    assert got["left"] == (0, 0)
    assert got["ms_per_step"] > 0

"""bench/step_replay.py: the replayed party follows the recorded program to its end (every
recorded round and dealer correction consumed, none missing), for both comparison protocols,
a neural model, and parties other than 0; the dealer's dry run alone (``--dealer``) produces
the material of the epoch. Seconds."""

from __future__ import annotations

import pytest

from bench.step_replay import dealer_replay, replay


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


@pytest.mark.parametrize(("kind", "n"), [("logistic", 2), ("logistic", 3), ("mlp", 2)])
def test_dealer_replay_generates_the_epochs_material(kind: str, n: int) -> None:
    bitwise = dealer_replay(kind, n, "bitwise", rows=300)
    fss = dealer_replay(kind, n, "fss", rows=300)
    assert bitwise["steps"] == fss["steps"] == (3 if kind == "logistic" else 10)
    assert bitwise["ms_per_step"] > 0 and bitwise["dealer_bytes_per_step"] > 0
    # FSS keys (one DCF key per threshold and element) outweigh the bitwise material
    assert fss["dealer_bytes_per_step"] > bitwise["dealer_bytes_per_step"]

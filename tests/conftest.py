"""Shared test helpers: seeded sharing of plaintext inputs for the simulation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mpc.core import fixedpoint  # noqa: E402
from mpc.core.prg import PRG  # noqa: E402
from mpc.core.sharing import share  # noqa: E402


@pytest.fixture
def prg() -> PRG:
    return PRG(b"\x07" * 32)


def share_reals(values: torch.Tensor, n: int, prg: PRG) -> list[torch.Tensor]:
    """Fixed-point encode and additively share (test helper)."""
    return share(fixedpoint.encode(values), n, prg)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests marked slow (long soaks and out-of-core runs; minutes each)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)

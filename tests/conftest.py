"""Shared test helpers: seeded sharing of plaintext inputs for the simulation, and a minimal
two-party scenario file for the config tests."""

from __future__ import annotations

import sys
from collections.abc import Callable
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


def scenario_text(data: str = "", tables: str = "", *, partition: str = "horizontal",
                  name: str = "s", epochs: int = 1) -> str:
    """A minimal scenario: logistic, batch 2, parties ``a`` and ``b`` reading ``a.csv`` and
    ``b.csv``; ``data`` lines go into ``[data]`` after its partition and ``label = "target"``,
    ``tables`` after the parties."""
    lines = [f'name = "{name}"', "seed = 1", "[model]", 'kind = "logistic"', "[train]",
             f"epochs = {epochs}", "batch_size = 2", "learning_rate = 0.5", "[data]",
             f'partition = "{partition}"', 'label = "target"', data.strip("\n"),
             "[[party]]", 'name = "a"', 'data = "a.csv"', "[[party]]", 'name = "b"',
             'data = "b.csv"', tables.strip("\n")]
    return "\n".join(line for line in lines if line) + "\n"


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    """``write_scenario(data="", tables="", *, partition="horizontal", name="s", file="s.toml")``
    writes :func:`scenario_text` (one epoch) to ``tmp_path / file`` and returns its path (the
    test writes ``a.csv`` and ``b.csv``)."""

    def write(data: str = "", tables: str = "", *, partition: str = "horizontal",
              name: str = "s", file: str = "s.toml") -> Path:
        path = tmp_path / file
        path.write_text(scenario_text(data, tables, partition=partition, name=name))
        return path

    return write


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

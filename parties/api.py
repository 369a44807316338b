"""The Python API for notebooks and scripts: ``from mpc import run``.

``run("scenario.toml", out="runs/x")`` does exactly what ``mpc-launch`` does -- the same
dealer, party and launcher processes over mutual TLS -- and returns the run's report, its
metrics and the released model as a ``torch.nn.Module``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpc.config.scenario import load_scenario
from mpc.core.errors import ConfigError, MPCError
from mpc.learn.model import ModelSpec, build_module, load_spec

__all__ = ["RunResult", "run"]


@dataclass(frozen=True)
class RunResult:
    """What a finished run leaves behind (all files are also in ``out``)."""

    out: Path
    report: dict[str, Any]
    spec: ModelSpec
    model: torch.nn.Module

    @property
    def metrics(self) -> dict[str, float] | None:
        return self.report.get("metrics")

    @property
    def features(self) -> list[str]:
        return list(self.spec.features)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The released model's outputs for raw feature rows (columns in ``features`` order)."""
        with torch.no_grad():
            return self.model(torch.as_tensor(np.asarray(x, dtype=np.float64))).numpy()


def _overrides(overrides: Mapping[str, object] | Sequence[str]) -> list[str]:
    if isinstance(overrides, Mapping):
        return [f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                for k, v in overrides.items()]
    return [str(o) for o in overrides]


def run(
    scenario: str | Path,
    out: str | Path | None = None,
    *,
    overrides: Mapping[str, object] | Sequence[str] = (),
    reference: bool = False,
    certs: str | Path | None = None,
    timeout: float | None = None,
    quiet: bool = True,
) -> RunResult:
    """Run ``scenario`` end to end (``mpc-launch``'s processes) and return its result.

    ``overrides``: ``{"train.epochs": 3}`` or ``["train.epochs=3"]``. Raises
    :class:`ConfigError` for a bad scenario or data file (nothing started) and
    :class:`MPCError` for a failed run (its message names the failing process; the processes'
    logs are in ``out/logs``).
    """
    from parties import launch

    sets = _overrides(overrides)
    run_dir = Path(out) if out is not None else Path("runs") / load_scenario(scenario, sets).name
    argv = [str(scenario), "--out", str(run_dir)]
    for item in sets:
        argv += ["--set", item]
    if reference:
        argv.append("--reference")
    if certs is not None:
        argv += ["--certs", str(certs)]
    if timeout is not None:
        argv += ["--timeout", str(timeout)]
    if quiet:
        argv.append("--quiet")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = launch.main(argv)
    if code != 0:
        text = err.getvalue()
        if not quiet:
            sys.stderr.write(text)
        lines = [ln for ln in text.splitlines() if ln.startswith("mpc-launch:")]
        message = lines[-1] if lines else f"mpc-launch exited with code {code}"
        raise (ConfigError if code == 2 else MPCError)(message)
    report = json.loads((run_dir / "report.json").read_text())
    spec = load_spec(run_dir / "model.pt")
    return RunResult(run_dir, report, spec, build_module(spec))

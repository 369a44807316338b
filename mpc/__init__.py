"""Secure multi-party computation over additive secret sharing in Z_2^64 (see mpc/README.md).

``from mpc import run`` gives the Python API (``parties.api.run``): a whole run through the
real dealer, party and launcher processes, returning the report and the released model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run"]


def __getattr__(name: str) -> Any:
    # Lazy: the library itself never imports the process layer (parties/) at import time.
    if name == "run":
        from parties.api import run

        return run
    raise AttributeError(f"module 'mpc' has no attribute {name!r}")

"""Reveal policy and reveal ledger: what may be opened in plaintext, and to whom.

The scenario declares the allowed reveals as (what, to) rules; by default only the final model
weights, to the launcher. Every party checks the policy itself before contributing its share to
any plaintext opening and raises :class:`~mpc.core.errors.PolicyError` otherwise, and records every
reveal it took part in (what, to, shape) in its ledger, which goes into report.json.

Kinds (``what``): ``weights``, ``loss`` (opened values) and ``intersection``
(the ids common to all parties of a vertical partition, computed by :mod:`mpc.protocols.psi`: every
party learns them, so its only meaningful receiver is "all"). A scenario without a ``[reveal]``
table allows the final weights to the launcher and, for a vertical partition with
``data.align = "psi"``, the intersection to all (``mpc.config.scenario``'s ``[reveal]`` defaults).

Openings of *masked* values inside Beaver multiplication, truncation and comparison protocols are
not reveals: they are uniformly random to every party and are not governed by this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mpc.core.errors import PolicyError

__all__ = ["RevealRule", "RevealPolicy", "RevealRecord", "DEFAULT_RULES", "REVEALABLE"]

REVEALABLE = ("weights", "loss", "intersection", "metrics", "statistics")


@dataclass(frozen=True)
class RevealRule:
    """Allows opening ``what`` to ``to`` ("launcher", "all", or a party name)."""

    what: str
    to: str


DEFAULT_RULES = (RevealRule("weights", "launcher"),)


@dataclass(frozen=True)
class RevealRecord:
    """One entry of the reveal ledger."""

    what: str
    to: str
    name: str
    shape: tuple[int, ...]
    release: str | None = None  # e.g. "dp": released under [privacy]'s (epsilon, delta)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"what": self.what, "to": self.to, "name": self.name,
                                  "shape": list(self.shape)}
        if self.release is not None:
            out["release"] = self.release
        return out


@dataclass
class RevealPolicy:
    """The allowed reveals of one party, plus its ledger of reveals performed."""

    party: str
    rules: tuple[RevealRule, ...] = DEFAULT_RULES
    ledger: list[RevealRecord] = field(default_factory=list)

    def allows(self, what: str, to: str) -> bool:
        """True if a rule allows ``what`` to ``to``; a rule for "all" covers every receiver."""
        return any(r.what == what and r.to in (to, "all") for r in self.rules)

    def require(self, what: str, to: str, name: str, shape: Iterable[int] | None = None) -> None:
        """Raise PolicyError unless ``what`` may go to ``to`` (nothing is recorded): for
        protocols that must refuse before they send anything, such as PSI."""
        if not self.allows(what, to):
            detail = "" if shape is None else f" {tuple(int(s) for s in shape)}"
            raise PolicyError(
                f"{self.party}: refusing to reveal {what} '{name}'{detail} to {to}: "
                f"not allowed by the scenario's reveal policy"
            )

    def authorize(self, what: str, to: str, name: str, shape: Iterable[int],
                  release: str | None = None) -> None:
        """Check a reveal against the policy and record it (``release``: how the value is
        protected, e.g. "dp"); raises PolicyError if not allowed."""
        shape_t = tuple(int(s) for s in shape)
        self.require(what, to, name, shape_t)
        self.ledger.append(RevealRecord(what, to, name, shape_t, release))

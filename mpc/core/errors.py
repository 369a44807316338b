"""Exception hierarchy of the toolkit.

Every error the library raises on purpose derives from :class:`MPCError`. Messages name the
party (pid), the operation and the shapes involved -- never secret values or shares.
"""

from __future__ import annotations

__all__ = [
    "MPCError",
    "ConfigError",
    "ProtocolError",
    "PreprocessingExhausted",
    "PeerError",
    "PolicyError",
    "EncodingError",
    "NumericError",
]


class MPCError(Exception):
    """Base class of every error raised by the toolkit."""


class ConfigError(MPCError):
    """A scenario file, dataset or command-line setting is invalid (raised before any traffic)."""


class ProtocolError(MPCError):
    """Peers disagree on the protocol: tag, sequence, shape or job mismatch, malformed frame."""


class PreprocessingExhausted(MPCError):
    """Correlated randomness from the dealer ran out or does not match what a protocol needs."""


class PeerError(MPCError):
    """A peer was lost: connection closed, refused, or a receive timed out."""


class PolicyError(MPCError):
    """An opening was requested that the scenario's reveal policy does not allow."""


class EncodingError(MPCError, ValueError):
    """A value cannot be encoded in the fixed-point ring without overflow (or is not finite)."""


class NumericError(MPCError):
    """A secure range check failed: a value left its protocol's domain or a 2-party local
    truncation wrapped (``mpc.protocols.rangecheck``). The run stops instead of returning a wrong
    model."""

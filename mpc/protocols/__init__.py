"""Protocols on shares, each taking a PartyContext: arithmetic (open, Beaver, truncation), GF(2)
nibble gates, comparisons (bitwise and FSS), non-linear functions, range checks, SharedTensor,
ECDH PSI, and the in-process simulation. Imports the layers above.

See mpc/README.md for the modules in dependency order.
"""

__all__: list[str] = []

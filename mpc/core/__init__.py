"""Core arithmetic: the ring Z_2^64, bit slicing, AES-CTR PRG, fixed point, sharing, exact discrete
Gaussian noise, and the dealer's seed-compressed preprocessing. Imports nothing else from mpc.

See mpc/README.md for the modules in dependency order.
"""

__all__: list[str] = []

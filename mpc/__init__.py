"""Secure multi-party computation over additive secret sharing in Z_2^64 (see mpc/README.md)."""

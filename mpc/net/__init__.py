"""Networking: certificates and mutual TLS 1.3, the Channel API and wire format, links with silence
timeouts and heartbeats, the listener/dialer, and the TLS channel. Imports only mpc.core.

See mpc/README.md for the modules in dependency order.
"""

__all__: list[str] = []

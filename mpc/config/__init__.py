"""What a run is and may do: the scenario schema and data files, the reveal policy and ledger, the
DP plan and accountant, and the signed audit statements. Imports mpc.core and mpc.net.

See mpc/README.md for the modules in dependency order.
"""

__all__: list[str] = []

"""Learning inside MPC: masked data and secure SGD, DP-SGD, data preparation, evaluation at the
parties, the per-epoch loss, plaintext references, and the released-model artefacts.

See mpc/README.md for the modules in dependency order.
"""

__all__: list[str] = []

"""``mpc-certs``: create or extend the mutual-TLS certificate material of a deployment.

Usage: ``mpc-certs DIR NAME [NAME ...] [--days N]``. Writes ``DIR/ca.pem`` and ``DIR/ca.key``
(reused if present) and ``DIR/<NAME>.pem`` / ``DIR/<NAME>.key`` for every missing name; keys
are written with mode 0600. The CA key is only needed to issue certificates: keep it away from
the hosts that run parties. See :mod:`mpc.certs` for the trust model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mpc.certs import CA_CERT_FILE, CA_KEY_FILE, create_deployment
from mpc.errors import ConfigError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mpc-certs``."""
    parser = argparse.ArgumentParser(
        prog="mpc-certs",
        description="Create a deployment CA and one certificate per party/dealer name.",
    )
    parser.add_argument("directory", metavar="DIR", type=Path, help="output directory")
    parser.add_argument("names", metavar="NAME", nargs="+", help="certificate names to issue")
    parser.add_argument(
        "--days", type=int, default=365, help="validity of new certificates (default: 365)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mpc-certs``; return 0 on success and 2 on a configuration error."""
    arguments = build_parser().parse_args(argv)
    try:
        written = create_deployment(arguments.directory, arguments.names, days=arguments.days)
    except ConfigError as error:
        print(f"mpc-certs: error: {error}", file=sys.stderr)
        return 2
    directory: Path = arguments.directory
    print(f"ca: {directory / CA_CERT_FILE} {directory / CA_KEY_FILE}")
    for name, (cert_path, key_path) in written.items():
        print(f"{name}: {cert_path} {key_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

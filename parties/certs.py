"""``mpc-certs``: create or extend the mutual-TLS certificate material of a deployment.

Usage: ``mpc-certs DIR NAME [NAME ...] [--days N] [--k8s-secrets OUT [--k8s-namespace NS]]``.
Writes ``DIR/ca.pem`` and ``DIR/ca.key`` (reused if present) and ``DIR/<NAME>.pem`` /
``DIR/<NAME>.key`` for every missing name; keys are written with mode 0600. The CA key is only
needed to issue certificates: keep it away from the hosts that run parties. See
:mod:`mpc.net.certs` for the trust model.

With ``--k8s-secrets OUT`` it also writes, for every NAME (new or already issued), one
Kubernetes Secret ``mpc-<dns>-tls`` holding exactly ``ca.pem``, ``NAME.pem`` and ``NAME.key``
-- what that process mounts at ``/certs`` in deploy/k8s. ``<dns>`` is the name as a DNS-1123
label (:func:`dns_label`: ``hospital_a`` -> ``hospital-a``); the certificate keeps the name
itself, which is what peers check. OUT is a directory (``OUT/NAME-secret.yaml``, mode 0600, one
file per organisation to hand over) or ``-`` (all Secrets on stdout, e.g. for
``kubectl apply -f -``). Never ``ca.key``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from mpc.core.errors import ConfigError
from mpc.net.certs import CA_CERT_FILE, CA_KEY_FILE, DeploymentPaths, create_deployment

__all__ = ["build_parser", "dns_label", "main", "secret_manifest", "secret_name"]

# A DNS-1123 label, shortened so that "mpc-" + label stays a valid Service name (63, RFC 1035).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,57}[a-z0-9])?")


def dns_label(name: str) -> str:
    """The Kubernetes form of a certificate/party name: lower case, ``_`` and ``.`` -> ``-``.

    Raises :class:`ConfigError` if the result is not a DNS-1123 label of at most 59
    characters (so ``mpc-<label>`` is a valid Service name), e.g. for ``_x`` or ``a_``.
    """
    label = name.lower().replace("_", "-").replace(".", "-")
    if not _DNS_LABEL.fullmatch(label):
        raise ConfigError(
            f"name {name!r} has no Kubernetes form: {label!r} must be 1-59 characters from "
            "[a-z0-9-], starting and ending with a letter or digit"
        )
    return label


def secret_name(name: str) -> str:
    """The Secret deploy/k8s mounts for ``name``: ``mpc-<dns_label(name)>-tls``."""
    return f"mpc-{dns_label(name)}-tls"


def _labels(names: Sequence[str]) -> dict[str, str]:
    """``name -> dns_label(name)``; two names with one Kubernetes form are an error."""
    seen: dict[str, str] = {}
    for name in names:
        label = dns_label(name)
        if label in seen and seen[label] != name:
            raise ConfigError(
                f"names {seen[label]!r} and {name!r} have the same Kubernetes form {label!r}"
            )
        seen[label] = name
    return {name: label for label, name in seen.items()}


def secret_manifest(certs_dir: Path, name: str, namespace: str | None = None) -> str:
    """One Secret (YAML) with ``ca.pem``, ``NAME.pem`` and ``NAME.key`` from ``certs_dir``."""
    paths = DeploymentPaths.for_name(certs_dir, name).require()
    label = dns_label(name)
    labels = {"app.kubernetes.io/name": "mpc-toolkit", "app.kubernetes.io/instance": label}
    data = {}
    for key, path in ((CA_CERT_FILE, paths.ca), (f"{name}.pem", paths.cert),
                      (f"{name}.key", paths.key)):  # fmt: skip
        try:
            data[key] = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError as error:
            raise ConfigError(f"cannot read {path}: {error}") from error
    # JSON strings are YAML double-quoted scalars: no name can turn into a YAML boolean/null.
    q = json.dumps
    lines = [
        f"# {name}'s certificate material for deploy/k8s (mpc-certs). Holds a PRIVATE KEY:",
        "# hand it only to the operator who runs that process; never commit it.",
        "apiVersion: v1",
        "kind: Secret",
        "metadata:",
        f"  name: {q(secret_name(name))}",
    ]
    if namespace is not None:
        lines.append(f"  namespace: {q(namespace)}")
    lines.append("  labels:")
    lines += [f"    {q(k)}: {q(v)}" for k, v in labels.items()]
    lines += ["type: Opaque", "data:"]
    lines += [f"  {q(k)}: {q(v)}" for k, v in data.items()]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` atomically to a file created with mode 0600 (it holds a private key)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


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
    parser.add_argument(
        "--k8s-secrets",
        metavar="OUT",
        default=None,
        help="also write one Kubernetes Secret per NAME: OUT/NAME-secret.yaml, or - for stdout",
    )
    parser.add_argument(
        "--k8s-namespace", metavar="NS", default=None, help="metadata.namespace of the Secrets"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mpc-certs``; return 0 on success and 2 on a configuration error."""
    arguments = build_parser().parse_args(argv)
    to_stdout = arguments.k8s_secrets == "-"
    report = sys.stderr if to_stdout else sys.stdout
    try:
        if arguments.k8s_namespace is not None and arguments.k8s_secrets is None:
            raise ConfigError("--k8s-namespace needs --k8s-secrets")
        namespace = arguments.k8s_namespace
        if namespace is not None and dns_label(namespace) != namespace:
            raise ConfigError(f"--k8s-namespace {namespace!r} is not a DNS-1123 label")
        if arguments.k8s_secrets is not None:
            _labels(arguments.names)  # before anything is written
        written = create_deployment(arguments.directory, arguments.names, days=arguments.days)
        manifests = (
            {n: secret_manifest(arguments.directory, n, arguments.k8s_namespace) for n in written}
            if arguments.k8s_secrets is not None
            else {}
        )
        secret_paths: dict[str, Path] = {}
        if manifests and not to_stdout:
            out = Path(arguments.k8s_secrets)
            out.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, text in manifests.items():
                secret_paths[name] = out / f"{name}-secret.yaml"
                _write_private(secret_paths[name], text)
    except (ConfigError, OSError) as error:
        print(f"mpc-certs: error: {error}", file=sys.stderr)
        return 2
    directory: Path = arguments.directory
    print(f"ca: {directory / CA_CERT_FILE} {directory / CA_KEY_FILE}", file=report)
    for name, (cert_path, key_path) in written.items():
        print(f"{name}: {cert_path} {key_path}", file=report)
        if name in manifests:
            where = secret_paths.get(name, "stdout")
            print(f"{name}: Secret {secret_name(name)} -> {where}", file=report)
    if to_stdout:
        sys.stdout.write("---\n".join(manifests.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

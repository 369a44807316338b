"""Certificate material and TLS contexts for mutual authentication between parties.

A *deployment* is one directory holding a private certificate authority (``ca.pem``, ``ca.key``)
and, for every party or dealer name, a certificate ``<name>.pem`` with its key ``<name>.key``
signed by that CA. The name is both the subject common name and a SAN DNS name. Keys are EC
(P-256) and are written with mode 0600.

Trust assumption: whoever holds ``ca.key`` can mint an identity for any name, so the CA key
should live only where certificates are issued (it is not needed by the parties at run time).
Both ends of a connection verify the other's chain against the deployment CA as the only trust
anchor, over TLS 1.3 only. Host names are *not* checked: peers are identified by the name in
their certificate, which callers must compare with :func:`check_peer` after the handshake.

What this module does not do: revocation (no CRL/OCSP), key encryption at rest, or rotation of
an existing CA. Re-running :func:`create_deployment` only adds names that are missing.
"""

from __future__ import annotations

import os
import re
import secrets
import ssl
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpc.core.errors import ConfigError, PeerError

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "DeploymentPaths",
    "check_peer",
    "client_context",
    "create_deployment",
    "issue_certificate",
    "peer_name",
    "server_context",
    "validate_name",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"

# 1-64 characters (RFC 5280 bounds a common name at 64); no leading dot: no hidden files, no "..".
_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
# Certificates start a little in the past so that small clock skew between hosts is harmless.
_CLOCK_SKEW = timedelta(minutes=5)


def validate_name(name: str) -> str:
    """Return ``name`` if it can be used as a certificate name, else raise :class:`ConfigError`.

    Allowed: 1-64 characters from ``[A-Za-z0-9_.-]``, not starting with a dot, and not ``ca``
    (reserved for the deployment CA's files).
    """
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"invalid certificate name {name!r}: use 1-64 letters, digits, '_', '.', '-' "
            "and do not start with '.'"
        )
    if name == "ca":
        raise ConfigError("invalid certificate name 'ca': reserved for the deployment CA")
    return name


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, creating the file with ``mode`` from the start."""
    # os.open with the mode (not a later chmod) means a key is never readable by others.
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _write_identity(
    cert_path: Path, key_path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Write a PEM key (mode 0600) and then its certificate, so a certificate has its key."""
    encoding = serialization.Encoding.PEM
    pkcs8, no_password = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    _write_file(key_path, key.private_bytes(encoding, pkcs8, no_password), 0o600)
    _write_file(cert_path, certificate.public_bytes(encoding), 0o644)


def _load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read certificate {path}: {error}") from error


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"cannot read private key {path}: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"private key {path} is not an EC key")
    return key


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    """KeyUsage for a CA (``signing=False``: certificate/CRL signing) or a leaf (signatures)."""
    return x509.KeyUsage(
        digital_signature=signing, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=not signing,
        crl_sign=not signing, encipher_only=False, decipher_only=False,
    )


def _build_certificate(
    subject: str,
    issuer: x509.Name | None,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    """Sign a CA certificate (``issuer`` None: self-signed) or a leaf for the name ``subject``."""
    is_ca = issuer is None
    subject_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(subject_name if issuer is None else issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), True)
        .add_extension(_key_usage(signing=not is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if not is_ca:
        # Every party is a TLS server for some peers and a client for others.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(subject)]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
            )
        )
    return builder.sign(signer, hashes.SHA256())


def _create_ca(out_dir: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create and write a self-signed deployment CA valid for ``days`` days."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    # A random suffix keeps CAs of different deployments apart in logs and error messages.
    subject = f"mpc deployment CA {secrets.token_hex(4)}"
    end = now + timedelta(days=days)
    certificate = _build_certificate(subject, None, key, key, now - _CLOCK_SKEW, end)
    _write_identity(out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE, certificate, key)
    return certificate, key


def _load_ca(
    ca_cert_path: Path, ca_key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Load a CA certificate and key, checking that they belong together."""
    certificate = _load_certificate(ca_cert_path)
    key = _load_ec_key(ca_key_path)
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ConfigError(f"CA key {ca_key_path} does not match CA certificate {ca_cert_path}")
    return certificate, key


def _sign_leaf(
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    out_dir: Path,
    not_before: datetime,
    not_after: datetime,
) -> tuple[Path, Path]:
    """Issue and write ``<name>.pem``/``<name>.key`` signed by the CA."""
    if not_after <= not_before:
        raise ConfigError(f"certificate for {name!r}: not_after must be later than not_before")
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = ca_certificate.subject
    certificate = _build_certificate(name, issuer, key, ca_key, not_before, not_after)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    _write_identity(cert_path, key_path, certificate, key)
    return cert_path, key_path


def issue_certificate(
    ca_cert_path: Path,
    ca_key_path: Path,
    name: str,
    out_dir: Path,
    *,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    days: int = 365,
) -> tuple[Path, Path]:
    """Issue ``<name>.pem``/``<name>.key`` in ``out_dir``, signed by the given CA.

    ``not_before`` defaults to now minus a few minutes of clock skew and ``not_after`` to
    ``not_before + days``; explicit values are used as given (tests issue expired certificates
    this way). Existing files for ``name`` are overwritten. Returns ``(cert path, key path)``.
    """
    validate_name(name)
    ca_certificate, ca_key = _load_ca(Path(ca_cert_path), Path(ca_key_path))
    start = not_before if not_before is not None else datetime.now(UTC) - _CLOCK_SKEW
    end = not_after if not_after is not None else start + timedelta(days=days)
    out_dir = Path(out_dir)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _sign_leaf(ca_certificate, ca_key, name, out_dir, start, end)


def create_deployment(
    out_dir: Path, names: Sequence[str], *, days: int = 365
) -> dict[str, tuple[Path, Path]]:
    """Create (or extend) a deployment in ``out_dir``; return ``name -> (cert path, key path)``.

    If ``ca.pem`` and ``ca.key`` exist they are reused, and names whose certificate and key
    already exist are kept as they are (after checking that the CA signed them). Only missing
    certificates are issued, valid for ``days`` days but never beyond the CA's own expiry.
    """
    if isinstance(names, str):
        raise TypeError("names must be a sequence of names, not a single string")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"days must be a positive integer, got {days!r}")
    unique_names = list(dict.fromkeys(validate_name(name) for name in names))
    if not unique_names:
        raise ConfigError("create_deployment needs at least one name")

    out_dir = Path(out_dir)
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = out_dir / CA_CERT_FILE, out_dir / CA_KEY_FILE
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_certificate, ca_key = _load_ca(ca_cert_path, ca_key_path)
    elif ca_cert_path.exists() or ca_key_path.exists():
        present = ca_cert_path if ca_cert_path.exists() else ca_key_path
        raise ConfigError(f"incomplete CA in {out_dir}: only {present.name} exists")
    else:
        ca_certificate, ca_key = _create_ca(out_dir, days)

    now = datetime.now(UTC)
    not_before = now - _CLOCK_SKEW
    not_after = min(now + timedelta(days=days), ca_certificate.not_valid_after_utc)
    result: dict[str, tuple[Path, Path]] = {}
    for name in unique_names:
        cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
        if cert_path.exists() and key_path.exists():
            try:
                _load_certificate(cert_path).verify_directly_issued_by(ca_certificate)
            except (ValueError, TypeError, InvalidSignature) as error:
                raise ConfigError(
                    f"existing certificate {cert_path} was not issued by {ca_cert_path}"
                ) from error
            result[name] = (cert_path, key_path)
        elif cert_path.exists() or key_path.exists():
            present = cert_path if cert_path.exists() else key_path
            raise ConfigError(f"incomplete identity {name!r} in {out_dir}: only {present.name}")
        else:
            result[name] = _sign_leaf(ca_certificate, ca_key, name, out_dir, not_before, not_after)
    return result


def _base_context(protocol: int, ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        # The deployment CA is the only trust anchor: system certificates are never loaded.
        context.load_verify_locations(cafile=os.fspath(ca))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load CA certificate {ca}: {error}") from error
    try:
        context.load_cert_chain(certfile=os.fspath(cert), keyfile=os.fspath(key))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load certificate {cert} with key {key}: {error}") from error
    return context


def server_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate signed by ``ca``."""
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, ca, cert, key)
    # Parties never resume sessions; skipping tickets saves a post-handshake message.
    context.num_tickets = 0
    return context


def client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.3 client context that presents ``cert`` and requires a server cert from ``ca``."""
    return _base_context(ssl.PROTOCOL_TLS_CLIENT, ca, cert, key)


def peer_name(sock: ssl.SSLSocket) -> str:
    """Return the name (CN, else first SAN DNS name) of the peer's *verified* certificate.

    Raises :class:`PeerError` if the handshake is not done or no verified certificate exists.
    """
    try:
        # The dict form is None without a certificate and {} if it was not verified; the
        # DER form is returned even for an unverified one, so it is only parsed afterwards.
        verified = sock.getpeercert()
        der = sock.getpeercert(binary_form=True)
    except (ValueError, OSError) as error:
        raise PeerError(f"no peer certificate: {error}") from error
    if not verified or not der:
        raise PeerError("peer presented no verified certificate")
    certificate = x509.load_der_x509_certificate(der)
    for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        if attribute.value:
            return str(attribute.value)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        dns_names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        dns_names = []
    if dns_names:
        return dns_names[0]
    raise PeerError("peer certificate carries neither a common name nor a DNS name")


def check_peer(sock: ssl.SSLSocket, expected: str | Collection[str]) -> str:
    """Return the peer's certificate name if it is ``expected`` (or one of them).

    Raises :class:`PeerError` naming both the presented and the expected name otherwise.
    """
    name = peer_name(sock)
    if isinstance(expected, str):
        if name != expected:
            raise PeerError(f"peer presented certificate for {name!r}, expected {expected!r}")
    elif name not in expected:
        raise PeerError(
            f"peer presented certificate for {name!r}, expected one of {sorted(expected)!r}"
        )
    return name


@dataclass(frozen=True)
class DeploymentPaths:
    """The CA, certificate and key files of one named identity in a deployment directory."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def for_name(cls, certs_dir: Path, name: str) -> DeploymentPaths:
        """Paths of ``name``'s material in ``certs_dir`` (the files need not exist yet)."""
        certs_dir = Path(certs_dir)
        validate_name(name)
        return cls(certs_dir / CA_CERT_FILE, certs_dir / f"{name}.pem", certs_dir / f"{name}.key")

    def missing(self) -> list[Path]:
        """The files among ca, cert and key that do not exist."""
        return [path for path in (self.ca, self.cert, self.key) if not path.is_file()]

    def exists(self) -> bool:
        """True if the CA, certificate and key files all exist."""
        return not self.missing()

    def require(self) -> DeploymentPaths:
        """Return ``self``, or raise :class:`ConfigError` naming every missing file."""
        missing = self.missing()
        if missing:
            listed = ", ".join(str(path) for path in missing)
            raise ConfigError(f"missing certificate material: {listed} (run mpc-certs)")
        return self

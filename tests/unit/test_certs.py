"""Tests for mpc.net.certs: certificate files, mutual TLS 1.3 handshakes and peer-name checks.

Handshakes run over ``socket.socketpair()`` with the server side in a thread; every socket has
a 5 s timeout, so a broken handshake fails the test instead of hanging it.
"""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mpc.core.errors import ConfigError, PeerError
from mpc.net.certs import (
    DeploymentPaths,
    check_peer,
    client_context,
    create_deployment,
    issue_certificate,
    peer_name,
    server_context,
)
from parties.certs import main as certs_main

TIMEOUT = 5.0
REQUEST, REPLY = b"ping", b"pong"


@dataclass
class Outcome:
    """What each side of one handshake-and-exchange observed."""

    server_error: BaseException | None = None
    client_error: BaseException | None = None
    server_peer: str | None = None
    client_peer: str | None = None
    server_received: bytes | None = None
    client_received: bytes | None = None


def exchange(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    server_check: Callable[[ssl.SSLSocket], object] | None = None,
) -> Outcome:
    """Handshake over a socket pair; the client sends REQUEST and the server answers REPLY.

    The server reads application bytes only after its handshake (and ``server_check``) passed.
    """
    outcome = Outcome()
    server_raw, client_raw = socket.socketpair()
    server_raw.settimeout(TIMEOUT)
    client_raw.settimeout(TIMEOUT)

    def serve() -> None:
        try:
            with server.wrap_socket(server_raw, server_side=True) as tls:
                if server_check is not None:
                    server_check(tls)
                outcome.server_peer = peer_name(tls)
                outcome.server_received = tls.recv(len(REQUEST))
                tls.sendall(REPLY)
        except (OSError, PeerError) as error:  # ssl.SSLError is an OSError
            outcome.server_error = error
        finally:
            server_raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client.wrap_socket(client_raw, server_side=False) as tls:
            outcome.client_peer = peer_name(tls)
            tls.sendall(REQUEST)
            outcome.client_received = tls.recv(len(REPLY))
    except (OSError, PeerError) as error:
        outcome.client_error = error
    finally:
        client_raw.close()
    thread.join(TIMEOUT)
    if thread.is_alive():
        pytest.fail("server thread did not finish within the timeout")
    return outcome


def contexts(directory: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts for ``name`` in the deployment at ``directory``."""
    paths = DeploymentPaths.for_name(directory, name).require()
    return (
        server_context(paths.ca, paths.cert, paths.key),
        client_context(paths.ca, paths.cert, paths.key),
    )


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    create_deployment(directory, ["party0", "party1", "dealer"], days=2)
    return directory


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated deployment whose CA the first one does not trust."""
    directory = tmp_path_factory.mktemp("foreign")
    create_deployment(directory, ["party1"])
    return directory


def test_files_and_key_permissions(deployment: Path) -> None:
    for stem in ("ca", "party0", "party1", "dealer"):
        assert (deployment / f"{stem}.pem").is_file()
        assert stat.S_IMODE((deployment / f"{stem}.key").stat().st_mode) == 0o600


def test_create_deployment_reuses_ca_and_existing_names(tmp_path: Path) -> None:
    first = create_deployment(tmp_path, ["party0"])
    ca_bytes = (tmp_path / "ca.pem").read_bytes()
    cert_bytes = first["party0"][0].read_bytes()
    second = create_deployment(tmp_path, ["party0", "party1"])
    assert set(second) == {"party0", "party1"}
    assert (tmp_path / "ca.pem").read_bytes() == ca_bytes
    assert second["party0"][0].read_bytes() == cert_bytes
    assert second["party1"] == (tmp_path / "party1.pem", tmp_path / "party1.key")


def test_inconsistent_directories_are_rejected(tmp_path: Path, foreign: Path) -> None:
    create_deployment(tmp_path / "mixed", ["party0"])
    for suffix in ("pem", "key"):
        target = tmp_path / "mixed" / f"party1.{suffix}"
        target.write_bytes((foreign / f"party1.{suffix}").read_bytes())
    with pytest.raises(ConfigError, match="not issued by"):
        create_deployment(tmp_path / "mixed", ["party1"])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "ca.pem").write_bytes((foreign / "ca.pem").read_bytes())
    with pytest.raises(ConfigError, match="incomplete CA"):
        create_deployment(tmp_path / "half", ["party0"])


@pytest.mark.parametrize("name", ["", "a b", "../x", ".hidden", "ca", "p/0", "x" * 65])
def test_invalid_names_are_rejected(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError):
        create_deployment(tmp_path, [name])


def test_deployment_paths_names_missing_files(tmp_path: Path) -> None:
    paths = DeploymentPaths.for_name(tmp_path, "party0")
    assert not paths.exists()
    with pytest.raises(ConfigError, match="party0.key"):
        paths.require()
    create_deployment(tmp_path, ["party0"])
    assert paths.exists()
    assert paths.require() is paths


def test_mutual_handshake_reports_both_names(deployment: Path) -> None:
    server, _ = contexts(deployment, "party0")
    _, client = contexts(deployment, "party1")
    outcome = exchange(server, client, server_check=lambda tls: check_peer(tls, "party1"))
    assert outcome.server_error is None and outcome.client_error is None
    assert outcome.server_peer == "party1"
    assert outcome.client_peer == "party0"
    assert outcome.server_received == REQUEST
    assert outcome.client_received == REPLY


def test_client_certificate_from_another_ca_is_refused(deployment: Path, foreign: Path) -> None:
    server, _ = contexts(deployment, "party0")
    # The client trusts the real CA (so it accepts the server) but holds a foreign certificate.
    client = client_context(deployment / "ca.pem", foreign / "party1.pem", foreign / "party1.key")
    outcome = exchange(server, client)
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert outcome.server_received is None
    assert outcome.client_received != REPLY


def test_server_certificate_from_another_ca_is_refused(deployment: Path, foreign: Path) -> None:
    server = server_context(foreign / "ca.pem", foreign / "party1.pem", foreign / "party1.key")
    _, client = contexts(deployment, "party0")
    outcome = exchange(server, client)
    assert isinstance(outcome.client_error, ssl.SSLError)
    assert outcome.client_peer is None
    assert outcome.server_received is None


def test_client_without_certificate_is_refused(deployment: Path) -> None:
    server, _ = contexts(deployment, "party0")
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cafile=deployment / "ca.pem")
    outcome = exchange(server, anonymous)
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert outcome.server_received is None
    assert outcome.client_received != REPLY


def test_expired_client_certificate_is_refused(deployment: Path, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    cert, key = issue_certificate(
        deployment / "ca.pem",
        deployment / "ca.key",
        "party1",
        tmp_path,
        not_before=now - timedelta(days=3),
        not_after=now - timedelta(days=1),
    )
    server, _ = contexts(deployment, "party0")
    outcome = exchange(server, client_context(deployment / "ca.pem", cert, key))
    assert isinstance(outcome.server_error, ssl.SSLError)
    assert "expired" in str(outcome.server_error)
    assert outcome.server_received is None
    assert outcome.client_received != REPLY


def test_wrong_name_is_detected_by_check_peer(deployment: Path) -> None:
    server, _ = contexts(deployment, "party0")
    _, client = contexts(deployment, "dealer")
    outcome = exchange(server, client, server_check=lambda tls: check_peer(tls, "party1"))
    assert isinstance(outcome.server_error, PeerError)
    assert str(outcome.server_error) == (
        "peer presented certificate for 'dealer', expected 'party1'"
    )
    assert outcome.server_received is None
    outcome = exchange(
        server, client, server_check=lambda tls: check_peer(tls, {"party1", "dealer"})
    )
    assert outcome.server_error is None and outcome.server_peer == "dealer"


def test_peer_name_before_handshake_raises(deployment: Path) -> None:
    _, client = contexts(deployment, "party0")
    left, right = socket.socketpair()
    with left, right:
        tls = client.wrap_socket(left, do_handshake_on_connect=False)
        with pytest.raises(PeerError):
            peer_name(tls)


def test_contexts_are_tls13_mutual(deployment: Path) -> None:
    server, client = contexts(deployment, "party0")
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert not context.check_hostname


def test_missing_files_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ca.pem"):
        server_context(tmp_path / "ca.pem", tmp_path / "x.pem", tmp_path / "x.key")


def test_cli_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main([str(tmp_path / "out"), "party0", "party1", "--days", "3"]) == 0
    printed = capsys.readouterr().out
    assert "party1.pem" in printed and "ca.key" in printed
    assert (tmp_path / "out" / "party1.key").is_file()
    assert certs_main([str(tmp_path / "out"), "bad name"]) == 2

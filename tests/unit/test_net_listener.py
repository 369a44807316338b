"""Connection setup over real mutual TLS in one process: background handshakes, their bound,
and dial's retries (``mpc/net/listener.py``)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from mpc.core.errors import PeerError
from mpc.net.certs import DeploymentPaths, client_context, create_deployment, server_context
from mpc.net.link import Link
from mpc.net.listener import Listener, dial


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    create_deployment(d, ["a", "b", "c"])
    return d


def _ctx(certs: Path, name: str, server: bool) -> ssl.SSLContext:
    p = DeploymentPaths.for_name(certs, name)
    return (server_context if server else client_context)(p.ca, p.cert, p.key)


def _handshake_threads() -> int:
    return sum("handshake" in t.name for t in threading.enumerate())


def test_handshakes_complete_before_accept_is_called(certs: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that dials while the listening process is busy elsewhere for longer than a
    handshake may take still gets in: the handshake is answered in the background."""
    monkeypatch.setattr(Listener, "HANDSHAKE_TIMEOUT", 0.5)
    listener = Listener("127.0.0.1", 0, _ctx(certs, "a", True), 1.0)
    links: list[Link] = []
    try:
        t = threading.Thread(target=lambda: links.append(dial(
            "127.0.0.1", listener.port, _ctx(certs, "b", False), "a", time.monotonic() + 5, 1.0)))
        t.start()
        t.join(5)
        assert links, "dial did not complete while nobody called accept()"
        time.sleep(1.5)  # 3x the handshake timeout, still no accept()
        a = listener.accept({"b"}, time.monotonic() + 1, "b")
        links[0].send_json("hi", {"n": 1})
        assert a.recv_json("hi") == {"n": 1}
        a.close()
    finally:
        for link in links:
            link.close()
        listener.close()


def test_handshake_flood_is_bounded_and_a_peer_still_gets_in(
        certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """60 TCP connections that never start TLS: at most MAX_HANDSHAKES handshake threads; the
    excess is closed at once; a legitimate dialer retries and gets in."""
    monkeypatch.setattr(Listener, "HANDSHAKE_TIMEOUT", 1.0)
    before = _handshake_threads()
    listener = Listener("127.0.0.1", 0, _ctx(certs, "a", True), 2.0)
    flood: list[socket.socket] = []
    peak = 0
    got: list[Link] = []
    try:
        acceptor = threading.Thread(target=lambda: got.append(
            listener.accept({"b"}, time.monotonic() + 20, "b")))
        acceptor.start()
        for _ in range(60):
            flood.append(socket.create_connection(("127.0.0.1", listener.port), timeout=5))
            peak = max(peak, _handshake_threads() - before)
        for _ in range(20):
            peak = max(peak, _handshake_threads() - before)
            time.sleep(0.02)
        start = time.monotonic()
        b = dial("127.0.0.1", listener.port, _ctx(certs, "b", False), "a",
                 time.monotonic() + 15, 2.0)
        acceptor.join(20)
        print(f"peak handshake threads {peak} (cap {Listener.MAX_HANDSHAKES}), "
              f"{listener.dropped} flood connections closed unhandshaken, "
              f"legitimate dial took {time.monotonic() - start:.2f}s")
        assert peak <= Listener.MAX_HANDSHAKES, peak
        assert listener.dropped >= 60 - Listener.MAX_HANDSHAKES
        assert got and got[0].peer == "b"
        b.send_json("x", [1])
        assert got[0].recv_json("x") == [1]
        b.close()
        got[0].close()
    finally:
        for s in flood:
            s.close()
        listener.close()


def test_dial_retries_until_the_listener_exists(certs: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    holder: list[Listener] = []
    timer = threading.Timer(1.0, lambda: holder.append(
        Listener("127.0.0.1", port, _ctx(certs, "a", True), 1.0)))
    timer.start()
    try:
        b = dial("127.0.0.1", port, _ctx(certs, "b", False), "a", time.monotonic() + 10, 1.0)
        a = holder[0].accept({"b"}, time.monotonic() + 5, "b")
        assert (a.peer, b.peer) == ("b", "a")
        a.close()
        b.close()
    finally:
        timer.join()
        for listener in holder:
            listener.close()


def test_dial_retries_a_server_that_cuts_handshakes(certs: Path) -> None:
    """A server that closes connections before the handshake (busy, or still starting) for a
    while: dial keeps trying instead of failing at the first cut."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    cut_until = time.monotonic() + 1.0
    holder: list[Listener] = []

    def cutter() -> None:
        server.settimeout(0.05)
        while time.monotonic() < cut_until:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.close()
        server.close()
        holder.append(Listener("127.0.0.1", port, _ctx(certs, "a", True), 1.0))

    t = threading.Thread(target=cutter)
    t.start()
    try:
        b = dial("127.0.0.1", port, _ctx(certs, "b", False), "a", time.monotonic() + 10, 1.0)
        t.join(5)
        a = holder[0].accept({"b"}, time.monotonic() + 5, "b")
        a.close()
        b.close()
    finally:
        t.join(5)
        for listener in holder:
            listener.close()


def test_dial_to_the_wrong_name_fails_at_once(certs: Path) -> None:
    """Another deployment member at the address: a configuration error, not worth waiting."""
    listener = Listener("127.0.0.1", 0, _ctx(certs, "c", True), 1.0)
    try:
        start = time.monotonic()
        with pytest.raises(PeerError, match="expected 'a'"):
            dial("127.0.0.1", listener.port, _ctx(certs, "b", False), "a",
                 time.monotonic() + 10, 1.0)
        assert time.monotonic() - start < 2
    finally:
        listener.close()

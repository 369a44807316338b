"""Connection setup: a listener that authenticates peers in the background, and a dialer that
retries until a deadline, so processes may start in any order and with any skew up to the
connect timeout.

:class:`Listener` accepts TCP connections and runs their TLS handshakes in a background thread
from the moment it exists (not only while someone calls :meth:`Listener.accept`): a peer that
connects while this process is still busy elsewhere (dialing others, waiting for the launcher)
completes its handshake at once and waits in a queue of authenticated connections. At most
``MAX_HANDSHAKES`` handshakes run at a time, each bounded by ``HANDSHAKE_TIMEOUT``; connections
beyond that are closed at once (a legitimate dialer retries), so a flood of TCP connections
that never handshake cannot exhaust threads. A connection whose certificate name is not
expected is closed before any application byte is read or written.

:func:`dial` retries refused or reset TCP connections and handshakes that time out or are cut
off (the server is not up yet, or is busy) with exponential backoff until the deadline. It
fails at once when the server's certificate does not verify against the deployment CA, when
the server rejects ours (a TLS alert), or when it presents another deployment name: those are
configuration errors (wrong address or wrong certificates) that waiting cannot fix.
"""

from __future__ import annotations

import logging
import queue
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Collection

from mpc.core.errors import ConfigError, PeerError
from mpc.net.certs import peer_name
from mpc.net.link import Link

__all__ = ["Listener", "dial", "parse_address", "free_ports"]

log = logging.getLogger(__name__)

# Ports handed out for local runs lie below Linux's default ephemeral range (32768-60999):
# a port picked from that range can be taken by any outgoing connection before the process it
# was picked for binds it.
_PORT_RANGE = (20000, 32000)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports on ``host`` that were free a moment ago, outside the ephemeral
    range (for starting local processes that must know each other's ports in advance)."""
    ports: list[int] = []
    for _ in range(100 * count):
        if len(ports) == count:
            break
        port = _PORT_RANGE[0] + secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0])
        if port in ports:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        ports.append(port)
    if len(ports) < count:
        raise PeerError(f"could not find {count} free ports on {host}")
    return ports


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"address must be HOST:PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


class Listener:
    """A TLS server socket that hands out links to peers whose certificate name is expected.

    ``timeout`` and ``keepalive`` are passed on to every :class:`~mpc.net.link.Link` it accepts.
    """

    HANDSHAKE_TIMEOUT = 5.0
    MAX_HANDSHAKES = 16

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        timeout: float,
        *,
        keepalive: bool = True,
    ) -> None:
        self.context = context
        self.timeout = timeout
        self.keepalive = keepalive
        try:
            self.sock = socket.create_server((host, port), reuse_port=False, backlog=64)
        except OSError as exc:
            raise PeerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.sock.settimeout(0.2)
        self.refused = 0
        self.dropped = 0  # closed unhandshaken because MAX_HANDSHAKES were running
        self._ready: queue.Queue[tuple[ssl.SSLSocket, str]] = queue.Queue()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.MAX_HANDSHAKES)
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"mpc-listener-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                raw, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._closed.is_set():
                    return
                log.warning("listener: accept failed (%s)", exc)  # e.g. out of descriptors
                time.sleep(0.2)
                continue
            if not self._slots.acquire(blocking=False):
                with self._lock:
                    self.dropped += 1
                    self.refused += 1
                    dropped = self.dropped
                if dropped == 1 or dropped % 100 == 0:
                    log.warning(
                        "refused connection from %s: %d handshakes already running "
                        "(%d such connections closed so far)",
                        addr[0], self.MAX_HANDSHAKES, dropped,
                    )
                raw.close()
                continue
            try:
                threading.Thread(
                    target=self._handshake, args=(raw, addr[0]), name="mpc-handshake", daemon=True
                ).start()
            except RuntimeError:  # cannot start a thread
                self._slots.release()
                raw.close()

    def _handshake(self, raw: socket.socket, addr: str) -> None:
        try:
            raw.settimeout(self.HANDSHAKE_TIMEOUT)
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
                name = peer_name(tls)
            except (OSError, ssl.SSLError, PeerError) as exc:
                with self._lock:
                    self.refused += 1
                log.warning("refused connection from %s: TLS handshake failed (%s)", addr, exc)
                raw.close()
                return
            if self._closed.is_set():
                tls.close()
                return
            self._ready.put((tls, name))
        finally:
            self._slots.release()

    def accept(self, allowed: Collection[str], deadline: float, what: str) -> Link:
        """Next authenticated connection from one of ``allowed`` names (others are refused and
        closed); PeerError once ``deadline`` (monotonic seconds) has passed."""
        while True:
            remaining = deadline - time.monotonic()
            try:
                tls, name = self._ready.get(timeout=max(0.0, min(remaining, 0.5)))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise PeerError(f"timed out waiting for {what} to connect") from None
                continue
            if name in allowed:
                return Link(tls, name, self.timeout, keepalive=self.keepalive)
            with self._lock:
                self.refused += 1
            log.warning("refused connection: certificate name %r not expected", name)
            tls.close()

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self._thread.join(1.0)
        while True:
            try:
                tls, _ = self._ready.get_nowait()
            except queue.Empty:
                break
            tls.close()


_RETRY_SSL = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def dial(
    host: str,
    port: int,
    context: ssl.SSLContext,
    expected: str,
    deadline: float,
    timeout: float,
    *,
    keepalive: bool = True,
) -> Link:
    """Connect to ``expected`` at host:port, retrying (TCP and handshake) until ``deadline``
    (monotonic seconds); see the module docstring for what fails at once."""
    last: Exception | None = None
    delay = 0.05
    attempts = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PeerError(
                f"could not connect to {expected} at {host}:{port} "
                f"({attempts} attempts): {last}"
            )
        attempts += 1
        raw: socket.socket | None = None
        try:
            raw = socket.create_connection(
                (host, port), timeout=min(Listener.HANDSHAKE_TIMEOUT, left)
            )
            tls = context.wrap_socket(raw, server_side=False)
            name = peer_name(tls)
        except ssl.SSLCertVerificationError as exc:
            _close(raw)
            raise PeerError(
                f"TLS handshake with {expected} at {host}:{port} failed: {exc}"
            ) from None
        except ssl.SSLError as exc:
            _close(raw)
            if not isinstance(exc, _RETRY_SSL):
                raise PeerError(
                    f"TLS handshake with {expected} at {host}:{port} failed: {exc}"
                ) from None
            last = exc
        except OSError as exc:  # refused, reset, timed out: not up yet, or busy
            _close(raw)
            last = exc
        except PeerError:
            _close(raw)
            raise
        else:
            if name != expected:
                tls.close()
                raise PeerError(
                    f"{host}:{port} presented certificate {name!r}, expected {expected!r}"
                )
            return Link(tls, name, timeout, keepalive=keepalive)
        time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
        delay = min(2 * delay, 1.0)


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass

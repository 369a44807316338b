"""Mutual-TLS links between processes: framed messages, timeouts, mesh setup.

A :class:`Link` is one TLS 1.3 connection to a peer identified by the name in its certificate
(the CA is the deployment's own; see ``certs.py``). Frames follow the format documented in
``transport.py``. Every receive has a timeout; a closed or silent peer raises
:class:`~mpc.errors.PeerError` naming the peer and the operation.

:class:`TLSChannel` implements the ``Channel`` primitives over one link per peer. Small rounds
(every frame <= 256 KiB) send with blocking ``sendall`` then receive with ``recv_into`` a
preallocated tensor; larger rounds interleave non-blocking sends and receives in one thread so
two peers sending big frames to each other cannot deadlock on full socket buffers.

Connection setup: a party listens for lower pids and dials higher pids, retrying until a
deadline; an accepted connection whose certificate name is not expected is closed before any
application byte is read or written.
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mpc.certs import peer_name
from mpc.errors import ConfigError, PeerError, ProtocolError
from mpc.transport import (
    HEADER,
    KIND_GOODBYE,
    KIND_JSON,
    KIND_TENSORS,
    Channel,
    op_tag,
    pack_header,
    tensors_nbytes,
    unpack_header,
)

__all__ = ["Link", "Listener", "dial", "TLSChannel", "parse_address", "free_ports"]

log = logging.getLogger(__name__)
SMALL_FRAME = 256 * 1024
RECV_BUFFER = 256 * 1024
Shape = tuple[int, ...]


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


def _payload_views(payload: Sequence[torch.Tensor]) -> list[memoryview]:
    views = []
    for t in payload:
        arr = np.ascontiguousarray(t.detach().numpy())
        views.append(arr.data.cast("B"))
    return views


class Link:
    """One authenticated, framed connection to a named peer."""

    def __init__(self, sock: ssl.SSLSocket, peer: str, timeout: float) -> None:
        self.sock = sock
        self.peer = peer
        self.timeout = timeout
        self.send_seq = 0
        self.recv_seq = 0
        self.closed = False
        # Receive buffer: one TLS read usually brings a header with its payload, or several
        # queued dealer frames at once, instead of one read per header and per payload.
        self._rbuf = bytearray(RECV_BUFFER)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- sending ------------------------------------------------------------------------------
    def frame(self, kind: int, op: str, payload: Sequence[torch.Tensor] | bytes) -> list[Any]:
        """Header + payload buffers of the next frame (advances the send sequence)."""
        if isinstance(payload, bytes):
            bufs: list[Any] = [payload]
            length = len(payload)
            tag = op_tag(op)
        else:
            bufs = _payload_views(payload)
            length = sum(len(b) for b in bufs)
            tag = op_tag(op, [tuple(t.shape) for t in payload])
        header = pack_header(kind, tag, self.send_seq, length)
        self.send_seq += 1
        return [header, *bufs]

    def send(self, kind: int, op: str, payload: Sequence[torch.Tensor] | bytes) -> int:
        bufs = self.frame(kind, op, payload)
        total = sum(len(b) for b in bufs)
        try:
            if total <= SMALL_FRAME:
                self.sock.sendall(b"".join(bufs))  # one copy: join takes the buffers
            else:
                for b in bufs:
                    self.sock.sendall(b)
        except (OSError, ssl.SSLError) as exc:
            raise PeerError(f"sending {op} to {self.peer} failed: {exc}") from None
        return total

    def send_json(self, op: str, obj: Any) -> int:
        return self.send(KIND_JSON, op, json.dumps(obj, sort_keys=True).encode())

    # -- receiving ----------------------------------------------------------------------------
    def take_buffered(self, view: memoryview) -> int:
        """Copy already-received bytes into ``view``; returns how many."""
        k = min(len(view), self._rend - self._rstart)
        if k:
            view[:k] = self._rview[self._rstart : self._rstart + k]
            self._rstart += k
        return k

    def _recv_exact(self, view: memoryview, op: str) -> None:
        got = self.take_buffered(view)
        want = len(view)
        while got < want:
            small = want - got < RECV_BUFFER // 2
            try:
                if small:
                    # Refill the buffer (reads whatever the peer has queued, up to its size).
                    self._rstart = 0
                    n = self.sock.recv_into(self._rview)
                    self._rend = n
                else:
                    n = self.sock.recv_into(view[got:])
            except TimeoutError:
                raise PeerError(
                    f"timed out after {self.timeout:g}s waiting for {self.peer} ({op})"
                ) from None
            except (OSError, ssl.SSLError) as exc:
                raise PeerError(f"connection to {self.peer} lost during {op}: {exc}") from None
            if n == 0:
                raise PeerError(f"{self.peer} closed the connection during {op}")
            got += self.take_buffered(view[got:]) if small else n

    def recv_header(self, kind: int, op: str, want_tag: int | None = None) -> int:
        """Receive and check the next header; returns the payload length."""
        if want_tag is None:
            want_tag = op_tag(op)
        buf = bytearray(HEADER.size)
        self._recv_exact(memoryview(buf), op)
        got_kind, tag, seq, length = unpack_header(buf, peer=self.peer)
        if got_kind == KIND_GOODBYE:
            raise PeerError(f"{self.peer} shut down while we waited for {op}")
        if got_kind != kind or tag != want_tag or seq != self.recv_seq:
            raise ProtocolError(
                f"frame from {self.peer} does not match {op}: kind {got_kind} (want {kind}), "
                f"seq {seq} (want {self.recv_seq}), tag {'ok' if tag == want_tag else 'differs'}"
            )
        self.recv_seq += 1
        return length

    def recv_tensors(self, op: str, shapes: Sequence[Shape]) -> list[torch.Tensor]:
        length = self.recv_header(KIND_TENSORS, op, op_tag(op, shapes))
        want = tensors_nbytes(shapes)
        if length != want:
            raise ProtocolError(
                f"{op}: {self.peer} sent {length} bytes, expected {want} for shapes {list(shapes)}"
            )
        flat = torch.empty(want // 8, dtype=torch.int64)
        if want:
            self._recv_exact(flat.numpy().data.cast("B"), op)
        return _split(flat, shapes)

    def recv_bytes(self, op: str, kind: int = KIND_JSON) -> bytes:
        return bytes(self.recv_buffer(op, kind))

    def recv_buffer(self, op: str, kind: int) -> bytearray:
        """The next frame's payload as a fresh (writable, malloc-aligned) bytearray."""
        length = self.recv_header(kind, op)
        buf = bytearray(length)
        self._recv_exact(memoryview(buf), op)
        return buf

    def recv_json(self, op: str) -> Any:
        data = self.recv_bytes(op)
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise ProtocolError(f"{op}: malformed control object from {self.peer}") from None

    def close(self, goodbye: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if goodbye:
                self.sock.settimeout(1.0)
                self.sock.sendall(pack_header(KIND_GOODBYE, 0, self.send_seq, 0))
        except (OSError, ssl.SSLError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _split(flat: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
    out = []
    offset = 0
    for shape in shapes:
        count = tensors_nbytes([shape]) // 8
        out.append(flat[offset : offset + count].reshape(shape))
        offset += count
    return out


class Listener:
    """A TLS server socket that accepts only peers whose certificate name is expected.

    TLS handshakes run in short-lived threads with their own timeout, so a client that connects
    and stays silent cannot hold up legitimate peers.
    """

    HANDSHAKE_TIMEOUT = 5.0

    def __init__(self, host: str, port: int, context: ssl.SSLContext, timeout: float) -> None:
        self.context = context
        self.timeout = timeout
        try:
            self.sock = socket.create_server((host, port), reuse_port=False, backlog=64)
        except OSError as exc:
            raise PeerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.sock.settimeout(0.2)
        self.refused = 0
        self._ready: queue.Queue[tuple[ssl.SSLSocket, str]] = queue.Queue()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _handshake(self, raw: socket.socket, addr: str) -> None:
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
        self._ready.put((tls, name))

    def accept(self, allowed: Collection[str], deadline: float, what: str) -> Link:
        """Next connection from one of ``allowed`` names; others are refused and closed."""
        while True:
            try:
                tls, name = self._ready.get_nowait()
            except queue.Empty:
                pass
            else:
                if name in allowed:
                    return Link(tls, name, self.timeout)
                with self._lock:
                    self.refused += 1
                log.warning("refused connection: certificate name %r not expected", name)
                tls.close()
                continue
            if time.monotonic() >= deadline:
                raise PeerError(f"timed out waiting for {what} to connect")
            try:
                raw, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                raise PeerError(f"listener failed while waiting for {what}: {exc}") from None
            threading.Thread(target=self._handshake, args=(raw, addr[0]), daemon=True).start()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        while True:
            try:
                tls, _ = self._ready.get_nowait()
            except queue.Empty:
                break
            tls.close()


def dial(
    host: str, port: int, context: ssl.SSLContext, expected: str, deadline: float, timeout: float
) -> Link:
    """Connect to ``expected`` at host:port, retrying until ``deadline`` (monotonic seconds)."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            raw = socket.create_connection((host, port), timeout=5.0)
        except OSError as exc:
            last = exc
            time.sleep(0.05)
            continue
        try:
            tls = context.wrap_socket(raw, server_side=False)
            name = peer_name(tls)
        except (OSError, ssl.SSLError, PeerError) as exc:
            raw.close()
            raise PeerError(
                f"TLS handshake with {expected} at {host}:{port} failed: {exc}"
            ) from None
        if name != expected:
            tls.close()
            raise PeerError(f"{host}:{port} presented certificate {name!r}, expected {expected!r}")
        return Link(tls, name, timeout)
    raise PeerError(f"could not connect to {expected} at {host}:{port}: {last}")


class TLSChannel(Channel):
    """The party mesh over one TLS link per peer (same interface as LocalChannel)."""

    def __init__(self, pid: int, n: int, links: Mapping[int, Link], timeout: float) -> None:
        super().__init__(pid, n, timeout)
        self.links = dict(links)

    def _send(self, to: int, kind: int, op: str, payload: Sequence[torch.Tensor] | bytes) -> int:
        return self.links[to].send(kind, op, payload)

    def _recv(
        self, frm: int, kind: int, op: str, shapes: Sequence[Shape] | None
    ) -> list[torch.Tensor] | bytes:
        link = self.links[frm]
        if shapes is None:
            return link.recv_bytes(op, kind)
        return link.recv_tensors(op, shapes)

    def exchange(
        self,
        op: str,
        outgoing: Mapping[int, Sequence[torch.Tensor]],
        incoming: Mapping[int, Sequence[Shape]],
    ) -> dict[int, list[torch.Tensor]]:
        big = any(
            tensors_nbytes([tuple(t.shape) for t in ts]) > SMALL_FRAME for ts in outgoing.values()
        )
        if not big:
            return super().exchange(op, outgoing, incoming)
        return self._exchange_interleaved(op, outgoing, incoming)

    def _exchange_interleaved(
        self,
        op: str,
        outgoing: Mapping[int, Sequence[torch.Tensor]],
        incoming: Mapping[int, Sequence[Shape]],
    ) -> dict[int, list[torch.Tensor]]:
        """Large round: non-blocking sends and receives in one loop (no deadlock, no threads)."""
        pending_out: dict[int, list[memoryview]] = {}
        sent = 0
        for p, ts in outgoing.items():
            bufs = [
                memoryview(b).cast("B") if not isinstance(b, bytes) else memoryview(b)
                for b in self.links[p].frame(KIND_TENSORS, op, ts)
            ]
            pending_out[p] = bufs
            sent += sum(len(b) for b in bufs)
        # Receive state per peer: header buffer, then payload into a preallocated tensor.
        state: dict[int, dict[str, Any]] = {}
        result: dict[int, list[torch.Tensor]] = {}
        for q, shapes in incoming.items():
            state[q] = {"hdr": bytearray(HEADER.size), "got": 0, "flat": None, "shapes": shapes}
        deadline = time.monotonic() + self.timeout
        for link in self.links.values():
            link.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        try:
            while pending_out or state:
                progressed = False
                for p in list(pending_out):
                    progressed |= self._pump_send(p, pending_out, op)
                for q in list(state):
                    progressed |= self._pump_recv(q, state, result, op)
                if progressed:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    waiting = sorted(self.links[q].peer for q in state) or ["(sending)"]
                    raise PeerError(f"{op}: timed out after {self.timeout:g}s on {waiting}")
                for p in pending_out:
                    sel.register(self.links[p].sock, selectors.EVENT_WRITE)
                for q in state:
                    if q not in pending_out:
                        sel.register(self.links[q].sock, selectors.EVENT_READ)
                    else:
                        sel.modify(
                            self.links[q].sock, selectors.EVENT_READ | selectors.EVENT_WRITE
                        )
                sel.select(min(remaining, 0.5))
                for key in list(sel.get_map().values()):
                    sel.unregister(key.fileobj)
        finally:
            sel.close()
            for link in self.links.values():
                if not link.closed:
                    link.sock.settimeout(link.timeout)
        received = sum(tensors_nbytes(s) + HEADER.size for s in incoming.values())
        self.stats.record(op, sent, received, len(outgoing) + len(incoming), 1)
        return result

    def _pump_send(self, p: int, pending: dict[int, list[memoryview]], op: str) -> bool:
        link = self.links[p]
        bufs = pending[p]
        moved = False
        while bufs:
            try:
                n = link.sock.send(bufs[0][: 1 << 20])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return moved
            except (OSError, ssl.SSLError) as exc:
                raise PeerError(f"sending {op} to {link.peer} failed: {exc}") from None
            moved = True
            bufs[0] = bufs[0][n:]
            if not len(bufs[0]):
                bufs.pop(0)
        del pending[p]
        return True

    def _pump_recv(
        self,
        q: int,
        state: dict[int, dict[str, Any]],
        result: dict[int, list[torch.Tensor]],
        op: str,
    ) -> bool:
        link = self.links[q]
        st = state[q]
        moved = False
        while True:
            if st["flat"] is None:
                view = memoryview(st["hdr"])[st["got"] :]
            else:
                view = st["view"][st["got"] :]
            if len(view) == 0:
                break
            n = link.take_buffered(view) or self._recv_nonblocking(link, view, op)
            if n < 0:
                return moved
            if n == 0:
                raise PeerError(f"{link.peer} closed the connection during {op}")
            moved = True
            st["got"] += n
            if st["flat"] is None and st["got"] == HEADER.size:
                kind, tag, seq, length = unpack_header(st["hdr"], peer=link.peer)
                want_tag = op_tag(op, st["shapes"])
                if kind != KIND_TENSORS or tag != want_tag or seq != link.recv_seq:
                    raise ProtocolError(f"frame from {link.peer} does not match {op}")
                link.recv_seq += 1
                want = tensors_nbytes(st["shapes"])
                if length != want:
                    raise ProtocolError(f"{op}: {link.peer} sent {length} bytes, expected {want}")
                flat = torch.empty(want // 8, dtype=torch.int64)
                st["flat"] = flat
                st["view"] = flat.numpy().data.cast("B")
                st["got"] = 0
            if st["flat"] is not None and st["got"] == len(st["view"]):
                break
        if st["flat"] is not None and st["got"] == len(st["view"]):
            result[q] = _split(st["flat"], st["shapes"])
            del state[q]
        return moved

    @staticmethod
    def _recv_nonblocking(link: Link, view: memoryview, op: str) -> int:
        """Bytes read into ``view``, 0 at end of stream, -1 if nothing is available yet."""
        try:
            return link.sock.recv_into(view)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return -1
        except (OSError, ssl.SSLError) as exc:
            raise PeerError(f"connection to {link.peer} lost during {op}: {exc}") from None

    def close(self) -> None:
        for link in self.links.values():
            link.close()

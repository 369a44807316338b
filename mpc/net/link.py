"""One mutual-TLS connection to a named peer: framed messages, silence timeouts, heartbeats.

A :class:`Link` wraps an established TLS socket (the handshake and the name check happen in
``listener.py``). Frames follow the format documented in ``transport.py``.

Timeouts measure *silence*, not total time: a send or receive fails with
:class:`~mpc.core.errors.PeerError` only when no byte moved for ``timeout`` seconds. A big frame is
written in ``SEND_CHUNK`` pieces, each with its own deadline, so a slow but live peer (WAN, big
masks) is never cut off; a peer that stops (crashed, SIGSTOP, unplugged) is detected within
``timeout``. A per-process keepalive thread sends a heartbeat frame on every link that has been
idle for ``HEARTBEAT_FRACTION * timeout``, so a peer waiting while we compute locally (data
masking, the dealer's generation) never mistakes us for a silent one. Receivers skip heartbeats
transparently: they carry no sequence number and no payload.

Threads: the socket is non-blocking and every TLS call runs under the link's I/O lock (an
OpenSSL connection must not be used by two threads at once); waiting happens outside it, in
``poll``. A send lock is held for a whole message, so the keepalive thread, the main thread and
the dealer's writer thread never interleave frames. One thread at a time receives.

Not here: connection setup (``listener.py``), the party mesh (``net.py``). A live process whose
main thread is stuck keeps sending heartbeats; such a run is bounded by the launcher's overall
``--timeout``.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mpc.core.errors import PeerError, ProtocolError
from mpc.net import transport
from mpc.net.keepalive import HEARTBEAT_FRACTION, KEEPALIVE
from mpc.net.transport import (
    HEADER,
    KIND_GOODBYE,
    KIND_HEARTBEAT,
    KIND_JSON,
    KIND_TENSORS,
    MAGIC,
    check_header_fields,
    frame_chunks,
    op_tag,
    pack_header,
    tensors_nbytes,
    unpack_header,
)

__all__ = ["Link", "TensorReader", "HEARTBEAT_FRACTION", "SEND_CHUNK"]

log = logging.getLogger(__name__)
SMALL_FRAME = 256 * 1024  # messages up to this size go out in one TLS write
SEND_CHUNK = 64 * 1024  # bytes per TLS write of a larger message (the silence unit)
RECV_BUFFER = 256 * 1024
POLL_CAP = 1.0  # longest single poll: waits re-check deadlines and closed sockets
HEARTBEAT = pack_header(KIND_HEARTBEAT, 0, 0, 0)
Shape = tuple[int, ...]


def _payload_views(payload: Sequence[torch.Tensor]) -> list[memoryview]:
    views = []
    for t in payload:
        arr = np.ascontiguousarray(t.detach().numpy())
        views.append(arr.data.cast("B"))
    return views


def _cut(views: list[memoryview], sizes: list[int]) -> list[list[memoryview]]:
    """Split the concatenation of ``views`` into consecutive pieces of ``sizes`` bytes."""
    out: list[list[memoryview]] = []
    it = iter(views)
    cur = memoryview(b"")
    for size in sizes:
        piece: list[memoryview] = []
        while size:
            while not len(cur):
                cur = next(it)
            k = min(size, len(cur))
            piece.append(cur[:k])
            cur, size = cur[k:], size - k
        out.append(piece)
    return out


class Link:
    """One authenticated, framed connection to a named peer.

    ``timeout``: seconds of silence after which a send or receive fails. ``deadline``
    (monotonic seconds, optional): an absolute end for every wait (the launcher's overall
    timeout). ``keepalive``: send heartbeats when idle (off on links whose peer never reads).
    """

    def __init__(
        self, sock: ssl.SSLSocket, peer: str, timeout: float, *, keepalive: bool = True
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.timeout = timeout
        self.deadline: float | None = None
        self.send_seq = 0
        self.recv_seq = 0
        self.closed = False
        self.keepalive = keepalive
        # Receive buffer: one TLS read usually brings a header with its payload, or several
        # queued dealer frames at once, instead of one read per header and per payload.
        self._rbuf = bytearray(RECV_BUFFER)
        self._rview = memoryview(self._rbuf)
        self._rstart = 0
        self._rend = 0
        self._io = threading.Lock()  # every call into the TLS connection
        self.send_lock = threading.Lock()  # one whole message (or heartbeat) at a time
        self._carry: list[memoryview] = []  # a heartbeat the keepalive thread could not finish
        self._last_send = time.monotonic()
        self._pollers: dict[int, select.poll] = {}
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        if keepalive:
            KEEPALIVE.add(self)

    # -- low level: one non-blocking call each --------------------------------------------------
    def _try_send(self, view: memoryview, op: str) -> tuple[int, int]:
        """(bytes written, 0) or (0, poll event to wait for)."""
        with self._io:
            try:
                return self.sock.send(view), 0
            except (ssl.SSLWantWriteError, BlockingIOError):
                return 0, select.POLLOUT
            except ssl.SSLWantReadError:
                return 0, select.POLLIN
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise PeerError(f"sending {op} to {self.peer} failed: {exc}") from None

    def _try_recv(self, view: memoryview, op: str) -> tuple[int, int]:
        """(bytes read, 0), (0, 0) at end of stream, or (0, poll event to wait for)."""
        with self._io:
            try:
                return self.sock.recv_into(view), 0
            except (ssl.SSLWantReadError, BlockingIOError):
                return 0, select.POLLIN
            except ssl.SSLWantWriteError:
                return 0, select.POLLOUT
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise PeerError(f"connection to {self.peer} lost during {op}: {exc}") from None

    def wait(self, event: int, since: float, op: str, doing: str) -> None:
        """Wait until the socket is ready for ``event``; PeerError once nothing has moved for
        ``timeout`` seconds since ``since`` (or the overall deadline has passed)."""
        end = since + self.timeout
        if self.deadline is not None:
            end = min(end, self.deadline)
        now = time.monotonic()
        if now >= end:
            if self.deadline is not None and now >= self.deadline:
                raise PeerError(f"overall deadline reached while {doing} {self.peer} ({op})")
            raise PeerError(
                f"timed out after {self.timeout:g}s of silence {doing} {self.peer} ({op})"
            )
        poller = self._pollers.get(event)
        if poller is None:  # one per event: a reader and a writer thread may wait at once
            fd = self.sock.fileno()
            if fd < 0:
                raise PeerError(f"link to {self.peer} was closed during {op}")
            poller = self._pollers[event] = select.poll()
            poller.register(fd, event)
        if self.closed:
            raise PeerError(f"link to {self.peer} was closed during {op}")
        poller.poll(1000 * min(end - now, POLL_CAP))

    # -- sending ----------------------------------------------------------------------------
    def frames(self, kind: int, op: str, payload: Sequence[torch.Tensor] | bytes) -> list[Any]:
        """Header + payload buffers of the next message (advances the send sequence; call with
        ``send_lock`` held). Tensor messages above ``MAX_FRAME_BYTES`` become several frames."""
        if isinstance(payload, bytes):
            if len(payload) > transport.MAX_FRAME_BYTES:
                raise ProtocolError(
                    f"{op}: a byte payload of {len(payload)} bytes to {self.peer} exceeds the "
                    f"frame cap {transport.MAX_FRAME_BYTES} (only tensor messages are chunked)"
                )
            header = pack_header(kind, op_tag(op), self.send_seq, len(payload))
            self.send_seq += 1
            return [header, payload]
        views = _payload_views(payload)
        tag = op_tag(op, [tuple(t.shape) for t in payload])
        total = sum(len(v) for v in views)
        if total <= transport.MAX_FRAME_BYTES:
            header = pack_header(kind, tag, self.send_seq, total)
            self.send_seq += 1
            return [header, *views]
        sizes = frame_chunks(total)
        out: list[Any] = []
        for size, piece in zip(sizes, _cut(views, sizes), strict=True):
            out.append(pack_header(kind, tag, self.send_seq, size))
            self.send_seq += 1
            out += piece
        return out

    def take_carry(self) -> list[memoryview]:
        """The rest of an unfinished heartbeat, which must go out before anything else (a TLS
        write that would have blocked is retried with the same bytes). Needs ``send_lock``."""
        carry, self._carry = self._carry, []
        return carry

    def push(self, views: list[memoryview], op: str) -> tuple[bool, int]:
        """Write from the front of ``views`` until done or the socket is full; returns (bytes
        moved, poll event to wait for or 0 when all is sent). Needs ``send_lock``."""
        moved = False
        while views:
            n, event = self._try_send(views[0][:SEND_CHUNK], op)
            if event:
                return moved, event
            moved = True
            self._last_send = time.monotonic()
            views[0] = views[0][n:]
            if not len(views[0]):
                views.pop(0)
        return moved, 0

    def _send_views(self, views: list[memoryview], op: str) -> None:
        since = time.monotonic()
        while views:
            moved, event = self.push(views, op)
            if moved:
                since = time.monotonic()
            if event:
                self.wait(event, since, op, "sending to")

    def send(self, kind: int, op: str, payload: Sequence[torch.Tensor] | bytes) -> int:
        """Send one message; returns its bytes on the wire. Fails only after ``timeout``
        seconds without progress (not for a slow transfer)."""
        with self.send_lock:
            if self.closed:
                raise PeerError(f"sending {op} to {self.peer}: link is closed")
            bufs = self.frames(kind, op, payload)
            total = sum(len(b) for b in bufs)
            if total <= SMALL_FRAME:
                views = [memoryview(b"".join(bufs))]  # one copy: join takes the buffers
            else:
                views = [memoryview(b).cast("B") for b in bufs]
            self._send_views(self.take_carry() + views, op)
        return total

    def send_tensors(
        self, op: str, payload: Sequence[torch.Tensor], tag: int, nbytes: int
    ) -> int:
        """:meth:`send` for one small tensor message (``nbytes`` <= ``SMALL_FRAME``, int64
        tensors) whose tag the caller has computed: one joined buffer and, usually, one TLS
        write. Returns its bytes on the wire."""
        parts: list[Any] = [b""]
        for t in payload:
            if t.requires_grad:
                t = t.detach()
            parts.append((t if t.is_contiguous() else t.contiguous()).numpy())
        with self.send_lock:
            if self.closed:
                raise PeerError(f"sending {op} to {self.peer}: link is closed")
            parts[0] = HEADER.pack(MAGIC, KIND_TENSORS, tag, self.send_seq, nbytes)
            self.send_seq += 1
            data = b"".join(parts)
            if len(data) != HEADER.size + nbytes:
                raise ProtocolError(f"{op}: payload to {self.peer} is not {nbytes} bytes of int64")
            if self._carry or len(data) > SEND_CHUNK:
                self._send_views(self.take_carry() + [memoryview(data)], op)
                return len(data)
            # One attempt with the whole buffer (<= SEND_CHUNK, as push would write it, so a
            # retry after "would block" passes OpenSSL the same bytes).
            n, event = self._try_send(memoryview(data), op)
            if event:
                self._send_views([memoryview(data)], op)
            else:
                self._last_send = time.monotonic()
                if n < len(data):
                    self._send_views([memoryview(data)[n:]], op)
        return len(data)

    def send_json(self, op: str, obj: Any) -> int:
        return self.send(KIND_JSON, op, json.dumps(obj, sort_keys=True).encode())

    def heartbeat_if_idle(self, now: float) -> None:
        """Keepalive thread: send a heartbeat if nothing was sent for a while. Never waits:
        if a message is being sent (send lock taken) the link is not idle anyway."""
        if (
            self.closed
            or not self.keepalive
            or now - self._last_send < HEARTBEAT_FRACTION * self.timeout
        ):
            return
        if not self.send_lock.acquire(blocking=False):
            return
        try:
            if self.closed:
                return
            views = self.take_carry() or [memoryview(HEARTBEAT)]
            self.push(views, "heartbeat")
            self._carry = views
            self._last_send = now
        except PeerError:
            pass  # the thread that uses the link next reports the broken connection
        finally:
            self.send_lock.release()

    # -- receiving ----------------------------------------------------------------------------
    def take_buffered(self, view: memoryview) -> int:
        """Copy already-received bytes into ``view``; returns how many."""
        k = min(len(view), self._rend - self._rstart)
        if k:
            view[:k] = self._rview[self._rstart : self._rstart + k]
            self._rstart += k
        return k

    def read_some(self, view: memoryview, op: str) -> tuple[int, int]:
        """Non-blocking: (bytes read into ``view``, 0) or (0, poll event to wait for).
        Raises PeerError at end of stream."""
        k = self.take_buffered(view)
        if k:
            return k, 0
        small = len(view) < RECV_BUFFER // 2
        # Small reads refill the buffer (whatever the peer has queued, up to its size).
        n, event = self._try_recv(self._rview if small else view, op)
        if event:
            return 0, event
        if n == 0:
            raise PeerError(f"{self.peer} closed the connection during {op}")
        if small:
            self._rstart, self._rend = 0, n
            return self.take_buffered(view), 0
        return n, 0

    def _recv_exact(self, view: memoryview, op: str) -> None:
        got = 0
        since = time.monotonic()
        while got < len(view):
            n, event = self.read_some(view[got:], op)
            if n:
                got += n
                since = time.monotonic()
            else:
                self.wait(event, since, op, "waiting for")

    def check_header(self, buf: bytearray, kind: int, op: str, want_tag: int) -> int | None:
        """Parse a received header: its payload length, or None for a heartbeat."""
        got_kind, tag, seq, length = unpack_header(buf, peer=self.peer)
        if got_kind == KIND_HEARTBEAT:
            return None
        if got_kind == KIND_GOODBYE:
            raise PeerError(f"{self.peer} shut down while we waited for {op}")
        if got_kind != kind or tag != want_tag or seq != self.recv_seq:
            raise ProtocolError(
                f"frame from {self.peer} does not match {op}: kind {got_kind} (want {kind}), "
                f"seq {seq} (want {self.recv_seq}), tag {'ok' if tag == want_tag else 'differs'}"
            )
        self.recv_seq += 1
        return length

    def recv_header(self, kind: int, op: str, want_tag: int | None = None) -> int:
        """Receive and check the next header (skipping heartbeats); returns the payload length."""
        if want_tag is None:
            want_tag = op_tag(op)
        while True:
            buf = bytearray(HEADER.size)
            self._recv_exact(memoryview(buf), op)
            length = self.check_header(buf, kind, op, want_tag)
            if length is not None:
                return length

    def _buffered_header(self, kind: int, op: str, want_tag: int) -> int:
        """:meth:`recv_header`, parsing straight from the receive buffer when it holds a whole
        header (the usual case: one TLS read brings a round's frame)."""
        while True:
            start = self._rstart
            if self._rend == start:  # empty: one read refills it (or wait, then read)
                since = time.monotonic()
                while True:
                    n, event = self._try_recv(self._rview, op)
                    if not event:
                        break
                    self.wait(event, since, op, "waiting for")
                if n == 0:
                    raise PeerError(f"{self.peer} closed the connection during {op}")
                start, self._rstart, self._rend = 0, 0, n
            if self._rend - start < HEADER.size:  # a partial header: the general path
                return self.recv_header(kind, op, want_tag)
            fields = HEADER.unpack_from(self._rbuf, start)
            self._rstart = start + HEADER.size
            got_kind, tag, seq, length = check_header_fields(fields, peer=self.peer)
            if got_kind == KIND_HEARTBEAT:
                continue
            if got_kind != kind or tag != want_tag or seq != self.recv_seq:
                self.check_header(bytearray(HEADER.pack(*fields)), kind, op, want_tag)  # raises
            self.recv_seq += 1
            return length

    def recv_tensors(
        self, op: str, shapes: Sequence[Shape], tag: int | None = None, want: int | None = None
    ) -> list[torch.Tensor]:
        """The next tensor message, of the given shapes (``tag`` and ``want``, its op tag and
        payload bytes, may be passed precomputed)."""
        if want is None:
            want = tensors_nbytes(shapes)
        if want <= transport.MAX_FRAME_BYTES:  # one frame: the short path of small rounds
            length = self._buffered_header(
                KIND_TENSORS, op, op_tag(op, shapes) if tag is None else tag
            )
            if length != want:
                raise ProtocolError(
                    f"{op}: {self.peer} sent {length} bytes, expected {want} for shapes "
                    f"{list(shapes)}"
                )
            start = self._rstart
            if self._rend - start >= want:  # the payload is buffered already: one copy
                self._rstart = start + want
                flat = torch.from_numpy(
                    np.frombuffer(self._rbuf, np.int64, want // 8, start).copy()
                )
            else:
                flat = torch.empty(want // 8, dtype=torch.int64)
                if want:
                    self._recv_exact(flat.numpy().data.cast("B"), op)
            if len(shapes) == 1:
                return [flat.reshape(shapes[0])]
            return _split(flat, shapes)
        reader = TensorReader(self, op, shapes)
        since = time.monotonic()
        while not reader.done:
            moved, event = reader.pump()
            if moved:
                since = time.monotonic()
            elif event:
                self.wait(event, since, op, "waiting for")
        return reader.tensors()

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
        """Say goodbye (best effort, at most ~1 s), drain what the peer sent (so the kernel
        does not answer unread data with a reset) and close."""
        if self.closed:
            return
        locked = self.send_lock.acquire(timeout=1.0)
        self.closed = True
        try:
            if goodbye and locked:
                saved, self.timeout = self.timeout, 1.0
                try:
                    views = [memoryview(pack_header(KIND_GOODBYE, 0, self.send_seq, 0))]
                    self._send_views(self.take_carry() + views, "goodbye")
                except PeerError:
                    pass
                finally:
                    self.timeout = saved
            with self._io:  # the drain below must never block, whatever mode the socket is in
                try:
                    self.sock.setblocking(False)
                except OSError:
                    pass
            for _ in range(64):
                try:
                    n, event = self._try_recv(self._rview, "close")
                except PeerError:
                    break
                if event or n == 0:
                    break
            with self._io:
                try:
                    self.sock.close()
                except OSError:
                    pass
        finally:
            if locked:
                self.send_lock.release()


class TensorReader:
    """Receives one tensor message (one or more frames, heartbeats skipped) into a tensor
    preallocated from the expected shapes; :meth:`pump` never blocks, so one thread can drive
    several readers and writers at once (``net.TLSChannel``'s large rounds)."""

    def __init__(self, link: Link, op: str, shapes: Sequence[Shape]) -> None:
        self.link = link
        self.op = op
        self.shapes = [tuple(s) for s in shapes]
        self.tag = op_tag(op, self.shapes)
        self.total = tensors_nbytes(self.shapes)
        # Allocated at the first valid header (a bad header is rejected before any allocation).
        self.flat: torch.Tensor | None = None
        self.view = memoryview(b"")
        self.hdr = bytearray(HEADER.size)
        self.hgot = 0
        self.offset = 0  # payload bytes received
        self.chunk_end: int | None = None  # None: reading a header
        self.first = True
        self.done = False

    def pump(self) -> tuple[bool, int]:
        """Read what is available; returns (bytes moved, poll event to wait for or 0)."""
        link = self.link
        moved = False
        while not self.done:
            if self.chunk_end is None:
                n, event = link.read_some(memoryview(self.hdr)[self.hgot :], self.op)
                if event:
                    return moved, event
                moved = True
                self.hgot += n
                if self.hgot < HEADER.size:
                    continue
                self.hgot = 0
                length = link.check_header(self.hdr, KIND_TENSORS, self.op, self.tag)
                if length is None:  # heartbeat
                    continue
                want = frame_chunks(self.total - self.offset)[0]
                if length != want:
                    what = "for shapes" if self.first else "in a continuation frame for"
                    raise ProtocolError(
                        f"{self.op}: {link.peer} sent {length} bytes, expected {want} {what} "
                        f"{self.shapes}"
                    )
                if self.first:
                    self.flat = torch.empty(self.total // 8, dtype=torch.int64)
                    if self.total:
                        self.view = self.flat.numpy().data.cast("B")
                self.first = False
                self.chunk_end = self.offset + length
            else:
                n, event = link.read_some(self.view[self.offset : self.chunk_end], self.op)
                if event:
                    return moved, event
                moved = True
                self.offset += n
            if self.chunk_end is not None and self.offset == self.chunk_end:
                self.chunk_end = None
                self.done = self.offset == self.total
        return moved, 0

    def tensors(self) -> list[torch.Tensor]:
        if self.flat is None or not self.done:
            raise ProtocolError(f"{self.op}: message from {self.link.peer} not complete")
        return _split(self.flat, self.shapes)


def _split(flat: torch.Tensor, shapes: Sequence[Shape]) -> list[torch.Tensor]:
    out = []
    offset = 0
    for shape in shapes:
        count = tensors_nbytes([shape]) // 8
        out.append(flat[offset : offset + count].reshape(shape))
        offset += count
    return out

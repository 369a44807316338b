"""The dealer's correction stream: batches of corrections, and a writer that runs ahead.

Wire format: each frame (op ``pre/batch``) holds corrections back to back, each as an 8-byte
entry header (CRC-32 op tag of the request's op and shape, payload bytes) and its int64
payload, in the order the party requests them. The party checks every entry against its own
request, so a diverging program ends in :class:`PreprocessingExhausted` at the first mismatch.

Running ahead: the dealer's generation (its dry run of the parties' program) does not depend on
the parties at all. With ``background=True`` a writer thread sends the queued batches while the
dealer goes on generating, so the dealer finishes its CPU work early (its preprocessing is
ready before the parties need it) instead of being paced by the parties' consumption through
the TCP buffers. The queue is bounded (``max_queued_bytes``): past it the generator waits.
"""

from __future__ import annotations

import math
import struct
import threading
from collections import deque

import torch

from mpc.errors import MPCError, PeerError, PreprocessingExhausted
from mpc.net import Link
from mpc.transport import KIND_TENSORS, op_tag

__all__ = ["BATCH_OP", "LinkCorrections", "LinkSink"]

_ENTRY = struct.Struct("<II")  # per correction in a batch: op tag, payload bytes
BATCH_OP = "pre/batch"


class LinkCorrections:
    """Party side of the dealer stream: corrections arrive in request order on one link,
    several per frame; each carries the op tag and size of its request."""

    def __init__(self, link: Link, pid: int) -> None:
        self.link = link
        self.pid = pid
        self._buf = bytearray()
        self._pos = 0

    def read(self, op: str, shape: tuple[int, ...]) -> torch.Tensor:
        if self._pos >= len(self._buf):
            self._buf, self._pos = self.link.recv_buffer(BATCH_OP, KIND_TENSORS), 0
        count = math.prod(shape)
        pos = self._pos
        ok = pos + _ENTRY.size <= len(self._buf)
        if ok:
            tag, size = _ENTRY.unpack_from(self._buf, pos)
            ok = (
                tag == op_tag("pre/" + op, [shape])
                and size == 8 * count
                and pos + _ENTRY.size + size <= len(self._buf)
            )
        if not ok:
            raise PreprocessingExhausted(
                f"P{self.pid}: dealer material does not match request {op} {shape}"
            )
        self._pos = pos + _ENTRY.size + 8 * count
        if count == 0:
            return torch.zeros(shape, dtype=torch.int64)
        flat = torch.frombuffer(self._buf, dtype=torch.int64, count=count, offset=pos + 8)
        return flat.reshape(shape)


class LinkSink:
    """Dealer side: send each correction to the party that needs it.

    Corrections are queued per party and handed on FLUSH_BYTES at a time as one frame (one TLS
    write on the dealer, one header and one read on the party). The dealer never waits for the
    parties, so holding corrections back cannot deadlock; :meth:`flush` hands on the rest and
    :meth:`finish` waits until everything is sent. With ``background=True`` a writer thread
    does the sending (see the module docstring); its errors surface in the next call.
    """

    FLUSH_BYTES = 32 * 1024
    MERGE_BYTES = 8 << 20  # the writer joins queued batches for one party up to this size

    def __init__(
        self,
        links: dict[int, Link],
        *,
        background: bool = False,
        max_queued_bytes: int = 512 << 20,
    ) -> None:
        self.links = links
        self.bytes_sent = 0
        self._pending: dict[int, list[bytes]] = {p: [] for p in links}
        self._pending_bytes = dict.fromkeys(links, 0)
        self._max_queued = max_queued_bytes
        self._queue: deque[tuple[int, bytes]] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._error: MPCError | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._writer, name="dealer-writer", daemon=True)
            self._thread.start()

    def write(self, to: int, op: str, value: torch.Tensor) -> None:
        data = value.contiguous().numpy().tobytes()
        entry = _ENTRY.pack(op_tag("pre/" + op, [tuple(value.shape)]), len(data))
        self._pending[to] += [entry, data]
        self._pending_bytes[to] += len(entry) + len(data)
        if self._pending_bytes[to] >= self.FLUSH_BYTES:
            self._hand_on(to)

    def flush(self) -> None:
        """Hand on every party's partial batch."""
        for to in self.links:
            self._hand_on(to)

    def finish(self, timeout: float | None = None) -> None:
        """Flush, wait until the writer has sent everything, and stop it; raises its error."""
        self.flush()
        if self._thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        self._raise_error()
        if self._thread.is_alive():
            raise PeerError(f"dealer: corrections still unsent after {timeout}s")

    def abort(self, timeout: float = 5.0) -> None:
        """Stop the writer without sending what is queued (on failure)."""
        if self._thread is None:
            return
        with self._cond:
            self._stopping = True
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- internals ------------------------------------------------------------------------------
    def _hand_on(self, to: int) -> None:
        if not self._pending[to]:
            return
        batch = b"".join(self._pending[to])
        self._pending[to].clear()
        self._pending_bytes[to] = 0
        if self._thread is None:
            self.bytes_sent += self.links[to].send(KIND_TENSORS, BATCH_OP, batch)
            return
        with self._cond:
            while self._queued_bytes > self._max_queued and self._error is None:
                self._cond.wait(1.0)
            self._raise_error()
            self._queue.append((to, batch))
            self._queued_bytes += len(batch)
            self._cond.notify_all()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                items = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                self._cond.notify_all()
            # Consecutive batches for one party go out as one frame (the party parses entries,
            # not frames); the order per party is kept.
            merged: list[tuple[int, list[bytes]]] = []
            size = 0  # of the last group
            for to, batch in items:
                if merged and merged[-1][0] == to and size < self.MERGE_BYTES:
                    merged[-1][1].append(batch)
                    size += len(batch)
                else:
                    merged.append((to, [batch]))
                    size = len(batch)
            try:
                for to, parts in merged:
                    sent = self.links[to].send(KIND_TENSORS, BATCH_OP, b"".join(parts))
                    with self._cond:
                        self.bytes_sent += sent
            except MPCError as exc:
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._queued_bytes = 0
                    self._cond.notify_all()
                return

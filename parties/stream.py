"""The dealer's correction stream: batches of corrections, and a writer that runs ahead.

Wire format: each frame (op ``pre/batch``) holds corrections back to back, each as an 8-byte
entry header (CRC-32 op tag of the request's op and shape, payload bytes) and its int64
payload, in the order the party requests them. The party checks every entry against its own
request, so a diverging program ends in :class:`PreprocessingExhausted` at the first mismatch.

Running ahead: the dealer's generation (its dry run of the parties' program) does not depend on
the parties at all. With ``background=True`` one writer thread per party sends that party's
queued batches while the dealer goes on generating, so the dealer finishes its CPU work early
(its preprocessing is ready before the parties need it) instead of being paced by the parties'
consumption through the TCP buffers. The queue is bounded (``max_queued_bytes``): past it the
generator waits.

No party waits for material that the dealer holds back: a party whose socket is full (it is
busy, or waits for another party) blocks only its own writer, never another party's; and a
partial batch is handed on once it is ``FLUSH_AGE`` seconds old, and before the generator
waits for queue space, so a party with little material gets it within milliseconds, not at
the end of the dry run. Memory: the queue (``max_queued_bytes``) and one merged frame per
writer (``MERGE_BYTES``); entries are per request (a batch's triple, a comparison's
material), none of them sized by the number of data rows on the out-of-core path.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections import deque

import torch

from mpc.core.errors import MPCError, PeerError, PreprocessingExhausted
from mpc.net.channel import Link
from mpc.net.transport import KIND_TENSORS, check_control, tensor_tag

__all__ = ["BATCH_OP", "GO_OP", "LinkCorrections", "LinkSink"]

_ENTRY = struct.Struct("<II")  # per correction in a batch: op tag, payload bytes
BATCH_OP = "pre/batch"
GO_OP = "pre/go"  # party -> dealer: ready to read corrections


def _entry_tag(op: str, shape: tuple[int, ...]) -> int:
    """The op tag of a correction entry (``op_tag("pre/" + op, [shape])``, through the
    transport's cache of tensor tags: it is looked up for every correction on both sides)."""
    return tensor_tag("pre/" + op, (shape,))


class LinkCorrections:
    """Party side of the dealer stream: corrections arrive in request order on one link,
    several per frame; each carries the op tag and size of its request.

    ``announce``: send ``pre/go`` before the first read (see :class:`LinkSink`'s
    ``await_go``)."""

    def __init__(self, link: Link, pid: int, announce: bool = False) -> None:
        self.link = link
        self.pid = pid
        self._buf = bytearray()
        self._pos = 0
        self._announce = announce

    def read(self, op: str, shape: tuple[int, ...]) -> torch.Tensor:
        if self._announce:  # the first correction is needed now: the dealer may start sending
            self._announce = False
            self.link.send_json(GO_OP, {})
        if self._pos >= len(self._buf):
            self._buf, self._pos = self.link.recv_buffer(BATCH_OP, KIND_TENSORS), 0
        count = math.prod(shape)
        pos = self._pos
        end = len(self._buf)
        ok = pos + _ENTRY.size <= end
        if ok:
            tag, size = _ENTRY.unpack_from(self._buf, pos)
            ok = (
                tag == _entry_tag(op, shape)
                and size == 8 * count
                and pos + _ENTRY.size + size <= end
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

    Corrections are queued per party and handed on as one frame (one TLS write on the dealer,
    one header and one read on the party) when ``FLUSH_BYTES`` are pending, when the oldest
    pending correction is ``FLUSH_AGE`` seconds old, before the generator waits for queue space,
    and on :meth:`flush`. :meth:`finish` waits until everything is sent. With
    ``background=True`` one writer thread per party does the sending (see the module
    docstring); the first error of any writer, of whatever type, surfaces in the generator's
    next call as an :class:`MPCError`.

    ``await_go=True``: nothing is sent to a party before its ``pre/go`` (sent by
    :class:`LinkCorrections` with ``announce`` when it first needs a correction). A party
    busy for minutes before that (masking 10^7 rows from disk) reads nothing from the dealer;
    a dealer already sending would sit in a blocked write and fail after ``timeout`` of
    silence. Waiting in a receive instead, it sees the party's heartbeats.
    """

    FLUSH_BYTES = 32 * 1024
    FLUSH_AGE = 0.02  # seconds a partial batch may wait for more corrections
    MERGE_BYTES = 8 << 20  # a writer joins queued batches for its party up to this size
    _AGE_CHECK_EVERY = 64  # writes between two looks at the pending batches' age

    def __init__(
        self,
        links: dict[int, Link],
        *,
        background: bool = False,
        max_queued_bytes: int = 128 << 20,
        await_go: bool = False,
    ) -> None:
        self.links = links
        self._await = set(links) if await_go else set()
        self.bytes_sent = 0
        self._pending: dict[int, list[bytes]] = {p: [] for p in links}
        self._pending_bytes = dict.fromkeys(links, 0)
        self._pending_since = dict.fromkeys(links, 0.0)
        self._writes = 0
        self._max_queued = max_queued_bytes
        self._queues: dict[int, deque[bytes]] = {p: deque() for p in links}
        self._queued_bytes = 0
        # One lock; a condition per writer (its queue got a batch, or stop) and one for the
        # generator (queue space): a hand-on wakes only the writer it concerns, not all of them.
        self._lock = threading.Lock()
        self._work = {p: threading.Condition(self._lock) for p in links}
        self._space = threading.Condition(self._lock)
        self._stopping = False
        self._error: MPCError | None = None
        self._threads: list[threading.Thread] = []
        if background:
            for p in links:
                thread = threading.Thread(
                    target=self._writer, args=(p,), name=f"dealer-writer-{p}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def write(self, to: int, op: str, value: torch.Tensor) -> None:
        data = value.contiguous().numpy().tobytes()
        entry = _ENTRY.pack(_entry_tag(op, tuple(value.shape)), len(data))
        if not self._pending[to]:
            self._pending_since[to] = time.monotonic()
        self._pending[to] += [entry, data]
        self._pending_bytes[to] += len(entry) + len(data)
        if self._pending_bytes[to] >= self.FLUSH_BYTES:
            self._hand_on(to)
        self._writes += 1
        if self._writes % self._AGE_CHECK_EVERY == 0:
            self._hand_on_stale()

    def flush(self) -> None:
        """Hand on every party's partial batch."""
        for to in self.links:
            self._hand_on(to)

    def finish(self, timeout: float | None = None) -> None:
        """Flush, wait until the writers have sent everything, and stop them; raises their
        error. Each send is bounded by its link's silence timeout, so no total bound is needed
        (``timeout`` is for tests)."""
        self.flush()
        if not self._threads:
            return
        with self._lock:
            self._stopping = True
            self._wake_all()
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        self._raise_error()
        if any(t.is_alive() for t in self._threads):
            raise PeerError(f"dealer: corrections still unsent after {timeout}s")

    def abort(self, timeout: float = 5.0) -> None:
        """Stop the writers without sending what is queued (on failure)."""
        if not self._threads:
            return
        with self._lock:
            self._stopping = True
            for q in self._queues.values():
                q.clear()
            self._queued_bytes = 0
            self._wake_all()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    # -- internals ------------------------------------------------------------------------------
    def _hand_on_stale(self) -> None:
        now = time.monotonic()
        for to in self.links:
            if self._pending[to] and now - self._pending_since[to] >= self.FLUSH_AGE:
                self._hand_on(to)

    def _take(self, to: int) -> bytes:
        batch = b"".join(self._pending[to])
        self._pending[to].clear()
        self._pending_bytes[to] = 0
        return batch

    def _hand_on(self, to: int) -> None:
        if not self._pending[to]:
            return
        batch = self._take(to)
        if not self._threads:
            self._wait_go(to)
            self.bytes_sent += self.links[to].send(KIND_TENSORS, BATCH_OP, batch)
            return
        with self._lock:
            if self._queued_bytes > self._max_queued and self._error is None:
                # About to wait: first hand on every other party's partial batch, so no party
                # waits (directly or through another party) for material held back here.
                for other in self.links:
                    if other != to and self._pending[other]:
                        self._enqueue(other, self._take(other))
                while self._queued_bytes > self._max_queued and self._error is None:
                    self._space.wait(1.0)
            self._raise_error()
            self._enqueue(to, batch)

    def _enqueue(self, to: int, batch: bytes) -> None:
        """Queue a batch for ``to``'s writer (caller holds the lock)."""
        self._queues[to].append(batch)
        self._queued_bytes += len(batch)
        self._work[to].notify()

    def _wake_all(self) -> None:
        """Stop or error: every writer and the generator look again (caller holds the lock)."""
        for cond in self._work.values():
            cond.notify()
        self._space.notify_all()

    def _wait_go(self, to: int) -> None:
        """Before the first send to ``to`` (with ``await_go``): its ``pre/go``."""
        if to in self._await:
            link = self.links[to]
            check_control(link.recv_json(GO_OP), {}, peer=link.peer, op=GO_OP)
            self._await.discard(to)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _writer(self, to: int) -> None:
        """Send ``to``'s queued batches in order; consecutive batches go out as one frame (the
        party parses entries, not frames). A full socket blocks this party's writer only."""
        queue = self._queues[to]
        link = self.links[to]
        while True:
            with self._lock:
                while not queue and not self._stopping and self._error is None:
                    self._work[to].wait()
                if self._error is not None or not queue:
                    return
                parts: list[bytes] = []
                size = 0
                while queue and size < self.MERGE_BYTES:
                    parts.append(queue.popleft())
                    size += len(parts[-1])
                self._queued_bytes -= size
                self._space.notify()
            try:
                self._wait_go(to)
                sent = link.send(KIND_TENSORS, BATCH_OP, b"".join(parts))
            except BaseException as exc:  # noqa: BLE001 - any failure must end the job now
                error = (
                    exc
                    if isinstance(exc, MPCError)
                    else MPCError(
                        f"dealer: sending corrections to party {to} failed: "
                        f"{type(exc).__name__}: {exc}"
                    )
                )
                with self._lock:
                    if self._error is None:
                        self._error = error
                    for q in self._queues.values():
                        q.clear()
                    self._queued_bytes = 0
                    self._wake_all()
                return
            with self._lock:
                self.bytes_sent += sent

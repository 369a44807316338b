"""The party mesh over mutual TLS: :class:`TLSChannel` (same API as ``LocalChannel``).

One :class:`~mpc.net.link.Link` per peer (``link.py``; set up by ``listener.py``). Small rounds
(every outgoing message <= 256 KiB) send with blocking writes then receive into a preallocated
tensor; larger rounds interleave non-blocking sends and receives in one thread so two peers
sending big messages to each other cannot deadlock on full socket buffers. Every wait fails
only after ``timeout`` seconds in which no byte moved (silence), never for a slow transfer.

This module also re-exports the connection API (``Link``, ``Listener``, ``dial``,
``parse_address``, ``free_ports``) for the processes in ``parties/``.
"""

from __future__ import annotations

import select
import time
from collections.abc import Mapping, Sequence

import torch

from mpc.core.errors import PeerError
from mpc.net.link import SMALL_FRAME, Link, TensorReader
from mpc.net.listener import Listener, dial, free_ports, parse_address
from mpc.net.transport import (
    HEADER,
    KIND_TENSORS,
    Channel,
    frame_chunks,
    tensor_tag,
    tensors_nbytes,
)

__all__ = ["Link", "Listener", "dial", "TLSChannel", "parse_address", "free_ports"]

Shape = tuple[int, ...]


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
        sizes = {p: 8 * sum(t.numel() for t in ts) for p, ts in outgoing.items()}
        if any(size > SMALL_FRAME for size in sizes.values()):
            return self._exchange_interleaved(op, outgoing, incoming)
        links = self.links
        sent = 0
        for p, ts in outgoing.items():
            tag = tensor_tag(op, tuple(t.shape for t in ts))
            sent += links[p].send_tensors(op, ts, tag, sizes[p])
        return self._receive(op, incoming, sent, len(outgoing))

    def all_to_all(
        self, op: str, tensors: Sequence[torch.Tensor]
    ) -> dict[int, list[torch.Tensor]]:
        """One round: the same tensors to every peer, same-shaped ones back (the small-round
        path computes the shapes, tag and size once for all peers)."""
        shapes = tuple(t.shape for t in tensors)
        size = 8 * sum(t.numel() for t in tensors)
        peers = self.peers
        if size > SMALL_FRAME:
            return self._exchange_interleaved(
                op, {p: tensors for p in peers}, {p: shapes for p in peers}
            )
        links = self.links
        tag = tensor_tag(op, shapes)
        sent = 0
        for p in peers:
            sent += links[p].send_tensors(op, tensors, tag, size)
        return self._receive(op, dict.fromkeys(peers, shapes), sent, len(peers))

    def _receive(
        self, op: str, incoming: Mapping[int, Sequence[Shape]], sent: int, messages: int
    ) -> dict[int, list[torch.Tensor]]:
        """The receiving half of a small round, and its accounting."""
        links = self.links
        result: dict[int, list[torch.Tensor]] = {}
        received = 0
        for q, shapes in incoming.items():
            want = tensors_nbytes(shapes)
            tag = tensor_tag(op, shapes if isinstance(shapes, tuple) else tuple(shapes))
            result[q] = links[q].recv_tensors(op, shapes, tag, want)
            received += want + HEADER.size * len(frame_chunks(want))
        self.stats.record(op, sent, received, messages + len(incoming), 1)
        return result

    def _exchange_interleaved(
        self,
        op: str,
        outgoing: Mapping[int, Sequence[torch.Tensor]],
        incoming: Mapping[int, Sequence[Shape]],
    ) -> dict[int, list[torch.Tensor]]:
        """Large round: non-blocking sends and receives in one loop (no deadlock, no threads).

        The send locks of the outgoing links are held for the whole round (no heartbeat or
        other frame can slip between ours); the silence deadline restarts whenever a byte moves
        in either direction, so only a round in which nothing at all moves for ``timeout``
        seconds fails."""
        links = self.links
        held: list[Link] = []
        try:
            for p in sorted(outgoing):
                links[p].send_lock.acquire()
                held.append(links[p])
            pending: dict[int, list[memoryview]] = {}
            sent = 0
            for p, ts in outgoing.items():
                bufs = links[p].frames(KIND_TENSORS, op, ts)
                sent += sum(len(b) for b in bufs)
                views = [
                    memoryview(b) if isinstance(b, bytes) else memoryview(b).cast("B")
                    for b in bufs
                ]
                pending[p] = links[p].take_carry() + views
            all_readers = {
                q: TensorReader(links[q], op, shapes) for q, shapes in incoming.items()
            }
            readers = dict(all_readers)
            since = time.monotonic()
            while pending or readers:
                events: dict[int, int] = {}
                progressed = False
                for p in list(pending):
                    moved, event = links[p].push(pending[p], op)
                    progressed |= moved
                    if event:
                        events[p] = events.get(p, 0) | event
                    else:
                        del pending[p]
                for q in list(readers):
                    moved, event = readers[q].pump()
                    progressed |= moved
                    if readers[q].done:
                        del readers[q]
                    else:
                        events[q] = events.get(q, 0) | event
                if progressed:
                    since = time.monotonic()
                    continue
                remaining = since + self.timeout - time.monotonic()
                if remaining <= 0:
                    waiting = sorted(links[q].peer for q in readers) or ["(sending)"]
                    raise PeerError(
                        f"{op}: timed out after {self.timeout:g}s of silence on {waiting}"
                    )
                poller = select.poll()
                for peer, event in events.items():
                    fd = links[peer].sock.fileno()
                    if fd < 0:
                        raise PeerError(f"{op}: link to {links[peer].peer} was closed")
                    poller.register(fd, event)
                poller.poll(1000 * min(remaining, 1.0))
        finally:
            for link in held:
                link.send_lock.release()
        received = sum(
            r.total + HEADER.size * len(frame_chunks(r.total)) for r in all_readers.values()
        )
        self.stats.record(op, sent, received, len(outgoing) + len(incoming), 1)
        return {q: r.tensors() for q, r in all_readers.items()}

    def close(self) -> None:
        for link in self.links.values():
            link.close()

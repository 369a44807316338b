"""Message passing between parties: the ``Channel`` API, wire format, accounting, in-process sim.

Wire format (shared by every link; packed in :func:`pack_header`)::

    magic  u16  0x4D50 ("MP")
    kind   u16  0 = ring tensors, 1 = JSON control object, 2 = goodbye (clean close),
                3 = heartbeat (tag 0, seq 0, length 0; skipped by every receiver)
    tag    u32  CRC-32 of the operation name (e.g. "open/mul") and tensor shapes, so
                mismatched ops and shapes are detected
    seq    u64  per-direction frame counter of the link, so lost/reordered frames are detected
                (heartbeats do not count)
    length u64  payload bytes, capped by MAX_FRAME_BYTES (MAX_CONTROL_BYTES for JSON)
    payload     raw little-endian int64 words of the tensors (no pickle), or UTF-8 JSON

A tensor message larger than ``MAX_FRAME_BYTES`` goes as several frames: the concatenated
payload is cut into chunks of ``MAX_FRAME_BYTES`` (the last one shorter), each with its own
header (same kind and tag, consecutive seq), so one tensor block has no size limit while a
receiver never allocates more than the frame cap for an announced length (tensor payloads go
straight into the tensor the receiver preallocated from the shapes it expects). Heartbeats keep
an idle link's silence timeout from firing while a peer computes locally; they may appear
between any two frames (never inside one).

A receiver knows the shapes it expects (protocols are deterministic), so a payload whose length
does not match raises :class:`~mpc.core.errors.ProtocolError` naming the op and shapes.

One call of :meth:`Channel.exchange` is one communication round: every party sends at most one
frame to each peer and then receives at most one frame from each peer. Stats count bytes on the
wire (header + payload) and rounds, per operation kind.

:class:`LocalChannel` runs n parties in one process (threads + queues) for fast protocol tests;
the TLS version lives in ``net.py`` and implements the same two primitives.
"""

from __future__ import annotations

import functools
import json
import queue
import struct
import threading
import zlib
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mpc.core.errors import PeerError, ProtocolError

__all__ = [
    "HEADER",
    "MAX_FRAME_BYTES",
    "MAX_CONTROL_BYTES",
    "KIND_TENSORS",
    "KIND_JSON",
    "KIND_GOODBYE",
    "KIND_HEARTBEAT",
    "OpStats",
    "CommStats",
    "Channel",
    "LocalChannel",
    "local_channels",
    "pack_header",
    "unpack_header",
    "op_tag",
    "tensor_tag",
    "check_header_fields",
    "tensors_nbytes",
    "frame_chunks",
    "check_control",
    "control_hex",
]

HEADER = struct.Struct("<HHIQQ")
MAGIC = 0x4D50
KIND_TENSORS, KIND_JSON, KIND_GOODBYE, KIND_HEARTBEAT = 0, 1, 2, 3
# Largest payload of one frame (a receiver allocates at most this much for a byte payload
# whose size only the header announces); larger tensor messages are chunked (see above).
# Read through the module at run time, so tests may lower it.
MAX_FRAME_BYTES = 1 << 30
MAX_CONTROL_BYTES = 1 << 20  # control objects carry metadata only
Shape = tuple[int, ...]


def op_tag(op: str, shapes: Sequence[Shape] | None = None) -> int:
    """32-bit tag carried in every frame header: CRC-32 of the operation name and, for tensor
    frames, of the tensor shapes, so a peer expecting other shapes (even with the same number
    of elements, e.g. a transpose) rejects the frame."""
    return _op_tag(op, None if shapes is None else tuple(tuple(s) for s in shapes))


@functools.lru_cache(maxsize=4096)
def _op_tag(op: str, shapes: tuple[Shape, ...] | None) -> int:
    tag = zlib.crc32(op.encode())
    if shapes is not None:
        tag = zlib.crc32(repr([tuple(int(d) for d in s) for s in shapes]).encode(), tag)
    return tag


_TENSOR_TAGS: dict[tuple[str, tuple[Shape, ...]], int] = {}


def tensor_tag(op: str, shapes: tuple[Shape, ...]) -> int:
    """:func:`op_tag` for tensor frames with ``shapes`` already a tuple of shape tuples (e.g.
    ``torch.Size``): one dictionary lookup on the hot path of every round."""
    key = (op, shapes)
    try:
        tag = _TENSOR_TAGS.get(key)
    except TypeError:  # a shape given as a list: not hashable, normalised by op_tag
        return op_tag(op, shapes)
    if tag is None:
        if len(_TENSOR_TAGS) >= 4096:  # bounded: shapes vary with the data only in odd runs
            _TENSOR_TAGS.clear()
        tag = _TENSOR_TAGS[key] = op_tag(op, shapes)
    return tag


def pack_header(kind: int, tag: int, seq: int, length: int) -> bytes:
    """Pack one frame header (24 bytes)."""
    return HEADER.pack(MAGIC, kind, tag, seq, length)


def unpack_header(buf: bytes | bytearray | memoryview, *, peer: str) -> tuple[int, int, int, int]:
    """Parse and check a frame header; returns (kind, tag, seq, length)."""
    if len(buf) != HEADER.size:
        raise ProtocolError(f"frame header from {peer}: {len(buf)} bytes, want {HEADER.size}")
    return check_header_fields(HEADER.unpack(buf), peer=peer)


def check_header_fields(
    fields: tuple[int, int, int, int, int], *, peer: str
) -> tuple[int, int, int, int]:
    """:func:`unpack_header`'s checks on the unpacked (magic, kind, tag, seq, length)."""
    magic, kind, tag, seq, length = fields
    if magic != MAGIC:
        raise ProtocolError(f"frame from {peer}: bad magic 0x{magic:04x}")
    if kind not in (KIND_TENSORS, KIND_JSON, KIND_GOODBYE, KIND_HEARTBEAT):
        raise ProtocolError(f"frame from {peer}: unknown kind {kind}")
    if kind == KIND_HEARTBEAT and length:
        raise ProtocolError(f"frame from {peer}: heartbeat with a payload of {length} bytes")
    if kind == KIND_JSON and length > MAX_CONTROL_BYTES:
        raise ProtocolError(
            f"frame from {peer}: control object of {length} bytes exceeds cap {MAX_CONTROL_BYTES}"
        )
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame from {peer}: length {length} exceeds cap {MAX_FRAME_BYTES}")
    return kind, tag, seq, length


def frame_chunks(total: int) -> list[int]:
    """Payload lengths of the frames that carry one tensor message of ``total`` bytes: chunks
    of ``MAX_FRAME_BYTES`` and a shorter last one (one empty frame for an empty message)."""
    cap = MAX_FRAME_BYTES
    if total <= cap:
        return [total]
    full, rest = divmod(total, cap)
    return [cap] * full + ([rest] if rest else [])


def check_control(
    obj: Any, fields: Mapping[str, type | tuple[type, ...]], *, peer: str, op: str
) -> dict[str, Any]:
    """A received control object, checked: a JSON object holding each key of ``fields`` with a
    value of that type (``bool`` is not an ``int`` here). Anything else is a ProtocolError
    naming the peer and the operation (never a KeyError deep in the caller)."""
    if not isinstance(obj, dict):
        raise ProtocolError(
            f"{op}: control message from {peer} is a JSON {type(obj).__name__}, not an object"
        )
    for key, types in fields.items():
        if key not in obj:
            raise ProtocolError(f"{op}: control message from {peer} lacks {key!r}")
        value = obj[key]
        allowed = types if isinstance(types, tuple) else (types,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ProtocolError(
                f"{op}: {key!r} from {peer} is a JSON {type(value).__name__}, expected {names}"
            )
    return obj


def control_hex(obj: dict[str, Any], key: str, size: int, *, peer: str, op: str) -> bytes:
    """``obj[key]`` as ``size`` bytes written in hex; ProtocolError otherwise."""
    check_control(obj, {key: str}, peer=peer, op=op)
    try:
        value = bytes.fromhex(obj[key])
    except ValueError:
        value = b""
    if len(value) != size:
        raise ProtocolError(f"{op}: {key!r} from {peer} is not {size} bytes in hex")
    return value


def tensors_nbytes(shapes: Sequence[Shape]) -> int:
    """Payload size of int64 tensors with these shapes."""
    total = 0
    for shape in shapes:
        count = 1
        for s in shape:
            count *= int(s)
        total += 8 * count
    return total


@dataclass
class OpStats:
    """Traffic of one operation kind, seen from one party."""

    bytes_sent: int = 0
    bytes_received: int = 0
    rounds: int = 0
    messages: int = 0


@dataclass
class CommStats:
    """Bytes and rounds of one party, in total and per operation kind (the op prefix)."""

    per_op: dict[str, OpStats] = field(default_factory=lambda: defaultdict(OpStats))

    def record(self, op: str, sent: int, received: int, messages: int, rounds: int) -> None:
        entry = self.per_op[op.split("/")[0]]
        entry.bytes_sent += sent
        entry.bytes_received += received
        entry.messages += messages
        entry.rounds += rounds

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.per_op.values())

    @property
    def bytes_received(self) -> int:
        return sum(s.bytes_received for s in self.per_op.values())

    @property
    def rounds(self) -> int:
        return sum(s.rounds for s in self.per_op.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "rounds": self.rounds,
            "per_op": {k: vars(v).copy() for k, v in sorted(self.per_op.items())},
        }


class Channel:
    """Links from party ``pid`` to its ``n - 1`` peers. Subclasses move the frames.

    Subclasses implement ``_send(to, kind, op, tensors_or_bytes)`` and
    ``_recv(frm, kind, op, shapes)``; :meth:`exchange` may be overridden for concurrency.
    """

    def __init__(self, pid: int, n: int, timeout: float) -> None:
        if not 0 <= pid < n:
            raise ValueError(f"Channel: pid {pid} not in [0, {n})")
        self.pid = pid
        self.n = n
        self.timeout = timeout
        self.stats = CommStats()

    @property
    def peers(self) -> list[int]:
        return [p for p in range(self.n) if p != self.pid]

    # -- primitives -------------------------------------------------------------------------
    def _send(self, to: int, kind: int, op: str, payload: Sequence[torch.Tensor] | bytes) -> int:
        raise NotImplementedError

    def _recv(
        self, frm: int, kind: int, op: str, shapes: Sequence[Shape] | None
    ) -> list[torch.Tensor] | bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Close every link (idempotent)."""

    # -- API used by protocols ----------------------------------------------------------------
    def exchange(
        self,
        op: str,
        outgoing: Mapping[int, Sequence[torch.Tensor]],
        incoming: Mapping[int, Sequence[Shape]],
    ) -> dict[int, list[torch.Tensor]]:
        """One round: send ``outgoing[p]`` to each p, then receive ``incoming[q]`` from each q."""
        sent = sum(self._send(p, KIND_TENSORS, op, ts) for p, ts in outgoing.items())
        result: dict[int, list[torch.Tensor]] = {}
        received = 0
        for q, shapes in incoming.items():
            got = self._recv(q, KIND_TENSORS, op, shapes)
            if not isinstance(got, list):  # defensive: _recv returns tensors for KIND_TENSORS
                raise ProtocolError(f"P{self.pid}: {op}: expected tensors from P{q}")
            result[q] = got
            size = tensors_nbytes(shapes)
            received += size + HEADER.size * len(frame_chunks(size))
        self.stats.record(op, sent, received, len(outgoing) + len(incoming), 1)
        return result

    def all_to_all(
        self, op: str, tensors: Sequence[torch.Tensor]
    ) -> dict[int, list[torch.Tensor]]:
        """One round: send the same tensors to every peer and receive same-shaped ones back."""
        shapes = [tuple(t.shape) for t in tensors]
        peers = self.peers
        return self.exchange(op, {p: tensors for p in peers}, {p: shapes for p in peers})

    def send_json(self, to: int, op: str, obj: Any) -> None:
        """Send a small control object (metadata only: shapes, digests, names -- never data)."""
        data = json.dumps(obj, sort_keys=True).encode()
        sent = self._send(to, KIND_JSON, op, data)
        self.stats.record("control", sent, 0, 1, 0)

    def recv_json(self, frm: int, op: str) -> Any:
        data = self._recv(frm, KIND_JSON, op, None)
        if not isinstance(data, bytes):
            raise ProtocolError(f"P{self.pid}: {op}: expected a control object from P{frm}")
        self.stats.record("control", 0, len(data) + HEADER.size, 1, 0)
        try:
            return json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(
                f"P{self.pid}: {op}: malformed control object from P{frm}"
            ) from exc


# ------------------------------------------------------------------------------------------------
class _Mailbox:
    """Queues between every ordered pair of simulated parties."""

    def __init__(self, n: int) -> None:
        self.queues: dict[tuple[int, int], queue.Queue[Any]] = {
            (i, j): queue.Queue() for i in range(n) for j in range(n) if i != j
        }
        self.closed = threading.Event()


class LocalChannel(Channel):
    """In-process channel for simulation: tensors are copied into queues (no serialisation)."""

    def __init__(self, pid: int, n: int, mailbox: _Mailbox, timeout: float = 30.0) -> None:
        super().__init__(pid, n, timeout)
        self._box = mailbox
        self._send_seq: dict[int, int] = defaultdict(int)
        self._recv_seq: dict[int, int] = defaultdict(int)

    def _send(self, to: int, kind: int, op: str, payload: Sequence[torch.Tensor] | bytes) -> int:
        if self._box.closed.is_set():
            raise PeerError(f"P{self.pid}: {op}: simulation was shut down")
        seq = self._send_seq[to]
        self._send_seq[to] = seq + 1
        if isinstance(payload, bytes):
            body: Any = payload
            nbytes = len(payload)
        else:
            body = [t.detach().clone() for t in payload]
            nbytes = tensors_nbytes([tuple(t.shape) for t in payload])
        self._box.queues[(self.pid, to)].put((kind, op_tag(op), seq, body))
        return nbytes + HEADER.size

    def _recv(
        self, frm: int, kind: int, op: str, shapes: Sequence[Shape] | None
    ) -> list[torch.Tensor] | bytes:
        try:
            got_kind, tag, seq, body = self._box.queues[(frm, self.pid)].get(timeout=self.timeout)
        except queue.Empty:
            raise PeerError(
                f"P{self.pid}: {op}: timed out after {self.timeout:g}s waiting for P{frm}"
            ) from None
        want_seq = self._recv_seq[frm]
        self._recv_seq[frm] = want_seq + 1
        if got_kind == KIND_GOODBYE:
            raise PeerError(f"P{self.pid}: {op}: P{frm} closed its channel")
        if got_kind != kind or tag != op_tag(op) or seq != want_seq:
            raise ProtocolError(
                f"P{self.pid}: {op}: frame from P{frm} does not match (kind {got_kind}/{kind}, "
                f"seq {seq}/{want_seq}, tag mismatch {tag != op_tag(op)})"
            )
        if shapes is None:
            return bytes(body)
        got_shapes = [tuple(t.shape) for t in body]
        if got_shapes != [tuple(s) for s in shapes]:
            raise ProtocolError(
                f"P{self.pid}: {op}: shapes from P{frm} are {got_shapes}, expected {list(shapes)}"
            )
        return list(body)

    def close(self) -> None:
        for p in self.peers:
            self._box.queues[(self.pid, p)].put((KIND_GOODBYE, 0, -1, None))


def local_channels(n: int, timeout: float = 30.0) -> list[LocalChannel]:
    """n connected in-process channels (one per simulated party)."""
    box = _Mailbox(n)
    return [LocalChannel(pid, n, box, timeout) for pid in range(n)]


def run_threads(fns: Sequence[Callable[[], Any]], timeout: float) -> list[Any]:
    """Run callables in threads, return their results; re-raise the first failure."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException | None] = [None] * len(fns)

    def target(i: int) -> None:
        try:
            results[i] = fns[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors[i] = exc

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        if t.is_alive():
            raise PeerError(f"simulation: a party did not finish within {timeout:g}s")
    for err in errors:
        if err is not None:
            raise err
    return results

"""Fuzzing the frame decoder: ``mpc.net.transport.unpack_header`` and ``mpc.net.channel.Link``
receives.

A :class:`~mpc.net.channel.Link` is fed arbitrary bytes from the other end of a loopback TCP pair
(Link
only needs settimeout/setsockopt/recv_into/sendall/close, so a plain socket stands in for the
TLS socket; TCP because TCP_NODELAY fails on a unix socketpair). Whatever arrives, a receive
either returns or raises an :class:`~mpc.core.errors.MPCError` (ProtocolError / PeerError): never
another exception, never a hang (short socket timeouts), and it never asks for a buffer larger
than ``MAX_FRAME_BYTES`` -- a header announcing more is rejected before any allocation.

``MPC_FUZZ_EXAMPLES=100000 python -m pytest tests/unit/test_frames.py`` runs a long campaign;
the default is about 2000 examples in total.
"""

from __future__ import annotations

import builtins
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mpc.net.link
from mpc.core.errors import MPCError, PeerError, ProtocolError
from mpc.net.channel import Link
from mpc.net.transport import (
    HEADER,
    KIND_GOODBYE,
    KIND_HEARTBEAT,
    KIND_JSON,
    KIND_TENSORS,
    MAGIC,
    MAX_CONTROL_BYTES,
    MAX_FRAME_BYTES,
    op_tag,
    pack_header,
    tensors_nbytes,
    unpack_header,
)

EXAMPLES = int(os.environ.get("MPC_FUZZ_EXAMPLES", "0")) or None
TIMEOUT = 0.5  # every receive in these tests gives up after this long
BIG = 1 << 20  # allocations above this are stopped (and checked against the cap) instead


def fuzz_settings(default: int, cap: int | None = None) -> settings:
    """``default`` examples (derandomized: same in every run), or MPC_FUZZ_EXAMPLES random
    ones (at most ``cap`` for tests that wait on a timeout in every example)."""
    count = default if EXAMPLES is None else min(EXAMPLES, cap or EXAMPLES)
    return settings(
        max_examples=count, deadline=None, derandomize=EXAMPLES is None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------- header
@fuzz_settings(600)
@given(st.binary(max_size=2 * HEADER.size))
def test_unpack_header_random_bytes(buf: bytes) -> None:
    try:
        kind, tag, seq, length = unpack_header(buf, peer="fuzz")
    except ProtocolError:
        ok = len(buf) == HEADER.size and _valid(*HEADER.unpack(buf))
        assert not ok, f"valid header rejected: {buf.hex()}"
        return
    assert len(buf) == HEADER.size
    assert _valid(MAGIC, kind, tag, seq, length)
    assert pack_header(kind, tag, seq, length) == bytes(buf)


def _valid(magic: int, kind: int, tag: int, seq: int, length: int) -> bool:
    return (magic == MAGIC and kind in (KIND_TENSORS, KIND_JSON, KIND_GOODBYE, KIND_HEARTBEAT)
            and length <= MAX_FRAME_BYTES and (kind != KIND_HEARTBEAT or length == 0))


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
lengths = st.one_of(st.integers(0, 4096), st.integers(0, MAX_FRAME_BYTES + 2),
                    st.integers(MAX_FRAME_BYTES - 2, 2**64 - 1), st.sampled_from(
                        [MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1, 2**63, 2**64 - 1]))


@fuzz_settings(400)
@given(st.integers(0, 2**16 - 1), u32, u64, lengths)
def test_unpack_header_fields(kind: int, tag: int, seq: int, length: int) -> None:
    buf = struct.pack("<HHIQQ", MAGIC, kind, tag, seq, length)
    for view in (buf, bytearray(buf), memoryview(buf)):
        too_long = length > (MAX_CONTROL_BYTES if kind == KIND_JSON else MAX_FRAME_BYTES)
        if kind > 2 or too_long:
            with pytest.raises(ProtocolError):
                unpack_header(view, peer="fuzz")
        else:
            assert unpack_header(view, peer="fuzz") == (kind, tag, seq, length)


# ---------------------------------------------------------------------------------- links
class _Oversize(Exception):
    """Raised instead of allocating a large (but permitted) buffer, to keep the fuzz fast."""


class AllocGuard:
    """Stands in for ``bytearray`` and ``torch.empty`` inside mpc.net.link: records every size,
    fails on anything above the frame cap and refuses to really allocate above ``BIG``."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self._empty = torch.empty

    def check(self, nbytes: int) -> None:
        self.sizes.append(nbytes)
        assert nbytes <= MAX_FRAME_BYTES, f"asked to allocate {nbytes} bytes > frame cap"
        if nbytes > BIG:
            raise _Oversize(nbytes)

    def bytearray(self, *args: object) -> bytearray:
        if args and isinstance(args[0], int):
            self.check(args[0])
        return builtins.bytearray(*args)  # type: ignore[arg-type]

    def empty(self, *size: object, **kwargs: object) -> torch.Tensor:
        count = 1
        for s in size[0] if size and isinstance(size[0], (tuple, list)) else size:
            count *= int(s)  # type: ignore[call-overload]
        dtype = kwargs.get("dtype", torch.get_default_dtype())
        self.check(count * torch.tensor([], dtype=dtype).element_size())  # type: ignore[arg-type]
        return self._empty(*size, **kwargs)  # type: ignore[arg-type]

    @contextmanager
    def active(self) -> Iterator[AllocGuard]:
        with mock.patch.object(mpc.net.link, "bytearray", self.bytearray, create=True), \
             mock.patch.object(mpc.net.link.torch, "empty", self.empty):
            yield self


_server: socket.socket | None = None


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected loopback TCP pair (one listening socket is reused across examples)."""
    global _server
    if _server is None:
        _server = socket.create_server(("127.0.0.1", 0), backlog=16)
    client = socket.create_connection(_server.getsockname()[:2], timeout=5)
    _server.settimeout(5)
    peer, _ = _server.accept()
    return client, peer


def _abort(*socks: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): no TIME_WAIT pile-up over 100000 examples."""
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        s.close()


def feed(stream: bytes, receive, *, eof: bool = True,
         timeout: float = TIMEOUT) -> tuple[object, AllocGuard, float]:
    """Write ``stream`` (then FIN if ``eof``) into a Link and run ``receive(link)``.

    Returns (result or the MPCError raised, the allocation guard, seconds taken).
    """
    writer, reader = tcp_pair()
    link = Link(reader, "fuzz", timeout)  # type: ignore[arg-type]  # plain socket stands in
    guard = AllocGuard()
    try:
        writer.sendall(stream)
        if eof:
            writer.shutdown(socket.SHUT_WR)
        start = time.monotonic()
        with guard.active():
            try:
                result: object = receive(link)
            except MPCError as exc:
                result = exc
            except _Oversize:
                result = None  # a permitted (<= cap) allocation we chose not to make
        return result, guard, time.monotonic() - start
    finally:
        link.closed = True  # no goodbye frame into a socket we are about to reset
        _abort(writer, reader)


OPS = ["open/mul", "progress", "result/meta", "pre/beaver", ""]
shapes_st = st.lists(st.lists(st.integers(0, 6), max_size=3).map(tuple), max_size=3)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


MUTATIONS = ("none", "none", "magic", "kind", "tag", "seq", "length", "payload", "truncate",
             "flip", "append")


@st.composite
def frames(draw: st.DrawFn, op: str, kind: int, shapes: list[tuple[int, ...]], seq: int) -> bytes:
    """A frame that is right for (op, kind, shapes, seq), then (mostly) one mutation of it."""
    if kind == KIND_TENSORS:
        want = tensors_nbytes(shapes)
        payload = draw(st.binary(min_size=want, max_size=want))
    else:
        payload = draw(st.one_of(
            json_values.map(lambda v: json.dumps(v).encode()),
            st.binary(max_size=128),
            st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
        ))
    fields = {"magic": MAGIC, "kind": kind, "tag": op_tag(op), "seq": seq, "length": len(payload)}
    mutation = draw(st.sampled_from(MUTATIONS))
    if mutation == "magic":
        fields["magic"] = draw(st.integers(0, 2**16 - 1))
    elif mutation == "kind":
        fields["kind"] = draw(st.integers(0, 2**16 - 1))
    elif mutation == "tag":
        fields["tag"] = draw(u32)
    elif mutation == "seq":
        fields["seq"] = draw(u64)
    elif mutation == "length":
        fields["length"] = draw(lengths)
    elif mutation == "payload":
        payload = draw(st.binary(max_size=2 * len(payload) + 8))
    frame = struct.pack("<HHIQQ", *fields.values()) + payload
    if mutation == "truncate":
        frame = frame[: draw(st.integers(0, max(0, len(frame) - 1)))]
    elif mutation == "flip" and frame:
        pos = draw(st.integers(0, len(frame) - 1))
        flipped = frame[pos] ^ (1 << draw(st.integers(0, 7)))
        frame = frame[:pos] + bytes([flipped]) + frame[pos + 1:]
    elif mutation == "append":
        frame += draw(st.binary(min_size=1, max_size=64))
    return frame


@st.composite
def streams(draw: st.DrawFn, op: str, kind: int, shapes: list[tuple[int, ...]]) -> bytes:
    """Random bytes, or one to three frames (each maybe mutated) for consecutive receives."""
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=256))
    count = draw(st.integers(1, 3))
    return b"".join(draw(frames(op, kind, shapes, seq)) for seq in range(count))


def _repeat(receive, check, *args: object) -> object:
    """Receive (and ``check``) frames until one fails: the stream always ends, so the result
    is the MPCError (or _Oversize) that ended it."""
    for _ in range(4):
        check(receive(*args))
    raise AssertionError("four frames received from a stream of at most three")


def _check(result: object, guard: AllocGuard, seconds: float) -> None:
    """The receive ended with ProtocolError/PeerError (or a permitted allocation we skipped),
    in time, without asking for more than the frame cap."""
    assert result is None or isinstance(result, (ProtocolError, PeerError)), repr(result)
    assert seconds < TIMEOUT + 2, f"receive took {seconds:.2f}s"
    assert all(n <= MAX_FRAME_BYTES for n in guard.sizes), guard.sizes


@fuzz_settings(500)
@given(st.data(), st.sampled_from(OPS), shapes_st)
def test_recv_tensors_fuzz(data: st.DataObject, op: str, shapes: list[tuple[int, ...]]) -> None:
    stream = data.draw(streams(op, KIND_TENSORS, shapes))

    def check(got: list[torch.Tensor]) -> None:
        assert [tuple(t.shape) for t in got] == [tuple(s) for s in shapes]
        assert all(t.dtype == torch.int64 for t in got)

    result, guard, seconds = feed(stream, lambda link: _repeat(link.recv_tensors, check, op,
                                                               shapes))
    _check(result, guard, seconds)
    if isinstance(result, PeerError):  # the stream ran out (or said goodbye), nothing else
        assert "closed the connection" in str(result) or "shut down" in str(result), result


@fuzz_settings(500)
@given(st.data(), st.sampled_from(OPS))
def test_recv_json_fuzz(data: st.DataObject, op: str) -> None:
    stream = data.draw(streams(op, KIND_JSON, []))

    def check(got: object) -> None:
        json.dumps(got)  # a plain JSON value (dict, list, str, number, bool, None)

    result, guard, seconds = feed(stream, lambda link: _repeat(link.recv_json, check, op))
    _check(result, guard, seconds)
    if isinstance(result, PeerError):
        assert "closed the connection" in str(result) or "shut down" in str(result), result


@fuzz_settings(12, cap=300)
@given(st.binary(max_size=HEADER.size + 7), st.sampled_from([KIND_JSON, KIND_TENSORS]))
def test_silent_peer_times_out(prefix: bytes, kind: int) -> None:
    """A peer that sends less than one frame (or nothing) and then stalls: no hang."""

    def receive(link: Link) -> object:
        return link.recv_json("x") if kind == KIND_JSON else link.recv_tensors("x", [(1,)])

    result, guard, seconds = feed(prefix, receive, eof=False, timeout=0.1)
    _check(result, guard, seconds)
    if not isinstance(result, ProtocolError):  # garbage is rejected early; else we time out
        assert isinstance(result, PeerError) and "timed out" in str(result), repr(result)


@pytest.mark.parametrize("length", [MAX_FRAME_BYTES + 1, 2**40, 2**63, 2**64 - 1])
@pytest.mark.parametrize("kind", [KIND_JSON, KIND_TENSORS])
def test_length_above_cap_rejected_before_allocation(length: int, kind: int) -> None:
    header = pack_header(kind, op_tag("op"), 0, length)

    def receive(link: Link) -> object:
        return link.recv_json("op") if kind == KIND_JSON else link.recv_tensors("op", [(4,)])

    result, guard, _ = feed(header + b"\0" * 64, receive)
    assert isinstance(result, ProtocolError) and "exceeds cap" in str(result), repr(result)
    # at most a header buffer (tensor frames parse the header in the receive buffer)
    assert all(size <= HEADER.size for size in guard.sizes), guard.sizes


def test_valid_frames_roundtrip() -> None:
    """Sanity check of the harness: well-formed frames are received intact."""
    writer, reader = tcp_pair()
    sender = Link(writer, "a", TIMEOUT)  # type: ignore[arg-type]
    receiver = Link(reader, "b", TIMEOUT)  # type: ignore[arg-type]
    try:
        t = torch.arange(6, dtype=torch.int64).reshape(2, 3)
        sender.send_json("hello", {"x": [1, 2]})
        sender.send(KIND_TENSORS, "open/mul", [t, t[0]])
        assert receiver.recv_json("hello") == {"x": [1, 2]}
        got = receiver.recv_tensors("open/mul", [(2, 3), (3,)])
        assert torch.equal(got[0], t) and torch.equal(got[1], t[0])
        sender.close()
        with pytest.raises(PeerError, match="shut down"):
            receiver.recv_json("next")
    finally:
        receiver.closed = True
        _abort(writer, reader)


@pytest.mark.parametrize("payload", [b"[" * 100_000, b'{"a":' * 50_000], ids=["array", "object"])
def test_recv_json_deep_nesting_is_protocol_error(payload: bytes) -> None:
    frame = pack_header(KIND_JSON, op_tag("hello/meta"), 0, len(payload)) + payload
    try:
        result, _, _ = feed(frame, lambda link: link.recv_json("hello/meta"))
    except RecursionError as exc:
        pytest.fail(f"RecursionError escaped recv_json: {exc}")
    assert isinstance(result, ProtocolError), repr(result)

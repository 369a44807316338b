"""Dealer correction batches (``parties.common.LinkSink`` / ``LinkCorrections``): round trip,
and malformed or mismatched batches end in ``PreprocessingExhausted``, never a crash or a
tensor read out of bounds."""

from __future__ import annotations

import random
import struct
import threading
import time
from typing import Any

import pytest
import torch

from mpc.core.errors import MPCError, PeerError, PreprocessingExhausted
from mpc.net.transport import KIND_TENSORS, op_tag
from parties.common import BATCH_OP, LinkCorrections, LinkSink


class FakeLink:
    """Stands in for a TLS link: records sent frames' payloads, replays given buffers."""

    def __init__(self, buffers: list[bytes] | None = None) -> None:
        self.sent: list[bytes] = []
        self.buffers = list(buffers or [])

    def send(self, kind: int, op: str, payload: Any) -> int:
        assert kind == KIND_TENSORS and op == BATCH_OP
        self.sent.append(bytes(payload))
        return len(payload) + 24

    def recv_buffer(self, op: str, kind: int) -> bytearray:
        assert op == BATCH_OP and kind == KIND_TENSORS
        if not self.buffers:
            raise AssertionError("read past the recorded batches")
        return bytearray(self.buffers.pop(0))


def _entry(op: str, shape: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack("<II", op_tag("pre/" + op, [shape]), len(payload)) + payload


def test_round_trip_in_request_order() -> None:
    out = FakeLink()
    sink = LinkSink({0: out})  # type: ignore[dict-item]
    values = [torch.arange(6).reshape(2, 3), torch.tensor([-1, 2**62]), torch.zeros(0, 4)]
    for i, v in enumerate(values):
        sink.write(0, f"op{i}", v.to(torch.int64))
    assert out.sent == []  # held back until FLUSH_BYTES or flush()
    sink.flush()
    reader = LinkCorrections(FakeLink(out.sent), 0)  # type: ignore[arg-type]
    for i, v in enumerate(values):
        got = reader.read(f"op{i}", tuple(v.shape))
        assert torch.equal(got, v.to(torch.int64))
    got[...] = 7  # a correction is a writable tensor of its own


def test_large_writes_flush_in_several_batches() -> None:
    out = FakeLink()
    sink = LinkSink({0: out})  # type: ignore[dict-item]
    for _ in range(10):
        sink.write(0, "big", torch.ones(LinkSink.FLUSH_BYTES // 8 // 3, dtype=torch.int64))
    sink.flush()
    assert len(out.sent) >= 3
    reader = LinkCorrections(FakeLink(out.sent), 0)  # type: ignore[arg-type]
    for _ in range(10):
        assert int(reader.read("big", (LinkSink.FLUSH_BYTES // 8 // 3,)).sum()) > 0


@pytest.mark.parametrize(
    "batch",
    [
        b"",  # empty frame
        b"\x01\x02\x03",  # shorter than an entry header
        _entry("other", (2,), bytes(16)),  # another op
        _entry("want", (3,), bytes(24)),  # another shape
        struct.pack("<II", op_tag("pre/want", [(2,)]), 24) + bytes(24),  # size != shape
        struct.pack("<II", op_tag("pre/want", [(2,)]), 16) + bytes(8),  # payload cut short
    ],
)
def test_malformed_or_mismatched_batch(batch: bytes) -> None:
    reader = LinkCorrections(FakeLink([batch]), 3)  # type: ignore[arg-type]
    with pytest.raises(PreprocessingExhausted, match="P3: dealer material does not match"):
        reader.read("want", (2,))


def test_random_batches_never_crash() -> None:
    rng = random.Random(1234)
    good = _entry("want", (2,), bytes(16))
    for _ in range(2000):
        data = bytearray(good if rng.random() < 0.5 else bytes(rng.randrange(0, 40)))
        for _ in range(rng.randrange(0, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        reader = LinkCorrections(FakeLink([bytes(data)]), 0)  # type: ignore[arg-type]
        try:
            got = reader.read("want", (2,))
        except PreprocessingExhausted:
            continue
        assert got.shape == (2,)


def test_background_writer_sends_everything_in_order() -> None:
    out = FakeLink()
    sink = LinkSink({0: out}, background=True)  # type: ignore[dict-item]
    values = [torch.full((1000 + i,), i, dtype=torch.int64) for i in range(200)]
    for i, v in enumerate(values):
        sink.write(0, f"op{i % 7}", v)
    sink.finish()
    assert sink.bytes_sent == sum(len(b) + 24 for b in out.sent)
    reader = LinkCorrections(FakeLink(out.sent), 0)  # type: ignore[arg-type]
    for i, v in enumerate(values):
        assert torch.equal(reader.read(f"op{i % 7}", tuple(v.shape)), v)


class BrokenLink(FakeLink):
    def send(self, kind: int, op: str, payload: Any) -> int:
        raise PeerError("sending pre/batch to p0 failed: EOF")


def test_background_writer_error_reaches_the_generator() -> None:
    sink = LinkSink({0: BrokenLink()}, background=True, max_queued_bytes=1)  # type: ignore[dict-item]
    with pytest.raises(PeerError, match="sending pre/batch to p0 failed"):
        for _ in range(1000):
            sink.write(0, "x", torch.zeros(LinkSink.FLUSH_BYTES // 8, dtype=torch.int64))
        sink.finish()
    sink.abort()


class GatedLink(FakeLink):
    """A party whose socket is full until ``gate`` is set (it waits for another party)."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__()
        self.gate = gate

    def send(self, kind: int, op: str, payload: Any) -> int:
        if not self.gate.wait(20):
            raise PeerError("gated link never opened")
        return super().send(kind, op, payload)


class SignallingLink(FakeLink):
    def __init__(self, on_send: threading.Event) -> None:
        super().__init__()
        self.on_send = on_send

    def send(self, kind: int, op: str, payload: Any) -> int:
        n = super().send(kind, op, payload)
        self.on_send.set()
        return n


def test_small_party_gets_its_material_while_party0_is_blocked() -> None:
    """Issue 13.1: party 1 needs only a small mask; party 0 reads nothing until party 1 has it
    (it waits for party 1's published data). The generator keeps producing party 0's stream
    (far more than the queue bound) and never calls flush(): party 1 must still be served."""
    party1_served = threading.Event()
    p0, p1 = GatedLink(party1_served), SignallingLink(party1_served)
    sink = LinkSink({0: p0, 1: p1}, background=True, max_queued_bytes=1 << 20)  # type: ignore[dict-item]
    done = threading.Event()

    def generate() -> None:
        sink.write(1, "mask/owner", torch.ones(40, 50, dtype=torch.int64))  # 16 KB < FLUSH
        for _ in range(400):  # 400 x 80 KB = 32 MB for party 0, 32x the queue bound
            sink.write(0, "triple", torch.zeros(10_000, dtype=torch.int64))
        sink.finish()
        done.set()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    thread.join(30)
    if not done.is_set():
        party1_served.set()  # unblock the writers so the test does not leave threads behind
        thread.join(10)
    assert done.is_set(), "the dealer stream deadlocked: party 1's mask was held back"
    reader = LinkCorrections(FakeLink(p1.sent), 1)  # type: ignore[arg-type]
    assert int(reader.read("mask/owner", (40, 50)).sum()) == 2000


def test_partial_batch_is_handed_on_when_it_ages() -> None:
    p1_got = threading.Event()
    p0, p1 = FakeLink(), SignallingLink(p1_got)
    sink = LinkSink({0: p0, 1: p1}, background=True)  # type: ignore[dict-item]
    sink.write(1, "mask/owner", torch.ones(3, dtype=torch.int64))
    start = time.monotonic()
    while not p1_got.is_set() and time.monotonic() - start < 5:
        sink.write(0, "x", torch.zeros(4, dtype=torch.int64))  # small: never reaches FLUSH_BYTES
        time.sleep(0.001)
    waited = time.monotonic() - start
    sink.finish()
    assert p1_got.is_set(), "a small party's partial batch waited for flush()"
    assert waited < 1.0, f"partial batch handed on after {waited:.2f}s"


class CrashingLink(FakeLink):
    def send(self, kind: int, op: str, payload: Any) -> int:
        raise RuntimeError("unexpected failure inside the writer")


def test_any_writer_exception_ends_the_job() -> None:
    sink = LinkSink({0: CrashingLink()}, background=True, max_queued_bytes=1)  # type: ignore[dict-item]
    with pytest.raises(MPCError, match="RuntimeError"):
        for _ in range(1000):
            sink.write(0, "x", torch.zeros(LinkSink.FLUSH_BYTES // 8, dtype=torch.int64))
        sink.finish(timeout=10)
    sink.abort()


class GoLink(FakeLink):
    """A dealer-side link whose party sends ``pre/go`` when ``go`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.peer = "P0"

    def recv_json(self, op: str) -> Any:
        assert op == "pre/go"
        assert self.go.wait(10)
        return {}


def test_dealer_sends_nothing_before_the_party_asks() -> None:
    """``await_go``: a party busy masking from disk for minutes reads nothing from the dealer;
    the dealer's writer waits in a receive (which the party's heartbeats keep alive) instead of
    a blocked write that would time out; the party's first read announces ``pre/go``."""
    link = GoLink()
    sink = LinkSink({0: link}, background=True, await_go=True)  # type: ignore[dict-item]
    sink.write(0, "x", torch.arange(5000, dtype=torch.int64))  # more than FLUSH_BYTES
    time.sleep(0.2)
    assert link.sent == []
    link.go.set()
    sink.finish(timeout=10)
    assert link.sent

    class PartyLink(FakeLink):
        announced: list[str] = []

        def send_json(self, op: str, obj: Any) -> None:
            self.announced.append(op)

    party = PartyLink(link.sent)
    reader = LinkCorrections(party, 0, announce=True)  # type: ignore[arg-type]
    assert party.announced == []
    assert torch.equal(reader.read("x", (5000,)), torch.arange(5000))
    assert party.announced == ["pre/go"]
